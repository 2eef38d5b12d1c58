"""benchmarks/harness.py: the helpers every benchmark shares, and a recipe run as `nega run` runs it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from nega_testing import shared_data

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402


def test_write_result_and_seed_summary(tmp_path):
    path = harness.write_result(tmp_path / "deep" / "r.json", {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    summary = harness.seed_summary([1.0, 2.0, 3.0])
    assert summary == {"mean": 2.0, "std": pytest.approx(1.0), "per_seed": [1.0, 2.0, 3.0]}
    assert harness.seed_summary([0.5])["std"] == 0.0
    described = harness.machine("cpu", ("torch", "no_such_package_here"))
    assert described["no_such_package_here"] is None and described["cpus"] >= 1


def test_run_recipe_runs_what_nega_run_runs(tiny_model_dir, tmp_path):
    """The built-in recipe with overrides, through the method table's run entry; a rerun skips every
    finished stage."""
    overrides = [
        f"model.name={tiny_model_dir}", "model.dtype=float32", "model.max_length=64",
        f"data.path={shared_data('hh-rlhf', 'harmless-base_test.jsonl')}", "data.limit=4",
        "train.max_steps=1", "train.batch_size=4", "sampling.n=2", "sampling.backend=hf", "sampling.max_tokens=6",
        "lora.r=4", "lora.alpha=8", "eval.harm=null",
    ]  # fmt: skip
    table, run_dir = harness.run_recipe("d2o-hh-harmless", overrides, tmp_path / "run")
    assert table == {"d2o": {"trained": 1.0}} and run_dir == tmp_path / "run"
    assert json.loads((run_dir / "results.json").read_text())["result"]["label"] == "d2o"
    stages = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert stages == ["01-sample", "02-reflogps", "03-d2o-train"]
    manifests = [(run_dir / s / "manifest.json").read_text() for s in stages]
    assert harness.run_recipe("d2o-hh-harmless", overrides, tmp_path / "run")[0] == table
    assert [(run_dir / s / "manifest.json").read_text() for s in stages] == manifests


def test_stage_seconds_split_into_shared_arms_and_evaluation_and_the_last_epoch():
    ran = {"teacher": 5.0, "qcrd-e0-negatives": 2.0, "qcrd-e1-train": 3.0, "qcrd_no_disc-e0-train": 4.0,
           "label_only-e0-train": 1.0, "eval": 6.0, "eval-start": 0.5}  # fmt: skip
    shared, per_arm, evaluation = harness.split_seconds(
        ran, ["label_only", "qcrd", "qcrd_no_disc", "step_by_step"]
    )
    assert (shared, evaluation) == (5.0, 6.5)
    assert per_arm == {"label_only": 1.0, "qcrd": 5.0, "qcrd_no_disc": 4.0, "step_by_step": 0.0}
    folders = {"qcrd-e2-train": "c", "qcrd-e10-train": "d", "qcrd-e1-train": "b", "qcrd_no_disc-e11-train": "x",
               "qcrd-e1-negatives": "n"}  # fmt: skip
    assert harness.last_epoch(folders, "qcrd") == "d"
    summary = harness.with_interval(harness.seed_summary([0.5, 0.25]), 100)
    assert summary["n"] == 200 and summary["ci95"][0] < 0.375 < summary["ci95"][1]
