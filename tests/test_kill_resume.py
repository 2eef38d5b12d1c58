"""Kill `nega run` with SIGKILL mid-sampling and mid-training, re-run the same command, and compare with
an uninterrupted run: finished stages are skipped, training resumes from its last checkpoint, and the
final losses and adapter equal the uninterrupted run's."""

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


def command(model_dir, data, out) -> list[str]:
    values = {
        "model.name": model_dir, "model.dtype": "float32", "model.max_length": 128, "data.path": data,
        "data.limit": 16, "train.max_steps": 6, "train.batch_size": 4, "train.save_steps": 2,
        "train.logging_steps": 1, "sampling.n": 2, "sampling.backend": "hf", "sampling.max_tokens": 16,
        "sampling.batch_size": 2, "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "eval.harm": "null",
        "output_dir": out,
    }  # fmt: skip
    return [sys.executable, "-m", "nega", "run", "d2o-hh-harmless", *[f"{k}={v}" for k, v in values.items()]]


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


def history(run_dir: Path) -> list[float]:
    train = next(run_dir.glob("*-d2o-train"))
    return [
        round(h["loss"], 6)
        for h in json.loads((train / "train_log.json").read_text())["history"]
        if "loss" in h
    ]


def adapter_weights(run_dir: Path):
    from safetensors.torch import load_file

    return load_file(next(run_dir.glob("*-d2o-train")) / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_sigkill_during_sampling_and_training_then_resume(tiny_model_dir, tmp_path):
    import torch

    data = shared_data("hh-rlhf", "harmless-base_test.jsonl")
    reference = tmp_path / "reference"
    subprocess.run(command(tiny_model_dir, data, reference), env=env(), check=True, capture_output=True)

    out = tmp_path / "killed"
    run_dir = out / "d2o-hh-harmless"
    # 1. Killed while sampling: the stage folder exists, its manifest does not.
    run_until(command(tiny_model_dir, data, out), lambda: (run_dir / "01-sample").exists())
    assert not (run_dir / "01-sample" / "manifest.json").exists()
    # 2. Killed mid-training, right after the step-2 checkpoint is complete.
    run_until(
        command(tiny_model_dir, data, out),
        lambda: any(
            (p / "trainer_state.json").exists() for p in run_dir.glob("*-d2o-train/checkpoints/checkpoint-2")
        ),
    )
    sample_manifest = (run_dir / "01-sample" / "manifest.json").read_text()
    assert not list(run_dir.glob("*-d2o-train/manifest.json"))
    # 3. The same command again finishes the run.
    done = subprocess.run(command(tiny_model_dir, data, out), env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    assert (run_dir / "01-sample" / "manifest.json").read_text() == sample_manifest  # skipped, not redone
    starts = (next(run_dir.glob("*-d2o-train")) / "checkpoints" / "starts.jsonl").read_text().splitlines()
    assert [json.loads(s)["resumed_from"] is None for s in starts] == [True, False]
    assert json.loads(starts[-1])["resumed_from"].endswith("checkpoint-2")
    # Steps 1-2 come from the checkpoint's state, 3-6 were trained after the resume; all equal the
    # uninterrupted run's (optimizer, scheduler, RNG and data order restored).
    assert history(run_dir) == history(reference / "d2o-hh-harmless")
    ref, got = adapter_weights(reference / "d2o-hh-harmless"), adapter_weights(run_dir)
    assert set(ref) == set(got) and all(torch.allclose(ref[k], got[k], atol=1e-6) for k in ref)
