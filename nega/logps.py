"""Response-masked sequence log-probabilities.

Every method scores responses by the **sum** of their token log-probs given the prompt; prompt and
padding tokens are masked out. Prompt and response are tokenized separately and concatenated, so the
boundary is exact whatever the tokenizer merges across it, and sampling (which sends the same prompt
token ids to the engine) and training see identical tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch


def encode_pair(
    tokenizer, prompt: str, response: str, *, add_eos: bool = True, max_length: int | None = None
) -> tuple[list[int], int]:
    """Token ids of rendered `prompt` + `response` (+ EOS), and the prompt length.

    `add_eos=False` scores an unfinished response, e.g. per-step RL's rejected prefix, whose EOS
    would teach the model that the solution ends there. Over-long pairs are cut from the right
    (the response end); a prompt longer than `max_length` leaves at least one response token.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if add_eos:
        response_ids = response_ids + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    if max_length is not None and len(ids) > max_length:
        keep_prompt = min(len(prompt_ids), max_length - 1)
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt :]
        ids = (prompt_ids + response_ids)[:max_length]
    return ids, len(prompt_ids)


def collate_sequences(
    encoded: Sequence[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad `(ids, prompt_len)` pairs into `input_ids`, `attention_mask`, `response_mask` [B, T].

    `response_mask[b, t]` is True where token t belongs to the response of row b.
    """
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.bool)
    response = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, (ids, prompt_len) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = True
        response[row, prompt_len : len(ids)] = True
    return input_ids, attention, response


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position, as `logit[label] - logsumexp(logits)`.

    logits [B, T, V], labels [B, T] -> [B, T]. Never materialises the [B, T, V] log-softmax; positions
    are processed in chunks so peak memory stays at one chunk's logsumexp workspace.
    """
    picked = torch.gather(logits, -1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    flat = logits.reshape(-1, logits.size(-1))
    chunk = max(1, (1 << 22) // max(1, logits.size(-1)))
    norm = torch.cat(
        [torch.logsumexp(flat[i : i + chunk].float(), dim=-1) for i in range(0, flat.size(0), chunk)]
    )
    return picked.float() - norm.view(labels.shape)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probs of response tokens, shape [B].

    input_ids, attention_mask, response_mask: [B, T]. Token t is predicted from position t-1, so the
    masks are shifted by one; prompt and padding contribute exactly 0.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    labels = input_ids[:, 1:]
    mask = response_mask[:, 1:] & attention_mask[:, 1:].bool()
    per_token = token_logps(logits, labels)
    return (per_token * mask).sum(-1)


def batched_sequence_logps(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 16,
    add_eos: bool | Sequence[bool] = True,
    max_length: int | None = None,
    disable_adapter: bool = False,
    description: str = "log-probs",
) -> list[float]:
    """Summed response log-probs of (rendered prompt, response) pairs, under `torch.no_grad`.

    `disable_adapter=True` scores with the frozen base weights of a peft model: the reference policy
    without a second copy in memory. Rows are sorted by length so batches pad little.
    """
    from nega.progress import progress_bar

    eos_flags = [add_eos] * len(pairs) if isinstance(add_eos, bool) else list(add_eos)
    encoded = [
        encode_pair(tokenizer, p, r, add_eos=e, max_length=max_length)
        for (p, r), e in zip(pairs, eos_flags, strict=True)
    ]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    out = [0.0] * len(encoded)
    device = next(model.parameters()).device
    context = model.disable_adapter() if disable_adapter else nullcontext()
    was_training = model.training
    model.eval()
    with torch.no_grad(), context, progress_bar(description, total=len(order)) as advance:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, attn, resp = collate_sequences([encoded[i] for i in idx], tokenizer.pad_token_id)
            values = sequence_logps(model, ids.to(device), attn.to(device), resp.to(device))
            for i, v in zip(idx, values.tolist(), strict=True):
                out[i] = v
            advance(len(idx))
    model.train(was_training)
    return out


def reference_logps(
    model_path: str,
    model_cfg,
    pairs: list[tuple[str, str]],
    eos: list[bool],
    *,
    adapter: str | None = None,
    cache=None,
    batch_size: int = 16,
    chunk: int = 512,
    description: str = "reference log-probs",
) -> list[float]:
    """Summed response log-probs of (rendered prompt, response) pairs under frozen reference weights.

    The reference is a plain model folder (`adapter=None`: the starting model, or a merged π_sft) or that
    model with a finished adapter on top (e.g. online D²O with `refresh_reference`). It is loaded here,
    frozen and used under no_grad, never the live policy. Values go through `cache` (a `LogpCache`)
    chunk by chunk, so a killed stage resumes where it stopped.
    """
    from nega.models import load_base_model, load_tokenizer

    identity = f"{model_path}|{adapter}"
    keys = [content_key(identity, p, r, e) for (p, r), e in zip(pairs, eos, strict=True)]
    known = dict(cache.values) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        tokenizer = load_tokenizer(model_path, model_cfg)
        model = load_base_model(model_path, model_cfg)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        model.requires_grad_(False)
        for start in range(0, len(todo), chunk):
            idx = todo[start : start + chunk]
            values = batched_sequence_logps(
                model,
                tokenizer,
                [pairs[i] for i in idx],
                add_eos=[eos[i] for i in idx],
                max_length=model_cfg.max_length,
                batch_size=batch_size,
                description=description,
            )
            new = {keys[i]: v for i, v in zip(idx, values, strict=True)}
            known.update(new)
            if cache is not None:
                cache.add(new)
    return [known[k] for k in keys]


def content_key(model_id: str, prompt: str, response: str, add_eos: bool = True) -> str:
    """Content hash identifying one reference log-prob: model identity + exact texts."""
    blob = json.dumps([model_id, prompt, response, add_eos], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class LogpCache:
    """Reference log-probs keyed by content hash, persisted as JSONL (append-only, crash-safe).

    A torn last line from a kill is ignored on load; everything before it is kept.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.values: dict[str, float] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.values[row["k"]] = row["v"]

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if k not in self.values]

    def add(self, items: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for k, v in items.items():
                f.write(json.dumps({"k": k, "v": v}) + "\n")
        self.values.update(items)

    def __getitem__(self, key: str) -> float:
        return self.values[key]
