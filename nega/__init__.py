"""nega: align and distill language models by learning from negatives.

`nega.run(recipe, overrides, output_dir=...)` runs a recipe from Python and returns its arms table;
`nega.load_recipe(recipe, overrides)` validates one (see `nega.api`).
"""

__version__ = "0.1.0"


def run(recipe, overrides=(), *, output_dir=None):
    """Run a recipe end to end (see `nega.api.run`); imported on first use so `import nega` stays light."""
    from nega.api import run as run_recipe

    return run_recipe(recipe, overrides, output_dir=output_dir)


def load_recipe(recipe, overrides=()):
    """A validated recipe from a built-in name or a YAML file (see `nega.api.load_recipe`)."""
    from nega.api import load_recipe as load

    return load(recipe, overrides)
