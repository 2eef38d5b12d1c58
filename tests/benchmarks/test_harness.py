"""benchmarks/harness.py: the helpers every benchmark shares."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402


def test_write_result_and_seed_summary(tmp_path):
    path = harness.write_result(tmp_path / "deep" / "r.json", {"a": 1, "provenance": {}})
    assert path.read_text() == '{\n  "a": 1,\n  "provenance": {}\n}\n'
    summary = harness.seed_summary([1.0, 2.0, 3.0])
    assert summary == {"mean": 2.0, "std": pytest.approx(1.0), "per_seed": [1.0, 2.0, 3.0]}
    assert harness.seed_summary([0.5])["std"] == 0.0
    described = harness.machine("cpu", ("torch", "no_such_package_here"))
    assert described["no_such_package_here"] is None and described["cpus"] >= 1


def test_a_rate_summary_gets_its_interval_over_every_seed_s_items():
    summary = harness.with_interval(harness.seed_summary([0.5, 0.25]), 100)
    assert summary["n"] == 200 and summary["ci95"][0] < 0.375 < summary["ci95"][1]
