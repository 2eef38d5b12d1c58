"""The AWR loss: hand-computed values and gradient signs (per-step DPO's loss is tested in test_losses.py)."""

from __future__ import annotations

import pytest
import torch

from nega.align.stepneg.loss import awr_loss, awr_weights


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
