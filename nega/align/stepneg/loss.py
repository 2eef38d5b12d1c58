"""Per-step negative RL losses as pure torch functions (Setlur et al. 2024, arXiv 2406.14532).

Specification: docs/methods.md#per-step-negative-rl.

Log-probs are sums over response tokens given the prompt. The reference is π_sft, scored once
before training and never refreshed.

Per-step DPO, with chosen y⁺ a correct solution and rejected the negative's prefix ŷ_1..c up to its
first pit c (no EOS, so the model is not taught that a solution ends there):

    L = -log σ( β[log π_θ(y⁺|x) − log π_sft(y⁺|x)] − β[log π_θ(ŷ_1..c|x) − log π_sft(ŷ_1..c|x)] )

Both DPO variants train with `nega.losses.dpo_loss`, the one DPO that D²O's `dpo_self` baseline uses too.
The outcome-DPO baseline passes a full incorrect solution (with EOS) as rejected.

Advantage-weighted per-step likelihood (the variant `stepneg.loss: awr`; the paper shows per-step DPO
optimises the same objective):

    L = −(1/B) Σ_b Σ_i w_bi · log π_θ(ŷ_bi | x_b, ŷ_b,<i),   w = exp(A/β) / mean(exp(A/β)), clipped at `clip`

with the mean over the valid steps of the batch. The sum runs over π_sft's samples, right ones
included (`data.awr_rows`): every weight is positive, so the objective lowers a step's probability
only by raising another at the same state — the right sample's next step (large advantage) beside
the pit (advantage near −1, weight near 0). Over wrong samples alone it would only ever raise them.
"""

from __future__ import annotations

import torch


def awr_weights(advantages: torch.Tensor, mask: torch.Tensor, beta: float, clip: float) -> torch.Tensor:
    """w = exp(A/β) normalised to mean 1 over the valid steps, then clipped at `clip`; 0 where masked.

    advantages, mask: [B, S]. Computed through a softmax, so exp(A/β) never overflows for small β.
    Weights are data: no gradient flows through them.
    """
    mask = mask.bool()
    count = mask.sum()
    if count == 0:
        return torch.zeros_like(advantages)
    scaled = (advantages.detach() / beta).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scaled.flatten(), dim=0).view_as(advantages) * count
    return weights.clamp(max=clip).masked_fill(~mask, 0.0)


def awr_loss(
    step_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    clip: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage-weighted per-step log-likelihood.

    step_logps [B, S]: log π_θ(ŷ_i | x, ŷ_<i) summed over step i's tokens; advantages [B, S]: A_i;
    mask [B, S]: True for real steps. Returns (loss averaged over the B sequences, metrics).
    """
    weights = awr_weights(advantages, mask, beta, clip)
    loss = -(weights * step_logps.masked_fill(~mask.bool(), 0.0)).sum() / step_logps.size(0)
    valid = mask.bool()
    metrics = {
        "awr/weight_max": weights.max().detach(),
        "awr/clipped_share": ((weights >= clip) & valid).float().sum() / valid.sum().clamp_min(1),
        "awr/advantage_mean": advantages[valid].mean().detach() if valid.any() else advantages.new_zeros(()),
        "logps/steps": step_logps.detach()[valid].mean() if valid.any() else step_logps.new_zeros(()),
    }
    return loss, metrics
