"""D²O and baseline losses on hand-computed values, gradient signs, masking and the mean-DPO bound."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nega.align.d2o.loss import d2o_loss, ga_loss, kto_undesirable_loss, sft_self_loss
from nega.losses import dpo_loss


def _leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_d2o_is_log2_when_policy_equals_references():
    self_logps = torch.tensor([[-3.0, -5.0, -2.0], [-1.0, -4.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    neg = torch.tensor([-7.0, -2.5], dtype=torch.float64)
    loss, metrics = d2o_loss(self_logps, self_logps.clone(), mask, neg, neg.clone(), alpha=0.1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert metrics["logit"].item() == 0.0
    assert metrics["reward_accuracy"].item() == 0.0


def test_d2o_hand_computed_value():
    # row 0: self ratios (1, -0.5), K=2; neg ratio 2.  z = 0.2*(0.5/2) - 0.3*2 = -0.55
    # row 1: self ratio (3), K=1 (second slot padded); neg ratio -1.  z = 0.2*3 + 0.3 = 0.9
    policy_self = torch.tensor([[-1.0, -3.5], [-2.0, 99.0]])
    ref_self = torch.tensor([[-2.0, -3.0], [-5.0, -1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    loss, metrics = d2o_loss(
        policy_self,
        ref_self,
        mask,
        torch.tensor([-4.0, -6.0]),
        torch.tensor([-6.0, -5.0]),
        alpha=0.3,
        beta=0.2,
    )
    expected = -(math.log(1 / (1 + math.exp(0.55))) + math.log(1 / (1 + math.exp(-0.9)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["logit"].item() == pytest.approx((-0.55 + 0.9) / 2, rel=1e-6)
    assert metrics["self_logratio"].item() == pytest.approx((1 - 0.5 + 3) / 3, rel=1e-6)
    assert metrics["neg_logratio"].item() == pytest.approx((2 - 1) / 2, rel=1e-6)
    assert metrics["reward_accuracy"].item() == pytest.approx(0.5)


def test_d2o_gradient_pushes_negative_down_and_self_samples_up():
    policy_self = _leaf([[-3.0, -4.0, -2.0]])
    policy_neg = _leaf([-5.0])
    loss, _ = d2o_loss(
        policy_self,
        policy_self.detach().clone(),
        torch.ones(1, 3, dtype=torch.bool),
        policy_neg,
        policy_neg.detach().clone(),
        alpha=0.1,
        beta=0.1,
    )
    loss.backward()
    # Gradient descent moves against the gradient: positive grad on y_l => its log-prob goes down.
    assert policy_neg.grad.item() > 0
    assert (policy_self.grad < 0).all()
    # At z = 0, σ(-z) = 1/2: d/d logπ(y_l) = α/2, d/d logπ(y_i) = -β/(2K).
    assert policy_neg.grad.item() == pytest.approx(0.05)
    assert policy_self.grad[0].tolist() == pytest.approx([-0.1 / 6] * 3)


def test_d2o_logit_is_mean_dpo_logit_and_loss_is_below_mean_dpo():
    torch.manual_seed(0)
    B, K, beta = 16, 7, 0.5
    policy_self = torch.randn(B, K, dtype=torch.float64) * 5 - 20
    ref_self = torch.randn(B, K, dtype=torch.float64) * 5 - 20
    policy_neg = torch.randn(B, dtype=torch.float64) * 5 - 20
    ref_neg = torch.randn(B, dtype=torch.float64) * 5 - 20
    mask = torch.ones(B, K, dtype=torch.bool)
    loss, metrics = d2o_loss(policy_self, ref_self, mask, policy_neg, ref_neg, alpha=beta, beta=beta)

    pair_logits = beta * ((policy_self - ref_self) - (policy_neg - ref_neg)[:, None])  # [B, K] DPO logits
    d2o_logits = beta * (policy_self - ref_self).mean(-1) - beta * (policy_neg - ref_neg)
    torch.testing.assert_close(d2o_logits, pair_logits.mean(-1))
    assert metrics["logit"].item() == pytest.approx(pair_logits.mean().item(), rel=1e-9)
    assert loss.item() == pytest.approx(-F.logsigmoid(pair_logits.mean(-1)).mean().item(), rel=1e-9)

    mean_dpo = torch.stack(
        [
            dpo_loss(
                policy_chosen=policy_self[:, i],
                policy_rejected=policy_neg,
                ref_chosen=ref_self[:, i],
                ref_rejected=ref_neg,
                beta=beta,
            )[0]
            for i in range(K)
        ]
    ).mean()
    assert mean_dpo.item() == pytest.approx(-F.logsigmoid(pair_logits).mean().item(), rel=1e-9)
    # Jensen: -log σ is convex, so -log σ(mean z) <= mean -log σ(z); strict when the K logits differ.
    assert loss.item() < mean_dpo.item()
    per_row_d2o = -F.logsigmoid(pair_logits.mean(-1))
    per_row_dpo = -F.logsigmoid(pair_logits).mean(-1)
    assert (per_row_d2o <= per_row_dpo + 1e-12).all()


def test_d2o_masked_padding_changes_nothing():
    torch.manual_seed(1)
    B, K = 3, 4
    base = {
        "policy_self": torch.randn(B, K, dtype=torch.float64) - 10,
        "ref_self": torch.randn(B, K, dtype=torch.float64) - 10,
        "policy_neg": torch.randn(B, dtype=torch.float64) - 10,
        "ref_neg": torch.randn(B, dtype=torch.float64) - 10,
    }
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)

    def run(policy_self, ref_self, mask):
        policy_self = policy_self.clone().requires_grad_(True)
        policy_neg = base["policy_neg"].clone().requires_grad_(True)
        loss, metrics = d2o_loss(
            policy_self, ref_self, mask, policy_neg, base["ref_neg"], alpha=0.2, beta=0.3
        )
        loss.backward()
        return loss, metrics, policy_self.grad, policy_neg.grad

    loss1, metrics1, grad_self1, grad_neg1 = run(base["policy_self"], base["ref_self"], mask)
    garbage = torch.tensor([[float("nan"), 1e30, -float("inf")]] * B, dtype=torch.float64)
    loss2, metrics2, grad_self2, grad_neg2 = run(
        torch.cat([base["policy_self"], garbage], 1),
        torch.cat([base["ref_self"], garbage.flip(1)], 1),
        torch.cat([mask, torch.zeros(B, 3, dtype=torch.bool)], 1),
    )
    assert torch.isfinite(loss2)
    assert loss2.item() == loss1.item()
    torch.testing.assert_close(grad_neg2, grad_neg1)
    torch.testing.assert_close(grad_self2[:, :K], grad_self1)
    assert (grad_self2[:, K:] == 0).all()
    for key in metrics1:
        assert metrics2[key].item() == pytest.approx(metrics1[key].item())
    # Row 2's padded slots in the original tensor also had no gradient.
    assert (grad_self1[~mask] == 0).all()

    # Variable K: row 1 (K=2) is averaged over its 2 real samples, not over K=4.
    ratio = base["policy_self"] - base["ref_self"]
    z1 = 0.3 * ratio[1, :2].mean() - 0.2 * (base["policy_neg"][1] - base["ref_neg"][1])
    z = torch.stack(
        [
            0.3 * ratio[0].mean() - 0.2 * (base["policy_neg"][0] - base["ref_neg"][0]),
            z1,
            0.3 * ratio[2, 0] - 0.2 * (base["policy_neg"][2] - base["ref_neg"][2]),
        ]
    )
    assert loss1.item() == pytest.approx(-F.logsigmoid(z).mean().item(), rel=1e-12)


def test_alpha_and_beta_act_separately():
    policy_self, ref_self = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -3.0]])  # self ratio +1
    policy_neg, ref_neg = torch.tensor([-3.0]), torch.tensor([-5.0])  # neg ratio +2
    mask = torch.ones(1, 2, dtype=torch.bool)

    def logit(alpha, beta):
        return d2o_loss(policy_self, ref_self, mask, policy_neg, ref_neg, alpha, beta)[1]["logit"].item()

    assert logit(0.1, 0.1) == pytest.approx(0.1 - 0.2)
    assert logit(0.1, 0.7) == pytest.approx(0.7 - 0.2)  # β scales only the self term
    assert logit(0.4, 0.1) == pytest.approx(0.1 - 0.8)  # α scales only the negative term

    # Gradients: α scales only the negative's gradient, β only the self-samples'.
    grads = {}
    for alpha, beta in [(0.1, 0.1), (1.0, 0.1), (0.1, 1.0)]:
        ps, pn = policy_self.clone().requires_grad_(True), policy_neg.clone().requires_grad_(True)
        d2o_loss(ps, ref_self, mask, pn, ref_neg, alpha, beta)[0].backward()
        sig = torch.sigmoid(-torch.tensor(beta * 1.0 - alpha * 2.0)).item()
        assert pn.grad.item() == pytest.approx(alpha * sig, rel=1e-6)
        assert ps.grad[0].tolist() == pytest.approx([-beta * sig / 2] * 2, rel=1e-6)
        grads[(alpha, beta)] = (pn.grad.item(), ps.grad.sum().item())
    assert grads[(1.0, 0.1)][1] < 0 and grads[(0.1, 1.0)][0] > 0


def test_dpo_hand_computed_and_gradient_signs():
    chosen, rejected = _leaf([-4.0]), _leaf([-6.0])
    loss, metrics = dpo_loss(
        policy_chosen=chosen,
        policy_rejected=rejected,
        ref_chosen=torch.tensor([-5.0]),
        ref_rejected=torch.tensor([-5.0]),
        beta=0.5,
    )
    # z = 0.5 * ((1) - (-1)) = 1
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert metrics["reward_accuracy"].item() == 1.0
    loss.backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()


def test_ga_ascends_the_negatives_nll():
    neg = _leaf([-3.0, -5.0])
    loss, metrics = ga_loss(neg, torch.tensor([-3.0, -4.0]))
    assert loss.item() == pytest.approx(-4.0)  # summed log-probs, mean over the batch
    assert metrics["neg_logratio"].item() == pytest.approx(-0.5)
    loss.backward()
    assert neg.grad.tolist() == [0.5, 0.5]  # descent lowers log π(y_l)


def test_kto_undesirable_value_reference_point_and_gradient():
    neg = _leaf([-3.0, -4.0])
    ref_neg = torch.tensor([-4.0, -4.0])  # rewards (1, 0)
    kl_policy = _leaf([-10.0, -12.0])
    ref_kl = torch.tensor([-11.0, -12.0])  # KL estimate mean(1, 0) = 0.5
    loss, metrics = kto_undesirable_loss(neg, ref_neg, kl_policy, ref_kl, beta=2.0)
    expected = ((1 - 1 / (1 + math.exp(-2 * (0.5 - 1)))) + (1 - 1 / (1 + math.exp(-2 * 0.5)))) / 2
    assert loss.item() == pytest.approx(expected)
    assert metrics["kl"].item() == pytest.approx(0.5)
    loss.backward()
    assert (neg.grad > 0).all()  # pushes the undesirable log-prob down
    assert kl_policy.grad is None or (kl_policy.grad == 0).all()  # reference point is detached

    # Negative KL estimates are clipped to 0.
    _, metrics = kto_undesirable_loss(
        neg, ref_neg, torch.tensor([-20.0, -20.0]), torch.tensor([-1.0, -1.0]), 1.0
    )
    assert metrics["kl"].item() == 0.0


def test_sft_self_is_the_token_mean_nll_over_real_self_samples():
    # Real self-samples: (-6 over 3 tokens), (-2 over 1), (-4 over 4); the padding slot (NaN, 7 tokens)
    # counts for nothing. L = (6 + 2 + 4) / (3 + 1 + 4) = 1.5, not the mean of per-sample NLLs (~1.17).
    policy = _leaf([[-6.0, -2.0], [-4.0, float("nan")]])
    tokens = torch.tensor([[3, 1], [4, 7]])
    mask = torch.tensor([[True, True], [True, False]])
    ref = torch.tensor([[-5.0, -2.5], [-4.0, 3.0]], dtype=torch.float64)
    loss, metrics = sft_self_loss(
        policy_self_logps=policy, self_tokens=tokens, self_mask=mask, ref_self_logps=ref
    )
    assert loss.item() == pytest.approx(1.5)
    assert metrics["nll"].item() == pytest.approx(1.5)
    # Log-ratios (-1, 0.5, 0) over the 3 real samples.
    assert metrics["self_logratio"].item() == pytest.approx(-0.5 / 3)
    loss.backward()
    # Every real sample's log-prob is pushed up by 1 / (total tokens); the padding slot gets no gradient.
    assert policy.grad.tolist() == [[-1 / 8, -1 / 8], [-1 / 8, 0.0]]
