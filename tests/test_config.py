"""Recipe schema: validation errors, overrides, built-ins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from nega_testing import shared_data

from nega.config import RecipeError, builtin_recipes, load_recipe, parse_override, recipe_class

GOOD = textwrap.dedent(
    """
    name: demo
    method: d2o
    model: {name: some-org/some-model}
    data: {dataset: some-org/negatives}
    d2o: {alpha: 0.2, beta: 0.1}
    """
)


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(str(path), overrides)
    assert str(path) in str(info.value)
    return info.value.problems


def test_good_recipe_fills_defaults(tmp_path):
    recipe = load_recipe(str(write(tmp_path, GOOD)))
    assert isinstance(recipe, recipe_class("d2o")) and recipe.method == "d2o"
    assert recipe.d2o.alpha == 0.2 and recipe.d2o.beta == 0.1
    assert recipe.d2o.rounds == 1 and recipe.d2o.refresh_reference is False
    assert recipe.model.trust_remote_code is False
    assert recipe.sampling.backend == "auto" and recipe.lora.enabled


def test_overrides_are_typed_and_nested(tmp_path):
    recipe = load_recipe(
        str(write(tmp_path, GOOD)),
        ["train.lr=1e-5", "sampling.n=3", "lora.target_modules=[q_proj, v_proj]", "train.deepspeed.stage=3"],
    )
    assert recipe.train.lr == pytest.approx(1e-5)
    assert recipe.sampling.n == 3
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.train.deepspeed.stage == 3


def test_parse_override_rejects_malformed():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_override("train.lr")
    with pytest.raises(ValueError):
        parse_override("=3")
    assert parse_override("eval.harm=null") == (["eval", "harm"], None)


def test_every_problem_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        """
        name: demo
        method: d2o
        model: {name: m, colour: red}
        data: {path: does/not/exist.jsonl}
        train: {lr: -1, batch_size: 0}
        d2o: {alpah: 0.1}
        """,
    )
    problems = problems_of(path)
    text = "\n".join(problems)
    assert len(problems) == 5, problems
    assert "model.colour: unknown key" in text
    assert "d2o.alpah: unknown key; allowed here: alpha" in text
    assert "train.lr: Input should be greater than 0 (got -1)" in text
    assert "train.batch_size" in text
    assert "data.path: file not found" in text and "does/not/exist.jsonl" in text


def test_unknown_and_missing_method(tmp_path):
    assert (
        "unknown method 'dpo'" in problems_of(write(tmp_path, GOOD.replace("method: d2o", "method: dpo")))[0]
    )
    assert "method: required" in problems_of(write(tmp_path, GOOD.replace("method: d2o", "")))[0]


def test_method_section_of_another_method_is_unknown(tmp_path):
    path = write(tmp_path, GOOD + "qcrd: {delta: 2}\n")
    assert problems_of(path) == [
        "qcrd: unknown key; allowed here: " + ", ".join(sorted(recipe_class("d2o").model_fields))
    ]


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "name: demo\nmethod: [d2o\n")
    (problem,) = problems_of(path)
    assert problem.startswith("YAML syntax error: line")


def test_not_a_mapping_and_not_utf8(tmp_path):
    assert "top level must be a mapping" in problems_of(write(tmp_path, "- a\n- b\n"))[0]
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    assert "not UTF-8" in problems_of(bad)[0]


def test_bad_override_reported_with_schema_problems(tmp_path):
    problems = problems_of(write(tmp_path, GOOD), ["train.lr", "d2o.beta=-2"])
    assert any("KEY=VALUE" in p for p in problems)
    assert any(p.startswith("d2o.beta") for p in problems)


def test_missing_recipe_lists_builtins():
    with pytest.raises(RecipeError, match="no built-in recipe of that name"):
        load_recipe("no-such-recipe")


def test_toy_model_needs_toy_section(tmp_path):
    path = write(tmp_path, "name: t\nmethod: sft\nmodel: {name: toy}\ndata: {dataset: toy}\n")
    assert "no `toy:` section" in problems_of(path)[0]


def test_data_path_expands_environment(tmp_path, monkeypatch):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "p", "rejected": "r"}\n')
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    recipe = load_recipe(str(write(tmp_path, GOOD)), ["data.path=$MY_DATA/rows.jsonl"])
    assert recipe.data.path == str(tmp_path / "rows.jsonl")


def test_run_name_must_be_a_folder_name(tmp_path):
    assert problems_of(write(tmp_path, GOOD.replace("name: demo", "name: ../escape")))[0].startswith("name:")


@pytest.mark.parametrize("path", sorted(builtin_recipes().values()), ids=lambda p: p.stem)
def test_builtin_recipe_validates(path, tmp_path, monkeypatch):
    """Every YAML under nega/recipes/ (found by rglob) validates as shipped."""
    import yaml

    local = (yaml.safe_load(path.read_text()).get("data") or {}).get("path") or ""
    if local.startswith("data:"):
        # A file of nega's data folder: read from the shared data the tests use (a skip in a clone without it).
        shared_data(*Path(local.removeprefix("data:")).parts)
        monkeypatch.setenv("NEGA_DATA", str(shared_data()))
    # No recipe reads a path relative to where it is started.
    assert not local.startswith((".", "/")), f"{path.name}: data.path {local} depends on the current directory"
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(str(path))
    assert recipe.name
    assert path.stem == recipe.name or recipe.name.startswith(path.stem)


def test_builtins_found():
    # The recipe test above is parametrized from builtin_recipes(): this list is what it must cover.
    assert sorted(builtin_recipes()) == [
        "d2o-hh-harmless",
        "d2o-saferlhf",
        "d2o-smollm2-harmless",
        "qcrd-cqa",
        "qcrd-smollm2-svamp",
        "qcrd-svamp",
        "stepneg-gsm8k",
        "stepneg-smollm2-gsm8k",
        "toy-d2o",
        "toy-qcrd",
        "toy-sft",
        "toy-stepneg",
    ]
