"""Rollout values, advantages, first pit and the skip rule, with a deterministic test-double sampler."""

from __future__ import annotations

import pytest

from nega.align.stepneg.rollouts import (
    bok_value,
    estimate_step_values,
    first_pit,
    group_value,
    step_advantages,
)
from nega.sampling.base import Completion


class TableSampler:
    """Returns, for prompt text P, the continuations listed in `table[P]` (good -> 'ok', bad -> 'no')."""

    def __init__(self, table: dict[str, list[bool]]):
        self.table = table
        self.calls: list[list[str]] = []

    def generate(self, prompts, *, n=1, **kwargs):
        self.calls.append(list(prompts))
        out = []
        for prompt in prompts:
            pattern = self.table[prompt]
            assert len(pattern) == n
            out.append([Completion(text="ok" if good else "no") for good in pattern])
        return out


def _correct(problem: int, text: str) -> bool:
    return text.endswith("ok")


def test_bok_formula():
    assert bok_value(0.0, 5) == 0.0
    assert bok_value(1.0, 5) == 1.0
    assert bok_value(0.2, 5) == pytest.approx(1 - 0.8**5)
    assert bok_value(0.5, 1) == 0.5
    with pytest.raises(ValueError):
        bok_value(1.5, 5)


def test_group_value_counts_a_group_once_when_any_member_is_correct():
    assert group_value([False, True, False, False, False, True], best_of=3, groups=2) == 1.0
    assert group_value([False, True, False, False, False, False], best_of=3, groups=2) == 0.5
    assert group_value([True, True, False, False], best_of=2, groups=2) == 0.5
    assert group_value([False] * 4, best_of=2, groups=2) == 0.0
    with pytest.raises(ValueError, match="2 groups of 2"):
        group_value([True], best_of=2, groups=2)


def test_first_pit_takes_the_earliest_minimum():
    assert first_pit([0.9, 0.5, 0.0, 0.5, 0.0]) == 2
    assert first_pit([1.0, 1.0, 0.5, 0.5, 0.0]) == 4  # minimum only at the end
    assert first_pit([0.5, 0.5, 0.5, 0.5]) == 1  # tie over all steps -> first
    assert first_pit([0.0, 0.0, None, None, 0.0]) == 1
    assert step_advantages([0.5, 1.0, 0.0, None, 0.0]) == [0.5, -1.0, None, None]


def test_values_advantages_and_pit_on_a_hand_made_case():
    # K = 2, R = 2 (4 continuations per prefix). Problem 0; negative steps "a\n", "b\n", "c".
    tables = {
        "P": [True, False, False, False],  # Q_0 = 0.5 (group 1 hits, group 2 misses)
        "Pa\n": [True, True, False, True],  # Q_1 = 1.0
        "Pa\nb\n": [False, False, False, False],  # Q_2 = 0.0 -> first pit
    }
    sampler = TableSampler(tables)
    results, stats = estimate_step_values(
        sampler, ["P"], [(0, ["a\n", "b\n", "c"])], _correct, best_of=2, groups=2
    )
    (result,) = results
    assert result.values == [0.5, 1.0, 0.0, 0.0]
    assert result.advantages == [0.5, -1.0, 0.0]
    assert result.pit == 2
    assert stats.rollouts == 12 and stats.prefixes_rolled == 3


def test_skip_after_pit_rolls_nothing_past_a_zero_and_matches_the_full_estimate():
    steps = ["s1\n", "s2\n", "s3\n", "s4\n", "s5"]
    tables = {"P": [True, False], "Ps1\n": [False, False]}
    # Later prefixes would recover, but they cannot change the first pit.
    for i in range(2, 5):
        tables["P" + "".join(steps[:i])] = [True, True]
    skipping = TableSampler(tables)
    (skip_result,), skip_stats = estimate_step_values(
        skipping, ["P"], [(0, steps)], _correct, best_of=1, groups=2
    )
    full = TableSampler(tables)
    (full_result,), full_stats = estimate_step_values(
        full, ["P"], [(0, steps)], _correct, best_of=1, groups=2, skip_after_pit=False
    )
    assert skip_result.pit == full_result.pit == 1
    assert skip_result.values == [0.5, 0.0, None, None, None, 0.0]
    assert full_result.values == [0.5, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert skip_stats.prefixes_skipped == 3 and skip_stats.rollouts == 4
    assert full_stats.sampler_calls == 1 and full_stats.rollouts == 10
    assert all(prompt != "Ps1\ns2\n" for call in skipping.calls for prompt in call)


def test_one_call_serves_every_negative_and_shared_prefixes_are_rolled_once():
    tables = {
        "P": [True, True],
        "Pa\n": [True, False],
        "Q": [False, True],
        "Qx\n": [False, False],
        "Qx\ny\n": [True, True],
    }
    negatives = [(0, ["a\n", "b"]), (0, ["a\n", "z"]), (1, ["x\n", "y\n", "w"])]
    sampler = TableSampler(tables)
    results, stats = estimate_step_values(
        sampler, ["P", "Q"], negatives, _correct, best_of=1, groups=2, skip_after_pit=False
    )
    assert sampler.calls == [["P", "Pa\n", "Q", "Qx\n", "Qx\ny\n"]]
    assert stats.prefixes_rolled == 5 and stats.rollouts == 10
    assert [r.pit for r in results] == [2, 2, 1]
    assert results[0].values == [1.0, 0.5, 0.0]
    assert results[2].values[:2] == [0.5, 0.0]


def test_waves_batch_all_open_negatives_per_step():
    tables = {"P": [True, True], "Pa\n": [True, False], "Pb\n": [False, False], "Pa\nc\n": [False, True]}
    negatives = [(0, ["a\n", "c\n", "d"]), (0, ["b\n", "e\n", "f"])]
    sampler = TableSampler(tables)
    results, stats = estimate_step_values(sampler, ["P"], negatives, _correct, best_of=1, groups=2)
    assert sampler.calls == [["P", "Pa\n", "Pb\n"], ["Pa\nc\n"]]
    assert [r.pit for r in results] == [3, 1]
    assert results[0].values == [1.0, 0.5, 0.5, 0.0]
    assert stats.sampler_calls == 2 and stats.prefixes_skipped == 1


def test_requests_sharing_a_prompt_are_adjacent():
    """Wave 1 holds every bare prompt and every first prefix; they go out grouped by problem, each
    prompt right before its prefixes, so vLLM's prefix cache finds the shared blocks together."""
    tables = {"P": [True, True], "Pa\n": [False, False], "Q": [True, True], "Qx\n": [False, False]}
    negatives = [(1, ["x\n", "y"]), (0, ["a\n", "b"])]
    sampler = TableSampler(tables)
    results, _ = estimate_step_values(sampler, ["P", "Q"], negatives, _correct, best_of=1, groups=2)
    assert sampler.calls == [["P", "Pa\n", "Q", "Qx\n"]]
    assert [r.values for r in results] == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_empty_negative_is_rejected():
    with pytest.raises(ValueError, match="has no steps"):
        estimate_step_values(TableSampler({}), ["P"], [(0, [])], _correct)


def test_a_cut_negative_has_its_last_prefix_rolled_out():
    # "a\nb" was cut at max_tokens: not a wrong outcome. Its full text still completes half the time.
    tables = {"P": [True, True], "Pa\n": [True, False], "Pa\nb": [False, True]}
    sampler = TableSampler(tables)
    (cut, finished), stats = estimate_step_values(
        sampler, ["P"], [(0, ["a\n", "b"]), (0, ["a\n", "b"])], _correct,
        outcomes=[None, 0.0], best_of=1, groups=2,
    )  # fmt: skip
    assert cut.values == [1.0, 0.5, 0.5] and cut.pit == 1  # the first minimum, not the cut end
    assert finished.values == [1.0, 0.5, 0.0] and finished.pit == 2
    assert stats.prefixes_rolled == 3  # "Pa\nb" once, for the cut one only
    assert ["P", "Pa\n"] in sampler.calls and ["Pa\nb"] in sampler.calls


def test_right_samples_end_at_one_and_every_step_is_valued_without_the_skip():
    tables = {"P": [True, False], "Pa\n": [False, False], "Pa\nb\n": [True, True]}
    sampler = TableSampler(tables)
    (right,), _ = estimate_step_values(
        sampler, ["P"], [(0, ["a\n", "b\n", "c"])], _correct, outcomes=[1.0], best_of=1, groups=2,
        skip_after_pit=False,
    )  # fmt: skip
    assert right.values == [0.5, 0.0, 1.0, 1.0]
    assert right.advantages == [-0.5, 1.0, 0.0]


def test_outcomes_must_match_the_solutions():
    with pytest.raises(ValueError, match="2 outcomes for 1 solutions"):
        estimate_step_values(TableSampler({}), ["P"], [(0, ["a"])], _correct, outcomes=[0.0, 1.0])
