"""Teacher rationales sampled from a teacher model: `qcrd.teacher_samples` per question (5 at
temperature 0.7 by default), each with the answer `qcrd.answer_pattern` finds in it."""

from __future__ import annotations

import re
from collections.abc import Callable


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


def sample_teacher_rationales(
    sampler,
    rows: list[dict],
    *,
    answer_of: Callable[[str], str | None],
    n: int = 5,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    template: str = "{question}",
) -> list[dict]:
    """`n` teacher rationales per row (dicts with id, question, label) in the teacher-rationale format."""
    prompts = teacher_prompts([r["question"] for r in rows], template)
    outputs = sampler.generate(
        prompts, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
        description="teacher rationales",
    )  # fmt: skip
    records = []
    for row, group in zip(rows, outputs, strict=True):
        rationales = [
            {"text": c.text.strip(), "answer": answer_of(c.text), "finish_reason": c.finish_reason}
            for c in group
            if c.text.strip()
        ]
        records.append(
            {
                "id": row["id"],
                "question": row["question"],
                "label": row.get("label"),
                "rationales": rationales,
            }
        )
    return records
