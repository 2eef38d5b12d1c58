"""Losses that more than one method trains with, as pure torch functions (tensors in, `(loss, metrics)` out).

A method's own loss stays in its `loss.py`; a loss lives here once two methods call it. Today that is
DPO: D²O's `dpo_self` baseline and per-step negative RL's per-step and outcome DPO (docs/methods.md).
This module imports torch only, so it costs nothing to import from a method's `loss.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    *,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290) over a batch of B pairs; docs/methods.md#shared-rules.

    Every argument is a [B] tensor of log-probs **summed** over the response tokens (prompt and padding
    masked), passed by keyword so chosen and rejected cannot be swapped by position. The policy's carry
    gradients; the reference's are constants scored once from frozen weights::

        z_b = β [log π_θ(y_w|x) − log π_ref(y_w|x)] − β [log π_θ(y_l|x) − log π_ref(y_l|x)]
        L   = mean_b −log σ(z_b)

    D²O's `dpo_self` passes one self-sample as y_w and the human negative as y_l; per-step DPO a correct
    solution and the first-pit prefix; outcome DPO a correct and a full incorrect solution.

    Returns the scalar loss and detached [] metrics: `logit` (mean z, D²O's name for the same number),
    `reward_accuracy` (share of pairs with z > 0), `chosen_logratio` and `rejected_logratio` (mean
    log π_θ − log π_ref, unscaled by β), `chosen_logp` and `rejected_logp` (mean policy log-probs).
    """
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    logits = beta * (chosen - rejected)
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {
            "logit": logits.mean(),
            "reward_accuracy": (logits > 0).float().mean(),
            "chosen_logratio": chosen.mean(),
            "rejected_logratio": rejected.mean(),
            "chosen_logp": policy_chosen.mean(),
            "rejected_logp": policy_rejected.mean(),
        }
    return loss, metrics
