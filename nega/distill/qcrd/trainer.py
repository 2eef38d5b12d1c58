"""QCRD training: one epoch per call, a Trainer whose loss is `loss.py`, and the lagged-checkpoint queue.

Each epoch is its own stage (its negatives and discriminator scores are made between epochs, by a
sampler that never shares the training process), so every epoch starts a Trainer from the previous
epoch's adapter. The learning-rate schedule still spans the whole run: epoch e's scheduler starts at
global step e·steps_per_epoch of one warmup + decay over all epochs. The optimizer's moments restart
each epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

from nega.distill.qcrd.loss import (
    label_only_loss,
    mean_token_ce,
    qcrd_loss,
    qcrd_no_disc_loss,
    step_by_step_loss,
)
from nega.trainer import MethodTrainer


class LagQueue:
    """Student checkpoints by epoch index: index e = the student at the start of epoch e (0 = the start).

    `for_epoch(e)` is the checkpoint `lag` epochs back, clipped to the oldest kept; only the newest
    lag + 1 are kept, since nothing older can be asked for.
    """

    def __init__(self, lag: int):
        if lag < 1:
            raise ValueError(f"qcrd.lag must be >= 1, got {lag}")
        self.lag = lag
        self.items: dict[int, str | None] = {}

    def push(self, index: int, checkpoint: str | None) -> None:
        self.items[index] = checkpoint
        for old in [i for i in self.items if i < index - self.lag]:
            del self.items[old]

    def for_epoch(self, epoch: int) -> tuple[int, str | None]:
        """(index, checkpoint) of the student `lag` epochs before `epoch`, clipped to the oldest kept."""
        if not self.items:
            raise ValueError("the checkpoint queue is empty; push the starting student (index 0) first")
        index = max(epoch - self.lag, min(self.items))
        return index, self.items[index]


QCRD_WEIGHTS = ("alpha1", "alpha2", "alpha3", "delta")


def _qcrd(batch, label_ce, pos_ce, neg_ce, weights):
    return qcrd_loss(
        label_ce, pos_ce, batch["pos_mask"], neg_ce, batch["neg_mask"], batch["pos_scores"], batch["neg_scores"],
        **{k: weights[k] for k in QCRD_WEIGHTS},
    )  # fmt: skip


def _qcrd_no_disc(batch, label_ce, pos_ce, neg_ce, weights):
    return qcrd_no_disc_loss(
        label_ce,
        pos_ce,
        batch["pos_mask"],
        neg_ce,
        batch["neg_mask"],
        **{k: weights[k] for k in QCRD_WEIGHTS},
    )


def _step_by_step(batch, label_ce, pos_ce, neg_ce, weights):
    return step_by_step_loss(label_ce, pos_ce, batch["pos_mask"], alpha=weights["step_by_step_alpha"])


def _label_only(batch, label_ce, pos_ce, neg_ce, weights):
    return label_only_loss(label_ce)


# objective -> (loss from the CEs and the batch, needs rationales, needs negatives)

OBJECTIVES = {
    "qcrd": (_qcrd, True, True),
    "qcrd_no_disc": (_qcrd_no_disc, True, True),
    "step_by_step": (_step_by_step, True, False),
    "label_only": (_label_only, False, False),
}


def uses_negatives(objective: str) -> bool:
    return OBJECTIVES[objective][2]


class QCRDTrainer(MethodTrainer):
    """QCRD (or a baseline) over batches from `MultiTaskCollator`, on nega's `MethodTrainer` (metrics
    averaged per logging interval as `<objective>/<metric>`).

    One forward over every stacked sequence gives each one's mean token CE; `loss.py` does the rest.
    `schedule_offset` / `schedule_total` place this epoch inside the run-wide LR schedule.
    """

    def __init__(self, *args, objective: str = "qcrd", weights: dict | None = None, schedule_offset: int = 0,
                 schedule_total: int | None = None, **kwargs):  # fmt: skip
        if objective not in OBJECTIVES:
            raise ValueError(
                f"qcrd.objective {objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}"
            )
        super().__init__(*args, metric_prefix=objective, **kwargs)
        self.objective = objective
        self.objective_fn = OBJECTIVES[objective][0]
        self.weights = dict(weights or {})
        self.schedule_offset = schedule_offset
        self.schedule_total = schedule_total

    def loss_and_metrics(self, model, inputs):
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        ).logits
        ce = mean_token_ce(logits, inputs["input_ids"], inputs["response_mask"])
        n = int(inputs["n_labels"])
        return self.objective_fn(
            inputs, ce[:n], ce[inputs["pos_index"]], ce[inputs["neg_index"]], self.weights
        )

    def create_scheduler(self, num_training_steps, optimizer=None):
        if self.lr_scheduler is None:
            from torch.optim.lr_scheduler import LambdaLR
            from transformers import get_scheduler

            optimizer = optimizer or self.optimizer
            total = self.schedule_total or num_training_steps
            whole_run = get_scheduler(
                self.args.lr_scheduler_type, optimizer,
                num_warmup_steps=self.args.get_warmup_steps(total), num_training_steps=total,
            )  # fmt: skip
            shape, offset = whole_run.lr_lambdas[0], self.schedule_offset
            self.lr_scheduler = LambdaLR(optimizer, lambda step: shape(step + offset))
        return self.lr_scheduler


def steps_per_epoch(n_examples: int, train_cfg, world_size: int = 1) -> int:
    """Optimizer steps that see every example once (train.max_steps caps it)."""
    per_step = train_cfg.batch_size * train_cfg.grad_accum * world_size
    steps = max(1, math.ceil(n_examples / per_step))
    return min(steps, train_cfg.max_steps) if train_cfg.max_steps else steps


def loss_weights(qcrd_cfg, epoch: int) -> dict:
    """Every objective's weights for 0-based `epoch` (α3 decayed per epoch)."""
    from nega.distill.qcrd.loss import alpha3_at

    return {
        "alpha1": qcrd_cfg.alpha1,
        "alpha2": qcrd_cfg.alpha2,
        "alpha3": alpha3_at(epoch, qcrd_cfg.alpha3, qcrd_cfg.alpha3_decay),
        "delta": qcrd_cfg.delta,
        "step_by_step_alpha": qcrd_cfg.step_by_step_alpha,
    }


def train_epoch(
    recipe,
    model_path: str,
    examples: list[dict],
    output_dir,
    *,
    objective: str,
    epoch: int,
    epochs: int,
    adapter: str | None = None,
) -> tuple[str, list[dict]]:
    """Train the student one epoch on `examples` from `adapter` (None = a fresh LoRA) and save it to
    `<output_dir>/adapter`; returns (that folder, log history). With `lora.enabled: false`, `adapter` is
    the previous epoch's full model folder and the result goes to `<output_dir>/model`. The training
    function of the <objective>-e<k>-train stages (`nega.training.train_stage`)."""
    from nega.distill.qcrd.data import MultiTaskCollator
    from nega.launch import world_size
    from nega.models import load_policy
    from nega.training import trained_folder_name, training_arguments

    output_dir = Path(output_dir)
    if recipe.lora.enabled:
        model, tokenizer = load_policy(
            model_path, recipe.model, recipe.lora, seed=recipe.seed, adapter=adapter
        )
    else:
        model, tokenizer = load_policy(adapter or model_path, recipe.model, recipe.lora, seed=recipe.seed)
    per_epoch = steps_per_epoch(len(examples), recipe.train, world_size())
    args = training_arguments(
        recipe.train, output_dir / "checkpoints", seed=recipe.seed + epoch, max_steps=per_epoch
    )
    _, rationales, negatives = OBJECTIVES[objective]
    trainer = QCRDTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=MultiTaskCollator(
            tokenizer, max_length=recipe.model.max_length, rationales=rationales, negatives=negatives
        ),
        objective=objective,
        weights=loss_weights(recipe.qcrd, epoch),
        schedule_offset=epoch * per_epoch,
        schedule_total=epochs * per_epoch,
    )
    return trainer.fit(tokenizer, output_dir / trained_folder_name(recipe.lora))


def sampling_target(model_path: str, checkpoint: str | None, lora_cfg) -> tuple[str, str | None]:
    """(model folder, LoRA adapter or None) that a sampler needs to sample a student checkpoint.

    A LoRA checkpoint rides on the base model; a full fine-tuned one is a model folder of its own
    (the evaluation's rule, `nega.eval.stage.trained_target`).
    """
    from nega.eval.stage import trained_target

    target = trained_target("student", model_path, checkpoint, lora_cfg)
    return target.model, target.adapter
