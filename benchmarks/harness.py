"""What every benchmark shares: the machine beside its numbers, the results file, per-seed statistics,
and running a recipe as `nega run` does.

The speed benchmarks (bench_*.py) time one component against its alternatives; the quality benchmarks
(quality_*.py) train methods on the toy worlds. Import it from a script in this folder:

    from harness import machine, run_recipe, seed_summary, write_result, copy_stages, trained_folders
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import statistics
from pathlib import Path

from nega.training import trained_folder


def machine(device: str, packages: tuple[str, ...] = ("torch", "transformers", "vllm")) -> dict:
    """Platform, CPUs, threads, load at start, the device, and the versions of `packages` (None when absent)."""
    import torch

    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **versions,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "load_average_at_start": list(os.getloadavg()),
    }


def write_result(path: Path, result: dict) -> Path:
    """The benchmark's JSON results file (indented, one trailing newline), its folder made if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def seed_summary(values: list[float]) -> dict:
    """Mean and sample standard deviation over seeds (0 for one seed), and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def run_recipe(name: str, overrides: list[str], output_dir: Path) -> tuple[dict, Path]:
    """`nega run NAME OVERRIDES... -o OUTPUT_DIR` in this process: the recipe with its overrides, run by
    its method's entry in nega's method table; returns (results table, run folder). Finished stages
    of an earlier call are skipped, so a rerun resumes."""
    from nega.cli import method_entry
    from nega.config import load_recipe
    from nega.pipeline import Run

    recipe = load_recipe(name, overrides)
    run = Run(recipe, Path(output_dir))
    return method_entry(recipe.method)(recipe, run), run.dir


def copy_stages(source: Path, target: Path, names: list[str]) -> list[str]:
    """Copy the finished stages called `names` (their `manifest.json` "stage") of run folder `source` into
    run folder `target`, keeping their numbered folder names; returns the folders copied.

    A later run of the same recipe in `target` opens these stages in the same order; where a stage's
    hash (config and inputs) matches, nega skips it, so runs that differ only downstream (another
    learning rate) share the copied model, samples and references instead of recomputing them. A stage
    whose hash does not match is rerun by nega as usual. Folders already in `target` are left alone."""
    source, target = Path(source), Path(target)
    copied = []
    for manifest in sorted(source.glob("*/manifest.json")):
        folder = manifest.parent
        if json.loads(manifest.read_text()).get("stage") in names and not (target / folder.name).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(folder, target / folder.name, ignore=shutil.ignore_patterns("checkpoints"))
            copied.append(folder.name)
    return copied


def stage_manifests(run_dir: Path) -> dict[str, dict]:
    """{stage name: manifest} of every finished stage of a run folder."""
    out = {}
    for manifest in sorted(Path(run_dir).glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        out[data["stage"]] = {**data, "dir": str(manifest.parent)}
    return out


def trained_folders(run_dir: Path) -> dict[str, str]:
    """{stage name: the folder it trained} for every finished training stage of a run folder."""
    out = {}
    for name, manifest in stage_manifests(run_dir).items():
        if (Path(manifest["dir"]) / "train_log.json").is_file():
            out[name] = str(trained_folder(manifest["dir"]))
    return out


def arm_of(stage: str, arms) -> str | None:
    """The arm among `arms` whose stage `stage` is (`<arm>-...`, the longest name first), or None: a
    stage shared by every arm, or an evaluation."""
    for arm in sorted(arms, key=len, reverse=True):
        if stage.startswith(f"{arm}-"):
            return arm
    return None


def last_epoch(folders: dict[str, str], objective: str) -> str:
    """The folder a QCRD objective's last epoch trained (`<objective>-e<k>-train`), from `trained_folders`."""
    epochs = [k for k in folders if k.startswith(f"{objective}-e") and k.endswith("-train")]
    return folders[max(epochs, key=lambda k: int(k.removeprefix(f"{objective}-e").removesuffix("-train")))]


def split_seconds(ran: dict[str, float], arms) -> tuple[float, dict[str, float], float]:
    """(shared, {arm: seconds}, evaluation) of `own_seconds`' {stage: seconds}: a stage named `eval...` is
    evaluation, a stage of an arm (`arm_of`) is that arm's, any other is shared by every arm."""
    shared, evaluation, per_arm = 0.0, 0.0, dict.fromkeys(arms, 0.0)
    for stage, spent in ran.items():
        if stage.startswith("eval"):
            evaluation += spent
        elif arm_of(stage, arms):
            per_arm[arm_of(stage, arms)] += spent
        else:
            shared += spent
    return shared, per_arm, evaluation


def with_interval(summary: dict, n_items: int) -> dict:
    """A rate's seed summary (`seed_summary`) with its 95% Wilson interval over every seed's `n_items`
    items, and their number."""
    from nega.eval.report import wilson_interval

    n = n_items * len(summary["per_seed"])
    count = round(sum(v * n_items for v in summary["per_seed"]))
    return {**summary, "ci95": list(wilson_interval(count, n)), "n": n}


def seed_seconds(shared: float, arms: dict[str, float], evaluation: float, started: float) -> dict:
    """A seed's seconds: the shared stages', each arm's and the evaluation's own (wherever they were
    spent: a rerun skips finished stages), their sum, and the wall time of this invocation since
    `started`."""
    import time

    return {
        "shared": round(shared, 1),
        "arms": {arm: round(s, 1) for arm, s in arms.items()},
        "evaluation": round(evaluation, 1),
        "compute": round(shared + sum(arms.values()) + evaluation, 1),
        "wall": round(time.time() - started, 1),
    }


def run_provenance(before: dict, after: dict) -> dict:
    """`provenance` taken at a run's start, marked when nega's source changed before its end."""
    return {
        **before,
        "nega_source_changed_during_run": after["nega_source_sha256"] != before["nega_source_sha256"],
    }


def provenance(script: str | Path) -> dict:
    """What produced a result: nega's git commit (and whether the tree had changes), and sha256 of
    nega's source (its .py and recipe files) and of the benchmark script."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]
    source = hashlib.sha256()
    package = root / "nega"
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.yaml")]):
        source.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "nega")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "nega_changed_since_commit": bool(status) if status is not None else None,
        "nega_source_sha256": source.hexdigest(),
        "script_sha256": hashlib.sha256(Path(script).read_bytes()).hexdigest(),
    }


OPERATORS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def compare_arms(
    methods: dict, left: str, op: str, right: str, metric: str, *, scale: float = 1.0, offset: float = 0.0
) -> dict:
    """One target of a quality benchmark, `left op scale * right + offset` on `metric`, checked on the
    means over seeds (`met`) and seed by seed (`per_seed`), with the measured means and the threshold.
    `methods` is the results' {arm: {metric: seed_summary}}."""
    check = OPERATORS[op]
    a, b = methods[left][metric], methods[right][metric]
    threshold = scale * b["mean"] + offset
    bound = (f"{scale:g} x " if scale != 1 else "") + right + (f" {offset:+g}" if offset else "")
    per_seed = [check(x, scale * y + offset) for x, y in zip(a["per_seed"], b["per_seed"], strict=True)]
    return {
        "statement": f"{left} {metric} {op} {bound}",
        "metric": metric,
        "measured": {left: a["mean"], right: b["mean"]},
        "threshold": threshold,
        "met": check(a["mean"], threshold),
        "per_seed": per_seed,
    }


def own_seconds(manifests: dict[str, dict], seen: set) -> dict[str, float]:
    """{stage: seconds} of the stages not met before: a stage copied from another run folder (or
    found there by the same hash and finish time) is counted once, in the first run that did it.
    `seen` collects (hash, finish time) of the stages counted so far; pass the same set for every run
    of a benchmark."""
    out = {}
    for name, manifest in manifests.items():
        key = (manifest["hash"], manifest["finished_at"])
        if key not in seen:
            seen.add(key)
            out[name] = manifest["seconds"]
    return out
