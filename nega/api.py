"""nega from Python: the same recipes, stages and run folders as `nega run`, called from a script or a
notebook.

    import nega

    table = nega.run("toy-d2o", ["train.lr=3e-4"], output_dir="runs/toy-d2o-lr3")
    print(table["d2o"]["harmful_rate"], table["sft"]["harmful_rate"])

`run` returns the arms table (arm -> metric -> value) that report.md and results.json hold. Running the
same recipe into the same folder again resumes it: finished stages are skipped. Bad recipes raise
`nega.config.RecipeError`, and data the method cannot read `nega.data.DataError`, before anything is
written.
"""

from __future__ import annotations

from pathlib import Path


def load_recipe(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """A validated recipe from a built-in name or a YAML file, with KEY=VALUE overrides."""
    from nega.config import load_recipe as load

    return load(str(recipe), list(overrides))


def run(
    recipe,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    output_dir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Run `recipe` (a built-in name, a YAML path, or a recipe from `load_recipe`) end to end in this
    process, into `output_dir` (default `runs/<name>`); returns the arms table."""
    import importlib

    from nega.config.registry import METHODS
    from nega.pipeline import Run

    cfg = recipe if hasattr(recipe, "method") else load_recipe(recipe, overrides)
    if overrides and cfg is recipe:
        raise ValueError("overrides apply to a recipe name or file; a loaded recipe already has its values")
    from nega.data import DataError, check_data, data_problems_message

    check = check_data(cfg)  # as `nega run`: a wrong column stops the run before any model loads
    if check.problems:
        raise DataError(data_problems_message(check))
    module, function = METHODS[cfg.method].run.split(":")
    entry = getattr(importlib.import_module(module), function)
    with Run(cfg, Path(output_dir) if output_dir is not None else None) as target:
        return entry(cfg, target)
