"""benchmarks/report.py: a target is met only when the ratio's run-to-run spread lies on its side."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import report  # noqa: E402


def rollouts(on: list[float], off: list[float]) -> dict:
    modes = {
        name: {"reps": [{"rollouts_per_s": v} for v in values]} for name, values in (("on", on), ("off", off))
    }
    return {"modes": modes, "rollouts_prefix_cache_speedup": sorted(on)[1] / sorted(off)[1]}


def test_spread_pairs_the_worst_and_best_repetitions():
    data = rollouts([405.0, 417.0, 456.0], [483.0, 349.0, 409.0])
    assert report.spread(data, "on", "off", "rollouts_per_s") == pytest.approx((405 / 483, 456 / 349))
    assert report.spread({"modes": {}}, "on", "off", "rollouts_per_s") is None


def test_a_median_past_the_target_is_not_met_while_the_spread_crosses_it():
    crossing = rollouts([405.0, 417.0, 456.0], [483.0, 349.0, 409.0])  # median ratio 1.02
    (row,) = report.ratio_table("bench_rollouts", crossing)[2:]
    assert "| 1.02 | 0.84–1.31 | > 1.0 | **undecided**" in row
    clear = rollouts([500.0, 510.0, 520.0], [400.0, 410.0, 420.0])
    assert report.ratio_table("bench_rollouts", clear)[2].endswith("| > 1.0 | met |")
    below = rollouts([300.0, 310.0, 320.0], [400.0, 410.0, 420.0])
    assert report.ratio_table("bench_rollouts", below)[2].endswith("| **not met** |")


def test_lower_is_better_targets_and_missing_repetitions():
    assert report.met(0.8, "<= 1.0", (0.74, 0.83)) == "met"
    assert report.met(0.95, "<= 1.0", (0.9, 1.1)).startswith("**undecided**")
    assert report.met(1.2, ">= 1.0", None) == "met (median only: no repetitions recorded)"
    assert report.met(1.2, "", (1.1, 1.3)) == ""
