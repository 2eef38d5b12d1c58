"""`nega data RECIPE --rows N`: the rows the recipe's method will see, after its format, renames and
chat template, with the token counts of prompt and response. Loads the tokenizer, never the model."""

from __future__ import annotations

import typer


def data(
    recipe: str = typer.Argument(..., help="built-in recipe name or path to a YAML file"),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. data.format=preference"),
    rows: int = typer.Option(3, "--rows", "-n", min=1, max=1000, help="rows to show"),
):
    """Show the first rows as the method reads them (the data is checked first, like `nega validate`)."""
    from nega.cli.inputs import check_recipe_data, fail, load
    from nega.data import DataError
    from nega.data_preview import method_views, preview_tokenizer, render_views

    cfg = load(recipe, overrides)
    check_recipe_data(cfg)
    try:
        views = method_views(cfg, rows)
    except DataError as exc:
        fail(f"data error: {exc}")
    tokenizer, why = preview_tokenizer(cfg)
    if why:
        typer.echo(f"[nega] {why}", err=True)
    for number, view in enumerate(render_views(views, tokenizer), start=1):
        counts = []
        if "prompt_tokens" in view:
            counts.append(f"prompt {view['prompt_tokens']} tokens")
        if "response_tokens" in view:
            counts.append(f"response {view['response_tokens']} tokens")
        typer.secho(f"── row {number} ({cfg.method}) " + " · ".join(counts), bold=True)
        if "text" in view:
            typer.echo("prompt:\n" + view["text"])
        if view["response"] is not None:
            typer.echo("response:\n" + view["response"])
        for key, value in view["notes"].items():
            typer.echo(f"{key}: {value}")
        typer.echo("")


def register(app: typer.Typer) -> None:
    app.command("data")(data)
