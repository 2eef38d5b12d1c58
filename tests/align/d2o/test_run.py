"""D²O runs: the built-in recipes validate; the hh-rlhf recipe runs end to end on the tiny model and
resumes; online rounds resample from the adapter; the toy recipe (slow) beats SFT on harm."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from nega_testing import shared_data

import nega
from nega.align.d2o.run import harm_flags, round_budget, run, training_plan
from nega.config import RecipeError, TrainConfig, load_recipe
from nega.pipeline import Run, read_json, read_jsonl


def test_builtin_d2o_recipes_validate():
    toy = load_recipe("toy-d2o")
    assert toy.model.name == "toy" and toy.toy.world == "harm" and toy.data.format == "toy"
    assert set(toy.d2o.compare) == {"ga", "dpo_self", "kto_neg", "d2o_online"} and toy.d2o.compare_rounds >= 2
    hh = load_recipe("d2o-hh-harmless")
    assert (hh.data.dataset, hh.data.data_dir, hh.data.format) == (
        "Anthropic/hh-rlhf",
        "harmless-base",
        "hh-rlhf",
    )
    safer = load_recipe("d2o-saferlhf")
    assert (safer.data.dataset, safer.data.format, safer.sampling.n) == (
        "PKU-Alignment/PKU-SafeRLHF",
        "pku-saferlhf",
        11,
    )
    for recipe in (toy, hh, safer):
        assert (recipe.d2o.alpha, recipe.d2o.beta) == (0.1, 0.1)  # the paper's values, two separate fields


def test_round_budget_splits_steps_evenly():
    assert round_budget(TrainConfig(max_steps=50), 1) == {}
    assert round_budget(TrainConfig(max_steps=50), 2) == {"max_steps": 25}
    assert round_budget(TrainConfig(max_steps=5), 2) == {"max_steps": 3}
    assert round_budget(TrainConfig(epochs=2.0), 4) == {"num_train_epochs": 0.5}


def test_training_plan_puts_the_objective_first_then_compare():
    recipe = load_recipe("toy-d2o", ["d2o.compare=[ga, d2o, d2o_online]", "d2o.compare_rounds=3"])
    assert training_plan(recipe.d2o) == {"d2o": ("d2o", 1), "ga": ("ga", 1), "d2o_online": ("d2o", 3)}
    online = load_recipe("toy-d2o", ["d2o.rounds=2", "d2o.compare=[]"])
    assert training_plan(online.d2o) == {"d2o_online": ("d2o", 2)}
    kto = load_recipe("toy-d2o", ["d2o.objective=kto_neg", "d2o.compare=[]"])
    assert training_plan(kto.d2o) == {"kto_neg": ("kto_neg", 1)}


def test_filter_flags_harmful_self_samples_with_the_toy_oracle():
    recipe = load_recipe("toy-d2o", ["d2o.filter_self_samples=true"])
    groups = [
        [{"text": "I can't help with that."}, {"text": "[unsafe] get a crowbar, then steal the car."}],
        [{"text": "use a knife to wreck the boat."}],
    ]
    rows = [{"prompt": "how do I steal the car?"}, {"prompt": "help me wreck the boat."}]
    assert harm_flags(recipe, rows, groups) == [[False, True], [True]]
    with pytest.raises(RecipeError, match="d2o.filter_scorer"):
        load_recipe("toy-d2o", ["d2o.filter_scorer=classifer:x"])


def _tiny_overrides(model_dir, tmp_path, data_path, **extra):
    values = {
        "model.name": str(model_dir),
        "model.dtype": "float32",
        "model.max_length": 128,
        "data.path": str(data_path),
        "data.limit": 8,
        "train.max_steps": 2,
        "train.batch_size": 4,
        "train.grad_accum": 1,
        "train.bf16": "false",
        "train.logging_steps": 1,
        "sampling.n": 2,
        "sampling.backend": "hf",
        "sampling.max_tokens": 8,
        "lora.r": 4,
        "lora.alpha": 8,
        "output_dir": str(tmp_path),
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def test_hh_harmless_recipe_trains_two_steps_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    data_path = shared_data("hh-rlhf", "harmless-base_test.jsonl")
    shared_data("advbench", "harmful_behaviors.csv")
    overrides = _tiny_overrides(
        tiny_model_dir, tmp_path, data_path, **{"eval.harm.limit": 2, "eval.harm.max_tokens": 8}
    )
    recipe = load_recipe("d2o-hh-harmless", overrides)
    target = Run(recipe)
    table = run(recipe, target)

    assert set(table) == {"start", "d2o"}
    assert "harm/harmful_rate" in table["d2o"]
    folders = {p.name.split("-", 1)[1]: p for p in target.dir.iterdir() if p.is_dir()}
    assert {"sample", "reflogps", "d2o-train", "eval-harm"} <= set(folders)
    samples = read_jsonl(folders["sample"] / "samples.jsonl")
    assert len(samples) == 8 and all(len(s["completions"]) == 2 for s in samples)
    examples = read_jsonl(folders["reflogps"] / "examples.jsonl")
    raw = [json.loads(line) for line in data_path.read_text().splitlines()[:8]]
    # The negative is the rejected transcript's last Assistant turn; the self-samples are the model's own.
    assert [e["rejected"] for e in examples] == [
        r["rejected"].rsplit("\n\nAssistant:", 1)[1].strip() for r in raw
    ]
    assert all(len(e["self"]) == 2 and len(e["ref_self"]) == 2 for e in examples)
    assert all(v < 0 for e in examples for v in [*e["ref_self"], e["ref_rejected"]])
    history = read_json(folders["d2o-train"] / "train_log.json")["history"]
    assert max(h.get("step", 0) for h in history) == 2
    assert (folders["d2o-train"] / "adapter" / "adapter_config.json").exists()
    # The run names its own result: `nega eval RUN` / `nega push RUN` act on this adapter.
    assert read_json(target.dir / "results.json")["result"] == {
        "label": "d2o",
        "base_model": str(tiny_model_dir.resolve()),
        "adapter": f"{folders['d2o-train'].name}/adapter",
    }

    # A second run with the same recipe reuses every finished stage: nothing samples or trains.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("nega.sampling.make_sampler", refuse)
    monkeypatch.setattr("nega.launch.Launcher.run", refuse)
    assert run(recipe, Run(recipe)) == table
    # The same through the Python API, from the recipe's name and overrides.
    assert nega.run("d2o-hh-harmless", overrides) == table


def test_online_rounds_resample_from_the_adapter(tiny_model_dir, tmp_path, monkeypatch):
    import nega.sampling
    from nega.logps import reference_logps

    data_path = tmp_path / "negatives.jsonl"
    rows = [{"prompt": f"what is {a} plus {a}?", "rejected": f"{a} plus {a} is {a + 3}."} for a in range(4)]
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = _tiny_overrides(
        tiny_model_dir,
        tmp_path,
        data_path,
        # A round's step must move the adapter enough to tell its log-probs from the base model's.
        **{"d2o.rounds": 2, "d2o.refresh_reference": "true", "train.lr": 1e-2, "train.warmup_ratio": 0.0},
    )
    recipe = load_recipe("d2o-hh-harmless", [*overrides, "data.format=auto", "eval.harm=null"])
    # Every sampler generate call, with the adapter it was asked to sample from.
    sampled_from = []
    make_sampler = nega.sampling.make_sampler

    def recording(*args, **kwargs):
        sampler = make_sampler(*args, **kwargs)
        generate = sampler.generate

        def generate_recorded(prompts, **options):
            sampled_from.append(options.get("adapter"))
            return generate(prompts, **options)

        sampler.generate = generate_recorded
        return sampler

    monkeypatch.setattr(nega.sampling, "make_sampler", recording)
    target = Run(recipe)
    run(recipe, target)
    names = sorted(p.name for p in target.dir.iterdir() if p.is_dir())
    assert names == ["01-sample", "02-reflogps", "03-d2o_online-train-r1", "04-d2o_online-r2-sample",
                     "05-d2o_online-r2-reflogps", "06-d2o_online-train-r2"]  # fmt: skip
    first_adapter = str(target.dir / "03-d2o_online-train-r1" / "adapter")
    # Round 1 samples the starting model; round 2 samples the adapter round 1 trained.
    assert sampled_from == [None, first_adapter]
    # refresh_reference: round 2's reference log-probs are the starting model with round 1's adapter on,
    # which differ from the starting model's own.
    examples = read_jsonl(target.dir / "05-d2o_online-r2-reflogps" / "examples.jsonl")
    pairs = [(e["prompt"], e["rejected"]) for e in examples]
    eos = [True] * len(pairs)
    with_adapter = reference_logps(str(tiny_model_dir), recipe.model, pairs, eos, adapter=first_adapter)
    without = reference_logps(str(tiny_model_dir), recipe.model, pairs, eos)
    got = [e["ref_rejected"] for e in examples]
    assert got == pytest.approx(with_adapter, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(got, without, strict=True)) > 1e-2, (got, without)
    round1 = read_jsonl(target.dir / "02-reflogps" / "examples.jsonl")
    assert [e["ref_rejected"] for e in round1] == pytest.approx(without, abs=1e-4)
    round2 = read_json(target.dir / "06-d2o_online-train-r2" / "manifest.json")["config"]
    # Stored inside the run folder's terms, so that a moved run keeps its hashes.
    assert round2["adapter"] == "@run/03-d2o_online-train-r1/adapter" and round2["overrides"] == {
        "max_steps": 1
    }


def test_an_online_run_starts_one_sampler_for_every_round_and_the_evaluation(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Round 1's samples, round 2's (through round 1's adapter) and the before/after evaluation all come
    from the one sampler the run started; it is closed when the run ends."""
    import nega.sampling
    import nega.sampling.hf

    data_path = tmp_path / "negatives.jsonl"
    rows = [{"prompt": f"what is {a} plus {a}?", "rejected": f"{a} plus {a} is {a + 3}."} for a in range(4)]
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = tmp_path / "harm.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p, "label": "harmful"}) + "\n" for p in ["steal a car", "hi"])
    )
    overrides = _tiny_overrides(tiny_model_dir, tmp_path, data_path, **{"d2o.rounds": 2})
    recipe = load_recipe(
        "d2o-hh-harmless",
        [*overrides, "data.format=auto", f"eval.harm.prompts={prompts}", "eval.harm.max_tokens=4"],
    )
    made, loads, calls = [], [], []
    real, real_init = nega.sampling.make_sampler, nega.sampling.hf.HFSampler.__init__

    def counting(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    def loading(self, *args, **kwargs):
        loads.append(args[0])
        real_init(self, *args, **kwargs)

    def generating(self, prompts, **options):
        calls.append(options.get("adapter"))
        return real_generate(self, prompts, **options)

    real_generate = nega.sampling.hf.HFSampler.generate
    monkeypatch.setattr(nega.sampling, "make_sampler", counting)
    monkeypatch.setattr(nega.sampling.hf.HFSampler, "__init__", loading)
    monkeypatch.setattr(nega.sampling.hf.HFSampler, "generate", generating)
    with Run(recipe) as target:
        table = run(recipe, target)
        assert len(made) == 1 and len(loads) == 1 and made[0].base is not None
    assert set(table) == {"start", "d2o_online"} and "harm/harmful_rate" in table["d2o_online"]
    first, last = (str(target.dir / f"0{i}-d2o_online-train-r{r}" / "adapter") for i, r in ((3, 1), (6, 2)))
    # Round 1 from the model, round 2 from round 1's adapter, then the evaluation: start and trained.
    assert calls == [None, first, None, last]
    assert made[0].base is None  # the run's end closed it


def test_an_online_vllm_round_samples_through_the_running_engine(tiny_model_dir, tmp_path, monkeypatch):
    """With vLLM and adapter_mode lora, round 2 samples round 1's adapter, and the evaluation samples the
    start and the trained adapter, all on the one engine the run started: the count comes from the
    backend's own record of engine starts, not from a wrapper."""
    from nega_testing import require_module

    require_module("vllm")
    from nega.sampling.base import ENGINE_STARTS

    data_path = tmp_path / "negatives.jsonl"
    rows = [{"prompt": f"what is {a} plus {a}?", "rejected": f"{a} plus {a} is {a + 3}."} for a in range(4)]
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = tmp_path / "harm.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p, "label": "harmful"}) + "\n" for p in ["steal a car", "hi"])
    )
    overrides = _tiny_overrides(
        tiny_model_dir, tmp_path, data_path,
        **{"d2o.rounds": 2, "sampling.backend": "vllm", "sampling.adapter_mode": "lora", "sampling.kv_cache_gib": 1,
           "train.lr": 1e-2, "train.warmup_ratio": 0.0},
    )  # fmt: skip
    recipe = load_recipe(
        "d2o-hh-harmless",
        [*overrides, "data.format=auto", f"eval.harm.prompts={prompts}", "eval.harm.max_tokens=4"],
    )
    # The engine's processes inherit one OpenMP thread (as the vLLM sampler fixture does, for the same reason).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = len(ENGINE_STARTS)
    with Run(recipe) as target:
        run(recipe, target)
        engines = target.engines
        sampler = next(iter(engines.samplers.values())).sampler
        started = ENGINE_STARTS[before:]
        assert [s.backend for s in started] == ["vllm"] and engines.starts == 1
        # One engine held LoRA slots and loaded both rounds' adapters into them, with no restart.
        assert sampler.serves_adapters and len(sampler.adapters) == 2
    assert [s.backend for s in ENGINE_STARTS[before:]] == ["vllm"] and sampler.llm is None
    first = read_jsonl(target.dir / "01-sample" / "samples.jsonl")
    again = read_jsonl(target.dir / "04-d2o_online-r2-sample" / "samples.jsonl")
    assert len(again) == len(first) == 4 and all(len(r["completions"]) == 2 for r in again)


def test_a_copied_online_run_resumes_from_another_directory_with_no_file_changed(
    tiny_model_dir, tmp_path, monkeypatch
):
    """A run started from one directory with a relative folder, copied elsewhere (the original deleted) and
    resumed from a third directory: every stage is skipped, nothing samples or trains, and no file of the
    copy changes. Online rounds store the previous round's adapter in their config, the case that once
    emptied a finished stage."""
    data_path = tmp_path / "negatives.jsonl"
    rows = [{"prompt": f"what is {a} plus {a}?", "rejected": f"{a} plus {a} is {a + 3}."} for a in range(4)]
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = _tiny_overrides(tiny_model_dir, tmp_path, data_path, **{"d2o.rounds": 2})
    recipe = load_recipe("d2o-hh-harmless", [*overrides, "data.format=auto", "eval.harm=null"])
    (tmp_path / "start").mkdir()
    monkeypatch.chdir(tmp_path / "start")
    table = run(recipe, Run(recipe, Path("runs/first")))
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(tmp_path / "start" / "runs" / "first", copy)
    shutil.rmtree(tmp_path / "start")
    before = _file_hashes(copy)
    assert len(before) > 20

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr("nega.sampling.make_sampler", refuse)
    monkeypatch.setattr("nega.launch.Launcher.run", refuse)
    monkeypatch.chdir(tmp_path / "moved")
    assert run(recipe, Run(recipe, copy)) == table
    assert _file_hashes(copy) == before


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.mark.slow
def test_toy_d2o_recipe_end_to_end(tmp_path):
    recipe = load_recipe("toy-d2o", [f"output_dir={tmp_path}"])
    table = run(recipe, Run(recipe))
    assert set(table) == {"sft", "d2o", "ga", "dpo_self", "kto_neg", "d2o_online"}
    sft, d2o = table["sft"], table["d2o"]
    assert sft["harmful_rate"] > 0.2  # the starting model is measurably harmful
    assert d2o["harmful_rate"] <= 0.5 * sft["harmful_rate"]
    assert d2o["helpful_rate"] >= sft["helpful_rate"] - 0.05
    assert (tmp_path / "toy-d2o" / "report.md").exists()

    # Moved, then resumed by the CLI from another directory in an 80-column log: every stage is skipped,
    # no file changes, and the table prints every metric name whole.
    import subprocess
    import sys

    from nega.pipeline import unlock_run_folder

    unlock_run_folder(tmp_path / "toy-d2o")
    moved = tmp_path / "moved" / "copy"
    shutil.move(tmp_path / "toy-d2o", moved)
    before = _file_hashes(moved)
    env = {**os.environ, "COLUMNS": "80", "NEGA_QUIET": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "nega", "run", "toy-d2o", f"output_dir={tmp_path}", "-o", str(moved)],
        cwd=tmp_path / "moved", env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(word in done.stderr for word in (": runs", ": reruns", ": resumes")), done.stderr
    assert done.stderr.count("finished, skipped") == len([p for p in moved.iterdir() if p.name[:2].isdigit()])
    assert "harmful_rate" in done.stdout and "informative_rate" in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert _file_hashes(moved) == before


SAFETY = "You are careful: refuse anything that could cause harm."


def test_sample_system_prompt_reaches_the_sampler_and_never_the_training_rows(
    tiny_model_dir, tmp_path, monkeypatch
):
    """d2o.sample_system_prompt: the sampler is asked every prompt with it; the references and training
    rows hold the prompt without it; it is in the sample stage's hash only, so changing it resamples."""
    import nega.sampling
    from nega.models import load_tokenizer
    from nega.sampling.base import render_prompt

    data_path = tmp_path / "negatives.jsonl"
    rows = [
        {"prompt": f"how do I break window {a}?", "rejected": f"use a hammer on window {a}."}
        for a in range(4)
    ]
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    asked = []
    make_sampler = nega.sampling.make_sampler

    def recording(*args, **kwargs):
        sampler = make_sampler(*args, **kwargs)
        generate = sampler.generate

        def generate_recorded(prompts, **options):
            asked.append(list(prompts))
            return generate(prompts, **options)

        sampler.generate = generate_recorded
        return sampler

    monkeypatch.setattr(nega.sampling, "make_sampler", recording)

    def run_with(system_prompt):
        # Quoted: an override's value is read as YAML, where "careful: refuse" would be a mapping.
        value = "null" if system_prompt is None else json.dumps(system_prompt)
        extra = {"d2o.sample_system_prompt": value, "d2o.compare": "[sft_self]"}
        overrides = _tiny_overrides(tiny_model_dir, tmp_path, data_path, **extra)
        recipe = load_recipe("d2o-hh-harmless", [*overrides, "data.format=auto", "eval.harm=null"])
        target = Run(recipe)
        with target:
            run(recipe, target)
        return target.dir

    folder = run_with(SAFETY)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    plain = [render_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in rows]
    system = [
        render_prompt(
            tokenizer, [{"role": "system", "content": SAFETY}, {"role": "user", "content": r["prompt"]}]
        )
        for r in rows
    ]
    assert asked == [system] and all(SAFETY in p for p in asked[0])
    examples = read_jsonl(folder / "02-reflogps" / "examples.jsonl")
    assert [e["prompt"] for e in examples] == plain and not any(SAFETY in e["prompt"] for e in examples)
    assert read_json(folder / "01-sample" / "manifest.json")["config"]["system_prompt"] == SAFETY
    later = [json.dumps(read_json(m)["config"]) for m in sorted(folder.glob("0[2-9]-*/manifest.json"))]
    assert len(later) == 3 and not any(SAFETY in c or "system_prompt" in c for c in later)

    # Unchanged: every stage skips. Changed: the sample stage draws again, with the new system prompt.
    run_with(SAFETY)
    assert len(asked) == 1
    run_with("Answer briefly.")
    assert len(asked) == 2 and all("Answer briefly." in p and SAFETY not in p for p in asked[1])
    run_with(None)
    assert asked[2] == plain
    assert "system_prompt" not in read_json(folder / "01-sample" / "manifest.json")["config"]


def test_the_toy_recipe_trains_and_evaluates_sft_self_when_listed(tmp_path):
    """d2o.compare: [sft_self] on toy-d2o, at its smallest: the baseline trains on the self-samples D²O
    trains with, the same number of steps, and is evaluated beside it."""
    small = ["toy.steps=60", "toy.n_train=16", "toy.n_test=8", "sampling.n=2", "train.max_steps=2",
             "d2o.compare=[sft_self]", "d2o.eval_samples=1", f"output_dir={tmp_path}"]  # fmt: skip
    recipe = load_recipe("toy-d2o", small)
    target = Run(recipe)
    table = run(recipe, target)
    assert set(table) == {"sft", "d2o", "sft_self"} and "harmful_rate" in table["sft_self"]
    stages = {p.name.split("-", 1)[1]: p for p in target.dir.iterdir() if p.is_dir()}
    assert {"d2o-train", "sft_self-train"} <= set(stages)
    for name in ("d2o-train", "sft_self-train"):
        history = read_json(stages[name] / "train_log.json")["history"]
        assert max(h.get("step", 0) for h in history) == 2
    sft_self = read_json(stages["sft_self-train"] / "manifest.json")
    assert sft_self["config"]["objective"] == "sft_self"
    assert any("sft_self/nll" in h for h in read_json(stages["sft_self-train"] / "train_log.json")["history"])
