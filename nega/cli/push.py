"""`nega push RUN --repo-id ORG/NAME`: upload a run's adapter (or merged model) with a model card."""

from __future__ import annotations

from pathlib import Path

import typer


def push(
    run: Path = typer.Argument(..., help="run directory made by `nega run`"),
    repo_id: str = typer.Option(..., "--repo-id", help="ORG/NAME of the model repository"),
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
        None, "--adapter", help="adapter folder to push (default: the run's newest */adapter/ folder)"
    ),
):
    """Push the run's final adapter (or merged weights), tokenizer, recipe and model card to the Hub.

    The token comes from HF_TOKEN or `huggingface-cli login`; nega never writes or prints it.
    """
    from nega.hub import HubError, redact
    from nega.hub import push as push_run

    try:
        result = push_run(run, repo_id, merge=merge, private=private, dry_run=dry_run, adapter=adapter)
    except HubError as exc:
        typer.secho(redact(str(exc)), err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    typer.echo(redact(f"staged: {result['folder']}"))
    for name in result["files"]:
        typer.echo(f"  {name}")
    if dry_run:
        typer.echo(
            f"dry run: nothing uploaded (would push to {repo_id}, {'private' if private else 'public'})"
        )
    else:
        typer.echo(redact(f"pushed to {result['url'] or repo_id}"))


def register(app: typer.Typer) -> None:
    app.command("push")(push)
