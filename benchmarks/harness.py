"""What every benchmark shares: the machine beside its numbers, the results file, per-seed statistics,
and running a recipe as `nega run` does.

The speed benchmarks (bench_*.py) time one component against its alternatives; the quality benchmarks
(quality_*.py) train methods on the toy worlds. Import it from a script in this folder:

    from harness import machine, run_recipe, seed_summary, write_result
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
from pathlib import Path


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
