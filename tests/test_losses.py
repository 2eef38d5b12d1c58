"""nega.losses: the one DPO, its values and gradient signs by hand, and the methods that train with it."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import pytest
import torch

import nega
from nega import losses
from nega.losses import dpo_loss


def test_dpo_takes_keywords_only():
    """A positional call is refused, so chosen and rejected can never be swapped by argument order."""
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
    with pytest.raises(TypeError):
        dpo_loss(x, x, x, x, 0.1)
    fell = dpo_loss(policy_chosen=x - 1, policy_rejected=x, ref_chosen=x, ref_rejected=x, beta=1.0)[0]
    assert fell.item() == pytest.approx(math.log(1 + math.e))  # z = -1: chosen fell, rejected did not


def test_dpo_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -7.5])
    loss, metrics = dpo_loss(
        policy_chosen=logps, policy_rejected=logps + 1, ref_chosen=logps, ref_rejected=logps + 1, beta=0.1
    )
    assert loss.item() == pytest.approx(math.log(2))
    assert metrics["logit"].item() == pytest.approx(0.0)
    assert metrics["reward_accuracy"].item() == 0.0


def test_dpo_value_and_metrics_by_hand():
    # z = 0.5 * [(-1 - -2) - (-4 - -3)] = 0.5 * (1 + 1) = 1
    loss, metrics = dpo_loss(
        policy_chosen=torch.tensor([-1.0]),
        policy_rejected=torch.tensor([-4.0]),
        ref_chosen=torch.tensor([-2.0]),
        ref_rejected=torch.tensor([-3.0]),
        beta=0.5,
    )
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.0)))
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {
            "logit": 1.0,
            "reward_accuracy": 1.0,
            "chosen_logratio": 1.0,
            "rejected_logratio": -1.0,
            "chosen_logp": -1.0,
            "rejected_logp": -4.0,
        }
    )
    assert not any(v.requires_grad for v in metrics.values())


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
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
    # At z = 0, σ(-z) = 1/2: each pair's gradient is ∓β/2, divided by B = 2 for the batch mean.
    assert chosen.grad.tolist() == pytest.approx([-0.025, -0.025])
    assert rejected.grad.tolist() == pytest.approx([0.025, 0.025])


def test_nega_defines_dpo_loss_once():
    root = Path(nega.__file__).parent
    found = [
        f"{path.relative_to(root.parent)}:{node.lineno}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "dpo_loss"
    ]
    assert len(found) == 1 and found[0].startswith("nega/losses.py:"), found


def test_d2o_and_stepneg_train_with_the_same_dpo_function():
    """D²O's dpo_self baseline and per-step (and outcome) DPO call the one function object in nega.losses,
    not a copy of it."""
    from nega.align.d2o.trainer import OBJECTIVES as D2O_OBJECTIVES
    from nega.align.stepneg.trainer import OBJECTIVES as STEPNEG_OBJECTIVES

    callers = [D2O_OBJECTIVES["dpo_self"], STEPNEG_OBJECTIVES["dpo"], STEPNEG_OBJECTIVES["outcome_dpo"]]
    for objective in callers:
        assert "dpo_loss" in objective.__code__.co_names, objective.__qualname__
        assert objective.__globals__["dpo_loss"] is losses.dpo_loss, objective.__module__


def test_d2o_dpo_self_is_dpo_on_the_first_self_sample_under_d2o_metric_names():
    from nega.align.d2o.trainer import OBJECTIVES

    # Three prompts; the last has no self-sample left (filtered), so it sits the batch out.
    logps = torch.tensor([-2.0, -3.0, -9.0, -4.0, -1.0, -6.0, -5.0], requires_grad=True)
    batch = {
        "self_index": torch.tensor([[0, 1], [3, 3], [0, 0]]),
        "self_mask": torch.tensor([[True, True], [True, False], [False, False]]),
        "neg_index": torch.tensor([2, 4, 5]),
        "ref_self_logps": torch.tensor([[-2.5, -3.0], [-4.0, 0.0], [0.0, 0.0]]),
        "ref_neg_logps": torch.tensor([-8.0, -1.5, -6.0]),
    }
    loss, metrics = OBJECTIVES["dpo_self"](logps, batch, alpha=0.3, beta=0.2)
    expected, plain = dpo_loss(
        policy_chosen=torch.tensor([-2.0, -4.0]),
        policy_rejected=torch.tensor([-9.0, -1.0]),
        ref_chosen=torch.tensor([-2.5, -4.0]),
        ref_rejected=torch.tensor([-8.0, -1.5]),
        beta=0.2,
    )
    assert loss.item() == pytest.approx(expected.item())
    assert metrics["self_logratio"].item() == pytest.approx(plain["chosen_logratio"].item())
    assert metrics["neg_logratio"].item() == pytest.approx(plain["rejected_logratio"].item())
    assert metrics["logit"].item() == pytest.approx(plain["logit"].item())
    loss.backward()
    assert logps.grad[5].item() == 0.0  # the filtered prompt's negative gets no gradient
