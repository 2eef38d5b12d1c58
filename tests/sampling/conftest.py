"""Fixtures for the sampler backends: a LoRA adapter folder and engines started once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nega_testing import require_module
from sampling_helpers import write_lora_adapter


@pytest.fixture(scope="session")
def lora_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return write_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter-a", seed=1)


@pytest.fixture(scope="session")
def hf_sampler(tiny_model_dir):
    from nega.config import SamplingConfig
    from nega.sampling.hf import HFSampler

    # batch_size 2 so a handful of prompts already spans several sorted, left-padded batches.
    sampler = HFSampler(tiny_model_dir, SamplingConfig(backend="hf", batch_size=2))
    yield sampler
    sampler.close()


@pytest.fixture(scope="session")
def vllm_sampler(tiny_model_dir):
    """One real vLLM engine for the whole test session (starting one takes 15 s or more here)."""
    require_module("vllm")
    from nega.config import SamplingConfig
    from nega.sampling.vllm import VLLMSampler

    # The engine processes inherit the environment when they start: one OpenMP thread each, for the
    # same reason as `one_torch_thread` (measured here: 1 s instead of 10-17 s per vLLM test when busy).
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        # Rank 4 is not a vLLM slot size: the sampler rounds it up to 8, as the rank-8 test adapters need.
        sampler = VLLMSampler(tiny_model_dir, SamplingConfig(backend="vllm", kv_cache_gib=1), max_lora_rank=4)
    finally:
        if threads is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    yield sampler
    sampler.close()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Sampling tests run the tiny model in one thread: on a busy 2-core machine a second OpenMP thread
    made generate about 10x slower, and a 64-wide model gains nothing from it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
