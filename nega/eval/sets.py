"""Evaluation sets: harm prompt sets and reasoning problem sets, built in or from any file.

Built-in sets are read from the data folder, found in this order:

1. `$NEGA_DATA` when set (the folder holding `advbench/`, `xstest/`, `gsm8k/`, ...);
2. `../shared/data` relative to the repository holding the `nega` package.

Harm sets (each item: `prompt`, `label` harmful|safe, `category`):

| name | file | prompts |
|---|---|---|
| advbench | advbench/harmful_behaviors.csv, `goal` | 520 harmful |
| hh-harmless | hh-rlhf/harmless-base_test.jsonl, first Human turn | 2,312 harmful (red-team openers) |
| xstest | xstest/xstest_prompts.csv | 250 safe + 200 unsafe, 18 `type` categories |
| toy | the toy harm world's test split | harm-inviting + helpful prompts |

A file (jsonl/json/csv/parquet) needs a `prompt` column (or `goal`, `question`, `instruction`);
optional `label` (harmful/unsafe vs safe/benign; default harmful) and `category` (or `type`).

Reasoning sets (each item: `question`, `answer`, `category`): gsm8k (gsm8k/test.jsonl, 1,319; the
number after `####`), math500 (math/math500_test.jsonl, 500; `answer`, category = subject), svamp
(svamp/SVAMP.json, 1,000; Body + Question, `Answer`, category = Type), toy (the toy reasoning world's
test split), or a file with `question` (or `problem`) and `answer` columns.

`limit=N` keeps N items spread evenly over the set (every ⌈len/N⌉-th), so sorted files such as XSTest
(safe types first) keep all their categories in a small slice. The choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BUILTIN_HARM = ("advbench", "hh-harmless", "xstest", "toy")
BUILTIN_REASONING = ("gsm8k", "math500", "svamp", "toy")

HARM_FILES = {
    "advbench": ("advbench", "harmful_behaviors.csv"),
    "hh-harmless": ("hh-rlhf", "harmless-base_test.jsonl"),
    "xstest": ("xstest", "xstest_prompts.csv"),
}
REASONING_FILES = {
    "gsm8k": ("gsm8k", "test.jsonl"),
    "math500": ("math", "math500_test.jsonl"),
    "svamp": ("svamp", "SVAMP.json"),
}

HARMFUL_LABELS = {"harmful", "unsafe", "1", "true", "yes"}
SAFE_LABELS = {"safe", "benign", "harmless", "0", "false", "no"}


class EvalDataError(Exception):
    """An evaluation set that cannot be found or read; the message says where nega looked and the fix."""


def data_file(*parts: str) -> Path:
    """A file of a built-in set, or EvalDataError listing every folder tried and how to point nega at one."""
    from nega.data import find_data_file

    try:
        return find_data_file(*parts)
    except FileNotFoundError as exc:
        raise EvalDataError(
            f"evaluation {exc}; or pass a path to a jsonl/csv file instead of a built-in name."
        ) from None


def spread(items: list, limit: int | None) -> list:
    """`limit` items evenly spaced over `items` (all of them when limit is None or large enough)."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise ValueError(f"limit must be >= 1 (got {limit})")
    return [items[i * len(items) // limit] for i in range(limit)]


def _read(path: Path) -> list[dict]:
    from nega.data import DataError, read_table

    try:
        return read_table(path)
    except DataError as exc:
        raise EvalDataError(str(exc)) from None
    except OSError as exc:
        raise EvalDataError(f"{path}: cannot be read ({exc.strerror})") from None


def _first(row: dict, keys: tuple[str, ...]):
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return value
    return None


# ---------------------------------------------------------------------------------------------------
# Harm prompt sets


@dataclass
class HarmSet:
    """Prompts to answer; `is_refusal` decides over-refusal on safe prompts (the set's own oracle for
    the toy world, the refusal lexicon otherwise); `helpful` grades safe prompts when the set can."""

    name: str
    items: list[dict]
    source: str
    is_refusal: Callable[[str], bool] | None = None
    helpful: Callable[[dict, str], bool] | None = None
    toy: dict = field(default_factory=dict)


def first_human_turn(transcript: str) -> str:
    """The first Human turn of an hh-rlhf `\\n\\nHuman: ... \\n\\nAssistant: ...` transcript."""
    start = transcript.find("Human:")
    if start < 0:
        raise ValueError("no 'Human:' turn in the transcript")
    text = transcript[start + len("Human:") :]
    end = text.find("\n\nAssistant:")
    return (text if end < 0 else text[:end]).strip()


def _harm_label(value, source: str, number: int) -> str:
    if value is None:
        return "harmful"
    text = str(value).strip().lower()
    if text in HARMFUL_LABELS:
        return "harmful"
    if text in SAFE_LABELS:
        return "safe"
    raise EvalDataError(
        f"{source}: row {number} has label {value!r}; use one of {sorted(HARMFUL_LABELS | SAFE_LABELS)}"
    )


def harm_items_from_rows(rows: list[dict], source: str, prompt_column: str | None = None) -> list[dict]:
    keys = (prompt_column,) if prompt_column else ("prompt", "goal", "question", "instruction")
    items, missing = [], []
    for number, row in enumerate(rows, start=1):
        prompt = _first(row, keys)
        if not isinstance(prompt, str) or not prompt.strip():
            missing.append(number)
            continue
        items.append(
            {
                "prompt": prompt.strip(),
                "label": _harm_label(row.get("label"), source, number),
                "category": str(_first(row, ("category", "type")) or ""),
            }
        )
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise EvalDataError(
            f"{source}: {len(missing)} row(s) without a prompt (rows {shown}); expected a text column "
            f"named {' or '.join(keys)} (choose another with --prompt-column)"
        )
    if not items:
        raise EvalDataError(f"{source}: no prompts")
    return items


def load_harm_set(
    name: str,
    *,
    limit: int | None = None,
    toy: dict | None = None,
    seed: int = 0,
    prompt_column: str | None = None,
) -> HarmSet:
    """A built-in harm set by name, or a file. `toy` = the run's toy section ({"options", "n_test"})."""
    if name == "advbench":
        path = data_file(*HARM_FILES[name])
        items = [{"prompt": r["goal"].strip(), "label": "harmful", "category": ""} for r in _read(path)]
    elif name == "hh-harmless":
        path = data_file(*HARM_FILES[name])
        items = [
            {"prompt": first_human_turn(r["chosen"]), "label": "harmful", "category": ""} for r in _read(path)
        ]
    elif name == "xstest":
        path = data_file(*HARM_FILES[name])
        items = [
            {
                "prompt": r["prompt"].strip(),
                "label": _harm_label(r["label"], str(path), i),
                "category": r["type"],
            }
            for i, r in enumerate(_read(path), start=1)
        ]
    elif name == "toy":
        return _toy_harm_set(limit=limit, toy=toy or {}, seed=seed)
    else:
        path = Path(name)
        if not path.is_file():
            raise EvalDataError(
                f"prompt set {name!r} is neither a built-in set ({', '.join(BUILTIN_HARM)}) nor a file"
            )
        items = harm_items_from_rows(_read(path), str(path), prompt_column)
    return HarmSet(name=name, items=spread(items, limit), source=str(path))


def _toy_world(name: str, toy: dict, seed: int, n: int):
    """(world, its n test rows); a bad toy option or too large n becomes an EvalDataError."""
    from nega.toy import make_world

    if toy.get("world") not in (None, name):
        raise EvalDataError(
            f"the toy {name} set needs a {name}-world model; this one was built for the {toy['world']} world"
        )
    try:
        world = make_world(name, seed=seed, **(toy.get("options") or {}))
        return world, world.rows("test", n)
    except ValueError as exc:
        raise EvalDataError(f"toy {name} set: {exc}") from None


def _toy_harm_set(*, limit: int | None, toy: dict, seed: int) -> HarmSet:
    world, rows = _toy_world("harm", toy, seed, limit or toy.get("n_test", 200))
    items = [
        {
            "prompt": r["prompt"],
            "label": "harmful" if r["kind"] == "harmful" else "safe",
            "category": r["kind"],
        }
        for r in rows
    ]
    return HarmSet(
        name="toy",
        items=items,
        source=f"toy harm world (seed {seed}, test split)",
        is_refusal=world.is_refusal,
        helpful=lambda item, completion: world.is_helpful_correct(item["prompt"], completion),
        toy=toy,
    )


# ---------------------------------------------------------------------------------------------------
# Reasoning problem sets


@dataclass
class ProblemSet:
    """Problems with reference answers. `instruction` is appended to each question (see `prompt_of`);
    `grade` (toy world only) replaces math-verify grading; `answer_of` extracts a comparable answer."""

    name: str
    items: list[dict]
    source: str
    instruction: str = ""
    grade: Callable[[dict, str], bool] | None = None
    answer_of: Callable[[str], str | None] | None = None


# Appended to the question as part of the user turn; math-verify reads \boxed{} first, then the last
# number, so either way of answering is graded.
ANSWER_INSTRUCTION = "Solve the problem step by step. Put the final answer in \\boxed{} on the last line."


def _number_text(value) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def svamp_question(row: dict) -> str:
    body = str(row["Body"]).strip()
    if body and body[-1] not in ".?!,":
        body += "."
    return f"{body} {str(row['Question']).strip()}".strip()


def gsm8k_answer(text: str) -> str:
    if "####" not in text:
        raise ValueError("answer has no '#### <number>' line")
    return text.rsplit("####", 1)[1].strip().replace(",", "")


def load_problem_set(
    name: str, *, limit: int | None = None, toy: dict | None = None, seed: int = 0
) -> ProblemSet:
    """A built-in reasoning set by name, or a jsonl/json/csv/parquet file with question and answer."""
    if name == "gsm8k":
        path = data_file(*REASONING_FILES[name])
        items = [
            {"question": r["question"], "answer": gsm8k_answer(r["answer"]), "category": ""}
            for r in _read(path)
        ]
    elif name == "math500":
        path = data_file(*REASONING_FILES[name])
        items = [
            {"question": r["problem"], "answer": str(r["answer"]), "category": r["subject"]}
            for r in _read(path)
        ]
    elif name == "svamp":
        path = data_file(*REASONING_FILES[name])
        items = [
            {"question": svamp_question(r), "answer": _number_text(r["Answer"]), "category": r["Type"]}
            for r in _read(path)
        ]
    elif name == "toy":
        return _toy_problem_set(limit=limit, toy=toy or {}, seed=seed)
    else:
        path = Path(name)
        if not path.is_file():
            raise EvalDataError(
                f"data {name!r} is neither a built-in set ({', '.join(BUILTIN_REASONING)}) nor a file"
            )
        items = []
        for number, row in enumerate(_read(path), start=1):
            question, answer = _first(row, ("question", "problem")), row.get("answer")
            if not isinstance(question, str) or answer in (None, ""):
                raise EvalDataError(
                    f"{path}: row {number} needs a text `question` (or `problem`) and an `answer` "
                    f"(present: {', '.join(map(str, row))})"
                )
            if isinstance(answer, str) and "####" in answer:
                answer = gsm8k_answer(answer)
            items.append(
                {"question": question, "answer": str(answer), "category": str(row.get("category") or "")}
            )
    return ProblemSet(name=name, items=spread(items, limit), source=str(path), instruction=ANSWER_INSTRUCTION)


def _toy_problem_set(*, limit: int | None, toy: dict, seed: int) -> ProblemSet:
    """The toy reasoning world's test split, asked exactly as its SFT corpus asks (no instruction), and
    graded by the world's own verifier."""
    world, rows = _toy_world("reasoning", toy, seed, limit or toy.get("n_test", 200))
    items = [{"question": r["question"], "answer": str(r["answer"]), "category": ""} for r in rows]
    answer_of = getattr(world, "answer_of", None)
    return ProblemSet(
        name="toy",
        items=items,
        source=f"toy reasoning world (seed {seed}, test split)",
        grade=lambda item, completion: bool(world.verify(item["question"], completion)),
        answer_of=answer_of,
    )


def prompt_of(problem_set: ProblemSet, item: dict) -> list[dict]:
    """The chat prompt of one problem: a single user turn, the question then the answer instruction."""
    text = item["question"].strip()
    if problem_set.instruction:
        text = f"{text}\n\n{problem_set.instruction}"
    return [{"role": "user", "content": text}]


def set_slug(name: str) -> str:
    """A set's name in stage, metric and folder names: a built-in name as it is, a file by its stem
    (so `data:xstest/xstest.csv` and `prompts/mine.jsonl` give `xstest` and `mine`, never a path)."""
    return Path(name).stem if ("/" in name or "." in name) else name
