"""`nega plan RECIPE`: what a run would put where (sampling layout, dtypes, devices, training processes)
and whether it fits in GPU memory, from the recipe and this machine's GPUs or assumed ones."""

from __future__ import annotations

import json

import typer


def plan(
    recipe: str = typer.Argument(
        ..., help="built-in recipe name (see `nega recipes`) or path to a YAML file"
    ),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. model.name=Qwen/Qwen2.5-7B"),
    gpus: int | None = typer.Option(
        None, min=1, help="training processes, as `nega run --gpus` (default: one per GPU)"
    ),
    assume_gpus: str | None = typer.Option(
        None, "--assume-gpus", help="plan for GPUSxGIB, e.g. 8x80 (8 GPUs of 80 GiB), or cpu; no GPU needed"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
):
    """Show the plan of a recipe: the vLLM engine's dtype and tensor x data parallel layout, where
    reference log-probs, merges and classifiers run, the training processes, and a memory estimate per
    GPU, with the recipe keys that would make it fit when it does not. Loads no model."""
    from nega.cli.inputs import fail, load
    from nega.plan import DeviceFacts, PlanError, make_plan

    if assume_gpus is not None:
        try:
            devices = DeviceFacts.parse(assume_gpus)
        except ValueError as exc:
            fail(str(exc))
    else:
        devices = DeviceFacts.detect()
    cfg = load(recipe, overrides)
    try:
        result = make_plan(cfg, devices, processes=gpus)
    except PlanError as exc:
        fail(f"plan error: {exc}")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_plan(result)
    for warning in plan_warnings(result):
        typer.secho(f"[nega] warning: {warning}", err=True, fg=typer.colors.YELLOW)


def plan_warnings(result) -> list[str]:
    """One line per stage whose estimate exceeds its GPU memory, with the overrides that fix it."""
    warnings = []
    for stage, memory in (("training", result.training.memory), ("sampling", result.sampling_memory)):
        if memory.fits is not False:
            continue
        fixes = [f for f in result.fixes if f.stage == stage]
        if fixes:
            joined = "; or ".join(f.overrides for f in fixes)
            hint = f"this fits: {joined}" if fixes[0].together else f"any one of these fits: {joined}"
        else:
            hint = "no recipe key alone makes it fit: use more or larger GPUs, or a smaller model"
        warnings.append(
            f"{stage} needs about {memory.total_gib:.1f} GiB per GPU, over the {memory.budget_gib:.1f} GiB "
            f"available; {hint}"
        )
    return warnings


def print_plan(result) -> None:
    from rich.console import Console
    from rich.table import Table

    devices, model, sampling, training = result.devices, result.model, result.sampling, result.training
    where = f"{devices.gpus} x {devices.gib_per_gpu:g} GiB GPU" if devices.gpus else "CPU (no GPU)"
    if devices.gpus and devices.name:
        where += f" ({devices.name})"
    table = Table(title=f"nega plan: {result.recipe} ({result.method}) on {where}", show_header=False)
    table.add_column("section", style="bold")
    table.add_column("item")
    table.add_column("value", overflow="fold")

    def gib(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.2f} GiB"

    if model.known:
        shape = (
            f"{model.params / 1e9:.2f}B params, {model.layers} layers, {model.heads} heads "
            f"({model.kv_heads} KV), hidden {model.hidden}, vocab {model.vocab}, {model.dtype}"
        )
    else:
        shape = f"unknown: {model.note}"
    table.add_row("model", model.name, shape)
    table.add_row("", "facts from", model.source)
    table.add_row("sampling", "backend", sampling.backend)
    table.add_row("", "engines", sampling.engines)
    table.add_row("", "engine dtype", sampling.dtype)
    if sampling.gpus:
        table.add_row(
            "",
            "layout",
            f"tensor parallel {sampling.tensor_parallel_size} x data parallel {sampling.data_parallel_size} "
            f"= {sampling.gpus_used} of {sampling.gpus} GPUs",
        )
    table.add_row("", "adapters", sampling.adapter_mode)
    memory = result.sampling_memory
    if memory.parts:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in memory.parts.items())
        table.add_row("", "memory per GPU", f"{gib(memory.total_gib)} ({parts}) of {gib(memory.budget_gib)}")
    if result.kv_room_sequences is not None:
        table.add_row("", "KV cache room", f"{result.kv_room_sequences} sequences")
    for note in sampling.notes:
        table.add_row("", "note", note)
    table.add_row("devices", "reference log-probs", result.reference_device)
    table.add_row("", "adapter merges", result.merge_device)
    table.add_row("", "classifier scorers", result.classifier_device)
    table.add_row("training", "processes", f"{training.processes} ({training.launcher})")
    table.add_row("", "parallelism", training.data_parallel)
    table.add_row("", "dtype", training.dtype)
    table.add_row("", "gradient checkpointing", "on" if training.gradient_checkpointing else "off")
    memory = training.memory
    if memory.parts:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in memory.parts.items())
        budget = f" of {gib(memory.budget_gib)}" if memory.budget_gib is not None else ""
        table.add_row("", "memory per GPU", f"{gib(memory.total_gib)} ({parts}){budget}")
    verdict = {True: "yes", False: "NO", None: "not checked (no GPU memory to check against)"}[result.fits]
    table.add_row("fits", "", verdict)
    for fix in result.fixes:
        kind = "together" if fix.together else "alone"
        table.add_row("", f"fix ({fix.stage}, {kind})", f"{fix.overrides}  -> {fix.total_gib:.2f} GiB")
    for note in result.notes:
        table.add_row("notes", "", note)
    Console(width=150).print(table)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
