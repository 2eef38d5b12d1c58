"""Sharded LoRA training across 2 CPU processes (gloo) under DDP, ZeRO-2 and ZeRO-3.

Each rank sees half of the same global batch; the per-step losses must match the single-process run, and
the adapter rank 0 saves under ZeRO-3 must be complete, load with peft and reproduce the trained outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from nega_testing import needs_cuda_gpus, require_module

from nega.launch import Launcher, Topology, accelerate_command

TESTS = str(Path(__file__).parent)


@pytest.fixture
def entry_on_path(monkeypatch):
    """The launched ranks import `distributed_entry` from this folder; every such test runs DeepSpeed."""
    require_module("deepspeed")
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(TESTS)


def train(model_dir, out: Path, processes: int, stage: int, *, cpu: bool = True) -> list[float]:
    topology = Topology(gpus=processes, cpu=cpu, main_port=29500 + 10 * stage + processes + 100 * (not cpu))
    kwargs = {"model_dir": str(model_dir), "out_dir": str(out), "stage": stage}
    Launcher(topology).run(
        "distributed_entry:train_lora", kwargs, out, needs_launcher=processes > 1 or stage > 0
    )
    # The ranks really ran the engine asked for (matching losses alone would not tell DDP from ZeRO):
    # the process group's size, and the ZeRO stage read from the DeepSpeed engine the Trainer built.
    (start,) = [json.loads(line) for line in (out / "starts.jsonl").read_text().splitlines()]
    several = "MULTI_CPU" if cpu else "MULTI_GPU"
    expected = ("DEEPSPEED", stage) if stage > 0 else (several if processes > 1 else "NO", 0)
    assert (start["distributed"], start["zero_stage"]) == expected, start
    assert start["world_size"] == processes
    return json.loads((out / "losses.json").read_text())


def test_accelerate_command_for_two_nodes():
    cmd = accelerate_command(Path("p.json"), Topology(gpus=8, nodes=2, node_rank=1, main_address="10.0.0.1"))
    text = " ".join(cmd)
    assert "--num_processes 16" in text and "--num_machines 2" in text and "--machine_rank 1" in text
    assert "--main_process_ip 10.0.0.1" in text and "--multi_gpu" in text
    assert cmd[-3:] == ["--module", "nega.launch", "p.json"]


@pytest.mark.slow
def test_two_process_zero_matches_one_process(tiny_model_dir, tmp_path, entry_on_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    single = train(tiny_model_dir, tmp_path / "single", 1, 0)
    assert len(single) == 4 and single[-1] < single[0]
    for stage in (2, 3):
        sharded = train(tiny_model_dir, tmp_path / f"zero{stage}", 2, stage)
        # Equal losses prove the ranks communicate: rank 0 alone logs the mean over both halves.
        assert sharded == pytest.approx(single, abs=1e-5), f"ZeRO-{stage}"

    # The ZeRO-3 adapter (gathered by rank 0) equals the single-process adapter, tensor by tensor.
    ref = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    got = load_file(tmp_path / "zero3" / "adapter" / "adapter_model.safetensors")
    assert set(got) == set(ref) and len(got) == 28
    for name, tensor in ref.items():
        assert got[name].numel() > 0 and torch.allclose(got[name], tensor, atol=1e-4), name
    assert any(t.abs().sum() > 0 for n, t in got.items() if "lora_B" in n)

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tok(
        "<|user|>\nwhat is 2 plus 1?\n<|assistant|>\n", return_tensors="pt", add_special_tokens=False
    )
    outputs = []
    for folder in ("single", "zero3"):
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / folder / "adapter"
        )
        outputs.append(tok.decode(model.generate(**prompt, max_new_tokens=10, do_sample=False)[0]))
    assert outputs[0] == outputs[1]
    # Trained on "a plus b is a+b+1": the adapter changed the answer.
    assert "is 4." in outputs[0]

    # Log-probs computed through the sharded model (policy, packed policy, and the reference with the
    # adapter disabled) equal the single-process values of the same weights.
    from distributed_entry import training_pairs

    from nega.logps import batched_sequence_logps

    pairs = training_pairs(tok)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = batched_sequence_logps(base, tok, pairs)
    for folder in ("single", "zero2", "zero3"):
        scored = json.loads((tmp_path / folder / "sharded_logps.json").read_text())
        policy = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / folder / "adapter"
        )
        expected = batched_sequence_logps(policy, tok, pairs)
        assert scored["reference"] == pytest.approx(reference, abs=1e-4), folder
        assert scored["policy"] == pytest.approx(expected, abs=1e-4), folder
        assert scored["policy_packed"] == pytest.approx(expected, abs=1e-4), folder
    assert scored["policy"] != pytest.approx(scored["reference"], abs=1e-2)  # the adapter did change them


@pytest.mark.slow
@needs_cuda_gpus(2)
def test_zero3_lora_on_gpus_matches_one_gpu(tiny_model_dir, tmp_path, entry_on_path):
    from safetensors.torch import load_file

    # `train` asserts from starts.jsonl that two ranks ran and that the engine ran ZeRO-3.
    single = train(tiny_model_dir, tmp_path / "one", 1, 0, cpu=False)
    sharded = train(tiny_model_dir, tmp_path / "zero3", 2, 3, cpu=False)
    assert len(single) == 4 and single[-1] < single[0]
    assert sharded == pytest.approx(single, abs=1e-4)
    ref = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    got = load_file(tmp_path / "zero3" / "adapter" / "adapter_model.safetensors")
    assert set(got) == set(ref) and len(got) == 28
    for name, tensor in ref.items():
        assert got[name].numel() > 0 and torch.allclose(got[name].cpu(), tensor.cpu(), atol=1e-3), name
