"""Response-masked sequence log-probabilities.

Every method scores responses by the **sum** of their token log-probs given the prompt; prompt and
padding tokens are masked out. Prompt and response are tokenized separately and concatenated, so the
boundary is exact whatever the tokenizer merges across it, and sampling (which sends the same prompt
token ids to the engine) and training see identical tokens. A sampled response is scored by the ids the
sampler produced, not by its decoded text (`nega.chat`).

Under gradient, the log-probs of the targets are taken chunk by chunk and the softmax is recomputed in
the backward (`token_logps`, `selected_logps`): no float32 [tokens × vocabulary] tensor is kept or made,
and time is linear in the tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch


def encode_pair(
    tokenizer,
    prompt: str,
    response: str | Sequence[int],
    *,
    add_eos: bool = True,
    max_length: int | None = None,
) -> tuple[list[int], int]:
    """Token ids of rendered `prompt` + `response` (+ the end-of-turn token), and the prompt length.

    `response` is text, or the token ids a sampler produced (`nega.chat.response_tokens`), which are
    used as they are: decoding and re-tokenizing need not give the sampled ids back. The prompt gets
    the BOS token the model expects (`nega.chat.encode_prompt`); the appended end token is the one
    that closes an assistant turn in the chat template (`nega.chat.end_of_turn_id`), which samplers
    also stop on. `add_eos=False` scores an unfinished response, e.g. per-step RL's rejected prefix,
    whose end token would teach the model that the solution ends there. Over-long pairs are cut from
    the right (the response end); a prompt longer than `max_length` leaves at least one response token.
    """
    from nega.chat import encode_prompt, end_of_turn_id

    prompt_ids = encode_prompt(tokenizer, prompt)
    if isinstance(response, str):
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    else:
        response_ids = [int(t) for t in response]
    if add_eos:
        response_ids = response_ids + [end_of_turn_id(tokenizer)]
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


# Bytes of one chunk's float32 [positions, V] workspace (341 positions of SmolLM2's 49,152 words): small
# beside the logits, large enough that the per-chunk overhead is noise. Fewer, larger chunks also run
# faster than small ones on a CPU that other processes share (each chunk is a few parallel operations).
CHUNK_BYTES = 64 << 20


def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    """`logits` [..., V] as a [B, T, V] view without copying: [1, N, V] when the positions are evenly
    strided (contiguous logits), else one block per leading index (e.g. `logits[:, :-1]`)."""
    vocab = logits.size(-1)
    try:
        return logits.view(1, -1, vocab)
    except RuntimeError:
        # Only the leading dims are merged: a slice along the positions stays a view.
        return logits.reshape(-1, logits.size(-2), vocab)


def _spans(blocks: torch.Tensor, chunk_bytes: int):
    """(b, t0, t1, n0, n1) per chunk of `blocks` [B, T, V]: positions t0:t1 of block b, which are the
    flat positions n0:n1."""
    batch, length, vocab = blocks.shape
    width = torch.finfo(torch.promote_types(blocks.dtype, torch.float32)).bits // 8
    step = max(1, chunk_bytes // max(1, vocab * width))
    for b in range(batch):
        for t0 in range(0, length, step):
            t1 = min(t0 + step, length)
            yield b, t0, t1, b * length + t0, b * length + t1


def _normalized(chunk: torch.Tensor, space: torch.Tensor, function) -> torch.Tensor:
    """`function` (aten's log-softmax or softmax) of `chunk` [c, V] over the vocabulary, written into
    `space` [c, V] in float32 or float64, in place: no allocation per chunk (on a CPU a fresh
    allocation of this size costs page faults every time).

    `torch._log_softmax` and `torch._softmax` are the aten kernels behind `torch.log_softmax`; only
    they take `out=`. One fused pass per row, where `exp(x - logsumexp)` would take two more."""
    if chunk.dtype == space.dtype:
        return function(chunk, -1, False, out=space)
    space.copy_(chunk)  # half precision: CPU kernels do not widen on the fly
    return function(space, -1, False, out=space)


class _TargetLogps(torch.autograd.Function):
    """log softmax(logits)[target] for each (position, target), chunk by chunk, with the softmax
    recomputed in the backward.

    Only the logits (in their own dtype) and the targets are kept for the backward. Its gradient,
    Σ over a position's targets of (onehot(target) − softmax) · grad_out, is written chunk by chunk into
    one tensor of the logits' dtype: float32 logits are worked on in place in it, half-precision ones in
    one float32 chunk that every chunk reuses. `positions` None means target i belongs to position i
    (targets shaped like the logits' leading dims); else target m to flat position positions[m], and a
    position may have several targets. A target < 0 is ignored: value 0, no gradient.
    """

    @staticmethod
    def forward(ctx, logits, positions, targets, chunk_bytes):
        blocks = _as_rows(logits)
        flat = targets.reshape(-1)
        picks = flat.clamp_min(0)
        wide = torch.promote_types(logits.dtype, torch.float32)
        out = torch.zeros(flat.shape, dtype=wide, device=logits.device)
        hits = None if positions is None else _sorted_hits(positions)
        space = None
        for b, t0, t1, n0, n1 in _spans(blocks, chunk_bytes):
            if space is None:
                space = torch.empty((t1 - t0, blocks.size(-1)), dtype=wide, device=logits.device)
            logsm = _normalized(blocks[b, t0:t1], space[: t1 - t0], torch._log_softmax)
            if hits is None:
                out[n0:n1] = logsm.gather(-1, picks[n0:n1].unsqueeze(-1)).squeeze(-1)
            else:
                rows, index = _hits_in(hits, n0, n1)
                out[index] = logsm[rows, picks[index]]
        ctx.save_for_backward(logits, positions, targets)
        ctx.chunk_bytes = chunk_bytes
        return out.masked_fill_(flat < 0, 0.0).view(targets.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, positions, targets = ctx.saved_tensors
        blocks = _as_rows(logits)
        flat = targets.reshape(-1)
        picks = flat.clamp_min(0)
        wide = torch.promote_types(logits.dtype, torch.float32)
        weight = grad_out.reshape(-1).to(wide).masked_fill(flat < 0, 0.0)
        if positions is None:
            per_position, hits = weight, None
        else:
            # Packed responses share their prompt's last position: its softmax term carries the sum of
            # their weights, and each target adds its own onehot.
            per_position = weight.new_zeros(blocks.shape[0] * blocks.shape[1])
            per_position.index_add_(0, positions, weight)
            hits = _sorted_hits(positions)
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        grad_blocks = grad.view(blocks.shape)
        space = None
        for b, t0, t1, n0, n1 in _spans(blocks, ctx.chunk_bytes):
            target = grad_blocks[b, t0:t1]
            if logits.dtype == wide:
                work = target
            else:
                if space is None:
                    space = torch.empty(target.shape, dtype=wide, device=logits.device)
                work = space[: t1 - t0]
            probs = _normalized(blocks[b, t0:t1], work, torch._softmax)
            probs.mul_(-per_position[n0:n1].unsqueeze(-1))
            if hits is None:
                probs.scatter_add_(-1, picks[n0:n1].unsqueeze(-1), weight[n0:n1].unsqueeze(-1))
            else:
                rows, index = _hits_in(hits, n0, n1)
                probs.index_put_((rows, picks[index]), weight[index], accumulate=True)
            if probs is not target:
                target.copy_(probs)
        return grad, None, None, None


def _sorted_hits(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions sorted, the order that sorts them), to find each chunk's targets by bisection."""
    order = torch.argsort(positions)
    return positions[order], order


def _hits_in(hits: tuple[torch.Tensor, torch.Tensor], n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row within the chunk, index of the target) of every target at flat positions n0:n1."""
    ordered, order = hits
    lo, hi = torch.searchsorted(ordered, torch.tensor([n0, n1], device=ordered.device)).tolist()
    return ordered[lo:hi] - n0, order[lo:hi]


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, *, chunk_bytes: int | None = None
) -> torch.Tensor:
    """log p(label) per position, `logit[label] - logsumexp(logits)`, in float32 (float64 for float64
    logits). logits [..., V], labels [...] -> [...]; a label < 0 (ignored position) gives 0.

    Memory-lean under autograd: no float32 [positions × V] tensor is kept for the backward or made in
    it, whatever the logits' dtype (`_TargetLogps`); time is linear in the positions.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} need labels of shape {tuple(logits.shape[:-1])}, "
            f"got {tuple(labels.shape)}"
        )
    return _TargetLogps.apply(logits, None, labels, chunk_bytes or CHUNK_BYTES)


def selected_logps(
    logits: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, *, chunk_bytes: int | None = None
) -> torch.Tensor:
    """log p(targets[m]) at flat position positions[m] of logits [..., V] (positions index the logits'
    leading dims flattened in order), shape [M]. A position may appear many times; a target < 0 gives 0.
    As lean as `token_logps`: each position's normalizer is computed once whatever its count."""
    return _TargetLogps.apply(logits, positions.reshape(-1), targets.reshape(-1), chunk_bytes or CHUNK_BYTES)


def sequence_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probs of response tokens, shape [B].

    input_ids, attention_mask, response_mask: [B, T]. Token t is predicted from position t-1, so the
    masks are shifted by one; prompt and padding contribute exactly 0.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logps(logits, shifted_targets(input_ids, response_mask & attention_mask.bool())).sum(-1)


def shifted_targets(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] targets aligned with the logits: position t predicts token t+1 where `mask[t+1]`, else -1
    (ignored; the last position predicts nothing). Scoring the whole logits tensor this way, instead of
    `logits[:, :-1]`, spares the backward a second [B, T, V] gradient for the slice."""
    targets = input_ids.masked_fill(~mask.bool(), -1)[:, 1:]
    return torch.nn.functional.pad(targets, (0, 1), value=-1)


def pack_shared_prompts(encoded: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pack `(ids, prompt_len)` pairs so each distinct prompt is computed once.

    Pairs with identical prompt ids form one row: the prompt, then every response of that prompt back
    to back. A block mask lets each response see the prompt and its own earlier tokens only, and each
    response's positions continue from the prompt's, so every response token has exactly the context
    (and rotary positions) it would have in its own padded row. A response's first token is predicted
    from the prompt's last position, which all responses of the row share.

    Returns tensors for `packed_sequence_logps`:
        packed_ids, packed_positions, packed_segments [R, T]   (segment -1 padding, 0 prompt, j response j)
        label_row, label_src, label_token, label_seq  [M]      one entry per response token: its row, the
                                                               position predicting it, its id, its pair
        packed_count  [1]                                      number of pairs
    """
    rows: dict[tuple[int, ...], int] = {}
    prompts: list[list[int]] = []
    members: list[list[int]] = []
    for n, (ids, prompt_len) in enumerate(encoded):
        if prompt_len < 1:
            raise ValueError(f"pair {n} has an empty prompt; packing needs at least one prompt token")
        key = tuple(ids[:prompt_len])
        if key not in rows:
            rows[key] = len(prompts)
            prompts.append(list(key))
            members.append([])
        members[rows[key]].append(n)

    row_ids, row_pos, row_seg = [], [], []
    label_row, label_src, label_token, label_seq = [], [], [], []
    for r, (prompt, pairs) in enumerate(zip(prompts, members, strict=True)):
        ids, pos, seg = list(prompt), list(range(len(prompt))), [0] * len(prompt)
        for j, n in enumerate(pairs, start=1):
            full, prompt_len = encoded[n]
            response = full[prompt_len:]
            for i, token in enumerate(response):
                label_row.append(r)
                label_src.append(len(prompt) - 1 if i == 0 else len(ids) - 1)
                label_token.append(token)
                label_seq.append(n)
                ids.append(token)
                pos.append(len(prompt) + i)
                seg.append(j)
        row_ids.append(ids)
        row_pos.append(pos)
        row_seg.append(seg)

    width = max(len(ids) for ids in row_ids)
    packed_ids = torch.full((len(row_ids), width), pad_id, dtype=torch.long)
    packed_pos = torch.zeros((len(row_ids), width), dtype=torch.long)
    packed_seg = torch.full((len(row_ids), width), -1, dtype=torch.long)
    for r, (ids, pos, seg) in enumerate(zip(row_ids, row_pos, row_seg, strict=True)):
        packed_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        packed_pos[r, : len(pos)] = torch.tensor(pos, dtype=torch.long)
        packed_seg[r, : len(seg)] = torch.tensor(seg, dtype=torch.long)
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return {
        "packed_ids": packed_ids,
        "packed_positions": packed_pos,
        "packed_segments": packed_seg,
        "label_row": as_long(label_row),
        "label_src": as_long(label_src),
        "label_token": as_long(label_token),
        "label_seq": as_long(label_seq),
        "packed_count": as_long([len(encoded)]),
    }


def block_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[R, 1, T, T] mask from packed segments: query q sees key k ≤ q when k is in the prompt (segment 0)
    or in q's own segment. A padding query sees only itself, so no softmax row is empty.

    `dtype=torch.bool` gives True where attention is allowed (SDPA's form); a float dtype gives the
    additive form (0 allowed, the dtype's minimum blocked) that eager attention adds to its scores.
    """
    length = segments.size(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    allowed = causal & ((key == 0) | (key == query)) & (key >= 0) & (query >= 0)
    eye = torch.eye(length, dtype=torch.bool, device=segments.device)
    allowed = allowed | (eye & (query < 0))
    if dtype == torch.bool:
        return allowed.unsqueeze(1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def attention_implementation(model) -> str:
    """The attention kernel of `model`, looking through DDP/DeepSpeed wrappers."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"


def supports_packing(model) -> bool:
    """Whether `model` takes the custom 4D mask packing needs (eager and SDPA attention do;
    flash-attention kernels take no arbitrary mask)."""
    return attention_implementation(model) in ("eager", "sdpa")


def packed_sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed response log-probs [N] of the pairs packed by `pack_shared_prompts`, in their input order.

    Equal to `sequence_logps` on the unpacked pairs up to float rounding; each prompt is computed once.
    """
    if attention_implementation(model) == "sdpa":
        dtype = torch.bool
    else:
        dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    mask = block_attention_mask(batch["packed_segments"], dtype)
    logits = model(
        input_ids=batch["packed_ids"],
        attention_mask=mask,
        position_ids=batch["packed_positions"],
        use_cache=False,
    ).logits
    positions = batch["label_row"] * logits.size(1) + batch["label_src"]
    per_token = selected_logps(logits, positions, batch["label_token"])
    count = int(batch["packed_count"].reshape(-1)[0])
    out = torch.zeros(count, dtype=per_token.dtype, device=logits.device)
    return out.index_add(0, batch["label_seq"], per_token)


def batched_sequence_logps(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str | Sequence[int]]],
    *,
    batch_size: int = 16,
    add_eos: bool | Sequence[bool] = True,
    max_length: int | None = None,
    disable_adapter: bool = False,
    description: str = "log-probs",
    pack: bool | None = None,
) -> list[float]:
    """Summed response log-probs of (rendered prompt, response) pairs, under `torch.no_grad`.

    `disable_adapter=True` scores with the frozen base weights of a peft model: the reference policy
    without a second copy in memory. With `pack` (default: whenever the model's attention takes the
    block mask) the responses of one prompt share one packed row (`pack_shared_prompts`), so each
    prompt is computed once, as in training; about `batch_size` responses go through per forward.
    Batches are formed in length order so they pad little.
    """
    from nega.progress import progress_bar

    eos_flags = [add_eos] * len(pairs) if isinstance(add_eos, bool) else list(add_eos)
    encoded = [
        encode_pair(tokenizer, p, r, add_eos=e, max_length=max_length)
        for (p, r), e in zip(pairs, eos_flags, strict=True)
    ]
    if pack is None:
        pack = supports_packing(model)
    pack = pack and all(prompt_len >= 1 for _, prompt_len in encoded)  # packing needs a prompt token
    out = [0.0] * len(encoded)
    device = next(model.parameters()).device
    context = model.disable_adapter() if disable_adapter else nullcontext()
    was_training = model.training
    model.eval()
    with torch.no_grad(), context, progress_bar(description, total=len(encoded)) as advance:
        for idx in _scoring_batches(encoded, batch_size, pack):
            rows = [encoded[i] for i in idx]
            if pack:
                packed = pack_shared_prompts(rows, tokenizer.pad_token_id)
                values = packed_sequence_logps(model, {k: v.to(device) for k, v in packed.items()})
            else:
                ids, attn, resp = collate_sequences(rows, tokenizer.pad_token_id)
                values = sequence_logps(model, ids.to(device), attn.to(device), resp.to(device))
            for i, v in zip(idx, values.tolist(), strict=True):
                out[i] = v
            advance(len(idx))
    model.train(was_training)
    return out


def _scoring_batches(encoded: Sequence[tuple[list[int], int]], size: int, pack: bool) -> list[list[int]]:
    """Indices of `encoded` in batches of about `size` pairs, in length order. Packed, a prompt's pairs
    are never split across batches (a batch may then hold more than `size`)."""
    if not pack:
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        return [order[start : start + size] for start in range(0, len(order), size)]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ids, prompt_len) in enumerate(encoded):
        groups.setdefault(tuple(ids[:prompt_len]), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: sum(len(encoded[i][0]) for i in g))
    batches, current = [], []
    for group in ordered:
        if current and len(current) + len(group) > size:
            batches.append(current)
            current = []
        current += group
    if current:
        batches.append(current)
    return batches


def reference_logps(
    model_path: str,
    model_cfg,
    pairs: list[tuple[str, str | Sequence[int]]],
    eos: list[bool],
    *,
    adapter: str | None = None,
    cache=None,
    batch_size: int = 16,
    chunk: int = 512,
    description: str = "reference log-probs",
    device: str | None = None,
) -> list[float]:
    """Summed response log-probs of (rendered prompt, response) pairs under frozen reference weights.

    The reference is a plain model folder (`adapter=None`: the starting model, or a merged π_sft) or that
    model with a finished adapter on top (e.g. online D²O with `refresh_reference`). It is loaded here,
    frozen and used under no_grad, never the live policy. Values go through `cache` (a `LogpCache`)
    chunk by chunk, so a killed stage resumes where it stopped. The reference runs on `device` (default
    the plan's reference device, `nega.models.default_device()`: the first GPU, else the CPU).
    """
    from nega.models import default_device, free_device_memory, load_base_model, load_tokenizer

    identity = f"{model_identity(model_path)}|{model_identity(adapter)}"
    keys = [content_key(identity, p, r, e) for (p, r), e in zip(pairs, eos, strict=True)]
    known = dict(cache.values) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        tokenizer = load_tokenizer(model_path, model_cfg)
        device = device or default_device()
        model = load_base_model(model_path, model_cfg, device=device)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        model.requires_grad_(False)
        parts = -(-len(todo) // chunk)
        for part, start in enumerate(range(0, len(todo), chunk), 1):
            idx = todo[start : start + chunk]
            values = batched_sequence_logps(
                model,
                tokenizer,
                [pairs[i] for i in idx],
                add_eos=[eos[i] for i in idx],
                max_length=model_cfg.max_length,
                batch_size=batch_size,
                # Each chunk is a bar of its own: say which, so a log shows how far the whole is.
                description=description if parts == 1 else f"{description}, part {part}/{parts}",
            )
            new = {keys[i]: v for i, v in zip(idx, values, strict=True)}
            known.update(new)
            if cache is not None:
                cache.add(new)
        del model
        free_device_memory(device)
    return [known[k] for k in keys]


def content_key(model_id: str, prompt: str, response: str | Sequence[int], add_eos: bool = True) -> str:
    """Content hash identifying one reference log-prob: model identity + exact texts (or token ids)."""
    response = response if isinstance(response, str) else [int(t) for t in response]
    blob = json.dumps([model_id, prompt, response, add_eos], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def model_identity(path) -> str:
    """What a cached log-prob was computed with, wherever the run folder now lies: a hub id as it is, a
    local model or adapter folder by the content of its config (and an adapter's weights, which are
    small). A base model's weights are not read: a cache lives in its stage, whose hash covers them."""
    if path is None:
        return "none"
    folder = Path(path)
    if not folder.is_dir():
        return str(path)
    from nega.pipeline import hash_file

    names = ("config.json", "adapter_config.json", "adapter_model.safetensors")
    parts = [f"{n}:{hash_file(folder / n)}" for n in names if (folder / n).is_file()]
    return "local:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class LogpCache:
    """Reference log-probs keyed by content hash, persisted as JSONL (append-only, crash-safe).

    A torn last line from a kill is dropped on load (the file is cut back to its last complete line, so
    the next append starts on a line of its own); everything before it is kept.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.values: dict[str, float] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                data = data[: data.rfind(b"\n") + 1]
                with self.path.open("r+b") as f:
                    f.truncate(len(data))
            for line in data.decode("utf-8", errors="replace").splitlines():
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
