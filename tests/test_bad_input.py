"""Property tests: any recipe or data file gives either a result or one clear error, never a traceback."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
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
