"""A quality benchmark end to end at its smallest: quality_d2o.py runs toy-d2o through the sweep, records
its departures from the declared design and every invocation, and decides its targets by paired tests on
per-item outcomes it saves beside the results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

TINY = ["--seeds", "0", "--lrs", "6e-4", "1.2e-3", "--n-test", "16", "--n-val", "12",
        "--override", "toy.steps=60", "--override", "toy.n_train=16", "--override", "sampling.n=2",
        "--override", "train.max_steps=2"]  # fmt: skip


def test_quality_d2o_smallest_run_and_its_resume(tmp_path, monkeypatch):
    import quality_d2o

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = [*TINY, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "quality_d2o.json")]
    monkeypatch.setattr(sys, "argv", ["benchmarks/quality_d2o.py", *argv])
    quality_d2o.main(argv)
    result = quality_d2o.main(argv)  # resumed: every stage skipped, a second invocation recorded
    assert [entry["argv"][2:] for entry in result["provenance"]["invocations"]] == [argv, argv]
    assert result["provenance"]["same_code_every_invocation"] is True
    assert any(line.startswith("lrs: declared") for line in result["deviations"])
    assert set(result["chosen_lr"]) == {a for a, arm in quality_d2o.ARMS.items() if arm.tuned}
    seed = result["sweep"]["0"]
    # Validation at both rates for every tuned arm, the starting model once; the self-samples are the same
    # bytes at both rates.
    assert set(seed["validation"]["d2o"]) == {"lr0.0006", "lr0.0012"} and len(seed["validation"]["sft"]) == 1
    assert seed["identical_across_grid"]["main"]["sample"] == []
    items = json.loads((tmp_path / "quality_d2o_items.json").read_text())["0"]
    harmful = [v for v in items["d2o"]["harmful_rate"] if v is not None]
    assert len(items["d2o"]["harmful_rate"]) == 16 and len(harmful) == 8
    assert sum(harmful) / len(harmful) == pytest.approx(result["methods"]["d2o"]["harmful_rate"]["mean"])
    for target in result["targets"].values():
        assert target["outcome"] in ("met", "not met", "undecided")
    assert result["targets"]["d2o_harmful_at_most_0.2x_sft"]["test"] == "paired_bootstrap"
