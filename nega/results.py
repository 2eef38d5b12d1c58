"""A run's `results.json`: what the run found, in one file, and `report.md` rendered from it.

results.json is the one channel from a run to its readers (`nega report`, `nega runs`, `nega eval`,
`nega push`, the benchmarks). Three writers fill it in the order a method's run.py calls them, each
replacing only its own keys:

- `Run.record_result`: `result`, the arm the run stands for: {label, base_model, adapter}, paths
  relative to the run folder where they lie inside it.
- `nega.eval.stage.evaluate`: `evaluations` (one entry per evaluation set: title, dataset, plot file,
  the flat metric names it contributes, and its readable table, a rate with its 95% interval per cell)
  and `targets` (every evaluated arm's model and adapter, so a pushed folder can be named by its arm).
- `nega.stages.write_report`: `recipe` (its name), `method`, `title`, `arms` ({label: {metric: value}}),
  `directions` (lower / higher is better, for metrics nega knows), `curves`, `stages` (seconds per
  stage) and `finished`.

`render_report(results)` is a pure function of that dict: `nega report RUN` re-renders the same bytes.
A run starts by removing its results.json (`nega.pipeline.Run`), so nothing from an earlier recipe is
ever read as this one's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nega.pipeline import (
    MANIFEST,
    RESULT,
    RESULTS_SCHEMA,
    STAGE_INFO,
    atomic_write_text,
    read_json,
    write_json,
)

REPORT = "report.md"

# The metric a run is summed up by in `nega runs`, first found in this order.
HEADLINE = ("harmful_rate", "accuracy", "rationale_accuracy", "helpful_rate", "step_accuracy")


class ResultsError(Exception):
    """A folder that is not a run, or a results.json that cannot be read; the message says the fix."""


def metric_direction(name: str) -> str | None:
    """Which way is better for a metric nega knows: "lower" or "higher"; None for the others. One table
    for tables, plots, results.json and the Hub card: `nega.eval.report.METRIC_DIRECTIONS`."""
    from nega.eval.report import metric_direction as direction

    return direction(name)


def new_results() -> dict:
    return {"schema": RESULTS_SCHEMA}


def load_results(run_dir: Path) -> dict:
    """The run's results.json, or a fresh one when it is absent or from another schema (rebuilt by
    the run's writers; nothing in an unknown layout is read as this run's)."""
    path = Path(run_dir) / RESULT
    try:
        results = read_json(path)
    except (OSError, json.JSONDecodeError):
        return new_results()
    if not isinstance(results, dict) or results.get("schema") != RESULTS_SCHEMA:
        return new_results()
    return results


def update_results(run_dir: Path, **fields: Any) -> dict:
    """Set `fields` in the run's results.json, keeping every other key; returns the whole dict."""
    results = load_results(run_dir)
    results.update(fields)
    write_json(Path(run_dir) / RESULT, results)
    return results


def read_results(run_dir: Path) -> dict:
    """The results.json of a run folder, for readers; ResultsError says what is missing."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.yaml").is_file():
        raise ResultsError(f"{run_dir} is not a run folder (no recipe.yaml); give a folder `nega run` made")
    path = run_dir / RESULT
    if not path.is_file():
        raise ResultsError(f"{path} does not exist yet: the run has not finished; run `nega run` on it again")
    try:
        results = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path} cannot be read ({exc}); run `nega run` again to rewrite it") from None
    if not isinstance(results, dict) or results.get("schema") != RESULTS_SCHEMA:
        found = results.get("schema") if isinstance(results, dict) else None
        raise ResultsError(
            f"{path} has schema {found!r}, this nega reads schema {RESULTS_SCHEMA}; run `nega run` on the "
            "recipe again to rewrite it (finished stages are reused)"
        )
    return results


def relative_to_run(run_dir: Path, path: str | Path | None) -> str | None:
    """`path` relative to the run folder when it lies inside it (a copied run still resolves), else as
    given (a Hub id, a model cache folder)."""
    if path is None:
        return None
    if not Path(path).exists():
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(Path(path).resolve())


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds per finished stage, from the stage manifests, in stage order."""
    out = {}
    for path in sorted(Path(run_dir).glob(f"*/{MANIFEST}")):
        try:
            out[path.parent.name] = float(read_json(path).get("seconds", 0.0))
        except (OSError, json.JSONDecodeError, TypeError, ValueError):
            continue
    return out


def headline(results: dict) -> tuple[str, str, float] | None:
    """(arm, metric, value) that sums up a run: the run's own arm (else the last arm) and its first
    metric in HEADLINE order, else its first metric with a known direction."""
    arms = results.get("arms") or {}
    if not arms:
        return None
    label = (results.get("result") or {}).get("label")
    if label not in arms:
        label = list(arms)[-1]
    row = {k: v for k, v in arms[label].items() if isinstance(v, int | float)}
    for wanted in HEADLINE:
        for metric, value in row.items():
            if metric.rsplit("/", 1)[-1] == wanted:
                return label, metric, float(value)
    for metric, value in row.items():
        if metric_direction(metric) is not None:
            return label, metric, float(value)
    return None


# ---------------------------------------------------------------------------------------------------
# Rendering: results dict -> markdown, no file read.


def format_table(table: dict[str, dict[str, Any]], title: str = "", *, sort: bool = True) -> str:
    """A markdown table: one row per label, one column per metric (sorted, or in first-seen order).
    A rate entry ({"rate", "ci95"}) is shown with its 95% interval; a heading carries its metric's
    direction (↓ lower is better, ↑ higher)."""
    from nega.eval.report import metric_heading

    metrics = list(dict.fromkeys(m for row in table.values() for m in row))
    if sort:
        metrics.sort()
    lines = [f"### {title}", ""] if title else []
    lines.append("| | " + " | ".join(metric_heading(m) for m in metrics) + " |")
    lines.append("|---|" + "---:|" * len(metrics))
    for label, row in table.items():
        lines.append(f"| {label} | " + " | ".join(format_cell(row.get(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def format_cell(value: Any) -> str:
    if isinstance(value, dict):
        if value.get("rate") is None:
            return "—"
        lo, hi = value["ci95"]
        return f"{value['rate']:.3f} [{lo:.3f}, {hi:.3f}]"
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int | float):
        return f"{value:.3f}"
    return str(value)


def evaluation_markdown(entry: dict, *, mark: str | None = None) -> str:
    """One evaluation: its table (arm `mark` flagged as the pushed one) and its plot."""
    table = entry.get("table") or {}
    if mark is not None:
        table = {
            (f"**{label}** (this model)" if label == mark else label): row for label, row in table.items()
        }
    text = format_table(table, entry.get("title", entry.get("name", "")), sort=False)
    if entry.get("plot"):
        text += f"\n![{entry['name']}]({entry['plot']})\n"
    return text


def render_report(results: dict) -> str:
    """report.md: the evaluations (a table and a plot each), the training curves, every metric of every
    arm, the run's own result, and the seconds each stage took."""
    lines = [f"# {results.get('recipe') or 'run'}", ""]
    if results.get("title"):
        lines += [results["title"], ""]
    if results.get("description"):
        lines += [f"*{results['description']}*", ""]
    result = results.get("result")
    if result:
        where = (
            f"adapter `{result['adapter']}` over `{result['base_model']}`"
            if result.get("adapter")
            else (f"model `{result['base_model']}`")
        )
        lines += [f"The run's result is the **{result['label']}** arm: {where}.", ""]
    evaluations = results.get("evaluations") or []
    if evaluations:
        lines += ["## Evaluation", ""]
        lines += [evaluation_markdown(entry) for entry in evaluations]
    curves = results.get("curves") or []
    if curves:
        lines += ["## Training curves", ""]
        lines += [f"![{Path(p).parent.name}]({p})" for p in curves] + [""]
    arms = results.get("arms")
    if arms:
        lines += ["## All metrics", "", format_table(arms)]
        directions = results.get("directions") or {}
        lower = [m for m, d in directions.items() if d == "lower"]
        higher = [m for m, d in directions.items() if d == "higher"]
        if lower or higher:
            said = []
            if lower:
                said.append("lower is better for " + ", ".join(lower))
            if higher:
                said.append("higher is better for " + ", ".join(higher))
            sentence = "; ".join(said)
            lines += [sentence[0].upper() + sentence[1:] + ".", ""]
    stages = results.get("stages") or {}
    if stages:
        lines += ["## Stages", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in stages.items()]
        lines += [f"| total | {sum(stages.values()):.1f} |", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report_file(run_dir: Path, results: dict) -> Path:
    return atomic_write_text(Path(run_dir) / REPORT, render_report(results))


# ---------------------------------------------------------------------------------------------------
# `nega runs`: which folders are runs, and where each stands.


def run_state(run_dir: Path) -> tuple[str, str]:
    """(state, detail): "finished" (results.json says so), "in progress" (a live nega process holds the
    run's lock), or "failed" (neither: the process ended before the report; detail names the stage
    that started and did not finish, from the stage folders and their manifests)."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    if results.get("finished"):
        return "finished", ""
    started = sorted(p.parent.name for p in run_dir.glob(f"*/{STAGE_INFO}"))
    unfinished = [name for name in started if not (run_dir / name / MANIFEST).is_file()]
    where = f"stopped in {unfinished[0]}" if unfinished else (f"after {started[-1]}" if started else "")
    if _lock_held(run_dir):
        return "in progress", f"in {unfinished[0]}" if unfinished else where
    return "failed", where or "no stage started"


def _lock_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (`nega.pipeline.lock_run_folder`); taking it here
    for an instant would succeed when nobody does."""
    import fcntl
    import os

    from nega.pipeline import LOCK

    path = run_dir / LOCK
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing the descriptor also lets go of the shared lock taken above
    return False


def list_runs(root: Path) -> list[dict]:
    """Every run folder directly under `root` (a folder with recipe.yaml), sorted by name."""
    import yaml

    rows = []
    for folder in sorted(p for p in Path(root).iterdir() if (p / "recipe.yaml").is_file()):
        try:
            recipe = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            recipe = {}
        state, detail = run_state(folder)
        top = headline(load_results(folder))
        rows.append(
            {
                "run": folder.name,
                "recipe": str(recipe.get("name", "")) if isinstance(recipe, dict) else "",
                "method": str(recipe.get("method", "")) if isinstance(recipe, dict) else "",
                "state": state,
                "detail": detail,
                "headline": f"{top[0]}: {top[1]} {top[2]:.3f}" if top else "",
            }
        )
    return rows
