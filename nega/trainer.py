"""`MethodTrainer`: the `transformers.Trainer` every method's trainer subclasses (D²O, per-step RL, QCRD
and SFT).

A subclass gives its loss and nothing else (its collator goes to the constructor, as with any Trainer):

    class D2OTrainer(MethodTrainer):
        def loss_and_metrics(self, model, inputs):
            logps = sequence_logps(model, ...)
            return d2o_loss(...)   # (scalar loss, {metric: detached scalar})

The base holds what they share:

- metrics: each step's metrics are averaged over the logging interval and logged beside the loss as
  `<metric_prefix>/<metric>` (e.g. `d2o/reward_accuracy`);
- the guard: a NaN/inf loss or gradient stops training before the optimizer step, after saving the
  weights from before the bad batch to `<output_dir>/last-good/`, with a message naming the step and the
  batch's dataset rows (`row_index`, when the collator passes it);
- `fit(tokenizer, folder)`: train, resuming from the last checkpoint in `args.output_dir`, then save the
  adapter or model with its tokenizer (every rank calls it; rank 0 writes) -> (folder, log history).

Losses are per-batch means, so the Trainer itself divides them over gradient-accumulation steps
(`model_accepts_loss_kwargs = False`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer

from nega.training import NonFiniteLossError, last_checkpoint, save_trained, train_with_resume


class MethodTrainer(Trainer):
    def __init__(self, *args, metric_prefix: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.metric_prefix = metric_prefix
        self.model_accepts_loss_kwargs = False
        self._pending_metrics: dict[str, list[float]] = defaultdict(list)

    def loss_and_metrics(self, model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss on one batch and its metrics to log; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} must define loss_and_metrics(model, inputs)")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.loss_and_metrics(model, inputs)
        for key, value in metrics.items():
            self._pending_metrics[key].append(float(value))
        return (loss, {}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._pending_metrics:
            prefix = f"{self.metric_prefix}/" if self.metric_prefix else ""
            for key, values in self._pending_metrics.items():
                logs[f"{prefix}{key}"] = sum(values) / len(values)
            self._pending_metrics.clear()
        super().log(logs, start_time)

    def training_step(self, model, inputs, num_items_in_batch=None):
        rows = inputs.get("row_index") if isinstance(inputs, dict) else None
        loss = super().training_step(model, inputs, num_items_in_batch)
        what = None
        if not torch.isfinite(loss).all():
            what = f"loss is {loss.item()}"
        else:
            bad = [
                n
                for n, p in model.named_parameters()
                if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            if bad:
                what = f"gradient of {bad[0]} is not finite ({len(bad)} tensors)"
        if what is not None:
            model.zero_grad(set_to_none=True)
            good = Path(self.args.output_dir) / "last-good"
            self.save_model(str(good))
            step = self.state.global_step + 1
            rows_text = (
                f", dataset rows {rows.tolist() if hasattr(rows, 'tolist') else rows}"
                if rows is not None
                else ""
            )
            raise NonFiniteLossError(
                f"training stopped at step {step}{rows_text}: {what}. The weights before this batch are in "
                f"{good}; the last checkpoint is {last_checkpoint(self.args.output_dir)}. Lower train.lr, "
                "check those rows, or set train.max_grad_norm lower."
            )
        return loss

    def fit(self, tokenizer, folder: Path) -> tuple[str, list[dict]]:
        """Train (resuming from the last checkpoint in `args.output_dir`), save to `folder`; returns
        (folder, the logged history: loss, learning rate and the method's metrics per logging step)."""
        train_with_resume(self, Path(self.args.output_dir))
        saved = save_trained(self, tokenizer, Path(folder))
        return str(saved), [dict(entry) for entry in self.state.log_history]
