"""The reward-model trainer: Bradley–Terry on preference pairs, then calibration on held-out pairs."""

from __future__ import annotations

from pathlib import Path

from nega.rewards.rm.loss import bradley_terry_loss
from nega.trainer import MethodTrainer


class RewardTrainer(MethodTrainer):
    """Scores a batch's 2B answers in one forward pass (chosen first) and takes the BT loss."""

    def loss_and_metrics(self, model, inputs):
        rewards = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        ).logits[:, 0]
        half = rewards.shape[0] // 2
        return bradley_terry_loss(chosen_rewards=rewards[:half], rejected_rewards=rewards[half:])


def train_reward_model(recipe, model_path: str, examples: list[dict], output_dir, **overrides):
    """Train on the examples with role `train`, then fit the harm calibration on those with role
    `calibration` (`nega.rewards.rm.model.fit_calibration`) and write it into the trained folder;
    returns (folder, log history). The training function of the `rm-train` stage."""
    from nega.launch import is_main_process
    from nega.rewards.rm.data import RewardCollator, encode_pairs
    from nega.rewards.rm.model import build_reward_model, fit_calibration, pair_rewards, write_reward_file
    from nega.training import trained_folder_name, training_arguments

    output_dir = Path(output_dir)
    max_length = recipe.model.max_length
    train = [e for e in examples if e["role"] == "train"]
    calibration = [e for e in examples if e["role"] == "calibration"]
    model, tokenizer = build_reward_model(model_path, recipe.model, recipe.lora, seed=recipe.seed)
    trainer = RewardTrainer(
        model=model,
        args=training_arguments(recipe.train, output_dir / "checkpoints", seed=recipe.seed, **overrides),
        train_dataset=encode_pairs(tokenizer, train, max_length),
        data_collator=RewardCollator(tokenizer.pad_token_id),
        metric_prefix="rm",
    )
    folder, history = trainer.fit(tokenizer, output_dir / trained_folder_name(recipe.lora))
    # Every rank scores (a sharded model's forward pass needs them all); the main one writes.
    chosen, rejected = pair_rewards(
        trainer.model, tokenizer, calibration, max_length=max_length, batch_size=recipe.rm.score_batch_size
    )
    if is_main_process():
        write_reward_file(Path(folder), max_length=max_length, calibration=fit_calibration(chosen, rejected))
    return folder, history
