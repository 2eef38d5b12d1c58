"""What every command does with the user's input: load the recipe (every problem at once), check its
data, and stop on bad input with one message and exit code 2, never a traceback. The commands' modules
import these from here, below `nega.cli`, which registers them.
"""

from __future__ import annotations

import typer


def fail(message: str, code: int = 2) -> None:
    from nega.console import end_progress_lines

    end_progress_lines()  # the message starts a line of its own, not the end of a bar's
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def load(recipe: str, overrides: list[str] | None):
    from nega.config import RecipeError, load_recipe

    try:
        return load_recipe(recipe, overrides or [])
    except RecipeError as exc:
        fail(str(exc))


def check_recipe_data(cfg) -> None:
    """Stop with exit 2 when the recipe's data cannot be read as its method needs (no model loads)."""
    from nega.data import check_data, data_problems_message

    check = check_data(cfg)
    for note in check.notes:
        typer.echo(f"[nega] {note}", err=True)
    if check.problems:
        fail(data_problems_message(check))
