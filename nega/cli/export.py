"""`nega export RUN --to DIR | --hub ORG/NAME [--what KIND]`: what a run learned, as TRL datasets."""

from __future__ import annotations

from pathlib import Path

import typer


def export(
    run: Path = typer.Argument(..., help="run folder made by `nega run`"),
    to: Path | None = typer.Option(None, "--to", help="folder to write, one `save_to_disk` folder per kind"),
    hub: str | None = typer.Option(
        None, "--hub", help="ORG/NAME of a Hub dataset; each kind is a configuration"
    ),
    what: list[str] | None = typer.Option(
        None,
        "--what",
        help="steps or pairs (per-step RL), self-samples (D²O); repeat for several (default: all of the run's)",
    ),
    private: bool = typer.Option(
        True, "--private/--public", help="visibility when the Hub repository is created"
    ),
):
    """Export a run's rollout step labels and per-step DPO pairs (per-step RL), or its self-samples with
    the negatives (D²O), as TRL datasets: stepwise supervision, preference, unpaired preference.

    A folder that is no run, a run of another method or an unfinished stage exits 2; a failed Hub push
    exits 1.
    """
    from nega.export import KINDS, ExportError, HubPushError, export_run

    try:
        done = export_run(run, to=to, hub=hub, what=what, private=private)
    except HubPushError as exc:
        typer.secho(str(exc), err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    except ExportError as exc:
        typer.secho(str(exc), err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    for kind, info in done.items():
        where = info["path"] if info["path"] is not None else f"{hub} (config {kind})"
        typer.echo(f"{kind}: {info['rows']} rows, TRL {KINDS[kind].trl_type} -> {where}")
    if hub is not None:
        typer.echo(f"pushed to https://huggingface.co/datasets/{hub}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
