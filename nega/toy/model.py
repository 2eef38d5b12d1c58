"""Tiny Llama models and BPE tokenizers built locally from a world's corpus.

A randomly initialised tiny model repeats one token, so every toy model is trained on its world's
corpus before use. Attention head_dim is kept at 32 or more because vLLM's CPU backend rejects smaller.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", *ROLE_TOKENS]

# Renders messages as "<|role|>\ncontent\n"; generation starts after "<|assistant|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ToySize:
    hidden: int
    layers: int
    heads: int
    intermediate: int


# The toy tokenizer's vocabulary, trained on the world's corpus (`nega.toy.build`).
VOCAB_SIZE = 512

# head_dim = hidden / heads stays >= 32 for vLLM on CPU.
SIZES = {
    "tiny": ToySize(hidden=64, layers=2, heads=2, intermediate=256),
    "small": ToySize(hidden=128, layers=4, heads=4, intermediate=512),
    "base": ToySize(hidden=256, layers=4, heads=8, intermediate=1024),
    "25m": ToySize(hidden=512, layers=8, heads=8, intermediate=1536),
    # For speed benchmarks on a GPU: about GPT-2-small and -medium shapes.
    "125m": ToySize(hidden=768, layers=12, heads=12, intermediate=3072),
    "350m": ToySize(hidden=1024, layers=24, heads=16, intermediate=4096),
}


def build_tokenizer(corpus: list[str], vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it for transformers (with chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, size: str = "tiny", seed: int = 0, max_positions: int = 512):
    """A randomly initialised Llama sized for `tokenizer`'s vocabulary, in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = SIZES[size]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        head_dim=spec.hidden // spec.heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def train_on_pairs(
    model,
    tokenizer,
    pairs: list[tuple[str, str]],
    *,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = 0,
    progress: str | None = None,
) -> list[float]:
    """Supervised training on (rendered prompt, response) pairs, loss on response tokens + EOS only.

    A plain loop (no Trainer): this only brings a freshly initialised toy model to a useful starting
    point, quickly and deterministically. Returns the per-step losses.
    """
    from nega.logps import collate_sequences, encode_pair
    from nega.progress import progress_bar

    rng = random.Random(seed)
    torch.manual_seed(seed)
    encoded = [encode_pair(tokenizer, p, r) for p, r in pairs]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) * 0.9 + 0.1

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    order: list[int] = []
    with progress_bar(progress or "training toy model", total=steps) as advance:
        for _ in range(steps):
            if len(order) < batch_size:
                fresh = list(range(len(encoded)))
                rng.shuffle(fresh)
                order.extend(fresh)
            batch = [encoded[i] for i in order[:batch_size]]
            del order[:batch_size]
            ids, attn, resp = collate_sequences(batch, pad_id=tokenizer.pad_token_id)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
            labels = ids[:, 1:].masked_fill(~resp[:, 1:], -100)
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            advance(1, loss=losses[-1])
    model.eval()
    return losses


def save_model(model, tokenizer, path: Path) -> Path:
    """Save model (safetensors) and tokenizer so transformers, peft and vLLM can all load the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
