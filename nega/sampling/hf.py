"""Sampling with `transformers.generate`: the backend when vLLM is not installed.

Prompts are sorted by token length and generated `batch_size` at a time with left padding, so a batch
pads only to its own longest prompt. Each batch is seeded from (seed, its position in the sorted order),
so the same prompts, seed and batch size give the same completions.

On a CPU the KV cache is transformers' static one, allocated once per call and written in place: the
default dynamic cache grows by concatenation, copying the whole cache at every new token, and with
batch_size x n rows that copying dominates (benchmarks/bench_sampling.py).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from nega.progress import progress_bar
from nega.sampling.base import Completion, Prompt, adapter_version, prompt_token_ids, record_engine_start

# Sampling knobs a checkpoint's generation_config.json may set (Qwen: top_k=20, repetition_penalty=1.05).
# generate() fills unset arguments from it; pinning them to neutral values makes a call sample exactly
# from temperature/top_p, as vLLM does with explicit SamplingParams.
# min_new_tokens None and min_length 0, not min_new_tokens 0: generate turns min_new_tokens into a minimum
# length of prompt + min_new_tokens and adds a processor that rewrites every row's scores at every step.
NEUTRAL_PROCESSORS = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_new_tokens": None,
    "min_length": 0,
}
MAX_LOADED_ADAPTERS = 4  # LoRA adapters kept loaded beside the base (least recently used dropped first)
# min_p None, not 0.0: generate adds a min-p warper for any value that is not None, a softmax over the
# whole vocabulary for every row at every step that changes nothing at 0 (49k-token vocabularies: a few
# per cent of a CPU decode step). The other neutral values already add no warper.
NEUTRAL_WARPERS = {"top_k": 0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}


class HFSampler:
    """n completions per prompt from a transformers causal LM, optionally through a LoRA adapter.

    `dtype` None keeps the checkpoint's own dtype. A LoRA adapter folder passed to `generate` is loaded
    on top of the one base model once (again if its weights file changes) and kept, up to
    MAX_LOADED_ADAPTERS; a call without an adapter runs the base with adapters disabled.
    """

    def __init__(self, model_path: str | Path, cfg, dtype: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        self.model_path = str(model_path)
        self.cfg = cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if self.tokenizer.pad_token_id is None:
            # Padding is masked out and stripped from the output, so any id works; EOS always exists.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.base = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=dtype or "auto").to(
            self.device
        )
        self.base.eval()
        # Measured in one thread (25M-parameter Llama, 32 prompts x 8 samples x 128 tokens, 32 prompts a
        # call): 254 tokens/s with the dynamic cache, 646 with the static one. Not measured on GPUs, which
        # keep transformers' default.
        self.cache_implementation = "static" if self.device.type == "cpu" else None
        self.model = self.base  # becomes a PeftModel once an adapter is loaded
        self.eos_ids = _eos_ids(self.base, self.tokenizer)
        self.adapters: dict[Path, tuple[int, str]] = {}  # folder -> (weights mtime, peft adapter name)
        self.loads = 0
        self.on_host = False  # moved off the accelerator by hand_back until the next generate call
        record_engine_start("hf", self.model_path, time.perf_counter() - started)

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
    ) -> list[list[Completion]]:
        if self.base is None:
            raise RuntimeError("this HFSampler was closed; make a new one to sample again")
        if self.on_host:
            self.base.to(self.device)
            self.on_host = False
        tok = self.tokenizer
        encoded = prompt_token_ids(tok, prompts)
        if adapter is not None:
            self._activate(adapter)
            context = nullcontext()
        elif self.model is not self.base:
            context = self.model.disable_adapter()
        else:
            context = nullcontext()

        greedy = temperature == 0
        # Greedy rows are identical, and generate refuses num_return_sequences > 1 without sampling.
        rows_per_prompt = 1 if greedy else n
        options = dict(
            NEUTRAL_PROCESSORS,
            **({} if greedy else NEUTRAL_WARPERS),
            do_sample=not greedy,
            temperature=1.0 if greedy else temperature,
            top_p=1.0 if greedy else top_p,
            max_new_tokens=max_tokens,
            num_return_sequences=rows_per_prompt,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=tok.pad_token_id,
            cache_implementation=self.cache_implementation,
        )
        if stop:
            # generate stops a row once its text contains a stop string; the text is cut below.
            options.update(stop_strings=list(stop), tokenizer=tok)

        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[list[Completion]] = [[] for _ in prompts]
        batch_size = self.cfg.batch_size
        with torch.no_grad(), context, progress_bar(description, total=len(prompts)) as advance:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                ids, attention = _left_pad([encoded[i] for i in idx], tok.pad_token_id)
                torch.manual_seed(seed * 1_000_003 + start)
                out = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=attention.to(self.device), **options
                )
                new_tokens = out[:, ids.shape[1] :].tolist()
                for row, i in enumerate(idx):
                    rows = new_tokens[row * rows_per_prompt : (row + 1) * rows_per_prompt]
                    results[i] = [self._completion(r, max_tokens, stop) for r in rows]
                    if greedy:  # n separate objects, so a caller editing one leaves the others alone
                        results[i] = [
                            replace(results[i][0], token_ids=list(results[i][0].token_ids)) for _ in range(n)
                        ]
                advance(len(idx))
        return results

    def _completion(self, generated: list[int], max_tokens: int, stop: list[str] | None) -> Completion:
        """Strip the padding after the end, decode, cut the text at the first stop string.

        token_ids keep a final EOS (as vLLM reports them); the text never shows it.
        """
        end = next((j for j, t in enumerate(generated) if t in self.eos_ids), None)
        token_ids = generated if end is None else generated[: end + 1]
        text_ids = token_ids if end is None else token_ids[:-1]
        if end is None:
            # A row stopped by a stop string is padded to the batch's length.
            token_ids = text_ids = _strip_right(token_ids, self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        if stop:
            cuts = [text.find(s) for s in stop if s in text]
            if cuts:
                return Completion(text=text[: min(cuts)], token_ids=token_ids, finish_reason="stop")
        reason = "stop" if end is not None or len(token_ids) < max_tokens else "length"
        return Completion(text=text, token_ids=token_ids, finish_reason=reason)

    def _activate(self, adapter: str | Path) -> None:
        """Make `adapter` the active LoRA, loading it the first time or when its weights changed on disk."""
        from peft import PeftModel

        path, mtime = adapter_version(adapter)
        known = self.adapters.pop(path, None)
        if known is not None and known[0] == mtime:
            self.adapters[path] = known  # now the most recently used
            self.model.set_adapter(known[1])
            return
        name = f"adapter{self.loads}"
        self.loads += 1
        if self.model is self.base:
            self.model = PeftModel.from_pretrained(
                self.base, str(path), adapter_name=name, is_trainable=False
            )
        else:
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.model.set_adapter(name)
        self.model.eval()
        if known is not None:
            # Same folder, new weights (an online round overwrote it): free the stale copy.
            self.model.delete_adapter(known[1])
        self.adapters[path] = (mtime, name)
        # A run's sampler lives for the whole run and meets every period's or round's adapter: keep the
        # few most recently used loaded, not all of them.
        while len(self.adapters) > MAX_LOADED_ADAPTERS:
            self.model.delete_adapter(self.adapters.pop(next(iter(self.adapters)))[1])

    def hand_back(self) -> None:
        """Move the model (and its loaded adapters) to host memory until the next generate call, so
        the stages between sampling stages have the GPU; a no-op on a CPU."""
        if self.base is None or self.device.type == "cpu" or self.on_host:
            return
        self.base.to("cpu")
        self.on_host = True
        torch.cuda.empty_cache()

    def close(self) -> None:
        import gc

        self.model = self.base = None
        self.adapters.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends a completion: the generation config's (chat models often list several), the
    tokenizer's EOS and the token that ends an assistant turn in its chat template."""
    from nega.chat import stop_ids

    ids = model.generation_config.eos_token_id
    found = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    found |= stop_ids(tokenizer)
    if not found:
        raise ValueError(
            "the model has no EOS token id (generation_config.json or tokenizer); set eos_token_id"
        )
    return found


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        attention[i, width - len(r) :] = 1
    return ids, attention


def _strip_right(ids: list[int], pad_id: int) -> list[int]:
    end = len(ids)
    while end and ids[end - 1] == pad_id:
        end -= 1
    return ids[:end]
