"""Teacher-rationale files: records from any rows nega loads (`record_from_row`), and distilling
step-by-step's split files with their PaLM outputs (`parse_step_by_step`).

A record, one per input::

    {"id": "cqa-train-0", "question": "...\\nAnswer Choices:\\n(a) ...", "label": "bridge",
     "rationales": [{"text": "The answer must be ...", "answer": "train station"}]}

Distilling step-by-step files (`parse_step_by_step`; `../shared/data/distill_step_by_step/`): a
split file `<name>_<split>.json` (JSON lines) sits beside `llm/<split>_CoT_<k>.json`, each a JSON
list of raw PaLM few-shot continuations; item i of file k belongs to row k·B + i, with B the length
of file 0 (1000 for CQA, 500 for SVAMP). Parsing rule, as upstream's data_utils: keep the text before
the first "Q:" (the next few-shot question), split it at the last "So the answer is" (CQA) or "The
answer is" (SVAMP); the part before is the rationale (the student's `explain:` target, without the
answer sentence), the part after is the teacher's answer (trailing "." and a leading "(c)" choice
letter removed; a bare letter maps to its choice). A continuation without the marker (11 of SVAMP's
800, cut off by PaLM's length limit) keeps its whole text as rationale and has answer None, so it
disagrees with every reference and lands in S_neg. CQA questions are rendered with their choices as
"question\\nAnswer Choices:\\n(a) c1\\n(b) c2 ..."; the CQA label is the answer text, the SVAMP label
its equation. Each file row yields one rationale (PaLM was sampled once), so with `consistency:
majority` S_neg starts empty; the shipped recipes use `consistency: gold`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

STEP_BY_STEP_MARKERS = {"cqa": "So the answer is", "svamp": "The answer is"}
CHOICE_LETTERS = "abcdefghij"


def record_from_row(row: dict, index: int, answer_of: Callable[[str], str | None] | None = None) -> dict:
    """A rationale-file row -> teacher-rationale record.

    Accepted, first match wins: {"question", "label"?, "rationales": [str | {"text", "answer"?}]};
    {"question", "label"?, "teacher_rationales": [...]} (the toy rationale world's rows); or a single
    {"question", "label", "rationale"}, which then agrees with the label. A rationale given as plain
    text gets its answer from `answer_of` (None without it).
    """
    question = row["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("field 'question' must be non-empty text")
    label = row.get("label")
    key = next((k for k in ("rationales", "teacher_rationales") if k in row), None)
    if key is not None:
        items = row[key]
        if not isinstance(items, list):
            raise TypeError(f"field {key!r} must be a list, got {type(items).__name__}")
    else:
        items = [{"text": row["rationale"], "answer": label}]
    rationales = []
    for item in items:
        if isinstance(item, str):
            item = {"text": item, "answer": answer_of(item) if answer_of else None}
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise TypeError("each rationale must be text or an object with a 'text' field")
        rationales.append({"text": item["text"], "answer": answer_text(item.get("answer"))})
    return {
        "id": str(row.get("id", index)),
        "question": question,
        "label": None if label is None else str(label),
        "rationales": rationales,
    }


def answer_text(answer) -> str | None:
    """A rationale's answer as text: numbers (a numeric label column) become their text."""
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        return str(answer)
    if answer is not None and not isinstance(answer, str):
        raise TypeError(f"a rationale's answer must be text or a number, got {type(answer).__name__}")
    return answer


def step_by_step_name(path: str | Path) -> tuple[str, str] | None:
    """(dataset, split) when `path` is `<cqa|svamp>_<split>.json` beside an `llm/` folder, else None."""
    path = Path(path)
    match = re.fullmatch(r"(cqa|svamp)_(train|test)\.json", path.name)
    if match is None or not (path.parent / "llm").is_dir():
        return None
    return match.group(1), match.group(2)


def cqa_question(row: dict) -> str:
    choices = "\n".join(f"({CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(row["choices"]))
    return f"{row['question']}\nAnswer Choices:\n{choices}"


def parse_palm_output(text: str, marker: str, choices: list[str] | None = None) -> dict:
    """One raw PaLM continuation -> {"text": rationale, "answer": answer or None} (rule in the module doc)."""
    own = text.split("Q:")[0]
    if marker not in own:
        return {"text": own.strip(), "answer": None}
    rationale, _, answer = own.rpartition(marker)
    answer = answer.strip().rstrip(".").strip()
    letter = re.match(r"^\(([a-j])\)\s*(.*)$", answer)
    if letter:
        answer = letter.group(2).strip()
        if not answer and choices is not None:
            position = CHOICE_LETTERS.index(letter.group(1))
            answer = choices[position] if position < len(choices) else ""
    return {"text": rationale.strip(), "answer": answer or None}


def parse_step_by_step(path: str | Path, split: str | None = None) -> list[dict]:
    """Teacher-rationale records of a distilling step-by-step split file and its `llm/` outputs.

    `split` (train | test) reads the sibling file of that split instead of `path`'s own.
    """
    path = Path(path)
    found = step_by_step_name(path)
    if found is None:
        raise ValueError(
            f"{path}: not a distilling step-by-step split file (<cqa|svamp>_<split>.json beside llm/)"
        )
    dataset, own_split = found
    split = split or own_split
    path = path.parent / f"{dataset}_{split}.json"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    files = sorted(path.parent.glob(f"llm/{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    outputs: list[str] = []
    for file in files:
        outputs.extend(json.loads(file.read_text(encoding="utf-8")))
    marker = STEP_BY_STEP_MARKERS[dataset]
    records = []
    for index, row in enumerate(rows):
        if dataset == "cqa":
            question, label, choices = cqa_question(row), row["answer"], row["choices"]
        else:
            question, label, choices = row["input"], row["label"], None
        rationales = [parse_palm_output(outputs[index], marker, choices)] if index < len(outputs) else []
        records.append(
            {
                "id": f"{dataset}-{split}-{index}",
                "question": question,
                "label": label,
                "rationales": rationales,
            }
        )
    return records


def load_teacher_records(
    data_cfg, *, toy_cfg=None, seed: int = 0, split: str | None = None, answer_of=None
) -> tuple[list[dict], str]:
    """(teacher-rationale records, source) for a recipe's `data` section.

    A distilling step-by-step split file is parsed with its `llm/` outputs; any other source goes
    through `nega.data.load_rows` and `record_from_row`.
    """
    from nega.data import convert_rows, load_rows

    if data_cfg.path is not None and step_by_step_name(data_cfg.path) is not None:
        records = parse_step_by_step(data_cfg.path, split)
        if data_cfg.limit is not None:
            records = records[: data_cfg.limit]
        return records, f"{data_cfg.path} ({split or 'own split'})"
    rows, source = load_rows(data_cfg, toy_cfg=toy_cfg, seed=seed, split=split)
    indexed = [dict(r, _index=i) for i, r in enumerate(rows)]
    records, _ = convert_rows(
        indexed,
        lambda r: record_from_row(r, r["_index"], answer_of),
        source=source,
        on_bad_row=data_cfg.on_bad_row,
    )
    return records, source
