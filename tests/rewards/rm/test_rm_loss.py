"""The Bradley–Terry loss on hand-computed values, its gradient signs and sizes, and its metrics."""

from __future__ import annotations

import math

import pytest
import torch

from nega.rewards.rm.loss import bradley_terry_loss


def test_equal_rewards_cost_log_two_and_a_margin_costs_softplus_of_minus_it():
    loss, metrics = bradley_terry_loss(
        chosen_rewards=torch.tensor([0.5, -1.0]), rejected_rewards=torch.tensor([0.5, -1.0])
    )
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["accuracy"].item() == 0.0 and metrics["margin"].item() == 0.0

    loss, metrics = bradley_terry_loss(
        chosen_rewards=torch.tensor([2.0, 0.0]), rejected_rewards=torch.tensor([0.0, 1.0])
    )
    # −log σ(2) and −log σ(−1), averaged over the two pairs
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2)
    assert metrics["accuracy"].item() == 0.5 and metrics["margin"].item() == pytest.approx(0.5)


def test_the_gradient_raises_the_chosen_reward_and_lowers_the_rejected_one():
    chosen = torch.tensor([1.0, -2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 3.0], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen_rewards=chosen, rejected_rewards=rejected)
    loss.backward()
    # d/dr_c of −log σ(r_c − r_r), over B = 2 pairs: −σ(r_r − r_c) / 2; the rejected one gets its negation.
    expected = [-1 / (1 + math.exp(1.0)) / 2, -1 / (1 + math.exp(-5.0)) / 2]
    assert chosen.grad.tolist() == pytest.approx(expected)
    assert rejected.grad.tolist() == pytest.approx([-g for g in expected])
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_a_huge_margin_stays_finite():
    loss, _ = bradley_terry_loss(
        chosen_rewards=torch.tensor([-500.0]), rejected_rewards=torch.tensor([500.0])
    )
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(1000.0)


def test_shapes_must_be_one_reward_per_pair():
    with pytest.raises(ValueError, match=r"must both be \[B\]"):
        bradley_terry_loss(chosen_rewards=torch.zeros(2, 1), rejected_rewards=torch.zeros(2, 1))
