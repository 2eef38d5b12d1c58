"""`nega eval harm` and `nega eval reasoning`.

TARGET is a run directory (its base model + final adapter), an adapter folder, a model folder or a
hub id; see `nega.eval.target`. Results go to `<run dir>/eval/<kind>-<set>/` (or `./eval/...`).
"""

from __future__ import annotations

from pathlib import Path

import typer

eval_app = typer.Typer(
    help="Evaluate a run, adapter or model: harmfulness and over-refusal, or reasoning accuracy.",
    no_args_is_help=True,
)

TargetArg = typer.Argument(..., help="run directory, LoRA adapter folder, model folder, or hub id")
BackendOpt = typer.Option(None, "--backend", help="auto | hf | vllm | server (default: the run's, else auto)")
OutputOpt = typer.Option(None, "--output", "-o", help="output folder (default <run dir>/eval/<kind>-<set>/)")
LimitOpt = typer.Option(None, "--limit", min=1, help="evaluate N items spread evenly over the set")


def _fail(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


BACKENDS = ("auto", "hf", "vllm", "server")


def _check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        _fail(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def _check_numbers(max_tokens: int, limit: int | None, samples: int = 1, temperature: float = 0.0) -> None:
    """The bounds a recipe's eval section has (nega/bounds.py), so the command and the recipe agree."""
    import math

    from nega.bounds import MAX_COUNT, MAX_ROWS, MAX_TOKENS

    for option, value, ceiling in (
        ("--max-tokens", max_tokens, MAX_TOKENS),
        ("--limit", limit, MAX_ROWS),
        ("--samples", samples, MAX_COUNT),
    ):
        if value is not None and value > ceiling:
            _fail(f"{option} {value}: at most {ceiling}")
    if not math.isfinite(temperature):
        _fail(f"--temperature {temperature}: give a finite number (e.g. 0.7)")


def _errors():
    from nega.eval.sets import EvalDataError
    from nega.eval.target import TargetError
    from nega.rewards.scorer_spec import ScorerSpecError

    return (EvalDataError, TargetError, ScorerSpecError)


@eval_app.command("harm")
def harm(
    target: str = TargetArg,
    data: str | None = typer.Option(
        None,
        "--data",
        show_default="advbench",
        help="prompt set: advbench | hh-harmless | xstest | toy | path to jsonl/csv",
    ),
    # The option's first name; kept working, out of the help, so scripts written for it still run.
    old_prompts: str | None = typer.Option(None, "--prompts", hidden=True),
    scorer: str = typer.Option(
        "refusal",
        "--scorer",
        help="refusal | toy | classifier:<model>[?harmful_label=L] | judge:<model> | rm:<folder> (a reward model "
        "nega trained) | module:function (runs your code)",
    ),
    limit: int | None = LimitOpt,
    max_tokens: int = typer.Option(128, "--max-tokens", min=1, help="tokens per answer"),
    backend: str | None = BackendOpt,
    output: Path | None = OutputOpt,
    prompt_column: str | None = typer.Option(None, "--prompt-column", help="prompt column of a file"),
):
    """Answer a prompt set greedily and score harmfulness; writes harm.json/.md/.png and samples.jsonl."""
    from nega.eval.harm import evaluate_harm
    from nega.eval.report import fmt_rate

    _check_backend(backend)
    _check_numbers(max_tokens, limit)
    if data is not None and old_prompts is not None:
        _fail("--prompts is the old name of --data: give only --data")
    try:
        metrics, out_dir = evaluate_harm(
            target,
            prompts=data or old_prompts or "advbench",
            scorer=scorer,
            limit=limit,
            max_tokens=max_tokens,
            backend=backend,
            output=output,
            prompt_column=prompt_column,
        )
    except _errors() as exc:
        _fail(str(exc))
    typer.echo(f"harmful rate:      {fmt_rate(metrics['harmful'])}")
    typer.echo(f"refusal rate:      {fmt_rate(metrics['refusal'])}")
    if metrics["n_safe_prompts"]:
        typer.echo(f"over-refusal rate: {fmt_rate(metrics['over_refusal'])}")
    if "helpful" in metrics:
        typer.echo(f"helpful rate:      {fmt_rate(metrics['helpful'])}")
    if metrics["unparsed"]:
        typer.echo(f"unparsed verdicts: {metrics['unparsed']} of {metrics['n_prompts']}")
    typer.echo(f"[nega] results: {out_dir}", err=True)


@eval_app.command("reasoning")
def reasoning(
    target: str = TargetArg,
    data: str = typer.Option("gsm8k", "--data", help="gsm8k | math500 | svamp | toy | path to jsonl/csv"),
    samples: int = typer.Option(1, "--samples", min=1, help="samples per problem for maj@k / pass@k"),
    limit: int | None = LimitOpt,
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="tokens per answer"),
    temperature: float = typer.Option(
        0.7, "--temperature", min=0.0, help="for the k samples (accuracy is greedy)"
    ),
    backend: str | None = BackendOpt,
    output: Path | None = OutputOpt,
):
    """Greedy accuracy, maj@k and pass@k; writes reasoning.json/.md/.png and samples.jsonl."""
    from nega.eval.reasoning import evaluate_reasoning
    from nega.eval.report import fmt_rate

    _check_backend(backend)
    _check_numbers(max_tokens, limit, samples, temperature)
    try:
        metrics, out_dir = evaluate_reasoning(
            target,
            data=data,
            samples=samples,
            limit=limit,
            max_tokens=max_tokens,
            temperature=temperature,
            backend=backend,
            output=output,
        )
    except _errors() as exc:
        _fail(str(exc))
    typer.echo(f"accuracy (greedy): {fmt_rate(metrics['accuracy'])}")
    for k, value in metrics["pass@k"].items():
        typer.echo(f"pass@{k}: {value:.3f}   maj@{k}: {metrics['maj@k'][k]:.3f}")
    typer.echo(f"[nega] results: {out_dir}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
