"""Recipe schema: validation errors, overrides, built-ins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from nega_testing import shared_data

from nega.config import (
    RecipeError,
    RecipeFileError,
    builtin_recipes,
    load_recipe,
    parse_override,
    recipe_class,
)

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
    assert not local.startswith((".", "/")), (
        f"{path.name}: data.path {local} depends on the current directory"
    )
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
        "qcrd-smollm2-svamp-vote",
        "qcrd-svamp",
        "rm-hh-harmless",
        "rm-toy",
        "stepneg-gsm8k",
        "stepneg-smollm2-gsm8k",
        "toy-d2o",
        "toy-qcrd",
        "toy-sft",
        "toy-stepneg",
    ]


# ---------------------------------------------------------------------------------------------------
# Numbers: finite, and counts under a ceiling (nega/bounds.py).


def test_learning_rate_is_finite_and_at_most_one(tmp_path):
    path = write(tmp_path, GOOD)
    assert problems_of(path, ["train.lr=1e400"]) == [
        "train.lr: Input should be a finite number (got '1e400')"
    ]
    assert problems_of(path, ["train.lr=2"]) == ["train.lr: Input should be less than or equal to 1 (got 2)"]
    assert load_recipe(str(path), ["train.lr=1"]).train.lr == 1.0
    problems = problems_of(path, ["train.epochs=1e400", "train.batch_size=100000000000000000000000"])
    assert [p.split(":")[0] for p in problems] == ["train.epochs", "train.batch_size"], problems
    assert "less than or equal to 65536" in problems[1]


def test_ceilings_leave_large_real_settings_alone(tmp_path):
    recipe = load_recipe(
        str(write(tmp_path, GOOD)),
        [
            "train.batch_size=65536",
            "train.epochs=10000",
            "sampling.max_tokens=1000000",
            "data.limit=1000000000",
        ],
    )
    assert (recipe.train.batch_size, recipe.train.epochs) == (65536, 10000)
    assert (recipe.sampling.max_tokens, recipe.data.limit) == (1_000_000, 1_000_000_000)


# ---------------------------------------------------------------------------------------------------
# The recipe file itself: folders, unreadable and missing files, repeated keys.


def test_folder_as_recipe_is_one_line(tmp_path):
    with pytest.raises(RecipeFileError) as info:
        load_recipe(str(tmp_path))
    assert str(info.value) == (
        f"recipe {tmp_path}: is a folder, not a recipe file; give a YAML file or a built-in name (`nega recipes`)"
    )
    (tmp_path / "r.yaml").mkdir()
    with pytest.raises(RecipeFileError, match="is a folder"):
        load_recipe(str(tmp_path / "r.yaml"))


def test_folder_named_like_a_builtin_does_not_hide_it(tmp_path, monkeypatch):
    # e.g. a run folder made with `-o toy-d2o` in the working directory
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy-d2o").mkdir()
    assert load_recipe("toy-d2o").method == "d2o"


def test_unreadable_and_missing_recipe_are_one_line(tmp_path, monkeypatch):
    path = write(tmp_path, GOOD)
    real_read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    # Root (as in CI containers) reads any file whatever its mode, so the denial is simulated.
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(RecipeFileError) as info:
        load_recipe(str(path))
    assert str(info.value) == f"recipe {path}: cannot read it: Permission denied"
    with pytest.raises(RecipeFileError) as info:
        load_recipe(str(tmp_path / "nope.yaml"))
    assert "\n" not in str(info.value) and "file not found" in str(info.value)


def test_repeated_keys_are_errors_with_key_and_lines(tmp_path):
    path = write(
        tmp_path,
        """
        name: demo
        method: d2o
        model: {name: some-org/some-model}
        data: {dataset: some-org/negatives}
        train:
          lr: 1.0e-5
          epochs: 2
          lr: 1.0e-3
        d2o: {alpha: 0.2, alpha: 0.3}
        name: demo
        """,
    )
    # textwrap.dedent keeps the leading blank line: `name` is on line 2.
    assert problems_of(path) == [
        "train.lr: key given twice in one section (line 7 and line 9); YAML would keep the last "
        "silently, so remove one",
        "d2o.alpha: key given twice in one section (line 10 and line 10); YAML would keep the last "
        "silently, so remove one",
        "name: key given twice in one section (line 2 and line 11); YAML would keep the last "
        "silently, so remove one",
    ]


def test_same_key_in_different_sections_or_merged_is_fine(tmp_path):
    path = write(
        tmp_path,
        """
        name: demo
        method: d2o
        model: {name: some-org/some-model, max_length: 512}
        data: {dataset: some-org/negatives, limit: 512}
        sampling: &s {max_tokens: 64}
        eval:
          harm: {<<: *s, max_tokens: 32, limit: 8}
          reasoning: {max_tokens: 32, limit: 8}
        d2o: {alpha: 0.2, beta: 0.2}
        """,
    )
    recipe = load_recipe(str(path))
    assert recipe.eval.harm.max_tokens == 32 and recipe.sampling.max_tokens == 64


# ---------------------------------------------------------------------------------------------------
# Built-in recipes as text.


def description_cut_by_comment(text: str) -> str | None:
    """The comment that ends a recipe's `description:` value early, if one does: YAML ends a plain
    scalar at ` #`, so `graded by the #### answer` unquoted keeps only `graded by the`."""
    import yaml

    root = yaml.compose(text)
    for key, value in root.value:
        if key.value == "description":
            line = text.splitlines()[value.end_mark.line]
            rest = line[value.end_mark.column :].strip()
            return rest if rest.startswith("#") else None
    return None


@pytest.mark.parametrize("path", sorted(builtin_recipes().values()), ids=lambda p: p.stem)
def test_builtin_description_is_whole(path):
    assert description_cut_by_comment(path.read_text()) is None, f"quote the description in {path}"


def test_cut_description_is_detected():
    cut = "name: x\ndescription: graded by the #### answer\nmethod: sft\n"
    assert description_cut_by_comment(cut) == "#### answer"
    assert (
        description_cut_by_comment(
            cut.replace("description: graded by the #### answer", 'description: "graded by the #### answer"')
        )
        is None
    )


def test_the_readme_recipe_is_the_built_in_one_as_shipped():
    """README shows a built-in recipe between markers; it must be that file, byte for byte."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    found = re.findall(r"<!-- nega:recipe (\S+) -->\n```yaml\n(.*?)```\n<!-- /nega:recipe -->", readme, re.S)
    assert found, "README.md shows no built-in recipe between <!-- nega:recipe NAME --> markers"
    for name, text in found:
        assert text == builtin_recipes()[name].read_text(encoding="utf-8"), f"README's {name} differs"


EXAMPLE_RECIPES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLE_RECIPES, ids=lambda p: p.stem)
def test_example_recipe_validates(path, monkeypatch):
    """Every recipe under examples/ validates from the repository root, where its data paths start."""
    monkeypatch.chdir(path.parents[1])
    recipe = load_recipe(str(path))
    assert recipe.name == path.stem and Path(recipe.data.path).is_file()


def test_there_is_an_example_recipe_per_method():
    import yaml

    methods = {yaml.safe_load(p.read_text())["method"] for p in EXAMPLE_RECIPES}
    assert methods >= {"d2o", "stepneg", "qcrd"}
