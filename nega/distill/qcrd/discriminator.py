"""QCRD's online discriminator D(x, r) ∈ [0, 1]: how likely rationale r is a good one for question x.

Two backbones (`qcrd.disc_backbone`), both built locally, nothing downloaded:

- `student`: the student's own base model (its transformer body, no LM head), LoRA adapters on it and
  a linear head on the last real token's hidden state (a causal model's last position has read all of
  the input). Memory: one more copy of the base weights, frozen, plus small adapters.
- `encoder`: a 2-layer transformer encoder over the student's tokenizer, trained from scratch, mean
  pooled, with a linear head. Cheap; enough for short rationales.

Training (`fit`): binary cross-entropy, S_pos labelled 1 and S_neg labelled 0, for `steps` batches
(default 500, docs/methods.md#qcrd). Classes are balanced so that D is not merely the class prior,
without teaching it that a corrupted rationale is good: copies of positives with words masked or
replaced at random are negatives, made only while negatives are the fewer, and the loss weighs each
class by the inverse of its count (`training_set`). Re-training every `qcrd.disc_every` epochs
continues from the current weights on fresh data.

Scores are cross-fitted (`cross_fitted_scores`): the inputs are split into `qcrd.disc_folds` folds
by a hash of their id, fixed for the whole run; discriminator k trains on every fold but k and scores
the rationales of fold k. A discriminator that scored the rationales it was trained on would have
memorised their labels (S_pos near 1, S_neg near 0 whatever their quality) and tell the loss nothing
that self-consistency had not. With one fold, D trains on and scores every input (in-sample).
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

Pair = tuple[str, str]  # (question, rationale)


# ---------------------------------------------------------------- augmentation


def word_mask(text: str, rng: random.Random, rate: float, mask_token: str) -> str:
    """Each word replaced by `mask_token` with probability `rate` (at least one word when any exist)."""
    words = text.split()
    if not words:
        return text
    chosen = [i for i in range(len(words)) if rng.random() < rate] or [rng.randrange(len(words))]
    for i in chosen:
        words[i] = mask_token
    return " ".join(words)


def word_replace(text: str, rng: random.Random, rate: float, vocabulary: list[str]) -> str:
    """Each word replaced by a random vocabulary word with probability `rate` (at least one word)."""
    words = text.split()
    if not words or not vocabulary:
        return text
    chosen = [i for i in range(len(words)) if rng.random() < rate] or [rng.randrange(len(words))]
    for i in chosen:
        words[i] = rng.choice(vocabulary)
    return " ".join(words)


def training_set(
    positives: list[Pair],
    negatives: list[Pair],
    rng: random.Random,
    *,
    rate: float = 0.15,
    mask_token: str = "<mask>",
) -> tuple[list[tuple[Pair, float]], dict[str, float]]:
    """The discriminator's labelled pairs and the weight of each class, so both classes weigh alike.

    Augmentation only ever yields the label it is sure of: a positive with words masked or replaced is
    no longer a rationale the teacher agreed on, so its copies are NEGATIVES (label 0). When negatives
    are the minority, corrupted copies of positives (alternately word-masked and word-replaced) top
    them up to the positives' count; when positives are the minority nothing is made up for them.
    What imbalance remains is evened out by the loss: each class's weight is total / (2 · its count),
    so the positives and the negatives contribute equally (docs/methods.md#qcrd).

    Returns ([((question, rationale), label)], {"positive": w1, "negative": w0}).
    """
    data = [(p, 1.0) for p in positives] + [(n, 0.0) for n in negatives]
    if positives and len(negatives) < len(positives):
        vocabulary = sorted({w for _, r in positives + negatives for w in r.split()})
        for k in range(len(positives) - len(negatives)):
            question, rationale = positives[rng.randrange(len(positives))]
            if k % 2 == 0:
                corrupted = word_mask(rationale, rng, rate, mask_token)
            else:
                corrupted = word_replace(rationale, rng, rate, vocabulary)
            data.append(((question, corrupted), 0.0))
    counts = {"positive": sum(y == 1.0 for _, y in data), "negative": sum(y == 0.0 for _, y in data)}
    weights = {c: len(data) / (2 * n) if n else 0.0 for c, n in counts.items()}
    return data, weights


# ---------------------------------------------------------------- backbones


class TinyEncoder(nn.Module):
    """Token embeddings + positions, a small transformer encoder, mean pooling, a linear head -> logit."""

    def __init__(
        self, vocab_size: int, *, dim: int = 64, layers: int = 2, heads: int = 2, max_positions: int = 512
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_positions, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        hidden = self.embed(input_ids) + self.position(positions)[None]
        hidden = self.encoder(hidden, src_key_padding_mask=~attention_mask.bool())
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.head(pooled).squeeze(-1)


class BackboneHead(nn.Module):
    """A causal LM's transformer body with a linear head on the last real token -> logit."""

    def __init__(self, body: nn.Module, hidden_size: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.long().sum(-1).clamp_min(1) - 1  # right padding: last real position
        pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return self.head(pooled.float()).squeeze(-1)


def student_backbone(model_path: str | Path, model_cfg=None, lora_cfg=None) -> nn.Module:
    """The student's base model body (no LM head) with LoRA adapters (when enabled) and a fresh head."""
    from transformers import AutoModel

    from nega.models import torch_dtype

    body = AutoModel.from_pretrained(
        str(model_path),
        dtype=torch_dtype(model_cfg.dtype if model_cfg else "auto"),
        trust_remote_code=bool(model_cfg and model_cfg.trust_remote_code),
        use_safetensors=True,
    )
    if lora_cfg is not None and lora_cfg.enabled:
        from peft import LoraConfig, TaskType, get_peft_model

        peft_cfg = LoraConfig(
            r=lora_cfg.r,
            lora_alpha=lora_cfg.alpha,
            lora_dropout=0.0,
            target_modules=lora_cfg.target_modules,
            task_type=TaskType.FEATURE_EXTRACTION,
        )
        body = get_peft_model(body, peft_cfg)
    return BackboneHead(body, body.config.hidden_size)


# ---------------------------------------------------------------- the discriminator


@contextmanager
def torch_threads(count: int | None):
    """torch's intra-op thread count set to `count` inside the block (None: unchanged)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Discriminator:
    """D(x, r) = sigmoid(module(tokens of x and r)); `fit` trains it, `scores` applies it (no grad)."""

    def __init__(
        self,
        module: nn.Module,
        tokenizer,
        *,
        max_length: int = 512,
        lr: float = 1e-3,
        threads: int | None = None,
    ):
        self.module = module
        self.threads = threads  # CPU threads while it trains and scores; None = torch's setting
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.module.to(self.device)
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.mask_token = tokenizer.mask_token or tokenizer.unk_token or "_"

    @classmethod
    def build(
        cls,
        backbone: str,
        tokenizer,
        *,
        model_path=None,
        model_cfg=None,
        lora_cfg=None,
        lr: float = 1e-3,
        seed: int = 0,
    ):
        torch.manual_seed(seed)
        if backbone == "encoder":
            module = TinyEncoder(len(tokenizer))
        elif backbone == "student":
            module = student_backbone(model_path, model_cfg, lora_cfg)
        else:
            raise ValueError(f"qcrd.disc_backbone: unknown backbone {backbone!r}; choose student or encoder")
        max_length = min(512, getattr(model_cfg, "max_length", 512))
        # The tiny encoder gains nothing from a second CPU thread, and on a busy 2-core machine two
        # OpenMP threads made its steps 30x slower (20 steps: 23 s vs 0.8 s).
        threads = 1 if backbone == "encoder" and not torch.cuda.is_available() else None
        return cls(module, tokenizer, max_length=max_length, lr=lr, threads=threads)

    def _text(self, question: str, rationale: str) -> str:
        return f"question: {question}\nrationale: {rationale}"

    def _batch(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [
            self.tokenizer(self._text(q, r), add_special_tokens=False)["input_ids"][: self.max_length] or [0]
            for q, r in pairs
        ]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.bool)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x)
            attention[row, : len(x)] = True
        return input_ids.to(self.device), attention.to(self.device)

    def fit(self, *args, **kwargs) -> dict[str, float]:
        """`_fit` (below) under this discriminator's thread count."""
        with torch_threads(self.threads):
            return self._fit(*args, **kwargs)

    def _fit(
        self,
        positives: list[Pair],
        negatives: list[Pair],
        *,
        steps: int,
        batch_size: int = 32,
        seed: int = 0,
        augment_rate: float = 0.15,
        description: str = "training the discriminator",
    ) -> dict[str, float]:
        """`steps` class-weighted BCE steps on S_pos (1) vs S_neg and corrupted positives (0) (`training_set`);
        returns the loss and accuracy of the last quarter of steps (accuracy on the batches as trained,
        before each step), the class counts and the class weights."""
        from nega.progress import progress_bar

        if not positives or not negatives:
            raise ValueError(
                f"the discriminator needs both classes: got {len(positives)} positive and {len(negatives)} "
                "negative rationales; check qcrd.consistency and the teacher's rationales"
            )
        rng = random.Random(seed)
        data, class_weight = training_set(
            positives, negatives, rng, rate=augment_rate, mask_token=self.mask_token
        )
        order: list[int] = []
        tail = max(1, steps // 4)
        losses, correct, seen = [], 0, 0
        self.module.train()
        with progress_bar(description, total=steps) as advance:
            for step in range(steps):
                if len(order) < batch_size:
                    fresh = list(range(len(data)))
                    rng.shuffle(fresh)
                    order.extend(fresh)
                chosen = [data[i] for i in order[:batch_size]]
                del order[:batch_size]
                ids, attention = self._batch([pair for pair, _ in chosen])
                targets = torch.tensor([y for _, y in chosen], device=self.device)
                weight = targets * class_weight["positive"] + (1 - targets) * class_weight["negative"]
                logits = self.module(ids, attention).float()
                loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, weight=weight)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if step >= steps - tail:
                    losses.append(loss.item())
                    correct += int(((logits.detach() > 0).float() == targets).sum())
                    seen += len(chosen)
                advance(1, loss=loss.item())
        self.module.eval()
        return {
            "loss": sum(losses) / len(losses),
            "accuracy": correct / max(1, seen),
            "positives": float(len(positives)),
            "negatives": float(len(negatives)),
            # corrupted copies of positives, all labelled negative
            "augmented": float(len(data) - len(positives) - len(negatives)),
            "weight_positive": class_weight["positive"],
            "weight_negative": class_weight["negative"],
        }

    @torch.no_grad()
    def scores(self, pairs: list[Pair], *, batch_size: int = 64) -> list[float]:
        """D(x, r) for each (question, rationale) pair, in order."""
        with torch_threads(self.threads):
            return self._scores(pairs, batch_size)

    def _scores(self, pairs: list[Pair], batch_size: int) -> list[float]:
        self.module.eval()
        out: list[float] = []
        for start in range(0, len(pairs), batch_size):
            ids, attention = self._batch(pairs[start : start + batch_size])
            out.extend(torch.sigmoid(self.module(ids, attention).float()).tolist())
        return out

    def accuracy(self, positives: list[Pair], negatives: list[Pair]) -> float:
        """Share of pairs on the right side of 0.5 (positives above, negatives below)."""
        hits = sum(s > 0.5 for s in self.scores(positives)) + sum(s < 0.5 for s in self.scores(negatives))
        return hits / max(1, len(positives) + len(negatives))

    def save(self, path: Path) -> Path:
        """The trainable weights (adapters + head, or the whole encoder) as safetensors: no pickle."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
        state = {
            k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items() if k in trainable
        }
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(state, str(tmp))
        tmp.replace(path)
        return path

    def load(self, path: Path) -> Discriminator:
        from safetensors.torch import load_file

        state = load_file(str(path), device=str(self.device))
        missing = set(state) - set(self.module.state_dict())
        if missing:
            raise ValueError(f"{path}: weights {sorted(missing)[:3]} do not fit this discriminator backbone")
        self.module.load_state_dict(state, strict=False)
        return self


def rationale_pairs(examples: list[dict], key: str) -> list[Pair]:
    """(question, rationale) for every rationale under `key` ("positives" / "negatives"), in order."""
    return [(e["question"], r) for e in examples for r in e[key]]


def with_scores(disc: Discriminator, examples: list[dict]) -> list[dict]:
    """Copies of `examples` with `pos_scores` / `neg_scores`: D(x, r) of each positive and negative."""
    pos = iter(disc.scores(rationale_pairs(examples, "positives")))
    neg = iter(disc.scores(rationale_pairs(examples, "negatives")))
    return [
        dict(
            e, pos_scores=[next(pos) for _ in e["positives"]], neg_scores=[next(neg) for _ in e["negatives"]]
        )
        for e in examples
    ]


def fold_of(example: dict, folds: int, seed: int) -> int:
    """The fold of an input, from a hash of (seed, its id): the same in every epoch of a run."""
    digest = hashlib.sha256(f"{seed}/{example['id']}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % folds


def cross_fitted_scores(
    discriminators: list[Discriminator],
    examples: list[dict],
    *,
    train: bool,
    steps: int,
    fit_examples: list[dict] | None = None,
    batch_size: int = 32,
    seed: int = 0,
    fold_seed: int = 0,
    augment_rate: float = 0.15,
    description: str = "training the discriminator",
) -> tuple[list[dict], list[dict]]:
    """`examples` with pos_scores / neg_scores, each input scored by the discriminator that did not
    train on it (module docstring), and per discriminator its fit statistics (`train`: fit first, on
    `fit_examples`, default `examples`; discriminator k on those outside fold k).

    Each fit's statistics gain `held_out_accuracy`: the share of its fold's rationales (of `examples`)
    on the side of 0.5 their self-consistency label puts them (positives above, negatives below).
    """
    folds = len(discriminators)
    fit_examples = examples if fit_examples is None else fit_examples
    assignment = [fold_of(e, folds, fold_seed) for e in examples]
    scored: list[dict | None] = [None] * len(examples)
    stats = []
    for k, disc in enumerate(discriminators):
        held = [i for i, f in enumerate(assignment) if f == k]
        fitting = [e for e in fit_examples if folds == 1 or fold_of(e, folds, fold_seed) != k]
        fit = {}
        if train:
            positives, negatives = (
                rationale_pairs(fitting, "positives"),
                rationale_pairs(fitting, "negatives"),
            )
            if folds > 1 and not (positives and negatives):
                from nega.data import DataError

                raise DataError(
                    f"qcrd discriminator, fold {k + 1}/{folds}: the {len(fitting)} inputs it trains on hold "
                    f"{len(positives)} positive and {len(negatives)} negative rationales, and it needs both; "
                    "train on more inputs (data.limit) or set qcrd.disc_folds: 1"
                )
            fit = disc.fit(
                positives,
                negatives,
                steps=steps,
                batch_size=batch_size,
                seed=seed + k,
                augment_rate=augment_rate,
                description=f"{description}, fold {k + 1}/{folds}",
            )
        held_examples = with_scores(disc, [examples[i] for i in held])
        for i, example in zip(held, held_examples, strict=True):
            scored[i] = example
        hits = sum(s > 0.5 for e in held_examples for s in e["pos_scores"])
        hits += sum(s < 0.5 for e in held_examples for s in e["neg_scores"])
        total = sum(len(e["pos_scores"]) + len(e["neg_scores"]) for e in held_examples)
        stats.append({**fit, "held_out": float(len(held)), "held_out_accuracy": hits / max(1, total)})
    return scored, stats
