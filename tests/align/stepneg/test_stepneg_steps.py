"""Step segmentation: round-trip, default line split, custom regex, bad regex."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nega.align.stepneg.steps import prefixes, split_steps


def test_default_split_is_non_empty_lines():
    text = "7 + 5 = 12\n\n12 * 2 = 24\n   \nanswer: 24"
    assert split_steps(text) == ["7 + 5 = 12\n\n", "12 * 2 = 24\n   \n", "answer: 24"]


def test_leading_blank_lines_stay_with_the_first_step():
    assert split_steps("\n\n a\nb\n") == ["\n\n a\n", "b\n"]
    assert split_steps("") == []
    assert split_steps("  \n ") == ["  \n "]


def test_custom_regex_splits_sentences():
    text = "First add. Then multiply! Done"
    assert split_steps(text, r"[^.!?]+[.!?]?\s*") == ["First add. ", "Then multiply! ", "Done"]


def test_bad_regex_names_the_field():
    with pytest.raises(ValueError, match="stepneg.step_regex"):
        split_steps("a", "(")
    with pytest.raises(ValueError, match="empty string"):
        split_steps("a", r"\d*")


def test_prefixes_start_with_the_bare_prompt():
    assert prefixes(["a\n", "b\n", "c"]) == ["", "a\n", "a\nb\n", "a\nb\nc"]


@given(st.text(alphabet=st.sampled_from(list("ab 1=\n\t.")), max_size=60))
def test_round_trip_restores_the_text(text):
    steps = split_steps(text)
    assert "".join(steps) == text
    assert all(steps)
    assert "".join(split_steps(text, r"[^.]+\.?")) == text
