"""Statistics by hand: Wilson interval, unbiased pass@k, majority vote."""

from __future__ import annotations

import math

import pytest

from nega.eval.report import majority_correct, pass_at_k, powers_of_two, rate, wilson_interval


def test_wilson_interval_by_hand():
    # 3 of 10, z = 1.96: centre (0.3 + 1.9208/10)/1.38416, half 1.96*sqrt(0.021 + 0.0096040)/1.38416
    z = 1.959963984540054
    p, n = 0.3, 10
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = wilson_interval(3, 10)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert (round(lo, 4), round(hi, 4)) == (0.1078, 0.6032)  # the textbook values for 3/10


def test_wilson_interval_edges():
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)  # z²/(n + z²) for 0 successes
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.1611, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_rate_entry():
    entry = rate([True, False, True, True])
    assert entry["rate"] == 0.75 and entry["count"] == 3 and entry["n"] == 4
    assert entry["ci95"] == list(wilson_interval(3, 4))
    assert rate([])["rate"] is None


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 1, 0.25),  # pass@1 is the plain success rate
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (8, 3, 4, 1 - 5 / 70),  # 1 - C(5,4)/C(8,4)
        (4, 0, 4, 0.0),
        (4, 1, 4, 1.0),
        (5, 4, 2, 1.0),  # fewer wrong samples than k
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 8)


def test_majority_vote():
    answers = ["3", "5", "5", None, "3", "3"]
    correct = [True, False, False, False, True, True]
    assert majority_correct(answers, correct, 1) is True  # "3"
    assert majority_correct(answers, correct, 2) is True  # tie 3/5: the first seen wins
    assert majority_correct(answers, correct, 4) is False  # "5" twice beats "3" once; None does not vote
    assert majority_correct(answers, correct, 6) is True  # "3" three times
    assert majority_correct([None, None], [False, False], 2) is False


def test_powers_of_two():
    assert powers_of_two(1) == [1]
    assert powers_of_two(8) == [1, 2, 4, 8]
    assert powers_of_two(6) == [1, 2, 4]
