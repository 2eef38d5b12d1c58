"""bench_startup runs `nega --help`, `nega validate` and the import in fresh processes and writes medians."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_startup_writes_every_way(tmp_path):
    out = tmp_path / "startup.json"
    command = [sys.executable, str(BENCHMARKS / "bench_startup.py"), "--reps", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert set(result["ways"]) == {"help", "validate", "import"}
    for way in result["ways"].values():
        assert len(way["seconds"]) == 2 and all(s > 0 for s in way["seconds"])
        assert way["median_seconds"] == pytest.approx(sum(way["seconds"]) / 2)  # the median of two
    assert {"platform", "cpus", "torch"} <= set(result["machine"])
