"""The sampler protocol shared by every backend, and the prompt rendering they share. The backend
choice (`make_sampler`) is `nega.sampling.backends`, above the backends."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

Prompt = str | list[dict]


@dataclass
class Completion:
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length"


@dataclass(frozen=True)
class EngineStart:
    """One sampling engine started in this process: its backend, model folder and seconds to start."""

    backend: str
    model: str
    seconds: float


# Every engine this process started, in order (`record_engine_start`). A run keeps one engine per base
# model (nega.sampling.engine); tests and benchmarks/bench_engine.py count the starts here, where the
# backends start them, so a start that bypasses the run's engines is counted too.
ENGINE_STARTS: list[EngineStart] = []


def record_engine_start(backend: str, model: str | Path, seconds: float) -> None:
    ENGINE_STARTS.append(EngineStart(backend, str(model), seconds))


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


def prompt_token_ids(tokenizer, prompts: list[Prompt]) -> list[list[int]]:
    """Each prompt rendered and tokenized the way training tokenizes it (`nega.chat.encode_prompt`)."""
    from nega.chat import encode_prompt

    encoded = []
    for i, p in enumerate(prompts):
        ids = encode_prompt(tokenizer, render_prompt(tokenizer, p))
        if not ids:
            raise ValueError(f"prompt {i} renders to no tokens; every prompt needs at least one token")
        encoded.append(ids)
    return encoded


def adapter_version(adapter: str | Path) -> tuple[Path, int]:
    """A LoRA adapter folder's resolved path and the mtime (ns) of its weights file.

    Backends key loaded adapters by both, so an online round that overwrites the same folder with new
    weights is loaded afresh instead of served from a stale copy.
    """
    path = Path(adapter).expanduser().resolve()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"LoRA adapter folder {path} has no adapter_config.json; pass a folder written by peft's save_pretrained"
        )
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).is_file():
            return path, (path / name).stat().st_mtime_ns
    raise FileNotFoundError(
        f"LoRA adapter folder {path} has no adapter_model.safetensors or adapter_model.bin"
    )


def request_seed(seed: int, index: int) -> int:
    """The seed of prompt `index` in a call seeded `seed`: a 31-bit hash of both.

    Engines give a request's n samples the seeds s, s+1, ..., s+n-1; hashing (rather than seed + index)
    keeps those ranges apart across prompts and across nearby run seeds.
    """
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
