"""QCRD data: teacher rationales, the self-consistency split, and multi-task batches for a causal LM.

The student learns two tasks from one question x, told apart by a prefix in the user turn
(distilling step-by-step's multi-task setup, with a chat prompt instead of T5's encoder input)::

    predict prompt  [{"role": "user", "content": "predict: " + x}]  -> response: the label
    explain prompt  [{"role": "user", "content": "explain: " + x}]  -> response: a rationale

Teacher rationales, one record per input, come from a teacher model (`teacher_record`:
`qcrd.teacher_samples` = 5 at temperature 0.7) or from a file, and have this shape::

    {"id": "cqa-train-0", "question": "...\\nAnswer Choices:\\n(a) ...", "label": "bridge",
     "rationales": [{"text": "The answer must be ...", "answer": "train station"}]}

`split_by_consistency` turns that into a training example: the reference answer is the majority
answer among the rationales (`consistency: majority`) or the gold label (`consistency: gold`, falling
back to the majority when a row has none); rationales that agree go to `positives` (S_pos), the
others to `negatives` (S_neg). Answers are compared by `answer_key`: the value of an arithmetic
expression when both sides are one (SVAMP's "( 84.0 / 2.0 )" equals PaLM's "(84 / 2)"), else
lower-cased text without punctuation and a leading "(c)" choice letter.

The pieces live beside this module: `prompts` (the two tasks), `teacher` (teacher rationales),
`negatives` (the student's own), `formats` (rationale files), `collator` (batches). Their names are
importable from here too, as QCRD's data is known by them.
"""

from __future__ import annotations

from collections import Counter

from nega.distill.qcrd.collator import MultiTaskCollator
from nega.distill.qcrd.formats import (
    CHOICE_LETTERS,
    STEP_BY_STEP_MARKERS,
    answer_text,
    cqa_question,
    load_teacher_records,
    parse_palm_output,
    parse_step_by_step,
    record_from_row,
    step_by_step_name,
)
from nega.distill.qcrd.negatives import (
    merge_sampled,
    negatives_eos,
    self_negative_prompts,
    self_negative_row,
    with_negatives,
)
from nega.distill.qcrd.prompts import EXPLAIN_PREFIX, PREDICT_PREFIX, explain_prompt, predict_prompt
from nega.distill.qcrd.teacher import answer_by_pattern, teacher_prompts, teacher_record
from nega.rewards.math import answer_key

__all__ = [
    "CHOICE_LETTERS",
    "EXPLAIN_PREFIX",
    "PREDICT_PREFIX",
    "STEP_BY_STEP_MARKERS",
    "MultiTaskCollator",
    "answer_by_pattern",
    "answer_text",
    "cqa_question",
    "explain_prompt",
    "load_teacher_records",
    "majority_answer",
    "merge_sampled",
    "negatives_eos",
    "parse_palm_output",
    "parse_step_by_step",
    "predict_prompt",
    "record_from_row",
    "self_negative_prompts",
    "self_negative_row",
    "split_by_consistency",
    "step_by_step_name",
    "teacher_prompts",
    "teacher_record",
    "with_negatives",
]


def majority_answer(answers: list[str | None]) -> str | None:
    """The most frequent answer key (ties: the one seen first); None when no rationale has an answer."""
    keys = [answer_key(a) for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(k for k in keys if k is not None and counts[k] == top)


def split_by_consistency(record: dict, consistency: str = "majority") -> dict:
    """A teacher-rationale record -> training example with `positives` (S_pos) and `negatives` (S_neg)."""
    answers = [r.get("answer") for r in record["rationales"]]
    reference = None
    if consistency == "gold" and record.get("label") is not None:
        reference = answer_key(str(record["label"]))
    if reference is None:
        reference = majority_answer(answers)
    positives, negatives, eos = [], [], []
    for rationale, answer in zip(record["rationales"], answers, strict=True):
        agrees = reference is not None and answer_key(answer) == reference
        if agrees:
            positives.append(rationale["text"])
        else:
            negatives.append(rationale["text"])
            eos.append(rationale.get("finish_reason", "stop") == "stop")
    return {
        "id": record["id"],
        "question": record["question"],
        "label": record.get("label"),
        "positives": positives,
        "negatives": negatives,
        "negatives_eos": eos,
    }
