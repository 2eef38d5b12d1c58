"""TrainConfig -> transformers TrainingArguments (+ DeepSpeed config), and training with resume.

Multi-process launching (`--gpus`, `--nodes`) re-runs the training stages under `accelerate launch`;
this module holds the pieces every method's trainer shares.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def deepspeed_config(train_cfg) -> dict | None:
    """A DeepSpeed ZeRO config for `train.deepspeed`, or None for stage 0 (plain DDP / one process).

    Batch sizes are "auto" so the Trainer fills them from TrainingArguments. Small parameters are
    sharded too (persistence threshold 0): DeepSpeed's default keeps them whole on every rank, which
    hides sharding bugs on small models.
    """
    ds = train_cfg.deepspeed
    if ds.stage == 0:
        return None
    zero: dict = {"stage": ds.stage, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 1e5}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.stage == 3:
        zero.update(
            stage3_param_persistence_threshold=0,
            stage3_prefetch_bucket_size=0,
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def training_arguments(train_cfg, output_dir: Path, *, seed: int = 0, **overrides):
    """TrainingArguments for a method's Trainer; `overrides` win (e.g. a method's own max_steps)."""
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum,
        learning_rate=train_cfg.lr,
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps or -1,
        lr_scheduler_type=train_cfg.lr_scheduler,
        warmup_steps=train_cfg.warmup_ratio,
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=2,
        logging_steps=train_cfg.logging_steps,
        seed=seed,
        data_seed=seed,
        report_to=[],
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=train_cfg.bf16,
        gradient_checkpointing=train_cfg.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=os.environ.get("NEGA_QUIET") == "1",
        deepspeed=deepspeed_config(train_cfg),
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` folder (one with trainer_state.json), if any."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    if not folders:
        return None
    return str(max(folders, key=lambda p: int(p.name.split("-")[-1])))


def train_with_resume(trainer, output_dir: Path):
    """Run `trainer.train()`, resuming optimizer, scheduler, RNG and data order from the last checkpoint."""
    return trainer.train(resume_from_checkpoint=last_checkpoint(output_dir))


def log_history(trainer) -> list[dict]:
    """Per-step logged metrics (loss, lr, method metrics) for the stage manifest."""
    return [dict(entry) for entry in trainer.state.log_history]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good weights were saved first."""


def guarded_trainer_class():
    """`transformers.Trainer` that stops on a non-finite loss or gradient, after saving the last good state.

    Built lazily so importing nega.launch does not import transformers. Method trainers subclass the
    returned class and override `compute_loss` only. The check runs after backward and before the
    optimizer step, so the weights saved to `<output_dir>/last-good/` are the state before the bad batch.
    Batches may carry `row_index` (dataset rows) so the message names them.
    """
    global _GUARDED
    if _GUARDED is not None:
        return _GUARDED
    from transformers import Trainer

    class GuardedTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            rows = inputs.get("row_index") if isinstance(inputs, dict) else None
            loss = super().training_step(model, inputs, num_items_in_batch)
            what = None
            if not torch.isfinite(loss).all():
                what = f"loss is {loss.item()}"
            else:
                bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
                if bad:
                    what = f"gradient of {bad[0]} is not finite ({len(bad)} tensors)"
            if what is not None:
                model.zero_grad(set_to_none=True)
                good = Path(self.args.output_dir) / "last-good"
                self.save_model(str(good))
                step = self.state.global_step + 1
                rows_text = f", dataset rows {rows.tolist() if hasattr(rows, 'tolist') else rows}" if rows is not None else ""
                raise NonFiniteLossError(
                    f"training stopped at step {step}{rows_text}: {what}. The weights before this batch are in "
                    f"{good}; the last checkpoint is {last_checkpoint(self.args.output_dir)}. Lower train.lr, "
                    "check those rows, or set train.max_grad_norm lower."
                )
            return loss

    _GUARDED = GuardedTrainer
    return GuardedTrainer


_GUARDED = None
