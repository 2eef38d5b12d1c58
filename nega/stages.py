"""What every method's run.py shares besides training (nega.training) and evaluation (nega.eval.stage):
the starting model, a `Run.stage` skipped on a re-run when its inputs are unchanged, and the report.
"""

from __future__ import annotations

from pathlib import Path

from nega.pipeline import Run, Stage
from nega.results import format_table  # noqa: F401  (the report's table, importable from here too)


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


def write_report(run: Run, table: dict[str, dict[str, float]], title: str | None = None) -> Path:
    """Fill in results.json (the arms table, title, metric directions, training curves and stage
    timings; `finished`), render report.md from it, and print the table to the terminal.

    report.md reads top down: the evaluations `nega.eval.stage.evaluate` recorded (one readable table
    and one side-by-side plot each), the training curve of every training stage, then every metric of
    every arm in one table (see `nega.results.render_report`)."""
    from nega.eval.report import print_results
    from nega.results import metric_direction, stage_seconds, update_results, write_report_file

    title = title or f"{run.recipe.name} ({run.recipe.method})"
    metrics = sorted({m for row in table.values() for m in row})
    results = update_results(
        run.dir,
        recipe=run.recipe.name,
        method=run.recipe.method,
        description=run.recipe.description,
        title=title,
        arms=table,
        directions={m: metric_direction(m) for m in metrics if metric_direction(m) is not None},
        curves=[str(p.relative_to(run.dir)) for p in sorted(run.dir.glob("*/training_curve.png"))],
        stages=stage_seconds(run.dir),
        finished=True,
    )
    path = write_report_file(run.dir, results)
    print_results(title, table)
    return path
