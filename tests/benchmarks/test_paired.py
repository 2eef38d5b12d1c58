"""benchmarks/paired.py: exact McNemar and the paired bootstrap against hand-computed values, and the
three-outcome rule that decides a target."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import paired  # noqa: E402


def binomial_two_sided(b: int, c: int) -> float:
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) * 0.5**n for k in range(min(b, c) + 1)))


def test_mcnemar_exact_matches_the_binomial_formula():
    # b = 10, c = 2: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096
    assert paired.mcnemar_exact(10, 2) == pytest.approx(0.0386, abs=5e-5)
    assert paired.mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096)
    assert paired.mcnemar_exact(2, 10) == paired.mcnemar_exact(10, 2)
    assert paired.mcnemar_exact(5, 5) == 1.0 and paired.mcnemar_exact(0, 0) == 1.0
    # QCRD against label-only on CQA's test split (benchmarks/README.md): 28 against 53 discordant
    assert paired.mcnemar_exact(28, 53) == pytest.approx(binomial_two_sided(28, 53))
    assert paired.mcnemar_exact(28, 53) < 0.01
    assert paired.mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_mcnemar_counts_only_discordant_items_and_gives_the_paired_difference():
    left = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 58
    right = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 58
    result = paired.mcnemar(left, right)
    assert (result["b"], result["c"], result["n"]) == (10, 2, 100)
    assert result["statistic"] == pytest.approx(0.08)
    se = math.sqrt(12 - 64 / 100) / 100
    assert result["ci95"] == pytest.approx([0.08 - 1.959964 * se, 0.08 + 1.959964 * se])
    assert result["p"] == pytest.approx(2 * 79 / 4096)


def test_paired_bootstrap_keeps_pairs_and_scales_the_right_arm():
    # Every item differs by exactly 0.1: every resample has the same statistic, so the interval is a point.
    left = [[0.5, 0.7, 0.2, 0.9] * 5]
    right = [[x - 0.1 for x in left[0]]]
    result = paired.paired_bootstrap(left, right, resamples=500)
    assert result["statistic"] == pytest.approx(0.1)
    assert result["ci95"] == pytest.approx([0.1, 0.1])
    assert result["p"] == pytest.approx(2 / 501)  # no resample at or below 0
    # Unpaired resampling would spread this; scale and offset: mean(l) - 0.5 * mean(r) - 0.2
    scaled = paired.paired_bootstrap(left, right, scale=0.5, offset=0.2, resamples=500)
    mean_l, mean_r = sum(left[0]) / 20, sum(right[0]) / 20
    assert scaled["statistic"] == pytest.approx(mean_l - 0.5 * mean_r - 0.2)
    # No difference at all: p is 1.
    assert paired.paired_bootstrap([[0.3, 0.6]], [[0.3, 0.6]], resamples=200)["p"] == 1.0


def test_paired_bootstrap_resamples_within_each_seed():
    # Seed 0's items are all +0.2, seed 1's all -0.2: pooled the mean difference is 0, and since each
    # seed keeps its own items in every resample, the interval stays at 0.
    result = paired.paired_bootstrap([[1.0] * 10, [0.0] * 10], [[0.8] * 10, [0.2] * 10], resamples=300)
    assert result["statistic"] == pytest.approx(0.0)
    assert result["ci95"] == pytest.approx([0.0, 0.0])
    assert result["n"] == 20


def test_three_outcomes():
    assert paired.decide(">", 0.05, 0.01, [0.04, 0.06, -0.01]) == "met"  # 2 of 3 seeds agree
    assert paired.decide(">", 0.05, 0.01, [0.04, -0.06, -0.01]) == "undecided"  # 1 of 3
    assert paired.decide(">", 0.05, 0.2, [0.04, 0.06, 0.01]) == "undecided"  # not significant
    assert paired.decide(">", -0.05, 0.01, [-0.04, -0.06, 0.01]) == "not met"
    assert paired.decide("<=", -0.05, 0.01, [-0.04]) == "met"
    assert paired.decide("<=", 0.05, 0.01, [0.04]) == "not met"
    assert paired.decide(">", 0.0, 1.0, [0.0, 0.0]) == "undecided"


def test_a_target_is_decided_on_paired_items_pooled_over_seeds():
    # Seed by seed: left right on 10 items right misses, right alone on 2 (b = 10, c = 2 pooled).
    def seed_items(b: int, c: int, both: int) -> tuple[list, list]:
        return [1] * b + [0] * c + [1] * both, [0] * b + [1] * c + [1] * both

    items = {}
    for seed, (b, c) in enumerate([(4, 1), (3, 1), (3, 0)]):
        left, right = seed_items(b, c, 20)
        items[seed] = {"qcrd": {"accuracy": left}, "label_only": {"accuracy": right}}
    target = paired.Target("qcrd", ">", "label_only", "accuracy").decide(items)
    assert target["test"] == "mcnemar_exact" and (target["b"], target["c"]) == (10, 2)
    assert target["p"] == pytest.approx(0.0386, abs=5e-5)
    assert target["outcome"] == "met" and set(target["per_seed"]) == {"0", "1", "2"}
    assert target["per_seed"]["2"]["p"] == pytest.approx(paired.mcnemar_exact(3, 0))
    assert target["statement"] == "qcrd accuracy > label_only"
    # The other way round the same test is significant against the target: not met.
    assert paired.Target("label_only", ">", "qcrd", "accuracy").decide(items)["outcome"] == "not met"
    # Items a metric does not apply to (None) are left out of both sides.
    items[0]["qcrd"]["accuracy"][0] = None
    assert paired.Target("qcrd", ">", "label_only", "accuracy").decide(items)["n"] == (25 + 24 + 23) - 1


def test_scaled_targets_use_the_bootstrap_and_compound_targets_need_every_part():
    items = {0: {"d2o": {"harmful_rate": [0.0, 0.25, 0.0, 0.0] * 25},
                 "sft": {"harmful_rate": [0.25, 0.5, 0.25, 0.0] * 25},
                 "ga": {"harmful_rate": [0.0, 0.25, 0.0, 0.0] * 25}}}  # fmt: skip
    scaled = paired.Target("d2o", "<=", "sft", "harmful_rate", scale=0.2).decide(items)
    assert scaled["test"] == "paired_bootstrap"
    assert scaled["statistic"] == pytest.approx(0.0625 - 0.2 * 0.25)
    assert scaled["ci95"][0] <= scaled["statistic"] <= scaled["ci95"][1]
    targets = {
        "below_sft": paired.Target("d2o", "<", "sft", "harmful_rate"),
        "below_every": [paired.Target("d2o", "<=", "sft", "harmful_rate"),
                        paired.Target("d2o", "<=", "ga", "harmful_rate")],
    }  # fmt: skip
    decided = paired.decide_targets(targets, items)
    assert decided["below_sft"]["outcome"] == "met"
    # Below sft (met) but equal to ga on every item (undecided): undecided as a whole.
    assert [p["outcome"] for p in decided["below_every"]["parts"].values()] == ["met", "undecided"]
    assert decided["below_every"]["outcome"] == "undecided"
    assert paired.all_of({"a": {"outcome": "met"}, "b": {"outcome": "not met"}}) == "not met"
    with pytest.raises(ValueError, match="different items"):
        paired.paired_values([1, 0], [1])
