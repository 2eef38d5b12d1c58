"""Same recipe and seed, same results: a toy recipe run twice into two run folders writes the same
toy model, samples, reference log-probs, adapter, losses and evaluation, and the vLLM backend gives
the same samples in two separate processes (engines) on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nega_testing import require_module, shared_data

pytestmark = pytest.mark.slow

TOY = {
    "toy.steps": 60, "toy.n_train": 24, "toy.n_test": 8, "sampling.n": 2, "sampling.max_tokens": 16,
    "train.max_steps": 4, "train.batch_size": 4, "train.logging_steps": 1, "train.save_steps": 2,
    "d2o.compare": "[]", "d2o.eval_samples": 2,
}  # fmt: skip
# Trainer's timings, the pickled TrainingArguments (which hold the run folder's path), and the run
# folder's lock (which holds the pid of the process that ran it).
TIMINGS = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}
SKIPPED = {"training_args.bin", ".lock"}


def nega(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEGA_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "nega", *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def comparable(path: Path, output_dir: Path):
    """A file's content, less what differs between two output folders: their paths and the timings."""
    if path.suffix not in (".json", ".jsonl", ".md", ".yaml", ".jinja"):
        return path.read_bytes()
    text = path.read_text().replace(str(output_dir), "<output_dir>")
    if path.name == "reference_cache.jsonl":  # keys hash the model's path, values must match
        return [json.loads(line)["v"] for line in text.splitlines()]
    if path.name == "starts.jsonl":  # start times
        return [json.loads(line)["resumed_from"] for line in text.splitlines()]
    if path.name == "adapter_config.json":  # peft writes target_modules, a set, in hash order
        config = json.loads(text)
        return {**config, "target_modules": sorted(config["target_modules"])}
    if path.name == "train_log.json":
        log = json.loads(text)
        return [{k: v for k, v in entry.items() if k not in TIMINGS} for entry in log["history"]]
    if path.name == "results.json":  # every stage's seconds
        return {k: v for k, v in json.loads(text).items() if k != "stages"}
    if path.name == "report.md":  # its last section is the stages' seconds
        return text.split("## Stages")[0]
    if path.name in ("manifest.json", "stage.json"):
        # Timings, and hashes over files that name the folder (compared file by file here instead).
        manifest = json.loads(text)
        return {k: manifest.get(k) for k in ("stage", "config", "counts")}
    return text


def contents(output_dir: Path) -> dict:
    return {
        str(p.relative_to(output_dir)): comparable(p, output_dir)
        for p in sorted(output_dir.rglob("*"))
        if p.is_file() and p.name not in SKIPPED
    }


def test_toy_recipe_twice_gives_the_same_run(tmp_path):
    runs = []
    for name in ("a", "b"):
        nega("run", "toy-d2o", *[f"{k}={v}" for k, v in TOY.items()], f"output_dir={tmp_path / name}")
        runs.append(contents(tmp_path / name))
    first, second = runs
    assert any(name.endswith("samples.jsonl") for name in first)
    assert any(name.endswith("adapter_model.safetensors") for name in first)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_vllm_samples_repeat_across_processes(tiny_model_dir, tmp_path):
    require_module("vllm")
    values = {
        "model.name": tiny_model_dir, "model.dtype": "float32", "data.path": shared_data("advbench", "harmful_behaviors.csv"),
        "data.fields.prompt": "goal", "data.limit": 8, "sampling.backend": "vllm", "sampling.n": 3,
        "sampling.temperature": 1.5, "sampling.max_tokens": 12, "sampling.seed": 3, "lora.r": 8,
    }  # fmt: skip
    samples = []
    for name in ("a", "b"):
        nega(
            "sample", "d2o-hh-harmless", *[f"{k}={v}" for k, v in values.items()], "-o", str(tmp_path / name)
        )
        samples.append((tmp_path / name / "01-sample" / "samples.jsonl").read_text())
    rows = [json.loads(line) for line in samples[0].splitlines()]
    assert len(rows) == 8 and any(len(set(r["completions"])) > 1 for r in rows)  # really sampled
    assert samples[0] == samples[1]
