"""Property tests: any recipe or data file gives either a result or one clear error, never a traceback."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nega.config import RecipeError, load_recipe
from nega.data import DataError, convert_rows, read_table, require_text

SECTIONS = [
    "name",
    "method",
    "model",
    "data",
    "sampling",
    "train",
    "lora",
    "eval",
    "hub",
    "toy",
    "d2o",
    "qcrd",
    "stepneg",
]
KEYS = SECTIONS + ["lr", "n", "alpha", "beta", "path", "dataset", "dtype", "stage", "deepspeed", "bogus", "r"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["d2o", "qcrd", "stepneg", "sft", "toy", "demo", "x/y", "1e-5", "-1"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.dictionaries(st.sampled_from(KEYS), inner, max_size=4) | st.lists(inner, max_size=3),
    max_leaves=12,
)
recipes = st.dictionaries(st.sampled_from(SECTIONS), values, max_size=8)
settings_ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@settings_
@given(recipe=recipes, overrides=st.lists(st.text(max_size=20), max_size=3))
def test_random_recipes_validate_or_raise_one_recipe_error(tmp_path, recipe, overrides):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        load_recipe(str(path), overrides)
    except RecipeError as exc:
        assert str(path) in str(exc) and exc.problems
        assert all(isinstance(p, str) and p for p in exc.problems)


@settings_
@given(blob=st.binary(max_size=200))
def test_random_bytes_as_recipe(tmp_path, blob):
    path = tmp_path / "r.yaml"
    path.write_bytes(blob)
    try:
        load_recipe(str(path))
    except RecipeError as exc:
        assert exc.problems


row_values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=30),
    st.just(""),
    st.just("x" * 300_000),
    st.lists(st.text(max_size=3), max_size=2),
)
rows = st.lists(
    st.dictionaries(st.sampled_from(["prompt", "rejected", "chosen", "other"]), row_values, max_size=4),
    min_size=1,
    max_size=6,
)


def to_pair(row):
    return {"prompt": require_text(row, "prompt"), "rejected": require_text(row, "rejected")}


@settings_
@given(data=rows, skip=st.booleans())
def test_random_rows_convert_or_raise_one_data_error(data, skip):
    try:
        good, bad = convert_rows(data, to_pair, source="rows.jsonl", on_bad_row="skip" if skip else "error")
    except DataError as exc:
        assert "rows.jsonl" in str(exc)
    else:
        assert len(good) + bad == len(data)
        assert all(p["prompt"].strip() and p["rejected"].strip() for p in good)


@settings_
@given(blob=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_random_file_bytes_read_or_raise_one_data_error(tmp_path, blob, suffix):
    path = tmp_path / f"d{suffix}"
    path.write_bytes(blob)
    try:
        read_table(path)
    except DataError as exc:
        assert str(path) in str(exc)


# ---------------------------------------------------------------------------------------------------
# Each method's data loader, from a file of random rows: rows, or one DataError naming the file (and the
# row, when one row is at fault), whatever the rows hold and whether bad rows are skipped or an error.

COLUMNS = [
    "prompt", "rejected", "chosen", "messages", "kind", "question", "problem", "solution", "answer",
    "label", "id", "rationale", "rationales", "teacher_rationales", "is_response_0_safe",
    "is_response_1_safe", "response_0", "response_1", "safer_response_id", "better_response_id",
]  # fmt: skip
texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", " ", "\n\nHuman: hi\n\nAssistant: no", "#### 4", "\\boxed{3}", "the answer is 2"]),
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["user", "assistant", "system", 3]),
                "content": st.one_of(texts, st.none()),
            }
        ),
        texts,
        st.none(),
    ),
    max_size=3,
)
rationales = st.lists(
    st.one_of(
        texts,
        st.none(),
        st.fixed_dictionaries({"text": st.one_of(texts, st.integers())}, optional={"answer": scalars}),
    ),
    max_size=3,
)
cells = st.one_of(
    scalars, texts, messages, rationales, st.dictionaries(st.sampled_from(COLUMNS), scalars, max_size=2)
)
file_rows = st.lists(
    st.one_of(st.dictionaries(st.sampled_from(COLUMNS), cells, max_size=7), scalars),
    min_size=1,
    max_size=5,
)


def data_file(tmp_path, rows, suffix) -> str:
    """`rows` as a jsonl file (objects only: other lines are a read error) or one json list."""
    import json

    path = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if isinstance(r, dict)) or "{}\n")
    else:
        path.write_text(json.dumps(rows))
    return str(path)


def assert_names_file_and_row(exc: DataError, path: str) -> None:
    message = str(exc)
    assert path in message and "row" in message, message


loader_settings = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@loader_settings
@given(
    rows=file_rows,
    suffix=st.sampled_from([".jsonl", ".json"]),
    fmt=st.sampled_from(["auto", "prompt-rejected", "messages", "hh-rlhf", "pku-saferlhf", "toy"]),
    skip=st.booleans(),
)
@example(
    rows=[
        {
            "prompt": "p",
            "is_response_0_safe": False,
            "is_response_1_safe": False,
            "response_0": "a",
            "response_1": "b",
            "safer_response_id": float("inf"),
        }
    ],
    suffix=".jsonl",
    fmt="auto",
    skip=False,
)
@example(rows=[None], suffix=".json", fmt="auto", skip=True)
def test_d2o_loader_on_random_rows(tmp_path, rows, suffix, fmt, skip):
    from nega.align.d2o.data import load_negatives

    path = data_file(tmp_path, rows, suffix)
    mode = "skip" if skip else "error"
    recipe = load_recipe(
        "d2o-hh-harmless", [f"data.path={path}", f"data.format={fmt}", f"data.on_bad_row={mode}"]
    )
    try:
        kept, _, counts = load_negatives(recipe)
    except DataError as exc:
        assert_names_file_and_row(exc, path)
    else:
        assert kept and counts["kept"] == len(kept)
        assert all(isinstance(r["rejected"], str) and r["rejected"].strip() for r in kept)
        assert all(r["prompt"] and r["prompt"][-1]["role"] == "user" for r in kept)


@loader_settings
@given(rows=file_rows, suffix=st.sampled_from([".jsonl", ".json"]), skip=st.booleans())
@example(rows=[{"question": "q", "answer": 4}, None], suffix=".json", skip=True)
def test_stepneg_loader_on_random_rows(tiny_model_dir, tmp_path, rows, suffix, skip):
    from nega.align.stepneg.run import load_problems

    path = data_file(tmp_path, rows, suffix)
    mode = "skip" if skip else "error"
    recipe = load_recipe("stepneg-gsm8k", [f"data.path={path}", f"data.on_bad_row={mode}", "data.limit=null"])
    try:
        problems, prompts, verify = load_problems(recipe, str(tiny_model_dir))
    except DataError as exc:
        assert_names_file_and_row(exc, path)
    else:
        assert problems and len(prompts) == len(problems)
        assert all(isinstance(p["answer"], str) and p["answer"].strip() for p in problems)
        verdicts = [verify(i, "the answer is 0") for i in range(len(problems))]
        assert all(v is True or v is False for v in verdicts), verdicts


@loader_settings
@given(rows=file_rows, suffix=st.sampled_from([".jsonl", ".json"]), skip=st.booleans())
@example(rows=[{"question": "q", "label": 5, "rationale": "r"}], suffix=".jsonl", skip=False)
@example(rows=[{"question": "q", "rationales": [{"text": "t", "answer": [1]}]}], suffix=".jsonl", skip=False)
def test_qcrd_loader_on_random_rows(tmp_path, rows, suffix, skip):
    from nega.distill.qcrd.data import answer_by_pattern, load_teacher_records, split_by_consistency

    path = data_file(tmp_path, rows, suffix)
    mode = "skip" if skip else "error"
    recipe = load_recipe("qcrd-svamp", [f"data.path={path}", f"data.on_bad_row={mode}"])
    try:
        records, _ = load_teacher_records(recipe.data, answer_of=answer_by_pattern(r"answer is (\S+)"))
    except DataError as exc:
        assert_names_file_and_row(exc, path)
    else:
        assert records
        for consistency in ("majority", "gold"):
            examples = [split_by_consistency(r, consistency) for r in records]
            assert all(isinstance(t, str) for e in examples for t in e["positives"] + e["negatives"])


# ---------------------------------------------------------------------------------------------------
# Numbers across the whole schema: every float finite, every integer under a ceiling. Walked from the
# recipe classes, so a field added later without bounds fails here.

TOY_RECIPES = {
    "sft": "toy-sft",
    "d2o": "toy-d2o",
    "stepneg": "toy-stepneg",
    "qcrd": "toy-qcrd",
    "rm": "rm-toy",
}


def numeric_keys(model, prefix: str = "") -> dict[str, type]:
    """Dotted key -> float or int, for every number field reachable from the pydantic `model`."""
    import types
    import typing

    from pydantic import BaseModel

    found = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        kinds = [info.annotation]
        if typing.get_origin(info.annotation) in (typing.Union, types.UnionType):
            kinds = [a for a in typing.get_args(info.annotation) if a is not type(None)]
        for kind in kinds:
            if typing.get_origin(kind) is typing.Annotated:
                kind = typing.get_args(kind)[0]
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found.update(numeric_keys(kind, key + "."))
            elif kind in (int, float):
                found[key] = kind
    return found


def test_every_number_in_the_schema_is_bounded():
    from nega.config import METHODS, recipe_class

    for method in METHODS:
        keys = numeric_keys(recipe_class(method))
        assert {"train.lr", "train.batch_size", "sampling.max_tokens", "seed"} <= set(keys)
        floats = [k for k, kind in keys.items() if kind is float]
        ints = [k for k, kind in keys.items() if kind is int]
        overrides = [f"{k}=.inf" for k in floats] + [f"{k}={10**30}" for k in ints]
        try:
            load_recipe(TOY_RECIPES[method], overrides)
        except RecipeError as exc:
            # A key may also draw "method X does not use this key": keep every problem of each key.
            problems: dict[str, str] = {}
            for p in exc.problems:
                problems[p.split(":")[0]] = problems.get(p.split(":")[0], "") + p + "\n"
        else:
            raise AssertionError(f"{method}: inf and 10**30 everywhere validated")
        for key in floats:
            assert "finite number" in problems.get(key, ""), (method, key, problems.get(key))
        for key in ints:
            assert "less than or equal" in problems.get(key, ""), (method, key, problems.get(key))


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**30), 10**30),
    st.sampled_from(["1e400", "-1e400", ".nan", ".inf", "1e-5", "100000000000000000000000"]),
)


@settings(max_examples=100, deadline=None)
@given(
    method=st.sampled_from(sorted(TOY_RECIPES)),
    picks=st.lists(st.tuples(st.integers(0, 10**6), numbers), min_size=1, max_size=4),
)
def test_random_numbers_validate_finite_or_raise_naming_the_key(method, picks):
    import math

    from nega.bounds import MAX_ROWS, MAX_SEED
    from nega.config import recipe_class

    keys = sorted(numeric_keys(recipe_class(method)))
    chosen = {keys[i % len(keys)]: value for i, value in picks}
    overrides = [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items()]
    try:
        recipe = load_recipe(TOY_RECIPES[method], overrides)
    except RecipeError as exc:
        named = {p.split(":")[0] for p in exc.problems}
        # Every problem is about a key that was set (or a section an override created).
        assert all(any(k.startswith(n) for k in chosen) for n in named), (exc.problems, chosen)
        return
    for key in chosen:
        node = recipe
        for part in key.split("."):
            node = getattr(node, part)
        assert node is None or math.isfinite(node), (key, node)
        if isinstance(node, int):
            assert abs(node) <= max(MAX_ROWS, MAX_SEED), (key, node)
