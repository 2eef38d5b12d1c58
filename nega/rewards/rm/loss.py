"""The Bradley–Terry reward-model loss (Bradley & Terry, 1952; as in Ouyang et al., 2022, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    *, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over pairs of −log σ(r_chosen − r_rejected).

    chosen_rewards, rejected_rewards: [B], the scalar reward of each pair's preferred and dispreferred
    answer. Under the Bradley–Terry model P(chosen ≻ rejected) = σ(r_chosen − r_rejected), so the loss
    is the pairs' negative log-likelihood; it is log 2 when the two rewards are equal, and its gradient
    raises r_chosen and lowers r_rejected by the same amount, σ(r_rejected − r_chosen) / B.

    Metrics (detached): `accuracy`, the share of pairs with r_chosen > r_rejected, and `margin`, the mean
    of r_chosen − r_rejected.
    """
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"chosen_rewards {tuple(chosen_rewards.shape)} and rejected_rewards "
            f"{tuple(rejected_rewards.shape)} must both be [B]"
        )
    margin = chosen_rewards.float() - rejected_rewards.float()
    # logsigmoid, not log(sigmoid(.)): exact for large negative margins, where sigmoid underflows to 0.
    loss = -F.logsigmoid(margin).mean()
    metrics = {"accuracy": (margin > 0).float().mean().detach(), "margin": margin.mean().detach()}
    return loss, metrics
