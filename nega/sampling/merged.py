"""Sampling a LoRA adapter as merged weights: the adapter is folded into a copy of the base model and an
engine without LoRA layers samples that copy.

vLLM's CPU backend applies an active adapter at about a third of its plain speed (bench_sampling's
`vllm_lora` way), while merging a small model's adapter and starting an engine on the result takes
seconds; so on a CPU, evaluations and online rounds that sample many tokens through one adapter are
faster merged (`sampling.adapter_mode: auto` picks this when no GPU is visible). On GPUs the LoRA
kernels cost little and one engine serves every adapter, so `auto` keeps the adapter there.

At most `max_engines` engines stay up (default 2: the base and the latest adapter, so an evaluation
that alternates between the starting model and one trained adapter over several prompt sets starts each
engine once). The base engine, once started, stays up until `close()`: a run samples its base model
again and again, and it is never started twice. Among the merged copies the least recently used one is
closed first. A merged copy is kept per adapter version
(folder and weights mtime) in a temporary folder, removed on `close()`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from nega.sampling.base import Completion, Prompt, adapter_version


class MergedAdapterSampler:
    """The Sampler protocol over engines built by `make(folder)`, each serving one set of weights."""

    def __init__(
        self,
        model_path: str | Path,
        make: Callable[[str], object],
        *,
        dtype: str = "auto",
        max_engines: int = 2,
    ):
        """`make(folder)` starts a sampler without LoRA layers on a model folder; the base weights are
        loaded in `dtype` for merging (the checkpoint's, so base and merged copies sample alike)."""
        self.model_path = str(model_path)
        self.make = make
        self.dtype = dtype
        self.max_engines = max(1, max_engines)
        self.work = Path(tempfile.mkdtemp(prefix="nega-merged-"))
        self.merged: dict[tuple[Path, int], Path] = {}
        self.engines: dict[str, object] = {}  # folder -> engine, least recently used first
        self.merges = 0
        self.starts = 0

    def generate(
        self,
        prompts: list[Prompt],
        *,
        adapter: str | Path | None = None,
        description: str = "sampling",
        **options,
    ) -> list[list[Completion]]:
        folder = self.model_path if adapter is None else str(self._merged(adapter))
        engine = self.engines.pop(folder, None)
        if engine is None:
            merged = [f for f in self.engines if f != self.model_path]  # least recently used first
            while merged and len(self.engines) >= self.max_engines:
                self.engines.pop(merged.pop(0)).close()
            engine = self.make(folder)
            self.starts += 1
        self.engines[folder] = engine  # now the most recently used
        return engine.generate(prompts, description=description, **options)

    def _merged(self, adapter: str | Path) -> Path:
        from nega.models import merge_adapter
        from nega.progress import progress_bar

        key = adapter_version(adapter)
        if key not in self.merged:
            out = self.work / f"merged-{len(self.merged)}"
            with progress_bar(f"merging {key[0].name} into {Path(self.model_path).name}", total=1) as advance:
                merge_adapter(self.model_path, key[0], out, dtype=self.dtype)
                advance(1)
            self.merged[key] = out
            self.merges += 1
        return self.merged[key]

    def hand_back(self) -> None:
        """Every running engine gives its accelerator memory back until its next call."""
        for engine in self.engines.values():
            hand_back = getattr(engine, "hand_back", None)
            if hand_back is not None:
                hand_back()

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
        shutil.rmtree(self.work, ignore_errors=True)
        self.merged.clear()
