"""The speed benchmarks run end to end at their smallest settings and write the documented JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nega_testing import require_module

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SMALLEST = ["--size", "tiny", "--reps", "1", "--prompts", "2", "--n", "2", "--max-tokens", "8"]


def run_script(name: str, tmp_path: Path, *extra: str) -> dict:
    require_module("vllm")
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NEGA_QUIET": "1"}
    command = [sys.executable, str(BENCHMARKS / f"{name}.py"), *SMALLEST, *extra]
    command += ["--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_sampling_writes_ratios_and_medians(tmp_path):
    # Three engines stay up for the interleaved repetitions, beside the session's own: 1 GiB of KV cache
    # each holds the toy model's few sequences and leaves the machine's memory to the rest of the suite.
    result = run_script("bench_sampling", tmp_path, "--reps", "2", "--kv-cache-gib", "1")
    for key in ("sampling_vllm_vs_generate", "sampling_vllm_omp2_vs_generate", "sampling_hf_vs_generate",
                "sampling_vllm_lora_vs_generate", "sampling_vllm_vs_generate_one_prompt"):  # fmt: skip
        assert positive_finite(result[key]) and len(result["per_rep_ratios"][key]) == 2
    # The fractions divide by the ceiling of the same repetition at the way's batch: 2 prompts x 2 samples.
    ceilings = result["ceiling_tokens_per_s_per_rep"]["batch_4"]
    fractions = [r / c for r, c in zip(result["ways"]["vllm"]["tokens_per_s"], ceilings, strict=True)]
    assert result["per_rep_ratios"]["sampling_vllm_fraction_of_ceiling"] == pytest.approx(fractions)
    assert result["sampling_vllm_fraction_of_ceiling"] == pytest.approx(sum(fractions) / 2)
    assert (
        result["ways"]["vllm"]["omp_num_threads"] is None
        and result["ways"]["vllm_omp2"]["omp_num_threads"] == "2"
    )
    for way in ("vllm", "vllm_omp2", "vllm_lora", "hf", "generate", "generate_1"):
        timing = result["ways"][way]
        assert timing["tokens_per_rep"] == 2 * 2 * 8
        assert len(timing["seconds"]) == len(timing["tokens_per_s"]) == 2
        assert positive_finite(timing["median_tokens_per_s"])
    assert positive_finite(result["ways"]["vllm"]["start_seconds"])
    assert result["config"]["max_tokens"] == 8 and result["config"]["omp_num_threads"] == "1"
    assert {"platform", "cpus", "torch", "vllm", "transformers", "device"} <= set(result["machine"])


def test_bench_rollouts_writes_speedup_and_medians(tmp_path):
    result = run_script("bench_rollouts", tmp_path, "--train-steps", "50")
    assert positive_finite(result["rollouts_prefix_cache_speedup"])
    for mode, caching in (("on", True), ("off", False)):
        timing = result["modes"][mode]
        assert timing["enable_prefix_caching"] is caching  # as the engine reports it
        # The engine without caching serves nothing from a cache. (At these sizes the rollout prompts,
        # ~23 tokens, are shorter than one 32-token KV block, so the caching engine has nothing to reuse.)
        rates = [rep["prefix_cache_hit_rate"] for rep in timing["reps"]]
        assert all(0.0 <= r <= 1.0 for r in rates) and (caching or rates == [0.0]), (mode, rates)
        assert timing["median_prefix_cache_hit_rate"] == rates[0]
        assert len(timing["reps"]) == 1 and timing["reps"][0]["rollouts"] > 0
        # Every rolled-out prefix gets best_of x rollout_groups = 10 continuations.
        assert timing["reps"][0]["rollouts"] == 10 * timing["reps"][0]["prefixes_rolled"]
        assert positive_finite(timing["median_rollouts_per_s"])
    assert result["negatives"]["count"] > 0
    assert {"platform", "cpus", "torch", "vllm", "transformers", "device"} <= set(result["machine"])
