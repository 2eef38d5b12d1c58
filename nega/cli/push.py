"""`nega push RUN [--repo-id ORG/NAME]`: upload a run's adapter (or merged model) with a model card."""

from __future__ import annotations

from pathlib import Path

import typer


def push(
    run: Path = typer.Argument(..., help="run directory made by `nega run`"),
    repo_id: str | None = typer.Option(
        None,
        "--repo-id",
        help="ORG/NAME of the model repository (default: the recipe's hub.repo_id; "
        "a dry run without either stages as your-name/<run folder>)",
    ),
    merge: bool = typer.Option(
        False, "--merge", help="upload merged full weights instead of the LoRA adapter"
    ),
    private: bool = typer.Option(
        True, "--private/--public", help="visibility when the repository is created"
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="stage the upload folder and list it; upload nothing"
    ),
    adapter: Path | None = typer.Option(
        None,
        "--adapter",
        help="adapter folder to push, e.g. a baseline's (default: the run's own result, see results.json)",
    ),
):
    """Push the run's adapter (or merged weights), tokenizer, recipe, plots and model card to the Hub.

    The token comes from HF_TOKEN or `huggingface-cli login`; nega never writes or prints it.
    A run, repository id or adapter that cannot be pushed exits 2; a failed upload exits 1.
    """
    from nega.hub import HubError, UploadError, redact
    from nega.hub import push as push_run

    try:
        result = push_run(run, repo_id, merge=merge, private=private, dry_run=dry_run, adapter=adapter)
    except UploadError as exc:
        typer.secho(redact(str(exc)), err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    except HubError as exc:
        typer.secho(redact(str(exc)), err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    typer.echo(redact(f"staged: {result['folder']}"))
    for name in result["files"]:
        typer.echo(f"  {name}")
    if dry_run:
        typer.echo(
            f"dry run: nothing uploaded (would push to {result['repo_id']}, "
            f"{'private' if private else 'public'})"
        )
    else:
        typer.echo(redact(f"pushed to {result['url'] or result['repo_id']}"))


def register(app: typer.Typer) -> None:
    app.command("push")(push)
