"""Kill `nega run` with SIGKILL at each kind of stage, re-run the same command, and compare with one
uninterrupted run: finished stages are skipped, partial work (training checkpoints, the reference
log-prob cache) is kept and continued, and the losses, adapter and evaluation equal the uninterrupted
run's exactly (same data order, RNG states, greedy evaluation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nega_testing import shared_data

pytestmark = pytest.mark.slow

NAME = "d2o-hh-harmless"
# Kills the process right after the first chunk of reference log-probs reaches the cache. That moment
# lasts well under a second (two 512-pair chunks take 0.7 s in all), too short to hit reliably by
# watching the cache file from outside, so the process SIGKILLs itself there.
KILL_AFTER_FIRST_CACHE_CHUNK = """
import os, signal, sys
from nega.cli import main
from nega.logps import LogpCache

add = LogpCache.add


def add_then_die(self, items):
    add(self, items)
    os.kill(os.getpid(), signal.SIGKILL)


LogpCache.add = add_then_die
sys.argv[0] = "nega"
main()
"""


def overrides(model_dir, out) -> list[str]:
    values = {
        "model.name": model_dir, "model.dtype": "float32", "model.max_length": 128,
        # 136 prompts x (2 self-samples + negative + KL pair) = 544 reference log-probs: two cache chunks.
        "data.path": shared_data("hh-rlhf", "harmless-base_test.jsonl"), "data.limit": 136,
        "train.max_steps": 6, "train.batch_size": 4, "train.save_steps": 2, "train.logging_steps": 1,
        "sampling.n": 2, "sampling.backend": "hf", "sampling.max_tokens": 16, "sampling.batch_size": 32,
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0,
        "eval.harm.prompts": shared_data("advbench", "harmful_behaviors.csv"), "eval.harm.limit": 4,
        "eval.harm.max_tokens": 8, "output_dir": out,
    }  # fmt: skip
    return ["run", NAME, *[f"{k}={v}" for k, v in values.items()]]


def command(model_dir, out) -> list[str]:
    return [sys.executable, "-m", "nega", *overrides(model_dir, out)]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NEGA_QUIET": "1", "HF_HUB_OFFLINE": "1"}


def run_until(cmd, ready, timeout=300) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds (polled every 50 ms)."""
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before the kill point; the test proves nothing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def finish(model_dir, out) -> Path:
    done = subprocess.run(command(model_dir, out), env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(out) / NAME


def stage_dir(run_dir: Path, suffix: str) -> Path:
    return next(run_dir.glob(f"*-{suffix}"))


def manifests(run_dir: Path, *suffixes: str) -> dict[str, str]:
    return {s: (stage_dir(run_dir, s) / "manifest.json").read_text() for s in suffixes}


def history(run_dir: Path) -> list[float]:
    log = json.loads((stage_dir(run_dir, "d2o-train") / "train_log.json").read_text())
    return [round(h["loss"], 6) for h in log["history"] if "loss" in h]


def starts(run_dir: Path) -> list[str | None]:
    lines = (stage_dir(run_dir, "d2o-train") / "checkpoints" / "starts.jsonl").read_text().splitlines()
    return [json.loads(line)["resumed_from"] for line in lines]


def evaluation(run_dir: Path) -> dict:
    """The final metrics and every evaluated completion, per label."""
    harm = stage_dir(run_dir, "eval-harm")
    completions = {
        label: [
            json.loads(line)["completion"]
            for line in (harm / label / "samples.jsonl").read_text().splitlines()
        ]
        for label in ("start", "d2o")
    }
    metrics = json.loads((run_dir / "results.json").read_text())["arms"]
    return {"metrics": metrics, "completions": completions}


def assert_same_result(run_dir: Path, reference: Path) -> None:
    import torch
    from safetensors.torch import load_file

    assert history(run_dir) == history(reference)
    ref, got = (
        load_file(stage_dir(d, "d2o-train") / "adapter" / "adapter_model.safetensors")
        for d in (reference, run_dir)
    )
    assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    assert evaluation(run_dir) == evaluation(reference)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> Path:
    """One uninterrupted run, compared with every interrupted one."""
    return finish(tiny_model_dir, tmp_path_factory.mktemp("reference"))


def test_sigkill_during_sampling_and_training_then_resume(tiny_model_dir, tmp_path, reference):
    out = tmp_path / "killed"
    run_dir = out / NAME
    # 1. Killed while sampling: the stage folder exists, its manifest does not.
    run_until(command(tiny_model_dir, out), lambda: (run_dir / "01-sample").exists())
    assert not (run_dir / "01-sample" / "manifest.json").exists()
    # 2. Killed mid-training, right after the step-2 checkpoint is complete.
    run_until(
        command(tiny_model_dir, out),
        lambda: any(
            (p / "trainer_state.json").exists() for p in run_dir.glob("*-d2o-train/checkpoints/checkpoint-2")
        ),
    )
    before = manifests(run_dir, "sample", "reflogps")
    assert not list(run_dir.glob("*-d2o-train/manifest.json"))
    # 3. The same command again finishes the run.
    finish(tiny_model_dir, out)

    assert manifests(run_dir, "sample", "reflogps") == before  # skipped, not redone
    assert [s is None for s in starts(run_dir)] == [True, False]
    assert starts(run_dir)[-1].endswith("checkpoint-2")
    # Steps 1-2 come from the checkpoint's state, 3-6 were trained after the resume; all equal the
    # uninterrupted run's (optimizer, scheduler, RNG and data order restored).
    assert_same_result(run_dir, reference)


def test_sigkill_during_reference_logps_keeps_the_cached_chunks(tiny_model_dir, tmp_path, reference):
    out = tmp_path / "killed"
    run_dir = out / NAME
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_CACHE_CHUNK, *overrides(tiny_model_dir, out)],
        env=env(), capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    reflogps = stage_dir(run_dir, "reflogps")
    cache = reflogps / "reference_cache.jsonl"
    lines = cache.read_text().splitlines()
    kept = [json.loads(line)["k"] for line in lines]
    reference_cache = stage_dir(reference, "reflogps") / "reference_cache.jsonl"
    total = {json.loads(line)["k"] for line in reference_cache.read_text().splitlines()}
    assert 0 < len(kept) < len(total) and not (reflogps / "manifest.json").exists()
    sample = manifests(run_dir, "sample")
    # The same entries in reverse order: a cache rebuilt from scratch would list them in the original
    # order, so it cannot pass for the kept one below.
    cache.write_text("".join(line + "\n" for line in reversed(lines)))

    finish(tiny_model_dir, out)
    assert manifests(run_dir, "sample") == sample
    after = cache.read_text().splitlines()
    assert after[: len(lines)] == lines[::-1]
    added = [json.loads(line)["k"] for line in after[len(lines) :]]
    # The rerun scored only what the kill left unscored: no kept key again, and nothing missing.
    assert not set(added) & set(kept) and set(kept) | set(added) == total
    examples = (reflogps / "examples.jsonl").read_text()
    assert examples == (stage_dir(reference, "reflogps") / "examples.jsonl").read_text()
    assert starts(run_dir) == [None]
    assert_same_result(run_dir, reference)


def test_sigkill_during_eval_reruns_only_the_eval(tiny_model_dir, tmp_path, reference):
    out = tmp_path / "killed"
    run_dir = out / NAME
    run_until(command(tiny_model_dir, out), lambda: bool(list(run_dir.glob("*-eval-harm"))))
    assert not list(run_dir.glob("*-eval-harm/manifest.json"))
    assert "evaluations" not in json.loads((run_dir / "results.json").read_text())
    before = manifests(run_dir, "sample", "reflogps", "d2o-train")

    finish(tiny_model_dir, out)
    assert manifests(run_dir, "sample", "reflogps", "d2o-train") == before
    assert starts(run_dir) == [None]  # training ran once, in the killed run
    assert (stage_dir(run_dir, "eval-harm") / "manifest.json").exists()
    assert_same_result(run_dir, reference)
    # The same report, but for the stages' seconds it ends with.
    assert (run_dir / "report.md").read_text().split("## Stages")[0] == (
        reference / "report.md"
    ).read_text().split("## Stages")[0]
