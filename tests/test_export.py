"""`nega export`: a real per-step RL run's step labels and pairs, and a real D²O run's self-samples, as
TRL datasets that `datasets.load_from_disk` opens; and the errors for what cannot be exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from nega_testing import CORPUS_PAIRS
from typer.testing import CliRunner

from nega.cli import app
from nega.config import load_recipe
from nega.pipeline import Run, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
runner = CliRunner()


def _tiny(model_dir, out, **extra):
    values = {
        "model.name": str(model_dir),
        "model.dtype": "float32",
        "model.max_length": 128,
        "train.max_steps": 2,
        "train.batch_size": 4,
        "train.bf16": "false",
        "sampling.n": 2,
        "sampling.backend": "hf",
        "sampling.max_tokens": 8,
        "lora.r": 4,
        "lora.alpha": 8,
        "output_dir": str(out),
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def _stage(run_dir: Path, name: str) -> Path:
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and p.name.split("-", 1)[-1] == name]
    return folder


@pytest.fixture(scope="module")
def stepneg_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished per-step RL run on the tiny model, from GSM8K-style problems it half-solves."""
    from nega.align.stepneg.run import run

    work = tmp_path_factory.mktemp("stepneg")
    rows = [
        {"question": p, "answer": f"{r}\n#### {r.rstrip('.').split()[-1]}"} for p, r in CORPUS_PAIRS[:100:13]
    ]
    data = work / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = {
        "data.path": data,
        "data.format": "auto",
        "model.max_length": 64,
        "sampling.max_tokens": 12,
        "sampling.temperature": 2.0,  # the tiny model is near-perfect at T=1: make some samples wrong
        "sampling.batch_size": 32,
        "train.lr": 1e-3,
        "train.batch_size": 2,
        "stepneg.sft_lr": 1e-3,
        "stepneg.rft": "false",
        "stepneg.negatives": 4,
        "stepneg.negatives_per_problem": 4,
        "stepneg.max_samples_per_problem": 8,
        "stepneg.best_of": 2,
        "stepneg.rollout_groups": 1,
        "stepneg.answer_format": "number",
        # A step per word: the tiny model's solutions are one line, and the labels need several steps.
        "stepneg.step_regex": r"\S+\s*",
        "eval.reasoning.data": data,
        "eval.reasoning.limit": 2,
        "eval.reasoning.max_tokens": 12,
    }
    recipe = load_recipe(
        str(EXAMPLES / "stepneg-own-data.yaml"), _tiny(tiny_model_dir, work / "runs", **extra)
    )
    target = Run(recipe)
    run(recipe, target)
    return target.dir


@pytest.fixture(scope="module")
def d2o_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished D²O run on the tiny model, from the example unpaired preference file."""
    from nega.align.d2o.run import run

    work = tmp_path_factory.mktemp("d2o")
    data = EXAMPLES / "data" / "unpaired_preference.jsonl"
    recipe = load_recipe(
        str(EXAMPLES / "d2o-own-data.yaml"), _tiny(tiny_model_dir, work / "runs", **{"data.path": data})
    )
    target = Run(recipe)
    run(recipe, target)
    return target.dir


def test_stepneg_run_exports_trl_stepwise_supervision_and_preference(stepneg_run, tmp_path):
    import datasets
    from trl.data_utils import is_conversational, unpair_preference_dataset

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(stepneg_run), "--to", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["pairs", "steps"]

    steps = datasets.load_from_disk(str(out / "steps"))
    assert steps.column_names == ["prompt", "completions", "labels"]
    assert steps.features["labels"].feature.dtype == "bool"
    negatives = [
        a for a in read_jsonl(_stage(stepneg_run, "advantages") / "advantages.jsonl") if not a["correct"]
    ]
    assert len(steps) == len(negatives) > 0
    for row, negative in zip(steps, negatives, strict=True):
        pit = negative["pit"]
        # Labelled up to and including the first pit: true before it, false at it; later steps dropped.
        assert row["labels"] == [True] * (pit - 1) + [False]
        assert row["completions"] == negative["steps"][:pit]
        assert len(row["completions"]) == len(row["labels"])
        assert not is_conversational(row)
    assert any(len(r["labels"]) > 1 for r in steps), "no negative had a pit after its first step"
    assert any(negative["pit"] < len(negative["steps"]) for negative in negatives), "no step was dropped"

    pairs = datasets.load_from_disk(str(out / "pairs"))
    trained = read_jsonl(_stage(stepneg_run, "pairs") / "dpo.jsonl")
    assert pairs.column_names == ["prompt", "chosen", "rejected"]
    assert pairs.to_list() == [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in trained]
    # The prompt of each step row is the one its pairs were trained on (the chat template applied).
    prompts = {p["problem"]: p["prompt"] for p in trained}
    assert [r["prompt"] for r in steps] == [prompts[n["problem"]] for n in negatives]
    # TRL's own unpairing reads it as its preference type: chosen true, rejected false.
    unpaired = unpair_preference_dataset(pairs)
    assert unpaired.column_names == ["prompt", "completion", "label"] and len(unpaired) == 2 * len(pairs)
    assert sorted(unpaired.filter(lambda r: not r["label"])["completion"]) == sorted(pairs["rejected"])


def test_d2o_run_exports_trl_unpaired_preference(d2o_run, tmp_path):
    import datasets
    from trl.data_utils import is_conversational, maybe_unpair_preference_dataset

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(d2o_run), "--to", str(out), "--what", "self-samples"])
    assert result.exit_code == 0, result.output
    table = datasets.load_from_disk(str(out / "self-samples"))
    assert table.column_names == ["prompt", "completion", "label"]
    examples = read_jsonl(_stage(d2o_run, "reflogps") / "examples.jsonl")
    rows = [
        json.loads(line)
        for line in (EXAMPLES / "data" / "unpaired_preference.jsonl").read_text().splitlines()
    ]
    negatives = [r["completion"][-1]["content"] for r in rows if r["label"] is False]
    assert sorted(table.filter(lambda r: not r["label"])["completion"]) == sorted(negatives)
    assert table.filter(lambda r: r["label"])["completion"] == [t for e in examples for t in e["self"]]
    assert len(table) == sum(len(e["self"]) + 1 for e in examples)
    assert not is_conversational(table[0])
    # Already unpaired: TRL's helper leaves it as it is.
    assert maybe_unpair_preference_dataset(table).to_list() == table.to_list()


def test_export_errors_name_the_run_the_stage_and_the_fix(stepneg_run, d2o_run, tmp_path):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    result = runner.invoke(app, ["export", str(not_a_run), "--to", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not a run folder (no recipe.yaml)" in result.output

    result = runner.invoke(
        app, ["export", str(stepneg_run), "--to", str(tmp_path / "x"), "--what", "self-samples"]
    )
    assert result.exit_code == 2
    assert "self-samples is exported from d2o runs" in result.output and "stepneg run" in result.output

    result = runner.invoke(app, ["export", str(d2o_run), "--to", str(tmp_path / "x"), "--what", "steps"])
    assert result.exit_code == 2 and "exported from stepneg runs" in result.output

    result = runner.invoke(app, ["export", str(stepneg_run)])
    assert result.exit_code == 2 and "--to DIR" in result.output

    # An unfinished stage: named, with the command that resumes it, and nothing written.
    copy = tmp_path / "unfinished"
    shutil.copytree(stepneg_run, copy)
    (_stage(copy, "advantages") / "manifest.json").unlink()
    result = runner.invoke(app, ["export", str(copy), "--to", str(tmp_path / "y")])
    assert result.exit_code == 2, result.output
    assert "advantages is unfinished" in result.output and "nega run" in result.output
    assert "resumes it" in result.output and not (tmp_path / "y").exists()
    shutil.rmtree(_stage(copy, "advantages"))
    result = runner.invoke(app, ["export", str(copy), "--to", str(tmp_path / "y")])
    assert result.exit_code == 2 and "stage advantages has not run yet" in result.output


def test_export_to_the_hub_offline_fails_with_a_clear_error(d2o_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["export", str(d2o_run), "--hub", "someone/d2o-self-samples"])
    assert result.exit_code == 1, result.output
    assert "pushing self-samples to the Hub dataset someone/d2o-self-samples failed" in result.output
    assert "Traceback" not in result.output and "--to DIR" in result.output
    result = runner.invoke(app, ["export", str(d2o_run), "--hub", "not a repo"])
    assert result.exit_code == 2 and "must look like ORG/NAME" in result.output
