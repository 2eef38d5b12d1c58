"""QCRD loss and baselines on hand-computed values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from nega.distill.qcrd.loss import (
    alpha3_at,
    label_only_loss,
    mean_token_ce,
    qcrd_loss,
    qcrd_no_disc_loss,
    step_by_step_loss,
)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


def test_min_over_positives_picks_lowest_ce_and_only_it_gets_gradient():
    label = leaf([1.0])
    pos = leaf([[2.0, 0.7, 1.5]])
    neg = leaf([[5.0]])  # CE >= delta: hinge inactive, isolates the positive term
    ones = torch.ones(1, 3, dtype=torch.bool)
    scores = torch.tensor([[0.1, 0.8, 0.3]])
    loss, metrics = qcrd_loss(
        label, pos, ones, neg, torch.ones(1, 1, dtype=torch.bool), scores, torch.tensor([[0.5]]),
        alpha1=0.5, alpha2=0.5, alpha3=0.5, delta=3.0,
    )  # fmt: skip
    # 0.5*1.0 + 0.5*0.8*0.7 + 0 = 0.78; s+ is the score of the chosen positive (index 1), not the max
    assert loss.item() == pytest.approx(0.5 + 0.5 * 0.8 * 0.7)
    loss.backward()
    close(pos.grad, [[0.0, 0.5 * 0.8, 0.0]])
    assert label.grad.tolist() == pytest.approx([0.5])
    assert metrics["s_pos"] == pytest.approx(0.8)
    assert metrics["pos_ce"] == pytest.approx(0.7)


def test_hinge_active_pushes_the_hardest_negative_up():
    label = leaf([0.0])
    pos = leaf([[1.0]])
    neg = leaf([[2.5, 1.0, 4.0]])
    neg_scores = torch.tensor([[0.9, 0.2, 0.0]])
    loss, metrics = qcrd_loss(
        label, pos, torch.ones(1, 1, dtype=torch.bool), neg, torch.ones(1, 3, dtype=torch.bool),
        torch.tensor([[1.0]]), neg_scores, alpha1=0.5, alpha2=0.5, alpha3=0.5, delta=3.0,
    )  # fmt: skip
    # hardest negative = lowest CE = 1.0 (s- = 0.2): 0.5*1*1.0 + 0.5*(1-0.2)*(3-1.0) = 0.5 + 0.8
    assert loss.item() == pytest.approx(0.5 + 0.5 * 0.8 * 2.0)
    loss.backward()
    # descending the loss raises the negative's CE: gradient is negative, only on the hardest one
    close(neg.grad, [[0.0, -0.5 * 0.8, 0.0]])
    assert metrics["hinge_active"] == 1.0
    assert metrics["s_neg"] == pytest.approx(0.2)


def test_hinge_inactive_gives_zero_loss_and_zero_gradient():
    neg = leaf([[3.0, 3.5]])  # hardest CE exactly delta: max(0, 0) = 0
    label = leaf([0.0])
    pos = leaf([[0.0]])
    loss, metrics = qcrd_loss(
        label, pos, torch.ones(1, 1, dtype=torch.bool), neg, torch.ones(1, 2, dtype=torch.bool),
        torch.ones(1, 1), torch.zeros(1, 2), delta=3.0,
    )  # fmt: skip
    assert loss.item() == 0.0
    loss.backward()
    assert neg.grad.abs().sum().item() == 0.0
    assert metrics["hinge_active"] == 0.0


def test_discriminator_scores_get_no_gradient():
    pos_scores = leaf([[0.6]])
    neg_scores = leaf([[0.3]])
    loss, _ = qcrd_loss(
        leaf([1.0]), leaf([[1.0]]), torch.ones(1, 1, dtype=torch.bool), leaf([[1.0]]),
        torch.ones(1, 1, dtype=torch.bool), pos_scores, neg_scores,
    )  # fmt: skip
    loss.backward()
    assert pos_scores.grad is None and neg_scores.grad is None


def test_masks_ignore_padding_and_rows_without_rationales():
    label = leaf([1.0, 2.0])
    # row 0: the masked 0.1 positive and 0.0 negative are padding and must be ignored;
    # row 1: no positives, no negatives -> only its label term
    pos = leaf([[0.9, 0.1], [0.2, 0.3]])
    pos_mask = torch.tensor([[True, False], [False, False]])
    neg = leaf([[2.0, 0.0], [0.5, 0.5]])
    neg_mask = torch.tensor([[True, False], [False, False]])
    loss, metrics = qcrd_loss(
        label, pos, pos_mask, neg, neg_mask, torch.ones(2, 2), torch.zeros(2, 2),
        alpha1=1.0, alpha2=1.0, alpha3=1.0, delta=3.0,
    )  # fmt: skip
    row0 = 1.0 + 0.9 + (3.0 - 2.0)
    row1 = 2.0
    assert loss.item() == pytest.approx((row0 + row1) / 2)
    loss.backward()
    close(pos.grad, [[0.5, 0.0], [0.0, 0.0]])
    close(neg.grad, [[-0.5, 0.0], [0.0, 0.0]])
    assert metrics["pos_ce"] == pytest.approx(0.9)


def test_no_negative_columns_at_all():
    loss, metrics = qcrd_loss(
        leaf([1.0]), leaf([[2.0]]), torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 0),
        torch.zeros(1, 0, dtype=torch.bool), torch.ones(1, 1), torch.zeros(1, 0), alpha1=1, alpha2=1, alpha3=1,
    )  # fmt: skip
    assert loss.item() == pytest.approx(3.0)
    assert metrics["neg_ce"] == 0.0


def test_no_disc_variant_uses_unit_positive_and_zero_negative_weights():
    args = (
        leaf([1.0]),
        leaf([[1.2, 0.4]]),
        torch.ones(1, 2, dtype=torch.bool),
        leaf([[1.0]]),
        torch.ones(1, 1, dtype=torch.bool),
    )
    loss, _ = qcrd_no_disc_loss(
        *args, torch.full((1, 2), 0.1), torch.full((1, 1), 0.9), alpha1=0.5, alpha2=0.5, alpha3=0.5
    )
    assert loss.item() == pytest.approx(0.5 * 1.0 + 0.5 * 0.4 + 0.5 * (3.0 - 1.0))


def test_step_by_step_averages_all_positives():
    label = leaf([1.0, 3.0])
    pos = leaf([[1.0, 2.0, 9.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss, _ = step_by_step_loss(label, pos, mask, alpha=0.25)
    expected = (0.25 * 1.0 + 0.75 * 1.5 + 0.25 * 3.0 + 0.75 * 4.0) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    close(pos.grad, [[0.75 / 4, 0.75 / 4, 0.0], [0.75 / 2, 0.0, 0.0]])


def test_label_only_is_mean_label_ce():
    loss, metrics = label_only_loss(torch.tensor([1.0, 2.0, 6.0]))
    assert loss.item() == pytest.approx(3.0)
    assert metrics["label_ce"] == pytest.approx(3.0)


def test_alpha3_decays_by_point_nine_per_epoch():
    assert [alpha3_at(e) for e in range(4)] == pytest.approx([0.5, 0.45, 0.405, 0.3645])
    assert alpha3_at(2, 1.0, 0.5) == 0.25
    with pytest.raises(ValueError):
        alpha3_at(-1)


def test_mean_token_ce_matches_manual_cross_entropy_on_response_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 0]])
    resp = torch.tensor([[False, False, True, True], [False, True, False, False]])
    ce = mean_token_ce(logits, ids, resp)
    log_probs = logits.log_softmax(-1)
    row0 = -(log_probs[0, 1, 3] + log_probs[0, 2, 4]) / 2
    row1 = -log_probs[1, 0, 2]
    assert ce.tolist() == pytest.approx([row0.item(), row1.item()], rel=1e-5)
    assert math.isfinite(ce.sum().item())
