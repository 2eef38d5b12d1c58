"""Teacher rationales sampled from a teacher model: `qcrd.teacher_samples` per question (5 at
temperature 0.7 by default), each with the answer `qcrd.answer_pattern` finds in it."""

from __future__ import annotations

import re
from collections.abc import Callable

from nega.sampling.base import Completion


def teacher_prompts(questions: list[str], template: str) -> list[list[dict]]:
    return [[{"role": "user", "content": template.format(question=q)}] for q in questions]


def answer_by_pattern(pattern: str) -> Callable[[str], str | None]:
    """An answer extractor: the first group of the last match of `pattern` in a rationale."""
    compiled = re.compile(pattern)

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        return (matches[-1].group(1) if compiled.groups else matches[-1].group(0)).strip()

    return extract


def teacher_record(row: dict, completions: list[Completion], answer_of: Callable[[str], str | None]) -> dict:
    """A row (id, question, label) and its teacher's completions as a teacher-rationale record; blank
    completions are dropped."""
    rationales = [
        {"text": c.text.strip(), "answer": answer_of(c.text), "finish_reason": c.finish_reason}
        for c in completions
        if c.text.strip()
    ]
    return {"id": row["id"], "question": row["question"], "label": row.get("label"), "rationales": rationales}
