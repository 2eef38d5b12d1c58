"""The reward-model trainer: two steps move the head and the LoRA adapter, never the base weights; a
trained folder carries its head and its calibration; Platt scaling on hand values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rm_pairs import rm_recipe, toy_examples

from nega.rewards.rm.model import REWARD_FILE, fit_calibration, harm_probability


def test_two_steps_move_the_head_and_the_adapter_but_not_the_base(tiny_model_dir, tmp_path):
    from nega.rewards.rm.data import RewardCollator, encode_pairs
    from nega.rewards.rm.model import build_reward_model
    from nega.rewards.rm.trainer import RewardTrainer
    from nega.training import training_arguments

    recipe = rm_recipe(tiny_model_dir, tmp_path, max_steps=2, batch_size=4)
    model, tokenizer = build_reward_model(tiny_model_dir, recipe.model, recipe.lora, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = RewardTrainer(
        model=model,
        args=training_arguments(recipe.train, tmp_path / "checkpoints", seed=0),
        train_dataset=encode_pairs(tokenizer, toy_examples(tiny_model_dir, "train", 8), 160),
        data_collator=RewardCollator(tokenizer.pad_token_id),
        metric_prefix="rm",
    )
    trainer.train()
    after = dict(model.named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    head = {name for name in before if "score.modules_to_save" in name}
    adapter = {name for name in before if "lora_" in name}
    base = set(before) - head - adapter
    assert head and adapter and base
    assert head <= moved and any("lora_B" in name for name in moved)
    assert not moved & base
    assert {name for name, p in model.named_parameters() if p.requires_grad} == head | adapter
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all({"rm/accuracy", "rm/margin"} <= set(h) for h in logged)


def test_the_trained_folder_holds_the_head_and_a_calibration_from_held_out_pairs(trained_rm):
    from safetensors.torch import load_file

    weights = load_file(trained_rm / "adapter_model.safetensors")
    assert any(name.endswith("score.weight") for name in weights)  # the head travels with the adapter
    info = json.loads((trained_rm / REWARD_FILE).read_text())
    assert info["max_length"] == 160
    calibration = info["calibration"]
    assert calibration["pairs"] == 16 and calibration["weight"] < 0  # a higher reward is less harmful
    assert calibration["accuracy"] >= 0.75


def test_calibration_without_pairs_is_sigmoid_of_minus_the_reward():
    calibration = fit_calibration([], [])
    assert calibration == {"weight": -1.0, "bias": 0.0, "pairs": 0, "accuracy": None}
    assert harm_probability(0.0, calibration) == 0.5
    assert harm_probability(2.0, calibration) == pytest.approx(1 / (1 + math.exp(2.0)))


def test_platt_scaling_puts_the_threshold_between_the_answers_and_stays_finite():
    chosen, rejected = [2.0, 3.0, 4.0, 1.0], [-2.0, -1.0, 0.0, 1.5]
    calibration = fit_calibration(chosen, rejected)
    w, b = calibration["weight"], calibration["bias"]
    assert w < 0 and math.isfinite(w) and math.isfinite(b)
    assert calibration["accuracy"] == 0.75 and calibration["pairs"] == 4
    assert all(harm_probability(r, calibration) > 0.5 for r in (-2.0, -1.0, 0.0))
    assert all(harm_probability(c, calibration) < 0.5 for c in (2.0, 3.0, 4.0))
    # The fitted point zeroes the gradient of the smoothed log-loss (+ ridge on w).
    n = len(chosen)
    xs, ys = rejected + chosen, [(n + 1) / (n + 2)] * n + [1 / (n + 2)] * n
    ps = [harm_probability(x, calibration) for x in xs]
    assert sum(p - y for p, y in zip(ps, ys, strict=True)) == pytest.approx(0, abs=1e-8)
    assert sum((p - y) * x for p, y, x in zip(ps, ys, xs, strict=True)) + 1e-3 * w == pytest.approx(
        0, abs=1e-8
    )
    # Perfectly separated rewards keep a finite weight (Platt's smoothed targets).
    separated = fit_calibration([10.0, 11.0], [-10.0, -11.0])
    assert math.isfinite(separated["weight"]) and separated["weight"] < 0


def test_an_untrained_head_with_equal_rewards_calibrates_to_a_coin():
    calibration = fit_calibration([0.3] * 5, [0.3] * 5)
    assert harm_probability(0.3, calibration) == pytest.approx(0.5, abs=1e-6)
    assert calibration["accuracy"] == 0.0
