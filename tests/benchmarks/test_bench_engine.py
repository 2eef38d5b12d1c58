"""benchmarks/bench_engine.py and bench_sampling.py at their smallest, on the toy model and the HF backend
(the vLLM runs are in test_bench_scripts.py, slow): the documented keys, counted from the real engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nega_testing import shared_data

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NEGA_QUIET": "1",
           "NEGA_DATA": str(shared_data()), "PYTHONPATH": str(BENCHMARKS.parent)}  # fmt: skip
    command = [
        sys.executable,
        str(BENCHMARKS / f"{name}.py"),
        *args,
        "--out",
        str(out),
        "--work",
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_bench_engine_counts_an_engine_per_need_against_one_per_run(tmp_path):
    result = run("bench_engine", tmp_path, "--size", "tiny", "--backend", "hf", "--reps", "2", "--prompts", "2",
                 "--eval-prompts", "2", "--n", "2", "--max-tokens", "4", "--arms", "old,new")  # fmt: skip
    # Old: round 1, round 2, and each evaluated label start their own engine; new: one for them all.
    assert result["engine_starts_old"] == 4 and result["engine_starts_new"] == 1
    assert result["arms"]["old"]["engine_starts"] == [4, 4] and result["arms"]["new"]["engine_starts"] == [
        1,
        1,
    ]
    assert (
        result["per_rep_ratios"]["engine_starts_per_run"] == [1.0, 1.0]
        and result["engine_starts_per_run"] == 1
    )
    per_rep = result["per_rep_ratios"]["eval_wall_new_vs_old"]
    seconds = result["arms"]
    assert per_rep == pytest.approx(
        [n / o for n, o in zip(seconds["new"]["seconds"], seconds["old"]["seconds"], strict=True)]
    )
    assert result["eval_wall_new_vs_old"] == pytest.approx(sum(per_rep) / 2)
    assert result["targets"] == {"eval_wall_new_vs_old": "<= 0.6", "engine_starts_per_run": "<= 1.0"}
    assert result["arms"]["new"]["switch_seconds"][0] > 0
    provenance = result["provenance"]
    assert provenance["git_commit"] and "bench_engine.py" in " ".join(provenance["invocations"][-1]["argv"])


def test_bench_sampling_takes_each_ratio_and_fraction_inside_a_repetition(tmp_path):
    result = run("bench_sampling", tmp_path, "--size", "tiny", "--reps", "2", "--prompts", "2", "--n", "2",
                 "--max-tokens", "8", "--ways", "hf,generate,generate_1")  # fmt: skip
    rates = {way: result["ways"][way]["tokens_per_s"] for way in ("hf", "generate")}
    assert result["per_rep_ratios"]["sampling_hf_vs_generate"] == pytest.approx(
        [h / g for h, g in zip(rates["hf"], rates["generate"], strict=True)]
    )
    # hf and generate decode the same batch (2 prompts x 2 samples), bounded by the ceiling at that batch.
    assert result["ways"]["hf"]["batch_sequences"] == result["ways"]["generate"]["batch_sequences"] == 4
    ceiling = result["ceiling_tokens_per_s_per_rep"]["batch_4"]
    assert len(ceiling) == 2
    fractions = result["per_rep_ratios"]["sampling_hf_fraction_of_ceiling"]
    assert fractions == pytest.approx([r / c for r, c in zip(rates["hf"], ceiling, strict=True)])
    # A fraction above 1 (load on the ceiling alone, at these tiny sizes) is kept and flagged, never silent.
    assert result["invalid_fractions"] == sorted(
        key for key, values in result["per_rep_ratios"].items() if "fraction" in key and max(values) > 1
    )
    assert result["targets"]["sampling_hf_fraction_of_ceiling"] == ">= 0.7"
    assert result["config"]["omp_num_threads"] == "1" and result["config"]["vllm_kv_cache_gib"] == 4
