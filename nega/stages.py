"""What every method's run.py shares besides training (nega.training) and evaluation (nega.eval.stage):
the starting model, a `Run.stage` skipped on a re-run when its inputs are unchanged, and the report.
"""

from __future__ import annotations

from pathlib import Path

from nega.pipeline import Run, Stage, atomic_write_text, write_json


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


def format_table(table: dict[str, dict[str, float]], title: str = "", *, sort: bool = True) -> str:
    """A markdown table: one row per label, one column per metric (sorted, or in first-seen order)."""
    metrics = list(dict.fromkeys(m for row in table.values() for m in row))
    if sort:
        metrics.sort()
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
    """`report.md` + `results.json` in the run directory, and the table printed to the terminal.

    report.md reads top down: the evaluation section `nega.eval.stage.evaluate` wrote (one readable
    table and one side-by-side plot per evaluation), the training curve of every training stage, then
    every metric of `results.json` in one table."""
    title = title or f"{run.recipe.name} ({run.recipe.method})"
    write_json(run.dir / "results.json", table)
    text = f"# {run.recipe.name}\n\n{title}\n\n"
    previous = run.dir / "report.md"
    if previous.exists():  # keep the before/after section nega.eval.stage.evaluate wrote
        old = previous.read_text(encoding="utf-8")
        start, end = old.find("<!-- nega:eval -->"), old.find("<!-- /nega:eval -->")
        if 0 <= start < end:
            text += old[start : end + len("<!-- /nega:eval -->")] + "\n\n"
    curves = sorted(run.dir.glob("*/training_curve.png"))
    if curves:
        text += "## Training curves\n\n"
        text += "".join(f"![{p.parent.name}]({p.relative_to(run.dir)})\n" for p in curves) + "\n"
    text += "## All metrics\n\n" + format_table(table)
    path = atomic_write_text(run.dir / "report.md", text)
    from nega.eval.report import print_results

    print_results(title, table)
    return path
