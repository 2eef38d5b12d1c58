"""What every benchmark shares: the machine beside its numbers, the results file with its provenance,
per-seed statistics, and the run folders' manifests.

The speed benchmarks (bench_*.py) time one component against its alternatives; the quality benchmarks
(quality_*.py, real_*.py) run the recipes through one sweep (sweep.py) and decide their targets by
paired tests (paired.py). Import it from a script in this folder:

    from harness import machine, seed_summary, write_result
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INVOCATIONS = "invocations.json"  # in a benchmark's work folder: every invocation that wrote into it
# What a benchmark's numbers depend on, for the dirty flag: nega and the benchmark code (not the results
# or the README a benchmark writes, nor its work folder).
SOURCE_PATHS = ["nega", "benchmarks", "pyproject.toml", ":(exclude)benchmarks/results",
                ":(exclude)benchmarks/README.md", ":(exclude)benchmarks/work"]  # fmt: skip
SHARED_SCRIPTS = ["harness.py", "sweep.py", "paired.py"]  # benchmark code every quality script runs


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
    """The benchmark's JSON results file (indented, one trailing newline), its folder made if needed. A
    result without `provenance` gets this invocation's (`invocation`): every results file says which
    commit, tree and command line made it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "provenance" not in result:
        result = {**result, "provenance": summarize([invocation()])}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def seed_summary(values: list[float]) -> dict:
    """Mean and sample standard deviation over seeds (0 for one seed), and the values themselves."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": values,
    }


def with_interval(summary: dict, n_items: int) -> dict:
    """A rate's seed summary (`seed_summary`) with its 95% Wilson interval over every seed's `n_items`
    items, and their number."""
    from nega.eval.report import wilson_interval

    n = n_items * len(summary["per_seed"])
    count = round(sum(v * n_items for v in summary["per_seed"]))
    return {**summary, "ci95": list(wilson_interval(count, n)), "n": n}


def stage_manifests(run_dir: Path) -> dict[str, dict]:
    """{stage name: manifest} of every finished stage of a run folder."""
    out = {}
    for manifest in sorted(Path(run_dir).glob("*/manifest.json")):
        data = json.loads(manifest.read_text())
        out[data["stage"]] = {**data, "dir": str(manifest.parent)}
    return out


# --- provenance ----------------------------------------------------------------------------------------


def git(*args: str, root: Path = ROOT) -> str | None:
    """`git ARGS` in `root`; None when git or the repository is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.rstrip() if done.returncode == 0 else None


def git_state(root: Path = ROOT) -> dict:
    """The commit checked out, and whether nega or the benchmark code differ from it (`dirty`, with the
    changed paths); None for both outside a git checkout."""
    commit = git("rev-parse", "HEAD", root=root)
    status = git("status", "--porcelain", "--", *SOURCE_PATHS, root=root) if commit else None
    changed = [line[3:] for line in status.splitlines()] if status else []
    return {"git_commit": commit, "dirty": None if status is None else bool(changed), "dirty_paths": changed}


def nega_source_sha256(root: Path = ROOT) -> str:
    """sha256 over nega's .py and recipe files (paths and bytes), in path order."""
    source = hashlib.sha256()
    package = root / "nega"
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.yaml")]):
        source.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return source.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def scripts_run(*modules: str | Path) -> list[Path]:
    """The benchmark files a run executes: the script started (`sys.argv[0]`, e.g. real_stepneg.py), the
    modules it names (e.g. quality_stepneg.py, whose code real_stepneg.py runs) and the shared ones."""
    here = Path(__file__).resolve().parent
    files = [Path(m).resolve() for m in modules]
    started = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0].endswith(".py") else None
    if started is not None and started.is_file():
        files.insert(0, started)
    files += [here / name for name in SHARED_SCRIPTS if (here / name).is_file()]
    return list(dict.fromkeys(files))


def relative(path: Path, root: Path = ROOT) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def invocation(*modules: str | Path, root: Path = ROOT) -> dict:
    """This process as a benchmark invocation: its full command line, when it started, the commit and
    dirty flag, sha256 of every benchmark file it runs and of nega's source, and the host."""
    return {
        "argv": [sys.executable, *sys.argv],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_unix": round(time.time(), 3),
        **git_state(root),
        "scripts_sha256": {relative(p, root): file_sha256(p) for p in scripts_run(*modules)},
        "nega_source_sha256": nega_source_sha256(root),
        "host": platform.node(),
        "pid": os.getpid(),
    }


def begin_invocation(work: Path, *modules: str | Path, root: Path = ROOT) -> dict:
    """Append this invocation to the work folder's log (`invocations.json`); a benchmark resumed from
    the same work folder keeps every earlier invocation there. Returns this one's record."""
    record = invocation(*modules, root=root)
    write_invocations(work, [*read_invocations(work), record])
    return record


def end_invocation(work: Path, record: dict, *, root: Path = ROOT) -> dict:
    """Close this invocation (when it finished, its wall time, whether nega's source changed while it
    ran) in the log, and return the provenance of every invocation in it (`summarize`)."""
    finished = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.time() - record["started_unix"], 1),
        "nega_source_changed_during_run": nega_source_sha256(root) != record["nega_source_sha256"],
    }
    this = (record["started_unix"], record["pid"])
    log = [
        {**entry, **finished} if (entry["started_unix"], entry["pid"]) == this else entry
        for entry in read_invocations(work)
    ]
    write_invocations(work, log)
    return summarize(log)


def read_invocations(work: Path) -> list[dict]:
    path = Path(work) / INVOCATIONS
    return json.loads(path.read_text()) if path.is_file() else []


def write_invocations(work: Path, log: list[dict]) -> None:
    Path(work).mkdir(parents=True, exist_ok=True)
    (Path(work) / INVOCATIONS).write_text(json.dumps(log, indent=1) + "\n")


def summarize(log: list[dict]) -> dict:
    """A result's provenance from its invocations (oldest first): the last one's commit and files, dirty
    when any invocation ran on a changed tree, and whether they all ran the same code."""
    last = log[-1]
    code = {(e["git_commit"], e["nega_source_sha256"], json.dumps(e["scripts_sha256"], sort_keys=True))
            for e in log}  # fmt: skip
    return {
        "git_commit": last["git_commit"],
        "dirty": any(e["dirty"] for e in log) if all(e["dirty"] is not None for e in log) else None,
        "scripts_sha256": last["scripts_sha256"],
        "nega_source_sha256": last["nega_source_sha256"],
        "same_code_every_invocation": len(code) == 1,
        "nega_source_changed_during_run": any(e.get("nega_source_changed_during_run") for e in log),
        "invocations": log,
    }
