"""Per-step negative RL training: a LoRA adapter on top of π_sft, with π_sft as the fixed reference.

π_sft is a plain model folder (the SFT adapter merged into its base), so "adapter disabled" is exactly
π_sft. Reference log-probs are computed once from those frozen weights before training
(`reference_logps`, cached by content) and travel in the batch; the policy never scores its own
reference, and the reference is never refreshed (docs/methods.md#per-step-negative-rl).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nega.align.stepneg.data import PairCollator, StepCollator
from nega.align.stepneg.loss import awr_loss
from nega.logps import (
    packed_sequence_logps,
    reference_logps,
    sequence_logps,
    shifted_targets,
    supports_packing,
    token_logps,
)
from nega.losses import dpo_loss
from nega.trainer import MethodTrainer


def step_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, step_index: torch.Tensor, num_steps: int
) -> torch.Tensor:
    """log π(ŷ_i | x, ŷ_<i) per step, [B, S]: token log-probs summed by the step each token belongs to.

    step_index [B, T] holds the step of token t (-1 for prompt and padding).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    # Position t predicts token t+1; scoring the whole logits (not a `[:, :-1]` slice) spares the
    # backward a second full-size gradient. Positions without a step get target -1 and log-prob 0.
    per_token = token_logps(logits, shifted_targets(input_ids, step_index >= 0))
    index = torch.nn.functional.pad(step_index[:, 1:], (0, 1), value=-1)
    return per_token.new_zeros(input_ids.size(0), num_steps).scatter_add(1, index.clamp_min(0), per_token)


def pair_objective(model, batch: dict, beta: float, clip: float):
    """Per-step or outcome DPO: the collator put chosen rows first, rejected rows second."""
    if "packed_ids" in batch:
        logps = packed_sequence_logps(model, batch)
    else:
        logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    half = batch["ref_chosen"].size(0)
    return dpo_loss(
        policy_chosen=logps[:half],
        policy_rejected=logps[half:],
        ref_chosen=batch["ref_chosen"],
        ref_rejected=batch["ref_rejected"],
        beta=beta,
    )


def awr_objective(model, batch: dict, beta: float, clip: float):
    per_step = step_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["step_index"], batch["advantages"].size(1)
    )
    return awr_loss(per_step, batch["advantages"], batch["step_mask"], beta, clip)


OBJECTIVES = {"dpo": pair_objective, "outcome_dpo": pair_objective, "awr": awr_objective}
COLLATORS = {"dpo": PairCollator, "outcome_dpo": PairCollator, "awr": StepCollator}


def collator(loss: str, tokenizer, max_length: int | None, pack: bool):
    """The batch collator of `loss`; the DPO pair losses pack by prompt when `pack` is set."""
    if COLLATORS[loss] is PairCollator:
        return PairCollator(tokenizer, max_length, pack=pack)
    return COLLATORS[loss](tokenizer, max_length)


class StepNegTrainer(MethodTrainer):
    """The per-step DPO, outcome-DPO or AWR loss, chosen once by `loss`, on nega's `MethodTrainer`
    (metrics averaged per logging interval as `<loss>/<metric>`)."""

    def __init__(self, *args, loss: str = "dpo", beta: float = 0.1, awr_clip: float = 20.0, **kwargs):
        if loss not in OBJECTIVES:
            raise ValueError(f"stepneg.loss {loss!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        super().__init__(*args, metric_prefix=loss, **kwargs)
        self.loss_name, self.objective = loss, OBJECTIVES[loss]
        self.beta, self.awr_clip = beta, awr_clip

    def loss_and_metrics(self, model, inputs):
        return self.objective(model, inputs, self.beta, self.awr_clip)


def chosen_response(example: dict) -> str | list[int]:
    """What a pair's chosen side scores: the ids π_sft sampled for it, else its text."""
    ids = example.get("chosen_ids")
    return example["chosen"] if ids is None else ids


def attach_reference_logps(
    examples: list[dict],
    model_path: str,
    model_cfg,
    cache=None,
    description: str = "pi_sft",
    *,
    device: str | None = None,
) -> list[dict]:
    """DPO examples with `ref_chosen` and `ref_rejected` filled from π_sft, scored on `device` (default:
    the plan's reference device, the first GPU, else the CPU); `description` names the stage in the
    progress output."""
    pairs = [(e["prompt"], chosen_response(e)) for e in examples]
    pairs += [(e["prompt"], e["rejected"]) for e in examples]
    eos = [True] * len(examples) + [bool(e["rejected_eos"]) for e in examples]
    values = reference_logps(
        model_path,
        model_cfg,
        pairs,
        eos,
        cache=cache,
        description=f"reference log-probs ({description})",
        device=device,
    )
    n = len(examples)
    return [{**e, "ref_chosen": values[i], "ref_rejected": values[n + i]} for i, e in enumerate(examples)]


def train_policy(
    recipe,
    model_path: str,
    examples: list[dict],
    output_dir,
    *,
    loss: str,
    callbacks: list | None = None,
    **overrides,
) -> tuple[str, list[dict]]:
    """Train a fresh LoRA adapter on π_sft (`model_path`) with `loss`; returns (adapter folder, log history).

    `overrides` go to TrainingArguments (e.g. max_steps, learning_rate). Resumes from the last checkpoint.
    The training function of the train-<loss> stages (`nega.training.train_stage`).
    """
    from nega.models import load_policy
    from nega.training import trained_folder_name, training_arguments

    if not examples:
        raise ValueError(
            f"no training examples for stepneg.loss={loss}: no problem had both a correct and an incorrect sample"
        )
    output_dir = Path(output_dir)
    model, tokenizer = load_policy(model_path, recipe.model, recipe.lora, seed=recipe.seed)
    args = training_arguments(recipe.train, output_dir / "checkpoints", seed=recipe.seed, **overrides)
    pack = recipe.train.prefix_sharing and supports_packing(model)
    trainer = StepNegTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=collator(loss, tokenizer, recipe.model.max_length, pack),
        loss=loss,
        beta=recipe.stepneg.beta,
        awr_clip=recipe.stepneg.awr_clip,
        callbacks=callbacks,
    )
    return trainer.fit(tokenizer, output_dir / trained_folder_name(recipe.lora))
