"""Shared fixtures: tiny models and tokenizers built locally, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NEGA_QUIET", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from nega_testing import CORPUS_PAIRS, SHARED_DATA, shared_data  # noqa: E402,F401  (re-exported)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (head_dim 32) + BPE tokenizer, trained 400 steps on CORPUS_PAIRS, saved to disk."""
    import torch

    from nega.sampling.base import render_prompt
    from nega.toy.model import build_model, build_tokenizer, save_model, train_on_pairs

    # One thread: a 64-wide model gains nothing from more, and on a busy 2-core machine two OpenMP
    # threads made this training 10x slower (measured: 50 steps 3 s vs 30-39 s at load 6-7).
    torch.set_num_threads(1)
    texts = [p + " " + r for p, r in CORPUS_PAIRS]
    tokenizer = build_tokenizer(texts * 3, vocab_size=300)
    model = build_model(tokenizer, size="tiny", seed=0)
    pairs = [(render_prompt(tokenizer, [{"role": "user", "content": p}]), r) for p, r in CORPUS_PAIRS]
    train_on_pairs(model, tokenizer, pairs, steps=400, lr=3e-3, batch_size=32, seed=0)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")
