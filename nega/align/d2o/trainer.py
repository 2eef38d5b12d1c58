"""D²O training step: one policy forward over the batch's self-samples and negatives, then `loss.py`.

With `train.prefix_sharing` (the default) the forward packs each prompt with all of its responses into
one row, so a prompt with K self-samples is computed once rather than K + 1 times.

Reference log-probs arrive in the batch, computed once by the reflogps stage from frozen weights;
nothing here scores the reference, so a live policy can never stand in for it.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from nega.align.d2o.loss import d2o_loss, dpo_loss, ga_loss, kto_undesirable_loss
from nega.launch import guarded_trainer_class
from nega.logps import (  # noqa: F401  (reference_logps: used by run.py)
    packed_sequence_logps,
    reference_logps,
    sequence_logps,
    supports_packing,
)


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
    return dpo_loss(
        policy_chosen=logps[batch["self_index"][:, 0]][has_chosen],
        policy_rejected=logps[batch["neg_index"]][has_chosen],
        ref_chosen=batch["ref_self_logps"][:, 0][has_chosen],
        ref_rejected=batch["ref_neg_logps"][has_chosen],
        beta=beta,
    )


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


OBJECTIVES = {
    "d2o": d2o_objective,
    "dpo_self": dpo_self_objective,
    "ga": ga_objective,
    "kto_neg": kto_neg_objective,
}


class D2OTrainer(guarded_trainer_class()):
    """`Trainer` whose loss is D²O (or a baseline) over batches from `D2OCollator`.

    Built on nega's guarded Trainer: a non-finite loss or gradient stops training after saving the last
    good weights, naming the batch's dataset rows (GA, whose loss is unbounded, can get there).

    `objective` picks the loss once; `alpha` weights the negative, `beta` the self-samples (DPO and KTO
    use `beta` as their β). Loss metrics are averaged over the logging interval and logged as
    `<objective>/<metric>`.
    """

    def __init__(self, *args, objective: str = "d2o", alpha: float = 0.1, beta: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        if objective not in OBJECTIVES:
            raise ValueError(f"d2o.objective {objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        self.objective = objective
        self.objective_fn = OBJECTIVES[objective]
        self.alpha, self.beta = alpha, beta
        # The loss is a per-batch mean, so the Trainer must divide it by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        self._pending_metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "packed_ids" in inputs:
            logps = packed_sequence_logps(model, inputs)
        else:
            logps = sequence_logps(
                model, inputs["input_ids"], inputs["attention_mask"], inputs["response_mask"]
            )
        loss, metrics = self.objective_fn(logps, inputs, self.alpha, self.beta)
        for key, value in metrics.items():
            self._pending_metrics[key].append(float(value))
        return (loss, {"logps": logps.detach()}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._pending_metrics:
            for key, values in self._pending_metrics.items():
                logs[f"{self.objective}/{key}"] = sum(values) / len(values)
            self._pending_metrics.clear()
        super().log(logs, start_time)


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
    log history). `overrides` go to TrainingArguments (e.g. max_steps, learning_rate)."""
    from pathlib import Path

    from nega.align.d2o.data import D2OCollator
    from nega.launch import log_history, save_trained, train_with_resume, training_arguments
    from nega.models import load_policy

    output_dir = Path(output_dir)
    model, tokenizer = load_policy(model_path, recipe.model, recipe.lora, seed=recipe.seed, adapter=adapter)
    checkpoints = output_dir / "checkpoints"
    args = training_arguments(recipe.train, checkpoints, seed=recipe.seed, **overrides)
    trainer = D2OTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=D2OCollator(
            tokenizer,
            objective,
            recipe.model.max_length,
            pack=recipe.train.prefix_sharing and supports_packing(model),
        ),
        objective=objective,
        alpha=recipe.d2o.alpha,
        beta=recipe.d2o.beta,
    )
    train_with_resume(trainer, checkpoints)
    folder = save_trained(trainer, tokenizer, output_dir / "adapter")
    return str(folder), log_history(trainer)


def train_entry(
    recipe: dict,
    model_path: str,
    examples_path: str,
    output_dir: str,
    objective: str,
    adapter: str | None = None,
    overrides: dict | None = None,
) -> None:
    """`train_policy` from JSON-able arguments, as `nega.launch.run_training` calls it on every rank."""
    from pathlib import Path

    from nega.config import validate_recipe
    from nega.launch import is_main_process
    from nega.pipeline import read_jsonl, write_json

    cfg = validate_recipe(recipe)
    examples = read_jsonl(Path(examples_path))
    folder, history = train_policy(
        cfg, model_path, examples, output_dir, objective=objective, adapter=adapter, **(overrides or {})
    )
    if is_main_process():
        write_json(Path(output_dir) / "train_log.json", {"folder": folder, "history": history})
