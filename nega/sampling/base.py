"""The sampler protocol shared by every backend, and the backend choice."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

Prompt = str | list[dict]


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length"


class Sampler(Protocol):
    """n completions for each prompt.

    Prompts are chat messages (rendered with the tokenizer's chat template, generation prompt added)
    or strings used verbatim (already rendered, e.g. a prompt plus a partial solution to continue).
    Same seed -> same completions within a backend. `adapter` is a LoRA adapter folder applied for
    this call only; `close()` frees the engine.
    """

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
    ) -> list[list[Completion]]: ...

    def close(self) -> None: ...


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """Chat messages -> text through the chat template; strings pass through unchanged."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    # Plain LMs: a minimal transcript, so chat data still works with a base model.
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in prompt)
    return turns + "Assistant:"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_sampler(model_path: str | Path, cfg, *, max_lora_rank: int = 16, dtype: str | None = None) -> Sampler:
    """A sampler for `model_path` as `cfg` (a SamplingConfig) asks; `auto` = vLLM when installed."""
    backend = cfg.backend
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm":
        from nega.sampling.vllm import VLLMSampler

        return VLLMSampler(model_path, cfg, max_lora_rank=max_lora_rank, dtype=dtype)
    if backend == "server":
        from nega.sampling.server import ServerSampler

        return ServerSampler(model_path, cfg)
    from nega.sampling.hf import HFSampler

    return HFSampler(model_path, cfg, dtype=dtype)
