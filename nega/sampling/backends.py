"""Which backend samples: `make_sampler` builds a vLLM, transformers or server sampler as the recipe's
`sampling` section and the plan (`nega.plan.sampling_layout`) say. It sits above the backends, which
import only `nega.sampling.base`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nega.sampling.base import Sampler


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_sampler(
    model_path: str | Path,
    cfg,
    *,
    max_lora_rank: int = 16,
    dtype: str | None = None,
    adapters: bool = True,
    devices=None,
    max_model_len: int | None = None,
) -> Sampler:
    """A sampler for `model_path` as `cfg` (a SamplingConfig) asks; `auto` = vLLM when installed.

    `adapters=False` promises that no generate call passes an adapter: vLLM then starts without its LoRA
    layers, which cost about 13% of sampling throughput even when no adapter is active (the 25m toy on
    a CPU, benchmarks/bench_sampling.py). With adapters, vLLM applies them as LoRA or samples merged
    copies (`sampling.adapter_mode`, nega.sampling.merged). The other backends load adapters on demand.

    The vLLM engine's dtype and tensor-parallel size come from the plan (`nega.plan.sampling_layout`)
    for `devices` (default: this machine's, `nega.plan.DeviceFacts.detect()`); `dtype` overrides the
    planned dtype. `max_model_len` bounds a vLLM engine's prompt + completion tokens (default: the
    model's whole context; `nega.sampling.vllm.engine_arguments`).
    """
    backend = cfg.backend
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm":
        from nega.plan import DeviceFacts, model_facts, sampling_layout
        from nega.sampling.vllm import VLLMSampler, checkpoint_dtype

        devices = devices or DeviceFacts.detect()
        facts = model_facts(str(model_path), fetch=devices.gpus > 0)
        layout = sampling_layout(facts, devices, cfg, adapters=adapters, backend="vllm")
        if adapters and layout.adapter_mode == "merged":
            from nega.sampling.merged import MergedAdapterSampler

            # Merged copies keep the base checkpoint's dtype, so base and adapters sample alike.
            return MergedAdapterSampler(
                model_path,
                # On a CPU each merged copy's engine reads its own folder's dtype, as before plans.
                lambda folder: VLLMSampler(
                    folder,
                    cfg,
                    dtype=dtype,
                    adapters=False,
                    layout=layout if layout.gpus else None,
                    max_model_len=max_model_len,
                    max_positions=facts.max_positions,
                ),  # fmt: skip
                dtype=checkpoint_dtype(str(model_path)),
            )
        return VLLMSampler(
            model_path, cfg, max_lora_rank=max_lora_rank, dtype=dtype, adapters=adapters, layout=layout,
            max_model_len=max_model_len, max_positions=facts.max_positions,
        )  # fmt: skip
    if backend == "server":
        from nega.sampling.server import ServerSampler

        return ServerSampler(model_path, cfg)
    from nega.sampling.hf import HFSampler

    return HFSampler(model_path, cfg, dtype=dtype)


def adapter_mode(cfg, devices=None) -> str:
    """`sampling.adapter_mode` resolved for `devices` (default: this machine's): `auto` is merged without
    a GPU, lora with one (`nega.plan.resolve_adapter_mode`)."""
    from nega.plan import DeviceFacts, resolve_adapter_mode

    mode = getattr(cfg, "adapter_mode", "lora")
    if mode != "auto":
        return mode
    return resolve_adapter_mode(mode, devices or DeviceFacts.detect())
