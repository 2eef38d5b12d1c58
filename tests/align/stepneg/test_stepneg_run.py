"""Per-step negative RL end to end: the GSM8K recipe on the tiny local model, and the toy recipe."""

from __future__ import annotations

import json
import re

import pytest
from nega_testing import CORPUS_PAIRS, lora_b_moved, require_module, response_loss

from nega.config import load_recipe
from nega.pipeline import Run, read_json, read_jsonl


def _problems_file(path):
    """GSM8K-format rows the tiny model half-solves: it was trained on "what is a plus b?"."""
    rows = [
        {"question": p, "answer": r.replace(" is ", " is <<calc>>") + f"\n#### {r.rstrip('.').split()[-1]}"}
        for p, r in CORPUS_PAIRS[:100:13]
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _stage(run_dir, name):
    """The stage folder `NN-name` of a run (other folders, such as the report's plots, are skipped)."""
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and p.name.split("-", 1)[-1] == name]
    return folder


def _gsm8k_overrides(tiny_model_dir, data, backend="hf"):
    return [
        f"model.name={tiny_model_dir}",
        "model.dtype=float32",
        "model.max_length=64",
        f"data.path={data}",
        "lora.r=4",
        "lora.alpha=8",
        f"sampling.backend={backend}",
        "sampling.max_tokens=12",
        "sampling.temperature=2.0",  # the tiny model is near-perfect at T=1: make some samples wrong
        "sampling.batch_size=32",
        "train.max_steps=2",
        "train.lr=1e-3",  # the recipe's 2e-5 (after its warm-up step) barely moves a tiny model in 2 steps
        "train.warmup_ratio=0.0",
        "train.logging_steps=1",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.bf16=false",
        "stepneg.sft_lr=1e-3",
        "stepneg.rft_samples=2",
        "stepneg.negatives=4",
        "stepneg.negatives_per_problem=4",
        "stepneg.max_samples_per_problem=8",
        "stepneg.best_of=2",
        "stepneg.rollout_groups=1",
        "stepneg.answer_format=number",
        f"eval.reasoning.data={data}",
        "eval.reasoning.limit=8",
        "eval.reasoning.max_tokens=12",
        "output_dir=runs",
    ]


def test_stepneg_gsm8k_recipe_validates_and_runs_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch):

    from nega.align.stepneg.run import run

    shipped = load_recipe("stepneg-gsm8k")
    assert (shipped.data.dataset, shipped.data.config) == ("openai/gsm8k", "main")
    assert (
        shipped.stepneg.negatives == 8
        and shipped.stepneg.negatives_per_problem == 8  # the paper's "about 8" per problem
        and shipped.stepneg.max_samples_per_problem == 64
        and shipped.stepneg.best_of == 5
        and shipped.stepneg.rollout_groups == 2
    )
    assert shipped.stepneg.beta == 0.1 and shipped.stepneg.answer_format == "gsm8k"

    data = _problems_file(tmp_path / "problems.jsonl")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("stepneg-gsm8k", _gsm8k_overrides(tiny_model_dir, data))
    table = run(recipe, Run(recipe))
    assert set(table) == {"sft", "rft", "stepneg_dpo"}
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["n"] == 8 for row in table.values())

    run_dir = tmp_path / "runs" / recipe.name
    rollouts = read_json(_stage(run_dir, "advantages") / "rollouts.json")
    assert rollouts["rollouts"] == 2 * rollouts["prefixes_rolled"] and rollouts["rollouts_per_s"] > 0
    valued = read_jsonl(_stage(run_dir, "advantages") / "advantages.jsonl")
    assert valued and not any(neg["correct"] for neg in valued)  # no AWR: wrong samples only
    for neg in valued:
        values = neg["values"]
        # A wrong solution that ended is a wrong outcome; one cut at max_tokens had its end rolled out
        # (unless an earlier prefix already scored 0: nothing after it is rolled out).
        if neg["finish_reason"] == "stop":
            assert values[-1] == 0.0
        else:
            assert values[-1] is not None or 0.0 in values[1:-1]
        assert 1 <= neg["pit"] <= len(neg["steps"])
        assert values[neg["pit"]] == min(v for v in values[1:] if v is not None)
    # Each problem got its 4 distinct negatives, or spent its budget of 8 samples trying.
    sampled = read_jsonl(_stage(run_dir, "negatives") / "samples.jsonl")
    for row in sampled:
        assert len(row["negatives"]) == 4 or (len(row["negatives"]) < 4 and row["samples"] == 8)
    counts = read_json(_stage(run_dir, "negatives") / "manifest.json")["counts"]
    assert counts["short_problems"] == sum(len(row["negatives"]) < 4 for row in sampled)
    assert {(s["problem"], s["text"]) for s in valued} <= {
        (i, t) for i, row in enumerate(sampled) for t in row["negatives"]
    }
    # Chosen responses are right samples that ended on their own.
    ended = {
        (i, t)
        for name in ("rft-sample", "negatives")
        for i, row in enumerate(read_jsonl(_stage(run_dir, name) / "samples.jsonl"))
        for t, ok, reason in zip(row["texts"], row["correct"], row["finish_reasons"], strict=True)
        if ok and reason == "stop"
    }
    for pair in read_jsonl(_stage(run_dir, "pairs") / "dpo.jsonl"):
        assert pair["rejected_eos"] is False and (pair["problem"], pair["chosen"]) in ended
    train = read_json(_stage(run_dir, "train-dpo") / "manifest.json")
    assert train["counts"]["steps"] == 2
    assert_trained_arms(run_dir, recipe, str(tiny_model_dir))


def test_a_pi_sft_that_solves_nothing_stops_with_what_to_change(tiny_model_dir, tmp_path, monkeypatch):
    from nega.align.stepneg.run import run
    from nega.data import DataError

    # Gold answers the tiny model never writes, and one token per sample.
    data = tmp_path / "problems.jsonl"
    rows = [{"question": p, "answer": f"{r}\n#### 987654"} for p, r in CORPUS_PAIRS[:100:13]]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    overrides = [*_gsm8k_overrides(tiny_model_dir, data), "sampling.max_tokens=1", "stepneg.sft_epochs=0.1"]
    recipe = load_recipe("stepneg-gsm8k", overrides)
    with pytest.raises(DataError) as caught:
        run(recipe, Run(recipe))
    message = str(caught.value)
    # 16 RFT samples, then rounds of 4 per problem until 4 distinct wrong ones or 8 samples.
    said = re.search(
        r"π_sft solved none of the 8 training problems in (\d+) samples \((\d+) of them cut off", message
    )
    assert said and said[1] == said[2] and 48 <= int(said[1]) <= 80, message
    assert "sampling.max_tokens=1" in message and "stepneg.rft_samples" in message
    # Nothing was trained after the sampling that found no positive.
    run_dir = tmp_path / "runs" / recipe.name
    assert not [p for p in run_dir.iterdir() if p.name.endswith(("-rft", "-train-dpo", "-advantages"))]


def assert_trained_arms(run_dir, recipe, base: str):
    """Every trained arm moved from its start; SFT's loss fell; π_sft is the SFT adapter merged into the
    base; and each DPO adapter lowers its own loss on its training pairs below log 2 (π_sft's)."""
    import math

    import torch
    from peft import PeftModel

    from nega.align.stepneg.trainer import collator, pair_objective
    from nega.models import load_base_model, load_tokenizer

    losses = [recipe.stepneg.loss, *recipe.stepneg.compare]
    for name in ["sft", "rft"] + [f"train-{loss}" for loss in losses]:
        assert lora_b_moved(_stage(run_dir, name) / "adapter"), name
    sft_adapter = _stage(run_dir, "sft") / "adapter"
    sft_pairs = read_jsonl(_stage(run_dir, "sft") / "examples.jsonl")
    start, trained = response_loss(base, None, sft_pairs), response_loss(base, sft_adapter, sft_pairs)
    assert trained < start - 0.01, ("sft", start, trained)

    pi_sft = _stage(run_dir, "sft-merge") / "model"
    tokenizer = load_tokenizer(base)
    ids = torch.tensor([tokenizer("what is 2 plus 3? 2 plus 3 is 5.")["input_ids"]])
    with torch.no_grad():
        merged = load_base_model(pi_sft)(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(load_base_model(base), sft_adapter)(input_ids=ids).logits
        plain = load_base_model(base)(input_ids=ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4) and (merged - plain).abs().max() > 1e-2

    for loss in [loss for loss in losses if loss != "awr"]:
        examples = read_jsonl(_stage(run_dir, f"train-{loss}") / "examples.jsonl")
        batch = collator(loss, tokenizer, recipe.model.max_length, pack=False)(examples)
        adapter = _stage(run_dir, f"train-{loss}") / "adapter"
        policy = PeftModel.from_pretrained(load_base_model(pi_sft), adapter)
        with torch.no_grad():
            trained, _ = pair_objective(policy, batch, recipe.stepneg.beta, recipe.stepneg.awr_clip)
            with policy.disable_adapter():
                start, _ = pair_objective(policy, batch, recipe.stepneg.beta, recipe.stepneg.awr_clip)
        assert start.item() == pytest.approx(math.log(2), abs=1e-4), loss
        assert trained.item() < start.item() - 1e-3, (loss, trained.item(), start.item())


@pytest.mark.slow
@pytest.mark.vllm
def test_stepneg_runs_with_the_vllm_sampler(tiny_model_dir, tmp_path, monkeypatch):
    require_module("vllm")
    from nega.align.stepneg.run import run

    data = _problems_file(tmp_path / "problems.jsonl")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("stepneg-gsm8k", _gsm8k_overrides(tiny_model_dir, data, backend="vllm"))
    table = run(recipe, Run(recipe))
    assert set(table) == {"sft", "rft", "stepneg_dpo"}
    rollouts = read_json(_stage(tmp_path / "runs" / recipe.name, "advantages") / "rollouts.json")
    assert rollouts["rollouts"] > 0


@pytest.mark.slow
def test_toy_stepneg_recipe_compares_every_objective(tmp_path, monkeypatch):
    from nega.align.stepneg.run import run
    from nega.toy import make_world

    monkeypatch.chdir(tmp_path)
    overrides = ["toy.steps=150", "toy.n_train=24", "toy.n_test=24", "toy.options.sft_problems=400"]
    overrides += [
        "stepneg.negatives=4",
        "stepneg.negatives_per_problem=4",
        "stepneg.max_samples_per_problem=8",
        "stepneg.rft_samples=2",
        "train.max_steps=3",
        "train.logging_steps=1",
    ]
    overrides += ["train.lr=1e-3"]  # three steps at the recipe's 1e-4 barely move the adapters
    recipe = load_recipe("toy-stepneg", overrides)
    table = run(recipe, Run(recipe))
    assert list(table) == ["start", "sft", "rft", "stepneg_dpo", "stepneg_awr", "outcome_dpo"]
    assert all(row["n"] == 24 for row in table.values())
    world = make_world("reasoning", seed=0, **recipe.toy.options)
    run_dir = tmp_path / "runs" / recipe.name
    valued = read_jsonl(_stage(run_dir, "advantages") / "advantages.jsonl")
    assert any(s["correct"] for s in valued) and not all(s["correct"] for s in valued)  # AWR: both kinds
    questions = [r["question"] for r in world.rows("train", 24)]
    for sample in valued:
        assert world.verify(questions[sample["problem"]], sample["text"]) is sample["correct"]
        assert "".join(sample["steps"]) == sample["text"]
        assert None not in sample["values"]  # AWR needs every step's value: no skip after the pit
    awr = read_jsonl(_stage(run_dir, "pairs") / "awr.jsonl")
    assert len(awr) == len([s for s in valued if s["problem"] in {p["problem"] for p in awr}])
    assert_trained_arms(run_dir, recipe, str(_stage(run_dir, "toy-model") / "model"))
