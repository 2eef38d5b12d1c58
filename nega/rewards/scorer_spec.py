"""The grammar of a harm scorer spec (`eval.harm.scorer`, `d2o.filter_scorer`, `--scorer`).

    refusal | toy | classifier:<model>[?option=value&...] | judge:<model>[?option=value&...]
    | rm:<folder>[?option=value&...] | module:function

Only the standard library is imported here: the recipe schema checks a spec at validation without
loading the scorers (`nega.rewards.harm`), which hold models and samplers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qsl

# Built-in scorer name -> the options its `?query` accepts; None: it takes no model and no options.
SCORER_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "refusal": None,
    "toy": None,
    "classifier": ("harmful_label", "threshold", "input", "batch_size", "max_length"),
    "judge": ("max_tokens",),
    "rm": ("batch_size", "max_length"),
}
SCORER_CHOICES = (
    "refusal, toy, classifier:<model>, judge:<model>, rm:<folder> (a reward model nega trained) "
    "or module:function (your own code)"
)
_USER_FUNCTION = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


class ScorerSpecError(ValueError):
    """A harm scorer spec that names no scorer, lacks a model, or has unknown options."""


def parse_scorer_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """'classifier:org/model?harmful_label=LABEL_1' -> ('classifier', 'org/model', {'harmful_label': 'LABEL_1'})."""
    name, _, rest = spec.partition(":")
    model, _, query = rest.rpartition("?") if "?" in rest else (rest, "", "")
    return name.strip(), (model.strip() or None), dict(parse_qsl(query, keep_blank_values=True))


def is_user_function(spec: str) -> bool:
    """A `module:function` spec; the built-in names (`classifier`, `judge`, `rm`) win over a module of that
    name."""
    return parse_scorer_spec(spec)[0] not in SCORER_OPTIONS and _USER_FUNCTION.fullmatch(spec) is not None


def user_function(spec: str) -> Callable:
    """The function a `module:function` spec names, imported; ScorerSpecError when it cannot be."""
    import importlib

    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ScorerSpecError(
            f"harm scorer {spec!r}: cannot import {module_name!r} ({exc}); "
            "make it importable, e.g. run nega with PYTHONPATH set to the folder holding it"
        ) from None
    except Exception as exc:  # the user's module failed while importing: show what it raised
        raise ScorerSpecError(
            f"harm scorer {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    function = getattr(module, function_name, None)
    if function is None:
        raise ScorerSpecError(f"harm scorer {spec!r}: module {module_name!r} has no {function_name!r}")
    if not callable(function):
        raise ScorerSpecError(
            f"harm scorer {spec!r}: {function_name!r} is a {type(function).__name__}, not a function"
        )
    return function


def check_scorer_spec(spec: str) -> str:
    """`spec` when it names a scorer (importing a `module:function` one), else ScorerSpecError.

    For recipe validation: a typo fails before any stage runs, not at the evaluation.
    """
    if is_user_function(spec):
        user_function(spec)
        return spec
    name, model, _ = parse_scorer_spec(spec)
    if name == "rm" and model is not None:
        return _check_reward_model_folder(spec, model)
    if name in SCORER_OPTIONS and (model is not None) == (SCORER_OPTIONS[name] is not None):
        return spec
    raise ScorerSpecError(f"unknown harm scorer {spec!r}; choose {SCORER_CHOICES}")


def _check_reward_model_folder(spec: str, folder: str) -> str:
    """An `rm:<folder>` spec whose folder exists (what is inside is read when the scorer opens it)."""
    import os
    from pathlib import Path

    path = Path(os.path.expanduser(os.path.expandvars(folder)))
    if not path.is_dir():
        raise ScorerSpecError(
            f"harm scorer {spec!r}: no folder {str(path)!r} (relative paths start at {os.getcwd()}); give the "
            "folder a `method: rm` run trained (its rm-train stage's adapter/) or that run's folder"
        )
    return spec
