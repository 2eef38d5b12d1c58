"""Math answer extraction and grading: reference solutions grade correct, wrong answers grade wrong."""

from __future__ import annotations

import json

import pytest
from nega_testing import shared_data

from nega.rewards.math import (
    answers_match,
    extract_answer,
    gsm8k_answer,
    is_correct,
    last_boxed,
    last_number,
    math_reward,
    reference_answer,
    strip_calculator_annotations,
    toy_reasoning_reward,
)


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_extractors_find_the_final_answer():
    assert gsm8k_answer("so 3+4 = 7\n#### 1,200") == "1200"
    assert gsm8k_answer("no marker 12") is None
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{a}{b^{2}}} end") == r"\frac{a}{b^{2}}"
    assert last_boxed(r"unclosed \boxed{3") is None
    assert last_number("we get 3, then -4.5 and finally 1,024 apples") == "1024"
    assert last_number("no digits") is None
    assert extract_answer(r"x is \boxed{5}, 7 later", "auto") == "5"
    assert extract_answer("a 3 b\n#### 9", "auto") == "9"
    assert extract_answer("the answer is 42.", "auto") == "42"
    assert extract_answer("the answer is 42.", "gsm8k") is None
    assert extract_answer("the answer is 42.", "boxed") is None
    with pytest.raises(ValueError, match="unknown answer format"):
        extract_answer("1", "latex")


def test_reference_answer_reduces_solutions_to_their_answer():
    assert reference_answer("He runs 9*60=<<9*60=540>>540 meters\n#### 540") == "540"
    assert reference_answer(r"so it is $\boxed{p - q}$.") == "p - q"
    assert reference_answer(" 18 ") == "18"
    assert strip_calculator_annotations("9*60=<<9*60=540>>540 m") == "9*60=540 m"


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("0.5", r"\frac{1}{2}"),
        (r"\dfrac{1}{2}", r"\frac12"),
        ("18.0", "18"),
        ("1,200", "1200"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        ("p-q", "p - q"),
        (r"90^\circ", "90"),
    ],
)
def test_equivalent_answers_match(prediction, reference):
    assert answers_match(prediction, reference)


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("19", "18"),
        ("0.51", r"\frac{1}{2}"),
        (r"\frac{1}{3}", r"\frac{1}{2}"),
        ("p+q", "p - q"),
        (None, "3"),
        ("3", ""),
    ],
)
def test_different_answers_do_not_match(prediction, reference):
    assert not answers_match(prediction, reference)


def test_math_reward_signature_and_length_check():
    prompts = ["q1", "q2", "q3"]
    completions = ["so #### 5", r"thus \boxed{6}", "it is 8"]
    assert math_reward(prompts, completions, answer=["5", "#### 6", "7"]) == [1.0, 1.0, 0.0]
    assert math_reward(prompts, completions, answer=["5", "6", "8"], answer_format="gsm8k") == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="one per completion"):
        math_reward(prompts, completions, answer=["5"])


def test_toy_reward_calls_the_world_verifier():
    class World:
        def verify(self, prompt, completion):
            return completion.endswith(prompt)

    reward = toy_reasoning_reward(World())
    assert reward(["a", "b"], ["xa", "xa"], answer=[None, None]) == [1.0, 0.0]


def test_gsm8k_reference_solutions_grade_correct_and_perturbed_ones_wrong():
    rows = _rows(shared_data("gsm8k", "test.jsonl"))
    assert len(rows) == 1319
    wrong_graded_right = []
    for row in rows:
        solution = row["answer"]
        assert is_correct(solution, solution, "gsm8k"), row["question"]
        assert is_correct(strip_calculator_annotations(solution), row["answer"], "auto")
        value = int(reference_answer(solution).replace(",", ""))
        wrong = solution.rsplit("####", 1)[0] + f"#### {value + 1}"
        if is_correct(wrong, solution, "gsm8k"):
            wrong_graded_right.append(row["question"])
    assert wrong_graded_right == []


def test_math500_reference_solutions_grade_correct_and_other_answers_wrong():
    rows = _rows(shared_data("math", "math500_test.jsonl"))
    assert len(rows) == 500
    failures = [r["unique_id"] for r in rows if not is_correct(r["solution"], r["answer"], "boxed")]
    assert failures == []
    # Each solution graded against the answer of a problem with a different answer must fail.
    confused = []
    for row, other in zip(rows, rows[1:] + rows[:1], strict=True):
        if reference_answer(other["answer"]).replace(" ", "") == row["answer"].replace(" ", ""):
            continue
        if is_correct(row["solution"], other["answer"], "boxed"):
            confused.append((row["unique_id"], row["answer"], other["answer"]))
    assert len(confused) <= 2, confused


def test_math500_math_verify_alone_agrees_with_reference_answers():
    """The math-verify path by itself (no text shortcut) also accepts every reference solution."""
    from nega.rewards.math import _math_verify_equal

    rows = _rows(shared_data("math", "math500_test.jsonl"))
    failures = [
        r["unique_id"] for r in rows if not _math_verify_equal(last_boxed(r["solution"]), r["answer"])
    ]
    assert failures == []
