"""Sampling an adapter as merged weights: same answers as the adapter applied live, one merge per
adapter version, one engine at a time, and `adapter_mode` resolved per device."""

from __future__ import annotations

from pathlib import Path

import pytest
from sampling_helpers import chat, write_lora_adapter

from nega.config import SamplingConfig
from nega.sampling.backends import adapter_mode, make_sampler
from nega.sampling.hf import HFSampler
from nega.sampling.merged import MergedAdapterSampler

PROMPTS = [chat("what is 2 plus 3?"), chat("name a color."), chat("say hello.")]


def test_merged_adapter_samples_what_the_live_adapter_samples(tiny_model_dir, lora_adapter_dir):
    cfg = SamplingConfig(backend="hf", batch_size=4)
    started: list[str] = []

    def make(folder: str):
        started.append(folder)
        return HFSampler(folder, cfg)

    live = HFSampler(tiny_model_dir, cfg)
    merged = MergedAdapterSampler(tiny_model_dir, make)
    try:
        options = {"temperature": 0.0, "max_tokens": 12}
        expected = [g[0].text for g in live.generate(PROMPTS, adapter=lora_adapter_dir, **options)]
        plain = [g[0].text for g in live.generate(PROMPTS, **options)]
        assert expected != plain  # the adapter changes the answers, so the comparison means something
        assert [g[0].text for g in merged.generate(PROMPTS, adapter=lora_adapter_dir, **options)] == expected
        assert [g[0].text for g in merged.generate(PROMPTS, adapter=lora_adapter_dir, **options)] == expected
        assert merged.merges == 1 and len(started) == 1  # merged once, the engine kept
        assert [g[0].text for g in merged.generate(PROMPTS, **options)] == plain
        assert started[-1] == str(tiny_model_dir)  # a call without adapter samples the base
        # Two engines stay up: alternating between the adapter and the base starts nothing new.
        merged.generate(PROMPTS, adapter=lora_adapter_dir, **options)
        merged.generate(PROMPTS, **options)
        assert merged.starts == 2 and len(started) == 2
        work = merged.work
    finally:
        live.close()
        merged.close()
    assert not Path(work).exists()


def test_least_recently_used_engine_is_closed_first(tiny_model_dir, tmp_path):
    closed = []

    class Engine:
        def __init__(self, folder):
            self.folder = folder

        def generate(self, prompts, **options):
            return [[self.folder] for _ in prompts]

        def close(self):
            closed.append(self.folder)

    one = write_lora_adapter(tiny_model_dir, tmp_path / "one", seed=5)
    two = write_lora_adapter(tiny_model_dir, tmp_path / "two", seed=6)
    merged = MergedAdapterSampler(tiny_model_dir, Engine, max_engines=2)
    try:
        base = merged.generate(["p"])[0][0]
        first = merged.generate(["p"], adapter=one)[0][0]
        merged.generate(["p"])  # the base is used again, so adapter one is now the oldest
        merged.generate(["p"], adapter=two)
        assert closed == [first] and base not in closed and merged.starts == 3
    finally:
        merged.close()
    assert len(closed) == 3


def test_the_base_engine_stays_up_while_adapters_come_and_go(tiny_model_dir, tmp_path):
    """A run samples its base model again and again: however many adapters pass through, the base
    engine is started once."""
    started = []

    class Engine:
        def __init__(self, folder):
            started.append(folder)

        def generate(self, prompts, **options):
            return [[None] for _ in prompts]

        def close(self):
            pass

    adapters = [write_lora_adapter(tiny_model_dir, tmp_path / f"a{i}", seed=10 + i) for i in range(3)]
    merged = MergedAdapterSampler(tiny_model_dir, Engine, max_engines=2)
    try:
        merged.generate(["p"])
        for adapter in adapters:  # the base is now the least recently used engine, and is kept
            merged.generate(["p"], adapter=adapter)
            merged.generate(["p"], adapter=adapter)
        merged.generate(["p"])
        assert started.count(str(tiny_model_dir)) == 1 and merged.starts == 4
    finally:
        merged.close()


def test_new_weights_in_the_same_folder_are_merged_again(tiny_model_dir, tmp_path):
    adapter = write_lora_adapter(tiny_model_dir, tmp_path / "adapter", seed=3)
    merged = MergedAdapterSampler(
        tiny_model_dir, lambda folder: HFSampler(folder, SamplingConfig(backend="hf"))
    )
    try:
        first = merged.generate(PROMPTS[:1], adapter=adapter, temperature=0.0, max_tokens=8)
        write_lora_adapter(tiny_model_dir, adapter, seed=4)  # an online round overwrites its folder
        merged.generate(PROMPTS[:1], adapter=adapter, temperature=0.0, max_tokens=8)
        assert merged.merges == 2 and first
    finally:
        merged.close()


def test_adapter_mode_auto_merges_only_without_a_gpu():
    from nega.plan import DeviceFacts

    cpu, gpu = DeviceFacts(), DeviceFacts(gpus=1, gib_per_gpu=80)
    assert adapter_mode(SamplingConfig(), cpu) == "merged"
    assert adapter_mode(SamplingConfig(adapter_mode="lora"), cpu) == "lora"
    assert adapter_mode(SamplingConfig(), gpu) == "lora"
    assert adapter_mode(SamplingConfig(adapter_mode="merged"), gpu) == "merged"


def test_hf_backend_keeps_live_adapters(tiny_model_dir):
    sampler = make_sampler(tiny_model_dir, SamplingConfig(backend="hf", adapter_mode="merged"))
    try:
        assert isinstance(sampler, HFSampler)
    finally:
        sampler.close()


@pytest.mark.parametrize("mode", ["merged", "lora"])
def test_vllm_backend_merges_or_keeps_lora_as_asked(tiny_model_dir, monkeypatch, mode):
    import nega.sampling.vllm as vllm_module

    made = []
    monkeypatch.setattr(vllm_module, "VLLMSampler", lambda *a, **k: made.append((a, k)) or "engine")
    sampler = make_sampler(tiny_model_dir, SamplingConfig(backend="vllm", adapter_mode=mode))
    if mode == "merged":
        assert isinstance(sampler, MergedAdapterSampler) and not made  # engines start on first use
        sampler.close()
    else:
        assert sampler == "engine" and made[0][1]["adapters"] is True
