"""A reward model trained once for this folder's tests: the tiny model's body on toy harm pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
from rm_pairs import rm_recipe, toy_examples


@pytest.fixture(scope="session")
def trained_rm(tiny_model_dir, tmp_path_factory) -> Path:
    """The adapter folder of a reward model trained 60 steps on 64 toy pairs (16 more calibrate it)."""
    from nega.rewards.rm.trainer import train_reward_model

    out = tmp_path_factory.mktemp("rm")
    recipe = rm_recipe(tiny_model_dir, out, max_steps=60, batch_size=8)
    examples = toy_examples(tiny_model_dir, "train", 64) + toy_examples(
        tiny_model_dir, "validation", 16, role="calibration"
    )
    folder, _ = train_reward_model(recipe, str(tiny_model_dir), examples, out / "stage")
    return Path(folder)
