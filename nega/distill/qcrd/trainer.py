"""QCRD training: one period of optimizer steps per call, a Trainer whose loss is `loss.py`.

Each period is its own stage (its negatives and discriminator scores are made between periods, by a
sampler that never shares the training process), so every period starts a Trainer from the previous
period's adapter and optimizer state (`optimizer.safetensors`, saved at the end of each period; under DeepSpeed,
whose optimizer is sharded, the moments restart each period). The learning-rate schedule spans the whole
run: period p's scheduler starts at its first global step of one warmup + decay over all steps. The
rows of each step come from the run's schedule (`nega.distill.qcrd.schedule`), in order: the Trainer
does not shuffle them again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nega.distill.qcrd.loss import (
    label_only_loss,
    mean_token_ce,
    qcrd_loss,
    qcrd_no_disc_loss,
    step_by_step_loss,
)
from nega.distill.qcrd.schedule import steps_per_epoch
from nega.trainer import MethodTrainer

__all__ = ["OBJECTIVES", "QCRDTrainer", "loss_weights", "steps_per_epoch", "train_period", "uses_negatives"]

OPTIMIZER_STATE = "optimizer.safetensors"  # a period's optimizer state, where the next period continues from

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
    `schedule_offset` / `schedule_total` place this period inside the run-wide LR schedule;
    `optimizer_state` (a previous period's `optimizer.safetensors`) is where the optimizer's moments continue
    from. Rows are taken in the dataset's order. `negative_totals` sums, over the rows with negatives,
    whether the hinge was active and the hardest negative's CE (`period_statistics`).
    """

    def __init__(self, *args, objective: str = "qcrd", weights: dict | None = None, schedule_offset: int = 0,
                 schedule_total: int | None = None, optimizer_state: str | None = None, **kwargs):  # fmt: skip
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
        self.optimizer_state = optimizer_state
        self.negative_totals = {"rows": 0.0, "hinge_active": 0.0, "hard_negative_ce": 0.0}

    def loss_and_metrics(self, model, inputs):
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        ).logits
        ce = mean_token_ce(logits, inputs["input_ids"], inputs["response_mask"])
        n = int(inputs["n_labels"])
        loss, metrics = self.objective_fn(
            inputs, ce[:n], ce[inputs["pos_index"]], ce[inputs["neg_index"]], self.weights
        )
        if "hinge_active" in metrics and model.training:
            # The loss reports means over the rows that have a negative; weigh them back into sums.
            rows = float(inputs["neg_mask"].bool().any(dim=-1).sum())
            self.negative_totals["rows"] += rows
            self.negative_totals["hinge_active"] += rows * metrics["hinge_active"]
            self.negative_totals["hard_negative_ce"] += rows * metrics["neg_ce"]
        return loss, metrics

    def period_statistics(self) -> dict[str, float]:
        """Over every row with a negative trained on (all ranks): the share whose hinge was active
        (δ − CE(r⁻) > 0) and the mean CE of its hardest negative r⁻. Empty for objectives without negatives."""
        totals = torch.tensor(
            [self.negative_totals[k] for k in ("rows", "hinge_active", "hard_negative_ce")],
            dtype=torch.float64,
            device=self.args.device,
        )
        totals = self.accelerator.reduce(totals, reduction="sum").tolist()
        if totals[0] == 0:
            return {}
        return {"hinge_active": totals[1] / totals[0], "hard_negative_ce": totals[2] / totals[0]}

    def _get_train_sampler(self, train_dataset=None):
        # The run's schedule already shuffled the rows and cut them into steps.
        return torch.utils.data.SequentialSampler(
            train_dataset if train_dataset is not None else self.train_dataset
        )

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.optimizer_state is not None and not self.is_deepspeed_enabled:
            # Adam's moments carry over from the previous period; a checkpoint of this period, when
            # resuming, overrides them afterwards.
            optimizer.load_state_dict(load_optimizer_state(self.optimizer_state))
        return optimizer

    def save_optimizer_state(self, folder: Path) -> Path | None:
        """The optimizer's state as `<folder>/optimizer.safetensors` for the next period (rank 0; not under DeepSpeed)."""
        if self.is_deepspeed_enabled or not self.is_world_process_zero():
            return None
        path = Path(folder) / OPTIMIZER_STATE
        tmp = path.with_name(f".{path.name}.tmp")
        write_optimizer_state(self.optimizer.state_dict(), tmp)
        tmp.replace(path)
        return path

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


def loss_weights(qcrd_cfg, period: int) -> dict:
    """Every objective's weights for 0-based `period` (α3 ← decay·α3 once per period)."""
    from nega.distill.qcrd.loss import alpha3_at

    return {
        "alpha1": qcrd_cfg.alpha1,
        "alpha2": qcrd_cfg.alpha2,
        "alpha3": alpha3_at(period, qcrd_cfg.alpha3, qcrd_cfg.alpha3_decay),
        "delta": qcrd_cfg.delta,
        "step_by_step_alpha": qcrd_cfg.step_by_step_alpha,
    }


def train_period(
    recipe,
    model_path: str,
    examples: list[dict],
    output_dir,
    *,
    objective: str,
    period: int,
    steps: int,
    first_step: int,
    total_steps: int,
    source_step: int | None = None,
    adapter: str | None = None,
    optimizer_state: str | None = None,
) -> tuple[str, list[dict], dict]:
    """Train the student `steps` optimizer steps (global steps first_step.. of total_steps) on `examples`,
    the period's rows in step order, from `adapter` (None = a fresh LoRA) and `optimizer_state` (None = a
    fresh optimizer); save it to `<output_dir>/adapter` with `optimizer.safetensors` beside. With
    `lora.enabled: false`, `adapter` is the previous period's full model folder and the result goes to
    `<output_dir>/model`. Returns (that folder, log history, the period's counts for its manifest). The
    training function of the <objective>-p<k>-train stages (`nega.training.train_stage`)."""
    from nega.distill.qcrd.collator import MultiTaskCollator
    from nega.models import load_policy
    from nega.training import trained_folder_name, training_arguments

    output_dir = Path(output_dir)
    if recipe.lora.enabled:
        model, tokenizer = load_policy(
            model_path, recipe.model, recipe.lora, seed=recipe.seed, adapter=adapter
        )
    else:
        model, tokenizer = load_policy(adapter or model_path, recipe.model, recipe.lora, seed=recipe.seed)
    args = training_arguments(
        recipe.train, output_dir / "checkpoints", seed=recipe.seed + period, max_steps=steps
    )
    _, rationales, negatives = OBJECTIVES[objective]
    weights = loss_weights(recipe.qcrd, period)
    trainer = QCRDTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=MultiTaskCollator(
            tokenizer, max_length=recipe.model.max_length, rationales=rationales, negatives=negatives
        ),
        objective=objective,
        weights=weights,
        schedule_offset=first_step,
        schedule_total=total_steps,
        optimizer_state=optimizer_state,
    )
    folder, _ = trainer.fit(tokenizer, output_dir / trained_folder_name(recipe.lora))
    trainer.save_optimizer_state(output_dir)
    counts = {"period": period, "first_step": first_step, "alpha3": weights["alpha3"],
              **trainer.period_statistics()}  # fmt: skip
    if source_step is not None:
        counts["source_step"] = source_step
    # No "/" in the keys: one value per period, not a curve to draw beside the per-step metrics.
    trainer.log({f"period_{k}": float(v) for k, v in counts.items()})
    return folder, [dict(entry) for entry in trainer.state.log_history], counts


def sampling_target(model_path: str, checkpoint: str | None, lora_cfg) -> tuple[str, str | None]:
    """(model folder, LoRA adapter or None) that a sampler needs to sample a student checkpoint.

    A LoRA checkpoint rides on the base model; a full fine-tuned one is a model folder of its own
    (the evaluation's rule, `nega.eval.stage.trained_target`).
    """
    from nega.eval.stage import trained_target

    target = trained_target("student", model_path, checkpoint, lora_cfg)
    return target.model, target.adapter


def write_optimizer_state(state: dict, path: Path) -> None:
    """An optimizer's state_dict as safetensors (no pickle): each per-parameter tensor under
    `<param index>.<name>`, the param groups and any non-tensor entries as JSON metadata."""
    import json

    from safetensors.torch import save_file

    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    meta = {"param_groups": state["param_groups"], "scalars": scalars}
    save_file(tensors, str(path), metadata={"nega_optimizer": json.dumps(meta)})


def load_optimizer_state(path: Path) -> dict:
    """The state_dict `write_optimizer_state` wrote."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads(f.metadata()["nega_optimizer"])
        values = {key: f.get_tensor(key) for key in f.keys()}
    values.update(meta["scalars"])
    state: dict[int, dict] = {}
    for key, value in values.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # JSON turned tuples (Adam's betas) into lists; the optimizer's own state_dict holds tuples.
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["param_groups"]]  # fmt: skip
    return {"state": dict(sorted(state.items())), "param_groups": groups}
