"""D²O loss and the baselines trained on the same negatives, as pure torch functions.

Every log-prob argument is a **summed** response log-prob (prompt and padding masked), one number per
sequence. Policy log-probs carry gradients; reference log-probs are constants computed once from frozen
weights. Each function returns `(loss, metrics)`: a scalar to minimise and detached scalar tensors to log.
The `dpo_self` baseline trains with the one DPO of `nega.losses`, shared with per-step negative RL.
Equations and decisions: docs/methods.md#d2o.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def d2o_loss(
    policy_self_logps: torch.Tensor,
    ref_self_logps: torch.Tensor,
    self_mask: torch.Tensor,
    policy_neg_logps: torch.Tensor,
    ref_neg_logps: torch.Tensor,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distributional dispreference optimization (Duan et al. 2024, arXiv 2403.03419, eq. 7).

    For prompt b with K_b self-samples y_1..y_K_b and the human negative y_l::

        z_b = (β / K_b) Σ_i [log π_θ(y_i|x) - log π_r⁻(y_i|x)]  -  α [log π_θ(y_l|x) - log π_r⁺(y_l|x)]
        L   = mean_b  -log σ(z_b)

    Shapes: policy_self_logps, ref_self_logps, self_mask [B, K]; policy_neg_logps, ref_neg_logps [B].
    `self_mask[b, i]` is False for padding slots (prompts have different K); their values, even NaN or
    inf, contribute nothing to the loss or its gradient. A prompt with no self-sample left (all filtered)
    keeps only its negative term.

    Metrics: `logit` (mean z), `self_logratio` (mean over real self-samples), `neg_logratio`,
    `reward_accuracy` (fraction of prompts with z > 0).
    """
    mask = self_mask.bool()
    zeros = torch.zeros_like(policy_self_logps)
    # torch.where (not multiplication) so a NaN/inf in a padding slot cannot leak into loss or grads.
    self_ratio = torch.where(mask, policy_self_logps - torch.where(mask, ref_self_logps, zeros), zeros)
    k = mask.sum(-1).clamp_min(1).to(self_ratio.dtype)
    self_term = self_ratio.sum(-1) / k
    neg_ratio = policy_neg_logps - ref_neg_logps
    logits = beta * self_term - alpha * neg_ratio
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        real = mask.sum().clamp_min(1)
        metrics = {
            "logit": logits.mean(),
            "self_logratio": self_ratio.sum() / real,
            "neg_logratio": neg_ratio.mean(),
            "reward_accuracy": (logits > 0).float().mean(),
        }
    return loss, metrics


def ga_loss(
    policy_neg_logps: torch.Tensor, ref_neg_logps: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gradient ascent on the negative's NLL: minimise `mean_b log π_θ(y_l|x)` (summed over tokens).

    Shapes [B]. Unbounded below by design: that is the baseline's known failure (it unlearns fluency
    along with harm). `ref_neg_logps` is used only for the logged log-ratio.
    """
    loss = policy_neg_logps.mean()
    with torch.no_grad():
        metrics = {
            "neg_logratio": (policy_neg_logps - ref_neg_logps).mean(),
            "neg_logp": policy_neg_logps.mean(),
        }
    return loss, metrics


def kto_undesirable_loss(
    policy_neg_logps: torch.Tensor,
    ref_neg_logps: torch.Tensor,
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    beta: float,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO (Ethayarajh et al. 2024) with only undesirable examples, all arguments [B]::

        r   = log π_θ(y_l|x) - log π_ref(y_l|x)
        z_0 = max(0, mean_b [log π_θ(y'_b|x_b) - log π_ref(y'_b|x_b)])   (detached)
        L   = mean λ_U (1 - σ(β (z_0 - r)))

    z_0 is KTO's reference point: a batch estimate of KL(π_θ || π_ref) from mismatched pairs, i.e. each
    prompt x_b scored with another prompt's negative y'_b, as in the paper and TRL's KTOTrainer.
    """
    reward = policy_neg_logps - ref_neg_logps
    kl = (policy_kl_logps - ref_kl_logps).mean().clamp_min(0).detach()
    loss = (undesirable_weight * (1 - torch.sigmoid(beta * (kl - reward)))).mean()
    with torch.no_grad():
        metrics = {"neg_logratio": reward.mean(), "kl": kl, "reward_accuracy": (reward < kl).float().mean()}
    return loss, metrics


def sft_self_loss(
    policy_self_logps: torch.Tensor,
    self_tokens: torch.Tensor,
    self_mask: torch.Tensor,
    ref_self_logps: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SFT on the self-samples alone: the baseline that isolates what D²O's negatives add.

    The same self-samples, steps and batches as D²O, no negative term: the mean token NLL over every
    real self-sample of the batch, as nega's SFT computes it::

        L = − Σ_{b,i} m_bi log π_θ(y_i|x_b)  /  Σ_{b,i} m_bi |y_i|

    Shapes: policy_self_logps (summed over tokens), self_tokens (response tokens scored, end token
    included), self_mask, ref_self_logps [B, K]. Padding slots (mask False) contribute nothing, even
    NaN or inf. With self-samples drawn under a system prompt that training omits, this is context
    distillation of that prompt's behaviour. `ref_self_logps` is used only for the logged log-ratio.

    Metrics: `nll` (the loss), `self_logratio` (mean over real self-samples, as D²O logs it).
    """
    mask = self_mask.bool()
    zeros = torch.zeros_like(policy_self_logps)
    logps = torch.where(mask, policy_self_logps, zeros)
    tokens = torch.where(mask, self_tokens.to(logps.dtype), zeros).sum().clamp_min(1)
    loss = -logps.sum() / tokens
    with torch.no_grad():
        real = mask.sum().clamp_min(1)
        metrics = {
            "nll": loss.detach(),
            "self_logratio": (logps - torch.where(mask, ref_self_logps, zeros)).sum() / real,
        }
    return loss, metrics
