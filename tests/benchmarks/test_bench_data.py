"""bench_data at 2,000 rows: both arms prepare the same D²O rows, and the JSON holds the ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bench_data_writes_both_ratios_from_the_same_rows(tmp_path):
    out = tmp_path / "bench_data.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NEGA_QUIET": "1"}
    command = [sys.executable, str(BENCHMARKS / "bench_data.py"), "--rows", "2000"]
    command += ["--work", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    arms = result["arms"]
    assert arms["old"]["rows"] == arms["new"]["rows"] == arms["new_cached"]["rows"] == 1000
    assert result["data_peak_rss_vs_old"] == arms["new"]["peak_bytes"] / arms["old"]["peak_bytes"]
    assert result["data_cached_vs_first"] == arms["new_cached"]["seconds"] / arms["new"]["seconds"]
    # The cached run reopened the converted file instead of converting again.
    assert arms["new_cached"]["seconds"] < arms["new"]["seconds"]
    assert result["config"]["rows"] == 2000 and result["provenance"]
    # The generated file is kept for the next run.
    assert (tmp_path / "work" / "unpaired-2000.jsonl").stat().st_size == result["config"]["file_bytes"]
