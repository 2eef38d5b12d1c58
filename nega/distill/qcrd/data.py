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

import ast
import json
import operator
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nega.chat import response_tokens
from nega.sampling.base import Completion

PREDICT_PREFIX = "predict: "
EXPLAIN_PREFIX = "explain: "
STEP_BY_STEP_MARKERS = {"cqa": "So the answer is", "svamp": "The answer is"}
CHOICE_LETTERS = "abcdefghij"


def predict_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": PREDICT_PREFIX + question}]


def explain_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": EXPLAIN_PREFIX + question}]


# ---------------------------------------------------------------- answers


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
    """A canonical form for comparing answers: a rounded number, or normalised text; None stays None."""
    if answer is None:
        return None
    number = arithmetic_value(answer)
    if number is not None:
        return f"{round(number, 4):g}"
    text = re.sub(r"^\s*\([a-j]\)\s*", "", answer.strip().lower())
    text = re.sub(r"[^\w\s]", " ", text)
    text = " ".join(text.split())
    return text or None


def answers_match(predicted: str | None, gold: str | None) -> bool:
    key = answer_key(predicted)
    return key is not None and key == answer_key(gold)


# ---------------------------------------------------------------- self-consistency


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


# ---------------------------------------------------------------- teacher rationales


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


def self_negative_prompts(examples: list[dict]) -> list[list[dict]]:
    """The `explain:` prompt of every example, sampled from the (lagged) student for its negatives."""
    return [explain_prompt(e["question"]) for e in examples]


def self_negative_row(example: dict, completions: list[Completion]) -> dict:
    """One example's self-adversarial sample as stored: {"id", "texts", "token_ids", "finish_reasons"}
    (all empty when the sample is blank).

    Training scores the sampled ids (`nega.chat.response_tokens`), not the text. The reason ("stop" or
    "length") decides whether the rationale is scored with EOS: one cut at max_tokens never ended, and
    teaching the student that it ends there would be a second error.
    """
    kept = [c for c in completions if c.text.strip()]
    return {
        "id": example["id"],
        "texts": [c.text.strip() for c in kept],
        "token_ids": [c.token_ids for c in kept],
        "finish_reasons": [c.finish_reason for c in kept],
    }


def merge_sampled(batches: list[list[dict]]) -> list[dict]:
    """Rows of several negatives stages (`self_negative_row`) as one row per input id: its texts (with their
    token ids and finish reasons) in call order; inputs in order of first appearance."""
    merged: dict[str, dict] = {}
    for rows in batches:
        for row in rows:
            into = merged.setdefault(
                row["id"], {"id": row["id"], "texts": [], "token_ids": [], "finish_reasons": []}
            )
            n = len(row["texts"])
            into["texts"] += row["texts"]
            into["token_ids"] += row.get("token_ids") or [None] * n
            into["finish_reasons"] += row.get("finish_reasons") or ["stop"] * n
    return list(merged.values())


def with_negatives(examples: list[dict], sampled: list[dict]) -> list[dict]:
    """Copies of `examples` whose S_neg also holds the sampled rationales (rows of `sample_self_negatives`),
    with `negatives_eos` saying which negatives ended on their own (a row without finish reasons:
    all of its rationales did)."""
    by_id = {row["id"]: row for row in sampled}
    out = []
    for e in examples:
        row = by_id.get(e["id"], {"texts": []})
        reasons = row.get("finish_reasons") or ["stop"] * len(row["texts"])
        eos = negatives_eos(e) + [reason == "stop" for reason in reasons]
        sampled = [
            {"text": text, "token_ids": ids, "finish_reason": reason}
            for text, ids, reason in zip(
                row["texts"], row.get("token_ids") or [None] * len(row["texts"]), reasons, strict=True
            )
        ]
        sampled_before = e.get("negatives_sampled") or [None] * len(e["negatives"])
        out.append(
            dict(e, negatives=e["negatives"] + row["texts"], negatives_eos=eos,
                 negatives_sampled=sampled_before + sampled)
        )  # fmt: skip
    return out


def negatives_eos(example: dict) -> list[bool]:
    """Per negative of `example`: is it scored with EOS (it ended on its own)? Default: all are."""
    return list(example.get("negatives_eos") or [True] * len(example["negatives"]))


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


# ---------------------------------------------------------------- distilling step-by-step files


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


# ---------------------------------------------------------------- batches


class MultiTaskCollator:
    """Examples -> one padded batch holding every sequence the QCRD loss needs.

    Each example dict has `question`, `label`, `positives` and `negatives` (lists of rationale texts),
    optional `negatives_eos` (per negative: scored with EOS; default all), optional `negatives_sampled`
    (per negative: the sampler's completion, whose ids are scored, or None) and optional `pos_scores` /
    `neg_scores` (discriminator scores, same lengths; default 1 and 0). The
    batch stacks, in order, B label sequences, then the positives and the negatives of every row:

        input_ids, attention_mask, response_mask  [B + ΣP_b + ΣN_b, T]
        pos_index, neg_index                      [B, P] / [B, N] row into the stacked sequences (0 = pad)
        pos_mask, neg_mask                        [B, P] / [B, N] bool
        pos_scores, neg_scores                    [B, P] / [B, N] float

    `rationales=False` (label-only training) stacks only the label sequences.
    """

    def __init__(
        self, tokenizer, *, max_length: int | None = None, rationales: bool = True, negatives: bool = True
    ):
        from nega.chat import stop_ids

        self.tokenizer = tokenizer
        self.max_length = max_length
        self.rationales = rationales
        self.negatives = negatives
        self.end_ids = stop_ids(tokenizer)

    def _encode(
        self, prompt: list[dict], response: str | list[int], eos: bool = True
    ) -> tuple[list[int], int]:
        from nega.logps import encode_pair
        from nega.sampling.base import render_prompt

        return encode_pair(
            self.tokenizer,
            render_prompt(self.tokenizer, prompt),
            response,
            add_eos=eos,
            max_length=self.max_length,
        )

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        from nega.logps import collate_sequences

        encoded = [self._encode(predict_prompt(e["question"]), str(e["label"])) for e in examples]
        groups = {}
        for kind, default in (("pos", 1.0), ("neg", 0.0)):
            texts = "positives" if kind == "pos" else "negatives"
            wanted = self.rationales and (kind == "pos" or self.negatives)
            per_row = [e[texts] if wanted else [] for e in examples]
            width = max([len(t) for t in per_row] + [0])
            index = torch.zeros(len(examples), width, dtype=torch.long)
            mask = torch.zeros(len(examples), width, dtype=torch.bool)
            scores = torch.full((len(examples), width), default)
            for b, (example, items) in enumerate(zip(examples, per_row, strict=True)):
                given = example.get(f"{kind}_scores")
                # A negative cut at max_tokens is scored without EOS (it never ended).
                ends = negatives_eos(example) if kind == "neg" and items else [True] * len(items)
                sampled = example.get("negatives_sampled") if kind == "neg" else None
                for j, text in enumerate(items):
                    index[b, j] = len(encoded)
                    mask[b, j] = True
                    if given is not None:
                        scores[b, j] = float(given[j])
                    # A sampled negative is scored by the ids the student produced, not its stripped text.
                    response = response_tokens(sampled[j], self.end_ids) if sampled and sampled[j] else text
                    encoded.append(self._encode(explain_prompt(example["question"]), response, ends[j]))
            groups[kind] = (index, mask, scores)
        input_ids, attention_mask, response_mask = collate_sequences(encoded, self.tokenizer.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "n_labels": torch.tensor(len(examples)),
            "pos_index": groups["pos"][0],
            "pos_mask": groups["pos"][1],
            "pos_scores": groups["pos"][2],
            "neg_index": groups["neg"][0],
            "neg_mask": groups["neg"][1],
            "neg_scores": groups["neg"][2],
        }
