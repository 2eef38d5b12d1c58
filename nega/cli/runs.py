"""`nega runs [DIR]` lists run folders and where each stands; `nega report RUN` re-renders report.md
from the run's results.json (and, with --card, prints the model card `nega push` would write)."""

from __future__ import annotations

from pathlib import Path

import typer


def _fail(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def report(
    run: Path = typer.Argument(..., help="run directory made by `nega run`"),
    card: bool = typer.Option(False, "--card", help="also print the model card `nega push` would stage"),
):
    """Re-render RUN/report.md from RUN/results.json (nothing is trained or evaluated)."""
    from nega.results import ResultsError, read_results, write_report_file

    try:
        results = read_results(run)
    except ResultsError as exc:
        _fail(str(exc))
    path = write_report_file(run, results)
    if card:
        from nega.hub import HubError, card_preview, redact

        try:
            typer.echo(redact(card_preview(run)), nl=False)
        except HubError as exc:
            _fail(redact(str(exc)))
    typer.echo(f"[nega] report: {path}", err=True)


def runs(directory: Path = typer.Argument(Path("runs"), help="folder holding run folders")):
    """List the run folders under DIR: recipe, method, state (finished, in progress, failed) and the
    headline metric of the run's own arm."""
    from rich.console import Console
    from rich.table import Table

    from nega.results import list_runs

    if not directory.is_dir():
        _fail(f"{directory}: no such folder; give the folder holding run folders (default ./runs)")
    rows = list_runs(directory.parent if (directory / "recipe.yaml").is_file() else directory)
    if (directory / "recipe.yaml").is_file():
        rows = [r for r in rows if r["run"] == directory.name]
    if not rows:
        _fail(f"{directory} holds no run folders (folders with a recipe.yaml that `nega run` made)")
    table = Table(title=f"runs in {directory}")
    for column in ("run", "recipe", "method", "state", "headline"):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = f"{row['state']} ({row['detail']})" if row["detail"] else row["state"]
        table.add_row(row["run"], row["recipe"], row["method"], state, row["headline"])
    Console(width=160).print(table)


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
    app.command("report")(report)
