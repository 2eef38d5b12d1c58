"""D²O training step: one policy forward over the batch's self-samples and negatives, then `loss.py`.

With `train.prefix_sharing` (the default) the forward packs each prompt with all of its responses into
one row, so a prompt with K self-samples is computed once rather than K + 1 times.

Reference log-probs arrive in the batch, computed once by the reflogps stage from frozen weights;
nothing here scores the reference, so a live policy can never stand in for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nega.align.d2o.loss import d2o_loss, ga_loss, kto_undesirable_loss, sft_self_loss
from nega.logps import packed_sequence_logps, sequence_logps, supports_packing
from nega.losses import dpo_loss
from nega.trainer import MethodTrainer


def d2o_objective(logps: torch.Tensor, batch: dict, alpha: float, beta: float):
    return d2o_loss(
        policy_self_logps=logps[batch["self_index"]],
        ref_self_logps=batch["ref_self_logps"],
        self_mask=batch["self_mask"],
        policy_neg_logps=logps[batch["neg_index"]],
        ref_neg_logps=batch["ref_neg_logps"],
        alpha=alpha,
        beta=beta,
    )


def dpo_self_objective(logps: torch.Tensor, batch: dict, alpha: float, beta: float):
    # Prompts whose self-samples were all filtered away have no chosen response; they sit this batch out.
    has_chosen = batch["self_mask"][:, 0]
    if not has_chosen.any():
        return logps.sum() * 0.0, {}
    loss, metrics = dpo_loss(
        policy_chosen=logps[batch["self_index"][:, 0]][has_chosen],
        policy_rejected=logps[batch["neg_index"]][has_chosen],
        ref_chosen=batch["ref_self_logps"][:, 0][has_chosen],
        ref_rejected=batch["ref_neg_logps"][has_chosen],
        beta=beta,
    )
    # Chosen is a self-sample and rejected the negative: log them under D²O's names so the baseline and
    # the method read side by side in one log.
    metrics["self_logratio"] = metrics.pop("chosen_logratio")
    metrics["neg_logratio"] = metrics.pop("rejected_logratio")
    return loss, metrics


def ga_objective(logps: torch.Tensor, batch: dict, alpha: float, beta: float):
    return ga_loss(policy_neg_logps=logps[batch["neg_index"]], ref_neg_logps=batch["ref_neg_logps"])


def kto_neg_objective(logps: torch.Tensor, batch: dict, alpha: float, beta: float):
    return kto_undesirable_loss(
        policy_neg_logps=logps[batch["neg_index"]],
        ref_neg_logps=batch["ref_neg_logps"],
        policy_kl_logps=logps[batch["kl_index"]],
        ref_kl_logps=batch["ref_kl_logps"],
        beta=beta,
    )


def sft_self_objective(logps: torch.Tensor, batch: dict, alpha: float, beta: float):
    return sft_self_loss(
        policy_self_logps=logps[batch["self_index"]],
        self_tokens=batch["self_tokens"],
        self_mask=batch["self_mask"],
        ref_self_logps=batch["ref_self_logps"],
    )


OBJECTIVES = {
    "d2o": d2o_objective,
    "dpo_self": dpo_self_objective,
    "ga": ga_objective,
    "kto_neg": kto_neg_objective,
    "sft_self": sft_self_objective,
}


class D2OTrainer(MethodTrainer):
    """D²O (or a baseline) over batches from `D2OCollator`, on nega's `MethodTrainer` (metrics averaged
    per logging interval as `<objective>/<metric>`; a non-finite loss or gradient stops training after
    saving the last good weights, naming the batch's rows: GA, whose loss is unbounded, can get there).

    `objective` picks the loss once; `alpha` weights the negative, `beta` the self-samples (DPO and KTO
    use `beta` as their β; SFT on the self-samples uses neither).
    """

    def __init__(self, *args, objective: str = "d2o", alpha: float = 0.1, beta: float = 0.1, **kwargs):
        if objective not in OBJECTIVES:
            raise ValueError(f"d2o.objective {objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        super().__init__(*args, metric_prefix=objective, **kwargs)
        self.objective = objective
        self.objective_fn = OBJECTIVES[objective]
        self.alpha, self.beta = alpha, beta

    def loss_and_metrics(self, model, inputs):
        if "packed_ids" in inputs:
            logps = packed_sequence_logps(model, inputs)
        else:
            logps = sequence_logps(
                model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"]
            )
        return self.objective_fn(logps, inputs, self.alpha, self.beta)


def train_policy(
    recipe,
    model_path: str,
    examples: list[dict],
    output_dir,
    *,
    objective: str,
    adapter: str | None = None,
    **overrides,
) -> tuple[str, list[dict]]:
    """Train a LoRA adapter (continuing `adapter` when given) on D²O examples; returns (adapter folder,
    log history). `overrides` go to TrainingArguments (e.g. max_steps, learning_rate). The training
    function of the d2o train stages (`nega.training.train_stage`)."""
    from nega.align.d2o.data import D2OCollator
    from nega.models import load_policy
    from nega.training import trained_folder_name, training_arguments

    output_dir = Path(output_dir)
    model, tokenizer = load_policy(model_path, recipe.model, recipe.lora, seed=recipe.seed, adapter=adapter)
    args = training_arguments(recipe.train, output_dir / "checkpoints", seed=recipe.seed, **overrides)
    pack = recipe.train.prefix_sharing and supports_packing(model)
    trainer = D2OTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=D2OCollator(tokenizer, objective, recipe.model.max_length, pack=pack),
        objective=objective,
        alpha=recipe.d2o.alpha,
        beta=recipe.d2o.beta,
    )
    return trainer.fit(tokenizer, output_dir / trained_folder_name(recipe.lora))
