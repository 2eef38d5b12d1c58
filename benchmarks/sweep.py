"""One sweep for every quality benchmark: a recipe run as users run it (`nega.run`) at every point of a
grid declared before the run, for every seed; each arm's point chosen on validation by one declared rule;
then the test split scored once, for the chosen points only.

    result = sweep(
        "toy-d2o", {"train.lr": [3e-4, 6e-4]}, {"sft": Arm("sft", tuned=False), "d2o": Arm("d2o")},
        Selection("harmful_rate", "lower", guard=Guard("helpful_rate", "higher", 0.02, against="sft")),
        seeds=[0, 1, 2], overrides=lambda seed: [f"seed={seed}"], score=score, work=Path("runs/bench"),
    )
    result["seeds"]["0"]["chosen"]["d2o"]   # {"train.lr": 0.0006}
    result["seeds"]["0"]["items"]["d2o"]    # {"harmful_rate": [value per test item], ...}

Folders: `work/seed<S>/<point>/<variant>` is one `nega run` of the recipe (a variant is the same recipe
with extra overrides, e.g. D²O with filtered self-samples, whose `d2o` arm the benchmark names
`d2o_filtered`); `work/seed<S>/validation` and `work/seed<S>/test` hold the evaluations. Every grid
point runs in its own run folder, so the stages upstream of the grid (the toy model, self-samples,
reference log-probs, rollouts) are computed again at every point: nega's stage hashes make a finished
stage reusable only inside its own run folder, and a stage of the same name with another learning rate
would replace it in a shared one. The sweep records instead, per stage, which files differ between
the points of a seed (`identical_across_grid`, from the manifests' file hashes; an empty list: the same
bytes at every point), which is what the benchmarks' "same data at every rate" rests on. A rerun resumes: nega skips every finished stage.

Arms are read from each run's results.json (`targets`: every evaluated arm's model and adapter), not
from stage names. An arm that is not `tuned` (a starting model) is the same at every point and is taken
from the first.

The selection rule (`Selection`) sees only validation numbers: for each arm, among the grid points
that pass the guard (e.g. helpfulness within 2 points of the starting model's), the best on the
primary metric; ties go to the earlier point of the grid as declared; when no point passes the guard,
the one best on the guard's metric. `score` is called once per seed on validation (every arm at every
point) and once on test (every arm at its chosen point).
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Direction = Literal["lower", "higher"]


@dataclass(frozen=True)
class Arm:
    """A benchmark arm: its label in a run's results.json, the variant whose run trains it, and whether
    the grid tunes it."""

    label: str
    variant: str = "main"
    tuned: bool = True


@dataclass(frozen=True)
class Guard:
    """A grid point qualifies when its `metric` is no worse than arm `against`'s (an untuned arm, scored
    on the same validation items) by more than `margin` (a share of it when `relative`)."""

    metric: str
    direction: Direction
    margin: float
    against: str
    relative: bool = False

    def passes(self, metrics: dict, reference: dict) -> bool:
        ref = reference[self.metric]
        slack = self.margin * abs(ref) if self.relative else self.margin
        if self.direction == "higher":
            return metrics[self.metric] >= ref - slack
        return metrics[self.metric] <= ref + slack

    def describe(self) -> str:
        side = ">=" if self.direction == "higher" else "<="
        sign = "-" if self.direction == "higher" else "+"
        margin = f"{self.margin:.0%} of it" if self.relative else f"{self.margin:g}"
        return f"{self.metric} {side} {self.against}'s {sign} {margin}"


@dataclass(frozen=True)
class Selection:
    """The pre-registered rule choosing each arm's grid point: `metric` on `split`, `direction` better."""

    metric: str
    direction: Direction
    split: str = "validation"
    guard: Guard | None = None

    def describe(self) -> str:
        best = "lowest" if self.direction == "lower" else "highest"
        text = f"per arm and seed, the grid point with the {best} {self.split} {self.metric}"
        if self.guard is not None:
            text += (
                f" among the points with {self.split} {self.guard.describe()} (none: the point best on "
                f"{self.guard.metric})"
            )
        return text + "; ties go to the earlier point of the declared grid"

    def choose(self, points: dict[str, dict], reference: dict | None = None) -> str:
        """The chosen key of {point key: validation metrics} (keys in grid order)."""
        order = list(points)

        def better(metric: str, direction: Direction):
            sign = 1 if direction == "lower" else -1
            return lambda key: (sign * points[key][metric], order.index(key))

        allowed = order
        if self.guard is not None:
            if reference is None:
                raise ValueError(f"the guard needs {self.guard.against}'s validation metrics")
            allowed = [k for k in order if self.guard.passes(points[k], reference)]
            if not allowed:
                return min(order, key=better(self.guard.metric, self.guard.direction))
        return min(allowed, key=better(self.metric, self.direction))


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in the declared order (the last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict) -> str:
    """A grid point as a folder and label part: `lr0.0006`, `lr0.0006_beta0.1` (last part of each key)."""
    return "_".join(f"{key.rsplit('.', 1)[-1]}{value:g}" if isinstance(value, float) else
                    f"{key.rsplit('.', 1)[-1]}{value}" for key, value in point.items())  # fmt: skip


def nega_run(recipe: str, overrides: list[str], folder: Path) -> dict:
    """`nega run RECIPE OVERRIDES... -o FOLDER`, in this process (nega's Python entry)."""
    import nega

    return nega.run(recipe, overrides, output_dir=folder)


def run_targets(folder: Path) -> dict[str, dict]:
    """{arm: {"model", "adapter"}} from a run's results.json, paths resolved against the run folder."""
    from nega.results import read_results

    results = read_results(folder)
    table = results.get("targets") or {}
    if not table:
        raise SystemExit(f"{folder}/results.json has no `targets` table: the run evaluated no arm")

    def resolve(path):
        # Stored relative to the run folder when inside it; else as given (a model cache, a Hub id).
        if path is None or Path(path).is_absolute() or not (folder / path).exists():
            return path
        return str(folder / path)

    return {arm: {"model": resolve(t["model"]), "adapter": resolve(t["adapter"])} for arm, t in table.items()}


def stage_seconds(folder: Path) -> dict[str, float]:
    """{stage: seconds} of every finished stage of a run folder, from its manifests."""
    out = {}
    for manifest in sorted(Path(folder).glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        out[data["stage"]] = data.get("seconds")
    return out


def stage_files(folder: Path) -> dict[str, dict[str, str]]:
    """{stage: {file: sha256}} of every finished stage of a run folder, from its manifests."""
    out = {}
    for manifest in sorted(Path(folder).glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        out[data["stage"]] = data.get("files") or {}
    return out


def identical_across(runs: list[Path]) -> dict[str, list[str]]:
    """For every stage the runs all finished: the files whose bytes differ between them (none: the
    stage's output is the same at every grid point). A cache keyed by the run's own paths differs while
    the data it feeds does not (e.g. reflogps' reference_cache.jsonl beside an identical examples.jsonl)."""
    stages = [stage_files(folder) for folder in runs]
    common = [s for s in stages[0] if all(s in found for found in stages)]
    out = {}
    for stage in common:
        names = sorted({f for found in stages for f in found[stage]})
        out[stage] = [f for f in names if len({found[stage].get(f) for found in stages}) > 1]
    return out


def arm_target(found: dict, seed_dir: Path, arm: Arm, name: str, label: str):
    """`arm` at grid point `name` as an evaluation target labelled `label`, from its run's targets."""
    from nega.eval.stage import EvalTarget

    where = found[name][arm.variant]
    if arm.label not in where:
        raise SystemExit(
            f"the run at {seed_dir / name / arm.variant} has no arm {arm.label!r} in results.json "
            f"(it has {sorted(where)})"
        )
    return EvalTarget(label, where[arm.label]["model"], where[arm.label]["adapter"])


def sweep(
    recipe: str,
    grid: dict[str, list],
    arms: dict[str, Arm],
    select: Selection,
    seeds: list[int],
    overrides: Callable[[int], list[str]] | list[str],
    *,
    score: Callable,
    work: Path,
    variants: dict[str, list[str]] | None = None,
    run: Callable = nega_run,
    log: str = "sweep",
) -> dict:
    """Run, select on validation, score test once (module docstring). `score(recipe, folder, targets,
    split)` evaluates {label: EvalTarget} on `split` in run folder `folder` and returns {label:
    {"metrics": {...}, "items": {metric: [value or None per item]}, "items_sha256": str}}. Returns
    {"grid", "selection", "seeds": {seed: {"chosen", "validation", "test", "items", ...}}}."""
    from nega.config import load_recipe

    variants = {"main": [], **(variants or {})}
    unknown = sorted({a.variant for a in arms.values()} - set(variants))
    if unknown:
        raise ValueError(f"arms name variants {unknown} that are not among {sorted(variants)}")
    points = grid_points(grid)
    names = [point_name(p) for p in points]
    if select.guard is not None and arms.get(select.guard.against, Arm("", tuned=True)).tuned:
        raise ValueError(f"the guard's reference {select.guard.against!r} must be an untuned arm")
    work = Path(work)
    out = {}
    for seed in seeds:
        base = overrides(seed) if callable(overrides) else list(overrides)
        seed_dir = work / f"seed{seed}"
        found: dict[str, dict[str, dict]] = {}  # point -> variant -> {arm label: model/adapter}
        seconds: dict[str, dict[str, dict]] = {}
        for point, name in zip(points, names, strict=True):
            found[name], seconds[name] = {}, {}
            for variant, extra in variants.items():
                if not any(a.variant == variant for a in arms.values()):
                    continue
                folder = seed_dir / name / variant
                settings = [*base, *(f"{k}={v}" for k, v in point.items()), *extra]
                run(recipe, settings, folder)
                found[name][variant] = run_targets(folder)
                seconds[name][variant] = stage_seconds(folder)
        spec = load_recipe(recipe, [*base, *(f"{k}={v}" for k, v in points[0].items())])

        candidates = {}
        for arm, spec_arm in arms.items():
            for name in names if spec_arm.tuned else names[:1]:
                candidates[f"{arm}-{name}"] = arm_target(found, seed_dir, arms[arm], name, f"{arm}-{name}")
        val = score(spec, seed_dir / select.split, candidates, select.split)
        validation = {
            arm: {name: val[f"{arm}-{name}"]["metrics"] for name in (names if a.tuned else names[:1])}
            for arm, a in arms.items()
        }
        reference = None
        if select.guard is not None:
            reference = next(iter(validation[select.guard.against].values()))
        chosen = {
            arm: select.choose(validation[arm], reference) if a.tuned else names[0] for arm, a in arms.items()
        }
        test = score(
            spec,
            seed_dir / "test",
            {arm: arm_target(found, seed_dir, arms[arm], chosen[arm], arm) for arm in arms},
            "test",
        )
        out[str(seed)] = {
            "chosen": {arm: points[names.index(chosen[arm])] for arm in arms if arms[arm].tuned},
            "validation": validation,
            "test": {arm: test[arm]["metrics"] for arm in arms},
            "items": {arm: test[arm]["items"] for arm in arms},
            "items_sha256": {arm: test[arm]["items_sha256"] for arm in arms},
            "stage_seconds": seconds,
            "evaluation_seconds": {
                split: stage_seconds(seed_dir / split) for split in (select.split, "test")
            },
            "identical_across_grid": {
                variant: identical_across([seed_dir / name / variant for name in names])
                for variant in variants
                if any(a.variant == variant for a in arms.values())
            },
        }
        print(f"[{log}] seed {seed}: chosen " + ", ".join(f"{a} {chosen[a]}" for a in arms if arms[a].tuned),
              file=sys.stderr, flush=True)  # fmt: skip
    return {"grid": grid, "selection": select.describe(), "seeds": out}


# --- scoring a PromptSet item by item ------------------------------------------------------------------


def label_rows(folder: Path, label: str) -> list[dict]:
    """The per-sample rows an evaluation wrote for `label` (`<stage>/<label>.jsonl`) in run folder
    `folder`."""
    from nega.pipeline import read_jsonl

    found = sorted(Path(folder).glob(f"*/{label}.jsonl"))
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one evaluation file {label}.jsonl, found {len(found)}")
    return read_jsonl(found[0])


def item_values(rows: list[dict], prompts: list, item_metrics: Callable) -> dict[str, list]:
    """{metric: [value per prompt, None where the metric does not apply]} from an evaluation's rows:
    `item_metrics(prompt, completions, columns)` scores one prompt's completions."""
    grouped: dict[int, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["prompt_index"], []).append(row)
    per_prompt = []
    for index in range(len(prompts)):
        group = grouped.get(index, [])
        columns = {k: v for k, v in (group[0] if group else {}).items()
                   if k not in ("prompt_index", "completion", "finish_reason")}  # fmt: skip
        per_prompt.append(item_metrics(prompts[index], [r["completion"] for r in group], columns))
    names = list(dict.fromkeys(k for m in per_prompt for k in m))
    return {name: [m.get(name) for m in per_prompt] for name in names}


def world_item_metrics(recipe) -> Callable:
    """The toy world's oracle on one prompt's completions: its rates over them (counts left out)."""
    from nega.toy import make_world

    world = make_world(recipe.toy.world, seed=recipe.seed, **recipe.toy.options)

    def metrics(prompt, completions: list[str], columns: dict) -> dict[str, float]:
        n = len(completions)
        scored = world.score([prompt] * n, completions, **{k: [v] * n for k, v in columns.items()})
        return {k: v for k, v in scored.items() if not k.startswith("n_") and k != "n"}

    return metrics


def prompt_set_scorer(build: Callable, item_metrics: Callable = world_item_metrics) -> Callable:
    """A `score` for `sweep` from `build(recipe, split)`, a nega PromptSet, through nega's evaluation
    (`nega.eval.stage.evaluate`): its metrics, and each item's from the rows it wrote."""

    def score(recipe, folder: Path, targets: dict, split: str) -> dict:
        from nega.eval.stage import evaluate
        from nega.pipeline import Run, hash_value

        prompt_set = build(recipe, split)
        metrics = evaluate(Run(recipe, Path(folder)), list(targets.values()), [prompt_set])
        per_item = item_metrics(recipe)
        items_sha256 = hash_value(prompt_set.prompts)
        return {
            label: {
                "metrics": metrics[label],
                "items": item_values(label_rows(folder, label), prompt_set.prompts, per_item),
                "items_sha256": items_sha256,
            }
            for label in targets
        }

    return score


# --- what a quality benchmark writes -------------------------------------------------------------------


def test_items(swept: dict) -> dict:
    """{seed: {arm: {metric: [value per test item]}}} of a sweep, for the paired tests."""
    return {seed: entry["items"] for seed, entry in swept["seeds"].items()}


def methods_table(swept: dict, arms: list[str], metrics: list[str]) -> dict:
    """{arm: {metric: mean, std and per-seed values}} of the test numbers over seeds."""
    from harness import seed_summary

    seeds = list(swept["seeds"])
    return {
        arm: {
            m: seed_summary([swept["seeds"][s]["test"][arm][m] for s in seeds])
            for m in metrics
            if all(m in swept["seeds"][s]["test"][arm] for s in seeds)
        }
        for arm in arms
    }


def deviations(design: dict, used: dict) -> list[str]:
    """Where a run departs from the benchmark's declared design (grid, seeds, sizes): one line each."""
    return [
        f"{key}: declared {design[key]!r}, ran {used.get(key)!r}"
        for key in design
        if used.get(key) != design[key]
    ]


def write_items(path: Path, items: dict) -> Path:
    """Every test item's value per seed, arm and metric, beside the results file (compact JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rounded = {
        seed: {arm: {m: [None if v is None else round(v, 6) for v in values] for m, values in metrics.items()}
               for arm, metrics in arms.items()}
        for seed, arms in items.items()
    }  # fmt: skip
    path.write_text(json.dumps(rounded, separators=(",", ":")) + "\n")
    return path
