"""Per-step DPO and AWR losses: hand-computed values and gradient signs."""

from __future__ import annotations

import math

import pytest
import torch

from nega.align.stepneg.loss import awr_loss, awr_weights, dpo_loss


def test_both_dpo_losses_take_the_same_keywords_only():
    """D²O's dpo_self baseline and per-step DPO: one signature, and a positional call is refused, so
    chosen and rejected can never be swapped by argument order."""
    import inspect

    from nega.align.d2o.loss import dpo_loss as d2o_dpo_loss

    assert inspect.signature(dpo_loss) == inspect.signature(d2o_dpo_loss)
    params = inspect.signature(dpo_loss).parameters.values()
    assert [p.name for p in params] == [
        "policy_chosen",
        "policy_rejected",
        "ref_chosen",
        "ref_rejected",
        "beta",
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    x = torch.zeros(1)
    for loss in (dpo_loss, d2o_dpo_loss):
        with pytest.raises(TypeError):
            loss(x, x, x, x, 0.1)
        same = loss(policy_chosen=x - 1, policy_rejected=x, ref_chosen=x, ref_rejected=x, beta=1.0)[0]
        assert same.item() == pytest.approx(math.log(1 + math.e))  # z = -1: chosen fell, rejected did not


def test_dpo_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -7.5])
    loss, metrics = dpo_loss(
        policy_chosen=logps, policy_rejected=logps + 1, ref_chosen=logps, ref_rejected=logps + 1, beta=0.1
    )
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["rewards/margin"].item() == pytest.approx(0.0)


def test_dpo_value_by_hand():
    # margin = 0.5 * [(-1 - -2) - (-4 - -3)] = 0.5 * (1 + 1) = 1
    loss, metrics = dpo_loss(
        policy_chosen=torch.tensor([-1.0]),
        policy_rejected=torch.tensor([-4.0]),
        ref_chosen=torch.tensor([-2.0]),
        ref_rejected=torch.tensor([-3.0]),
        beta=0.5,
    )
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert metrics["rewards/accuracy"].item() == 1.0


def test_dpo_gradient_raises_chosen_and_lowers_the_rejected_prefix():
    chosen = torch.tensor([-5.0, -6.0], requires_grad=True)
    rejected = torch.tensor([-4.0, -2.0], requires_grad=True)
    loss, _ = dpo_loss(
        policy_chosen=chosen,
        policy_rejected=rejected,
        ref_chosen=torch.tensor([-5.0, -6.0]),
        ref_rejected=torch.tensor([-4.0, -2.0]),
        beta=0.1,
    )
    loss.backward()
    # Descending the loss moves along -grad: chosen up, rejected down, both by β/2 per pair / B.
    assert torch.all(chosen.grad < 0) and torch.all(rejected.grad > 0)
    assert chosen.grad[0].item() == pytest.approx(-0.1 * 0.5 / 2)


def test_awr_weights_are_normalised_and_clipped():
    advantages = torch.tensor([[0.0, 0.1, -0.1], [0.0, 0.0, 5.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    weights = awr_weights(advantages, mask, beta=0.1, clip=100.0)
    raw = torch.exp(torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0]))
    expected = raw / raw.mean()
    assert weights[mask].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert weights[1, 2].item() == 0.0
    assert weights[mask].mean().item() == pytest.approx(1.0)
    clipped = awr_weights(advantages, mask, beta=0.1, clip=1.5)
    assert clipped.max().item() == pytest.approx(1.5)
    # Very small β must not overflow.
    assert torch.isfinite(awr_weights(advantages * 100, mask, beta=1e-3, clip=20.0)).all()


def test_awr_loss_value_and_gradient_weight_good_steps_more():
    step_logps = torch.tensor([[-2.0, -3.0]], requires_grad=True)
    advantages = torch.tensor([[0.2, -0.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, _ = awr_loss(step_logps, advantages, mask, beta=0.2, clip=20.0)
    w = torch.exp(torch.tensor([1.0, -1.0]))
    w = w / w.mean()
    assert loss.item() == pytest.approx(-(w[0] * -2.0 + w[1] * -3.0).item(), rel=1e-5)
    loss.backward()
    assert step_logps.grad[0, 0] < step_logps.grad[0, 1] < 0  # both raised, the good step more
    assert step_logps.grad[0, 0].item() == pytest.approx(-w[0].item(), rel=1e-5)


def test_awr_ignores_masked_steps():
    step_logps = torch.tensor([[-2.0, -50.0]], requires_grad=True)
    mask = torch.tensor([[True, False]])
    loss, _ = awr_loss(step_logps, torch.tensor([[0.0, 9.0]]), mask, beta=0.1, clip=20.0)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert step_logps.grad[0, 1].item() == 0.0


def test_awr_over_right_and_wrong_samples_lowers_the_pit_step():
    """One state, three possible next steps (right, pit, other) under a softmax policy. AWR over a right
    sample (A = +0.5) and a wrong one (pit, A = -1) raises the right step and lowers the pit; over the
    wrong sample alone its only weight is 1, and the objective raises the very step it should lower."""

    def pit_probability_after_a_step(rows):
        logits = torch.zeros(3, requires_grad=True)
        logps = torch.log_softmax(logits, dim=0)
        step_logps = torch.stack([logps[step] for step, _ in rows]).unsqueeze(1)
        advantages = torch.tensor([[a] for _, a in rows])
        loss, _ = awr_loss(step_logps, advantages, torch.ones_like(advantages, dtype=torch.bool), 0.1, 20.0)
        loss.backward()
        with torch.no_grad():
            return torch.softmax(logits - 0.5 * logits.grad, dim=0)[1].item()

    start = 1 / 3
    assert pit_probability_after_a_step([(0, 0.5), (1, -1.0)]) < start
    assert pit_probability_after_a_step([(1, -1.0)]) > start
