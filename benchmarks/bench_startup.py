"""Start-up time of nega's command line: what a user waits for before anything runs.

Each way is a fresh process, timed from start to exit, `--reps` times:

    help        nega --help
    validate    nega validate toy-d2o (reads, validates and prints a recipe; loads no model)
    import      python -c "import nega.cli, nega.config" (the import alone)

The tests check what keeps these fast (no torch, vLLM or transformers import on these paths); the
seconds themselves depend on the machine and its load, so they are measured here, beside the machine
description, rather than asserted in tests.

Writes benchmarks/results/bench_startup.json.

    .venv/bin/python benchmarks/bench_startup.py [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import machine, write_result

RESULTS = Path(__file__).parent / "results"
WAYS = {
    "help": [sys.executable, "-m", "nega.cli", "--help"],
    "validate": [sys.executable, "-m", "nega.cli", "validate", "toy-d2o"],
    "import": [sys.executable, "-c", "import nega.cli, nega.config"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_startup.json")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEGA_QUIET": "1"}
    described = machine("cpu")
    ways = {}
    for way, command in WAYS.items():
        subprocess.run(command, env=env, capture_output=True, check=True)  # warm the file cache, untimed
        seconds = []
        for _ in range(args.reps):
            started = time.perf_counter()
            subprocess.run(command, env=env, capture_output=True, check=True)
            seconds.append(time.perf_counter() - started)
        ways[way] = {"median_seconds": statistics.median(seconds), "seconds": seconds}
        print(f"{way}: median {ways[way]['median_seconds']:.2f} s", file=sys.stderr, flush=True)
    result = {
        "benchmark": "bench_startup",
        "ways": ways,
        "config": {"reps": args.reps, "commands": {way: command[1:] for way, command in WAYS.items()}},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": described,
    }
    write_result(args.out, result)
    print(json.dumps({way: round(w["median_seconds"], 2) for way, w in ways.items()}))


if __name__ == "__main__":
    main()
