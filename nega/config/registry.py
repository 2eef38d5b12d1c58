"""The method table `METHODS`: everything nega knows about a method, in one place. The recipe union, the
method names in error messages, `nega run`'s dispatch and the model card's paper and tags derive from it.

A method's recipe section, run function and warnings are named by dotted path ("module:name") and
imported only when first needed, so nothing below this table imports a method, and no method module
is loaded by `nega --help`.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter, create_model

from nega.config.schema import RecipeBase

# Adding a method: its folder, one entry in METHODS, a recipe under nega/recipes/ and tests (README,
# Development).


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    url: str


@dataclass(frozen=True, eq=False)
class Method:
    """One method of nega.

    `section` names the recipe section called after the method (`d2o:` for d2o), "module:Class" of a
    pydantic model with `extra="forbid"`, or None when the method has none; `section_model()` imports
    it. `run` names the function running a whole recipe, "module:function" (imported only when a run
    starts): `function(recipe, run: nega.pipeline.Run) -> {label: {metric: value}}`. `paper` and `tags`
    go on the model card. `ignores` maps keys of the common sections that this method never reads to
    why: a recipe setting one fails validation, like an unknown key. `recipe_warnings` names a function
    `(recipe) -> [message]` listing settings that are valid but likely not what the user meant;
    `load_recipe` warns each.
    """

    section: str | None
    run: str
    paper: Paper | None = None
    tags: tuple[str, ...] = ()
    ignores: dict[str, str] = field(default_factory=dict)
    recipe_warnings: str | None = None

    def section_model(self) -> type[BaseModel] | None:
        """The method's recipe section, imported from its dotted path."""
        return None if self.section is None else import_object(self.section)

    def warnings_of(self, recipe: Any) -> list[str]:
        """The method's warnings about `recipe` (none when it declares no `recipe_warnings`)."""
        return [] if self.recipe_warnings is None else import_object(self.recipe_warnings)(recipe)


def import_object(dotted: str) -> Any:
    """The object a table entry names, "package.module:name" (Python keeps the module once imported)."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def _greedy_problems(method: str) -> dict[str, str]:
    """What sft and per-step RL ignore: they grade one greedy answer per held-out problem."""
    why = f"{method} grades one greedy answer per held-out problem (the toy world's, else eval.reasoning's)"
    return {
        "eval.harm": f"{why}; it runs no harm evaluation",
        "eval.reasoning.samples": f"{why}; it draws no samples for pass@k or maj@k",
        "eval.reasoning.temperature": f"{why}; it draws no samples for pass@k or maj@k",
    }


_QCRD_EVAL = "qcrd evaluates its students on the data's test split (qcrd.eval_limit questions)"

METHODS: dict[str, Method] = {
    "sft": Method(section=None, run="nega.sft:run", ignores=_greedy_problems("sft")),
    "d2o": Method(
        section="nega.align.d2o.config:D2OConfig",
        run="nega.align.d2o.run:run",
        paper=Paper(
            "D²O: distributional dispreference optimization",
            "Duan et al., 2024",
            "https://arxiv.org/abs/2403.03419",
        ),
        tags=("alignment", "safety"),
    ),
    "stepneg": Method(
        section="nega.align.stepneg.config:StepNegConfig",
        run="nega.align.stepneg.run:run",
        paper=Paper(
            "Per-step negative RL (per-step DPO on self-generated negatives)",
            "Setlur et al., 2024",
            "https://arxiv.org/abs/2406.14532",
        ),
        tags=("reasoning", "dpo"),
        ignores=_greedy_problems("stepneg"),
    ),
    "qcrd": Method(
        section="nega.distill.qcrd.config:QCRDConfig",
        run="nega.distill.qcrd.run:run",
        paper=Paper(
            "QCRD: quality-guided contrastive rationale distillation",
            "Wang et al.",
            "https://arxiv.org/abs/2405.13014",
        ),
        tags=("distillation",),
        ignores={"eval.harm": _QCRD_EVAL, "eval.reasoning": _QCRD_EVAL},
        recipe_warnings="nega.distill.qcrd.config:recipe_warnings",
    ),
    "rm": Method(
        section="nega.rewards.rm.config:RMConfig",
        run="nega.rewards.rm.run:run",
        paper=Paper(
            "Training language models to follow instructions with human feedback (the reward model, §3.5)",
            "Ouyang et al., 2022",
            "https://arxiv.org/abs/2203.02155",
        ),
        tags=("reward-model", "safety"),
        ignores={
            "sampling": "rm generates nothing; it scores the data's answers",
            "eval.harm": "rm is judged by pairwise accuracy on held-out preference pairs (the rm section)",
            "eval.reasoning": "rm is judged by pairwise accuracy on held-out preference pairs (the rm section)",
        },
    ),
}


def recipe_class(method: str) -> type[RecipeBase]:
    """The recipe model of `method`: the common sections, `method: <name>` and the method's section."""
    return _recipe_class(method, METHODS[method])


@functools.cache
def _recipe_class(name: str, method: Method) -> type[RecipeBase]:
    fields: dict[str, Any] = {"method": (Literal[name], ...)}
    section = method.section_model()
    if section is not None:
        fields[name] = (section, Field(default_factory=section))
    return create_model(f"{name}Recipe", __base__=RecipeBase, **fields)


def recipe_adapter() -> TypeAdapter:
    """The recipe union over the method table, discriminated on `method`."""
    return _recipe_adapter(tuple(METHODS.items()))


@functools.cache
def _recipe_adapter(methods: tuple[tuple[str, Method], ...]) -> TypeAdapter:
    classes = tuple(_recipe_class(name, method) for name, method in methods)
    return TypeAdapter(Annotated[Union[classes], Field(discriminator="method")])  # noqa: UP007
