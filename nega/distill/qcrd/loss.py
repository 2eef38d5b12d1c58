"""QCRD loss and its baselines, as pure torch functions (docs/methods.md#qcrd, arXiv 2405.13014).

Every objective takes per-sequence **mean token cross-entropies** (not summed log-probs: QCRD's margin
δ is on the per-token scale) and returns `(loss, metrics)`:

```
L = α1·CE(label | predict: x)
  + α2·s⁺·min_{r∈S_pos} CE(r | explain: x)            s⁺ = D(x, r*), r* = argmin over positives
  + α3·(1 − s⁻)·max(0, δ − CE(r⁻ | explain: x))      r⁻ = argmin_{r∈S_neg} CE(r), s⁻ = D(x, r⁻)
```

Shapes: `label_ce` [B]; `pos_ce`, `pos_mask`, `pos_scores` [B, P]; `neg_ce`, `neg_mask`, `neg_scores`
[B, N]. Masks mark the real rationales of rows with variable counts (P, N = the largest count in the
batch). The discriminator scores are constants: they are detached, so no gradient reaches D. A row
without positives (or negatives) contributes 0 to that term; every term is averaged over all B rows,
so L is the batch mean of the per-example loss.
"""

from __future__ import annotations

import torch

from nega.logps import shifted_targets, token_logps

Metrics = dict[str, float]


def mean_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the response tokens of each row, shape [B].

    logits [B, T, V] from a causal LM over `input_ids` [B, T]; `response_mask` [B, T] marks response
    tokens (token t is predicted at position t-1, so the mask is shifted by one). A row without response
    tokens gets 0.
    """
    # Chunked and recomputed in the backward (`nega.logps.token_logps`): no float32 copy of the logits.
    logps = token_logps(logits, shifted_targets(input_ids, response_mask))
    count = response_mask[:, 1:].bool().sum(-1).clamp_min(1)
    return -logps.sum(-1) / count


def _masked_argmin(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min value, its index) per row over masked entries of [B, K]; rows with no entry give (0, 0)."""
    if values.size(-1) == 0:
        zeros = values.new_zeros(values.shape[:-1])
        return zeros, zeros.long()
    filled = values.masked_fill(~mask, float("inf"))
    best, index = filled.min(dim=-1)
    has_any = mask.any(dim=-1)
    return torch.where(has_any, best, torch.zeros_like(best)), index


def _pick(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[b, index[b]] for [B, K] values ([B] zeros when K = 0)."""
    if values.size(-1) == 0:
        return values.new_zeros(values.shape[:-1])
    return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def qcrd_loss(
    label_ce: torch.Tensor,
    pos_ce: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_ce: torch.Tensor,
    neg_mask: torch.Tensor,
    pos_scores: torch.Tensor,
    neg_scores: torch.Tensor,
    *,
    alpha1: float = 0.5,
    alpha2: float = 0.5,
    alpha3: float = 0.5,
    delta: float = 3.0,
) -> tuple[torch.Tensor, Metrics]:
    """QCRD: label CE + quality-weighted easiest-positive CE + quality-weighted hinge on the hardest negative.

    The min over positives sends the gradient only into the positive the student already finds most
    likely (many-to-one); the hinge pushes the hardest negative's CE up to δ and stops there, so a
    negative the student already rejects costs nothing. D scores D(x, r) ∈ [0, 1]: a positive the
    discriminator doubts weighs less, a negative it judges good (s⁻ near 1) is barely pushed away.
    Shapes in the module docstring.
    """
    pos_mask = pos_mask.bool()
    neg_mask = neg_mask.bool()
    has_pos = pos_mask.any(dim=-1)
    has_neg = neg_mask.any(dim=-1)

    best_pos_ce, pos_index = _masked_argmin(pos_ce, pos_mask)
    s_pos = _pick(pos_scores.detach(), pos_index) * has_pos
    hard_neg_ce, neg_index = _masked_argmin(neg_ce, neg_mask)
    s_neg = _pick(neg_scores.detach(), neg_index)

    label_term = label_ce
    pos_term = s_pos * best_pos_ce
    # relu, not clamp: at CE = δ exactly the hinge is off and passes no gradient.
    hinge = torch.relu(delta - hard_neg_ce) * has_neg
    neg_term = (1.0 - s_neg) * hinge
    loss = (alpha1 * label_term + alpha2 * pos_term + alpha3 * neg_term).mean()

    def mean_over(values: torch.Tensor, rows: torch.Tensor) -> float:
        return float(values[rows].mean()) if rows.any() else 0.0

    metrics = {
        "label_ce": float(label_ce.detach().mean()),
        "pos_ce": mean_over(best_pos_ce.detach(), has_pos),
        "neg_ce": mean_over(hard_neg_ce.detach(), has_neg),
        "hinge_active": mean_over((hinge.detach() > 0).float(), has_neg),
        "s_pos": mean_over(s_pos, has_pos),
        "s_neg": mean_over(s_neg, has_neg),
        "alpha3": float(alpha3),
    }
    return loss, metrics


def qcrd_no_disc_loss(
    label_ce: torch.Tensor,
    pos_ce: torch.Tensor,
    pos_mask: torch.Tensor,
    neg_ce: torch.Tensor,
    neg_mask: torch.Tensor,
    pos_scores: torch.Tensor | None = None,
    neg_scores: torch.Tensor | None = None,
    **weights: float,
) -> tuple[torch.Tensor, Metrics]:
    """QCRD without the discriminator: s⁺ = 1 and s⁻ = 0 for every rationale (scores are ignored)."""
    return qcrd_loss(
        label_ce,
        pos_ce,
        pos_mask,
        neg_ce,
        neg_mask,
        torch.ones_like(pos_ce),
        torch.zeros_like(neg_ce),
        **weights,
    )


def step_by_step_loss(
    label_ce: torch.Tensor, pos_ce: torch.Tensor, pos_mask: torch.Tensor, *, alpha: float = 0.5
) -> tuple[torch.Tensor, Metrics]:
    """Distilling step-by-step (Hsieh et al. 2023): α·CE(label) + (1 − α)·mean over positives of CE(r).

    label_ce [B]; pos_ce, pos_mask [B, P]. Every positive rationale is a target (no min, no negatives);
    rows without positives contribute only their label term.
    """
    pos_mask = pos_mask.bool()
    counts = pos_mask.sum(-1)
    rationale_ce = (pos_ce * pos_mask).sum(-1) / counts.clamp_min(1)
    loss = (alpha * label_ce + (1.0 - alpha) * rationale_ce).mean()
    has_pos = counts > 0
    metrics = {
        "label_ce": float(label_ce.detach().mean()),
        "pos_ce": float(rationale_ce.detach()[has_pos].mean()) if has_pos.any() else 0.0,
    }
    return loss, metrics


def label_only_loss(label_ce: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """Plain fine-tuning on labels: mean of CE(label | predict: x) over the batch [B]."""
    loss = label_ce.mean()
    return loss, {"label_ce": float(loss.detach())}


def alpha3_at(epoch: int, alpha3: float = 0.5, decay: float = 0.9) -> float:
    """α3 for 0-based `epoch` under α3 ← decay·α3 after every epoch: alpha3 · decay**epoch."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return alpha3 * decay**epoch
