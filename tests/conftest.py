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

from nega_testing import (  # noqa: E402,F401  (re-exported)
    CORPUS_PAIRS,
    HARDWARE_SKIP,
    SHARED_DATA,
    STRICT_ENV,
    require_all,
    shared_data,
)


def _strict(report):
    """Under NEGA_REQUIRE_ALL=1 a skip fails unless it is for hardware no CI machine has (nega_testing);
    this catches a skip that does not go through nega_testing's helpers, e.g. a bare importorskip."""
    if not (report.skipped and require_all()) or hasattr(report, "wasxfail"):
        return report
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if HARDWARE_SKIP not in reason:
        report.outcome = "failed"
        report.longrepr = (
            f"{reason}\n{STRICT_ENV}=1 turns this skip into a failure: install or provide what is missing "
            "(tests/nega_testing.py names how); only hardware no CI machine has may skip"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _strict((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _strict((yield))


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
