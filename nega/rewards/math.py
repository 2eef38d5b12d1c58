"""Math answers: extraction from a solution and grading against a reference, with math-verify.

Three answer formats, and `auto` that tries them in order:

- `gsm8k`: the text after the last `####` (GSM8K's reference solutions end with `#### 18`);
- `boxed`: the content of the last `\\boxed{...}` (MATH and MATH-500 solutions);
- `number`: the last number in the text (commas between digit groups allowed: 1,200).

A predicted answer matches a reference when their normalised texts are equal, when both are plain
numbers with the same value, or when math-verify finds them equivalent (`\\frac12` = 0.5, `(3, \\pi/2)`
up to spacing, `x=5` = 5). The toy reasoning world has its own exact verifier; `toy_reasoning_reward`
hooks it into the same reward signature.

Every reward function shares one signature, `(prompts, completions, **columns) -> list[float]`, with
one column value per completion (a column named `answer` for the graders here).
"""

from __future__ import annotations

import ast
import operator
import re
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Literal

AnswerFormat = Literal["auto", "gsm8k", "boxed", "number"]
RewardFn = Callable[..., list[float]]

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None when absent or unclosed."""
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:pos].strip()
    return None


def gsm8k_answer(text: str) -> str | None:
    """The answer after the last `####` (first line only), without thousands commas; None when absent."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0].strip()
    tail = tail.removeprefix("$").rstrip(".").strip()
    if _NUMBER.fullmatch(tail):
        tail = tail.replace(",", "")
    return tail or None


def last_number(text: str) -> str | None:
    """The last number in `text` ('1,200' -> '1200', '-3.5' stays), or None."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def extract_answer(text: str, answer_format: AnswerFormat = "auto") -> str | None:
    """The final answer written in a solution, or None when the format's marker is missing.

    `auto` takes `####` if present, else the last `\\boxed{}`, else the last number.
    """
    if answer_format == "gsm8k":
        return gsm8k_answer(text)
    if answer_format == "boxed":
        return last_boxed(text)
    if answer_format == "number":
        return last_number(text)
    if answer_format != "auto":
        raise ValueError(f"unknown answer format {answer_format!r}; choose auto, gsm8k, boxed or number")
    for extract in (gsm8k_answer, last_boxed, last_number):
        found = extract(text)
        if found is not None:
            return found
    return None


def reference_answer(value) -> str:
    """The reference answer of a dataset row's answer column.

    GSM8K stores a whole solution ending in `#### n`, MATH a solution with `\\boxed{}`, MATH-500 and
    most files the bare answer; the first two are reduced to their final answer.
    """
    text = str(value).strip()
    if "####" in text:
        return gsm8k_answer(text) or text
    if _BOXED.search(text):
        return last_boxed(text) or text
    return text


def strip_calculator_annotations(text: str) -> str:
    """GSM8K's `<<48/2=24>>` calculator markup removed ('48/2 = <<48/2=24>>24' -> '48/2 = 24')."""
    return _CALC_ANNOTATION.sub("", text)


def _normalise(answer: str) -> str:
    """Spacing and purely typographic LaTeX removed; never changes a value."""
    text = answer.strip().strip("$").strip()
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle"):
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\s+", "", text).rstrip(".")
    return text


def _as_fraction(answer: str) -> Fraction | None:
    text = answer.replace(",", "") if _NUMBER.fullmatch(answer) else answer
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _math_verify_equal(prediction: str, reference: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works on the main thread.
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"${reference}$", parsing_timeout=limit)
    pred = parse(f"${prediction}$", parsing_timeout=limit)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=limit))


def answers_match(prediction: str | None, reference: str) -> bool:
    """Whether an extracted answer equals the reference answer (text, number, or math-verify)."""
    if prediction is None or not str(reference).strip():
        return False
    pred, ref = _normalise(prediction), _normalise(str(reference))
    if pred == ref:
        return True
    pred_value, ref_value = _as_fraction(pred), _as_fraction(ref)
    if pred_value is not None and ref_value is not None:
        return pred_value == ref_value
    return _math_verify_equal(pred, ref)


def is_correct(completion: str, reference, answer_format: AnswerFormat = "auto") -> bool:
    """Whether `completion`'s final answer matches the reference (a bare answer or a full solution)."""
    return answers_match(extract_answer(completion, answer_format), reference_answer(reference))


def math_reward(
    prompts: Sequence,
    completions: Sequence[str],
    *,
    answer: Sequence,
    answer_format: AnswerFormat = "auto",
    **_,
) -> list[float]:
    """1.0 per completion whose final answer matches its row's `answer` column, else 0.0."""
    if len(answer) != len(completions):
        raise ValueError(
            f"math_reward: {len(completions)} completions but {len(answer)} answers; pass one per completion"
        )
    return [float(is_correct(c, a, answer_format)) for c, a in zip(completions, answer, strict=True)]


def gsm8k_reward(
    prompts: Sequence, completions: Sequence[str], *, answer: Sequence, **columns
) -> list[float]:
    """`math_reward` reading the answer after `####` only (a completion without it scores 0)."""
    return math_reward(prompts, completions, answer=answer, answer_format="gsm8k")


def boxed_reward(
    prompts: Sequence, completions: Sequence[str], *, answer: Sequence, **columns
) -> list[float]:
    """`math_reward` reading the last `\\boxed{}` only (a completion without one scores 0)."""
    return math_reward(prompts, completions, answer=answer, answer_format="boxed")


def toy_reasoning_reward(world) -> RewardFn:
    """The toy reasoning world's exact verifier as a reward function.

    `world.verify(prompt, completion)` recomputes the answer from the question in the prompt, so no
    column is needed; columns are accepted and ignored to keep the shared signature.
    """

    def reward(prompts: Sequence, completions: Sequence[str], **columns) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(
                f"toy reasoning reward: {len(prompts)} prompts but {len(completions)} completions"
            )
        return [float(world.verify(p, c)) for p, c in zip(prompts, completions, strict=True)]

    return reward


# ---------------------------------------------------------------- short answers: numbers and labels
# A rationale's answer to a word problem (SVAMP's "3 + 5") or a multiple-choice question (CQA's
# "(b) bank"), compared through one key; a plain expression is evaluated, never executed.

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic_value(text: str) -> float | None:
    """The value of a plain arithmetic expression (numbers, + - * /, parentheses), else None."""
    cleaned = text.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    if not cleaned or len(cleaned) > 200 or not re.fullmatch(r"[\d\s.+\-*/()]+", cleaned):
        return None
    try:
        tree = ast.parse(cleaned, mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not arithmetic")

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def answer_key(answer: str | None) -> str | None:
    """A canonical form for comparing short answers: an arithmetic expression's value rounded to 4
    places, or the text lower-cased without a choice letter `(a)` or punctuation; None stays None."""
    if answer is None:
        return None
    number = arithmetic_value(answer)
    if number is not None:
        return f"{round(number, 4):g}"
    text = re.sub(r"^\s*\([a-j]\)\s*", "", answer.strip().lower())
    text = re.sub(r"[^\w\s]", " ", text)
    text = " ".join(text.split())
    return text or None


def label_matches(predicted: str | None, label: str | None) -> bool:
    """Whether a short answer (a number, an arithmetic expression, a choice's text) equals the label,
    by `answer_key`; QCRD's students are graded this way on their data's test split."""
    key = answer_key(predicted)
    return key is not None and key == answer_key(label)
