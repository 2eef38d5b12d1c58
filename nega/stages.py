"""Stages every method shares: the starting model, sampling-based evaluation, and the report.

A method's run.py calls these between its own stages; each is a `Run.stage`, so it is skipped on a
re-run when its inputs are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nega.pipeline import Run, Stage, atomic_write_text, read_json, write_json, write_jsonl
from nega.sampling.base import Prompt


def base_model(run: Run) -> tuple[str, Stage | None]:
    """(model path or hub id, the stage that built it). `model.name: toy` builds and trains the toy model;
    a known packaged model or a `.gguf` file resolves to its converted folder in nega's model cache."""
    recipe = run.recipe
    if recipe.model.name != "toy":
        from nega.models import resolve_model

        return resolve_model(recipe.model.name), None
    stage = run.stage("toy-model", config={"toy": recipe.toy.model_dump(), "seed": recipe.seed})
    if not stage.done:
        from nega.toy.build import build_toy_model

        build_toy_model(recipe.toy, stage.dir / "model", seed=recipe.seed)
        stage.finish(counts={"world": recipe.toy.world, "size": recipe.toy.size, "steps": recipe.toy.steps})
    return str(stage.dir / "model"), stage


def evaluate(
    run: Run,
    name: str,
    model_path: str,
    adapters: dict[str, str | None],
    prompts: list[Prompt],
    score: Callable[[list[str]], dict[str, float]],
    *,
    columns: list[dict] | None = None,
    n: int = 1,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    inputs: list = (),
    config: dict | None = None,
) -> dict[str, dict[str, float]]:
    """Sample `prompts` from the base model with each adapter (None = base) and score the completions.

    One sampler (one vLLM engine) serves every adapter, one adapter per generate call. `score` maps the
    flat list of completions (prompt-major, n per prompt) to metrics. Writes `<label>.jsonl` per-sample
    files and `scores.json`; returns {label: metrics}.
    """
    from nega.sampling import make_sampler

    recipe = run.recipe
    max_tokens = max_tokens or recipe.sampling.max_tokens
    stage = run.stage(
        name,
        config={
            "adapters": sorted(adapters),
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "prompts": len(prompts),
            "seed": recipe.seed,
            "backend": recipe.sampling.backend,
            **(config or {}),
        },
        inputs=[model_path, *[a for a in adapters.values() if a], *inputs],
    )
    if stage.done:
        return read_json(stage.dir / "scores.json")
    sampler = make_sampler(
        model_path, recipe.sampling, max_lora_rank=recipe.lora.r, adapters=any(adapters.values())
    )
    scores = {}
    try:
        for label, adapter in adapters.items():
            outputs = sampler.generate(
                prompts,
                n=n,
                temperature=temperature,
                top_p=recipe.sampling.top_p if temperature > 0 else 1.0,
                max_tokens=max_tokens,
                seed=recipe.seed,
                adapter=adapter,
                description=f"eval {label}",
            )
            texts = [c.text for group in outputs for c in group]
            scores[label] = score(texts)
            rows = []
            for i, group in enumerate(outputs):
                for c in group:
                    extra = columns[i] if columns else {}
                    rows.append(
                        {"prompt_index": i, **extra, "completion": c.text, "finish_reason": c.finish_reason}
                    )
            write_jsonl(stage.dir / f"{label}.jsonl", rows)
    finally:
        sampler.close()
    write_json(stage.dir / "scores.json", scores)
    stage.finish(counts={"adapters": len(adapters), "prompts": len(prompts), "samples_per_prompt": n})
    return scores


def format_table(table: dict[str, dict[str, float]], title: str = "") -> str:
    """A markdown table: one row per label, one column per metric."""
    metrics = sorted({m for row in table.values() for m in row})
    lines = [f"### {title}", ""] if title else []
    lines.append("| | " + " | ".join(metrics) + " |")
    lines.append("|---|" + "---:|" * len(metrics))
    for label, row in table.items():
        cells = [
            f"{row[m]:.3f}" if isinstance(row.get(m), int | float) else str(row.get(m, "")) for m in metrics
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(run: Run, table: dict[str, dict[str, float]], title: str | None = None) -> Path:
    """`report.md` + `results.json` in the run directory, and the table printed to the terminal."""
    from rich.console import Console
    from rich.table import Table

    title = title or f"{run.recipe.name} ({run.recipe.method})"
    write_json(run.dir / "results.json", table)
    text = f"# {run.recipe.name}\n\n" + format_table(table, title)
    previous = run.dir / "report.md"
    if previous.exists():  # keep the before/after section nega.eval.stage.run_evals wrote
        old = previous.read_text(encoding="utf-8")
        start, end = old.find("<!-- nega:eval -->"), old.find("<!-- /nega:eval -->")
        if 0 <= start < end:
            text += "\n" + old[start : end + len("<!-- /nega:eval -->")] + "\n"
    path = atomic_write_text(run.dir / "report.md", text)
    metrics = sorted({m for row in table.values() for m in row})
    shown = Table(title=title)
    shown.add_column("")
    for m in metrics:
        shown.add_column(m, justify="right")
    for label, row in table.items():
        shown.add_row(
            label, *[f"{row[m]:.3f}" if isinstance(row.get(m), int | float) else "" for m in metrics]
        )
    Console().print(shown)
    return path
