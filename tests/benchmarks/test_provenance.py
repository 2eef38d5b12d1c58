"""benchmarks/harness.py: what the quality benchmarks record beside their numbers, and how their runs share
stages: provenance, copied stages, seconds counted once, and targets checked on means and per seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402


def test_provenance_follows_the_source_and_the_script(tmp_path, monkeypatch):
    script = tmp_path / "benchmarks" / "quality_x.py"
    script.parent.mkdir()
    script.write_text("print(1)\n")
    (tmp_path / "nega").mkdir()
    (tmp_path / "nega" / "loss.py").write_text("def loss(): return 1\n")
    monkeypatch.setattr(harness, "__file__", str(script.parent / "harness.py"))
    before = harness.provenance(script)
    assert harness.provenance(script) == before  # the same code: the same record
    (tmp_path / "nega" / "loss.py").write_text("def loss(): return 2\n")
    after = harness.provenance(script)
    assert after["nega_source_sha256"] != before["nega_source_sha256"]
    assert after["script_sha256"] == before["script_sha256"]
    script.write_text("print(2)\n")
    assert harness.provenance(script)["script_sha256"] != before["script_sha256"]


def stage(run_dir: Path, number: int, name: str, finished_at: str, seconds: float) -> Path:
    folder = run_dir / f"{number:02d}-{name}"
    folder.mkdir(parents=True)
    (folder / "data.txt").write_text(name)
    manifest = {"stage": name, "hash": f"h-{name}", "seconds": seconds, "finished_at": finished_at}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_copied_stages_keep_their_folders_and_count_their_seconds_once(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    stage(first, 1, "toy-model", "2026-01-01T00:00:00", 50.0)
    stage(first, 2, "sample", "2026-01-01T00:01:00", 10.0)
    stage(first, 3, "d2o-train", "2026-01-01T00:02:00", 5.0)
    assert harness.copy_stages(first, second, ["toy-model", "sample"]) == ["01-toy-model", "02-sample"]
    assert (second / "02-sample" / "data.txt").read_text() == "sample"
    assert not (second / "03-d2o-train").exists()
    assert harness.copy_stages(first, second, ["toy-model"]) == []  # already there: left alone
    stage(second, 3, "d2o-train", "2026-01-01T00:03:00", 6.0)
    seen: set = set()
    assert harness.own_seconds(harness.stage_manifests(first), seen) == {
        "toy-model": 50.0, "sample": 10.0, "d2o-train": 5.0
    }  # fmt: skip
    assert harness.own_seconds(harness.stage_manifests(second), seen) == {"d2o-train": 6.0}


def test_trained_folders_read_each_training_stage_log(tmp_path):
    folder = stage(tmp_path, 1, "ga-train", "2026-01-01T00:00:00", 1.0)
    (folder / "train_log.json").write_text(json.dumps({"folder": str(folder / "adapter"), "history": []}))
    stage(tmp_path, 2, "eval", "2026-01-01T00:00:01", 1.0)
    assert harness.trained_folders(tmp_path) == {"ga-train": str(folder / "adapter")}


def test_a_target_holds_on_the_means_and_is_reported_seed_by_seed():
    methods = {
        "d2o": {"harmful_rate": harness.seed_summary([0.04, 0.06, 0.02])},
        "sft": {"harmful_rate": harness.seed_summary([0.25, 0.25, 0.25])},
    }
    target = harness.compare_arms(methods, "d2o", "<=", "sft", "harmful_rate", scale=0.2)
    assert target["threshold"] == pytest.approx(0.05)
    assert target["met"] is True and target["per_seed"] == [True, False, True]
    assert target["statement"] == "d2o harmful_rate <= 0.2 x sft"
    within = harness.compare_arms(methods, "d2o", ">=", "sft", "harmful_rate", offset=-0.2)
    assert within["met"] is False and within["threshold"] == pytest.approx(0.05)
