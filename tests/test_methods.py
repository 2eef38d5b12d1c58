"""The method table (nega.config.METHODS) and everything derived from it agree: the recipe union, the
method names in error messages, `nega run`'s dispatch, the model card; and a key the recipe's method
never reads fails validation, naming the key and why."""

from __future__ import annotations

import inspect
import textwrap

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from nega.config import (
    METHODS,
    RecipeBase,
    RecipeError,
    builtin_recipes,
    load_recipe,
    recipe_adapter,
    recipe_class,
)

runner = CliRunner()


def test_the_recipe_union_has_one_member_per_method():
    schema = recipe_adapter().json_schema()
    tags = sorted(schema["discriminator"]["mapping"])
    assert tags == sorted(METHODS)
    for name, method in METHODS.items():
        cls = recipe_class(name)
        assert issubclass(cls, RecipeBase) and cls.model_fields["method"].annotation.__args__ == (name,)
        section = method.section_model()
        if section is None:
            assert method.section is None
            assert set(cls.model_fields) == set(RecipeBase.model_fields) | {"method"}
        else:
            # The section is named after the method, and a misspelled key in it is an error.
            assert cls.model_fields[name].annotation is section
            assert issubclass(section, BaseModel) and section.model_config["extra"] == "forbid"


def test_every_method_has_a_builtin_recipe_and_every_recipe_a_method():
    import yaml

    used = {yaml.safe_load(path.read_text())["method"] for path in builtin_recipes().values()}
    assert used == set(METHODS)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_nega_run_dispatches_through_the_table(name):
    from nega.cli import method_entry

    entry = method_entry(name)
    module, function = METHODS[name].run.split(":")
    assert (entry.__module__, entry.__name__) == (module, function)
    assert list(inspect.signature(entry).parameters) == ["recipe", "run"]


def test_an_unknown_method_lists_every_method_of_the_table(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmethod: dpo\nmodel: {name: m}\ndata: {dataset: d}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(path))
    assert caught.value.problems == [f"method: unknown method 'dpo'; choose one of {', '.join(METHODS)}"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_model_card_names_the_table_paper_and_tags(name, tmp_path):
    from nega.hub import CardFacts, model_card

    recipe = {"name": "r", "method": name, "data": {"dataset": "org/data"}}
    facts = CardFacts(repo_id="me/model", arm=name, merge=False, base_model="org/base",
                      base_hub_id="org/base", base_text="org/base")  # fmt: skip
    card = model_card({"result": {"label": name}}, recipe, facts)
    head = card.split("---")[1]
    for tag in ("nega", name, "lora", *METHODS[name].tags):
        assert f"\n- {tag}\n" in head + "\n"
    paper = METHODS[name].paper
    if paper is None:
        assert f"**Method:** `{name}`" in card and "## Citation" not in card
    else:
        assert f"**Method:** [{paper.title}]({paper.url}) ({paper.authors})" in card
        assert f"{paper.authors}, {paper.title}, {paper.url}" in card


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_ignored_key_is_a_key_of_the_schema(name):
    """A misspelled entry in `ignores` would never fire: each must name a real field."""
    for key in METHODS[name].ignores:
        model = recipe_class(name)
        for part in key.split("."):
            assert part in model.model_fields, (name, key)
            annotation = model.model_fields[part].annotation
            candidates = [annotation, *getattr(annotation, "__args__", ())]
            model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


RECIPES = {
    "sft": "name: s\nmethod: sft\nmodel: {name: m}\ndata: {dataset: d}\n",
    "stepneg": "name: s\nmethod: stepneg\nmodel: {name: m}\ndata: {dataset: d}\n",
    "qcrd": "name: s\nmethod: qcrd\nmodel: {name: m}\ndata: {dataset: d}\n",
    "d2o": "name: s\nmethod: d2o\nmodel: {name: m}\ndata: {dataset: d}\n",
}


@pytest.mark.parametrize(
    "method, eval_section, ignored",
    [
        ("qcrd", "{harm: {prompts: advbench}}", ["eval.harm"]),
        ("qcrd", "{reasoning: {data: gsm8k}}", ["eval.reasoning"]),
        ("stepneg", "{harm: {prompts: advbench}}", ["eval.harm"]),
        ("sft", "{harm: {prompts: advbench}}", ["eval.harm"]),
        ("stepneg", "{reasoning: {data: gsm8k, samples: 4}}", ["eval.reasoning.samples"]),
        (
            "sft",
            "{reasoning: {temperature: 0.5, samples: 2}}",
            ["eval.reasoning.samples", "eval.reasoning.temperature"],
        ),
    ],
)
def test_a_key_the_method_ignores_is_an_error_naming_it_and_why(tmp_path, method, eval_section, ignored):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPES[method] + f"eval: {eval_section}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(path))
    keys = [p.split(":", 1)[0] for p in caught.value.problems]
    assert sorted(keys) == sorted(ignored)
    for problem in caught.value.problems:
        assert f"method {method} does not use this key: " in problem and problem.endswith("; remove it")
    # At the command line: exit 2, every ignored key named, nothing else to fix.
    result = runner.invoke(__import__("nega.cli", fromlist=["app"]).app, ["validate", str(path)])
    assert result.exit_code == 2 and all(key in result.output for key in ignored)


def test_ignored_keys_are_reported_with_the_other_problems(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPES["qcrd"] + "train: {lr: 0}\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(path), ["eval.harm.prompts=advbench"])
    assert [p.split(":")[0] for p in caught.value.problems] == ["train.lr", "eval.harm"]


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("qcrd", ["eval.harm=null", "eval.reasoning=null", "eval.before=false"]),  # null asks for none
        ("stepneg", ["eval.reasoning.data=gsm8k", "eval.reasoning.limit=3", "eval.reasoning.max_tokens=9"]),
        ("sft", ["eval.reasoning.data=svamp"]),
        ("d2o", ["eval.harm.prompts=advbench", "eval.reasoning.samples=4", "eval.reasoning.temperature=0.2"]),
    ],
)
def test_keys_the_method_reads_pass(tmp_path, method, overrides):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RECIPES[method]))
    assert load_recipe(str(path), overrides).method == method
