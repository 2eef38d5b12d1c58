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
  batch's dataset rows (`row_index`, when the collator passes it). The ranks of a distributed run agree
  first (an all-reduce of the verdict), so a bad batch on one rank stops every rank at the same step and
  they save together: ZeRO-3 gathers the weights with every rank, and one rank saving alone would hang.
  Under DeepSpeed `p.grad` is empty and the engine steps inside `backward`, so the loss is checked
  before the backward pass and the gradient through the engine's global norm after it;
- `fit(tokenizer, folder)`: train, resuming from the last checkpoint in `args.output_dir`, then save the
  adapter or model with its tokenizer (every rank calls it; rank 0 writes) -> (folder, log history).

Losses are per-batch means, so the Trainer itself divides them over gradient-accumulation steps
(`model_accepts_loss_kwargs = False`).
"""

from __future__ import annotations

import math
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
        if self.is_deepspeed_enabled and model.training:
            # DeepSpeed's optimizer steps inside backward, and in bf16/fp32 it steps on NaN gradients
            # too: a bad loss must stop training before its backward pass.
            self._stop_if_not_finite(nonfinite_reason(loss=float(loss.detach())), weights_before=True)
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
        self._rows = inputs.get("row_index") if isinstance(inputs, dict) else None
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.is_deepspeed_enabled:
            # The engine has stepped already (at the end of an accumulation); its global norm is the
            # same on every rank. Parameters' .grad stay empty under ZeRO.
            norm = None
            if self.accelerator.sync_gradients and hasattr(model, "get_global_grad_norm"):
                norm = model.get_global_grad_norm()
            reason = nonfinite_reason(grad_norm=None if norm is None else float(norm))
            self._stop_if_not_finite(reason, weights_before=False)
        else:
            bad = [
                n
                for n, p in model.named_parameters()
                if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            gradient = f"gradient of {bad[0]} is not finite ({len(bad)} tensors)" if bad else None
            reason = nonfinite_reason(loss=float(loss.detach()), bad_gradient=gradient)
            self._stop_if_not_finite(reason, weights_before=True)
        return loss

    def _stop_if_not_finite(self, reason: str | None, *, weights_before: bool) -> None:
        """Stop every rank when any rank found `reason` (a non-finite value); all of them save together.

        `weights_before`: the weights in memory are still those from before the bad batch, and are saved
        to `last-good/`; otherwise (a non-finite gradient found after DeepSpeed stepped) nothing is saved
        and the message points to the last checkpoint."""
        if not any_rank(reason is not None, self.args.device):
            return
        reason = reason or "a value on another rank is not finite"
        self.model.zero_grad(set_to_none=True)
        step = self.state.global_step + 1
        rows = getattr(self, "_rows", None)
        rows_text = (
            f", dataset rows {rows.tolist() if hasattr(rows, 'tolist') else rows}" if rows is not None else ""
        )
        checkpoint = last_checkpoint(self.args.output_dir)
        if weights_before:
            good = Path(self.args.output_dir) / "last-good"
            self.save_model(str(good))  # every rank: ZeRO-3 gathers the shards from all of them
            saved = f"The weights before this batch are in {good}; the last checkpoint is {checkpoint}."
        else:
            saved = f"The optimizer stepped on it, so start again from the last checkpoint, {checkpoint}."
        raise NonFiniteLossError(
            f"training stopped at step {step}{rows_text}: {reason}. {saved} Lower train.lr, check those "
            "rows, or set train.max_grad_norm lower."
        )

    def fit(self, tokenizer, folder: Path) -> tuple[str, list[dict]]:
        """Train (resuming from the last checkpoint in `args.output_dir`), save to `folder`; returns
        (folder, the logged history: loss, learning rate and the method's metrics per logging step)."""
        train_with_resume(self, Path(self.args.output_dir))
        saved = save_trained(self, tokenizer, Path(folder))
        return str(saved), [dict(entry) for entry in self.state.log_history]


def nonfinite_reason(
    *, loss: float | None = None, grad_norm: float | None = None, bad_gradient: str | None = None
) -> str | None:
    """What is not finite in a training step, or None when all is well: the loss, the global gradient
    norm (DeepSpeed's, where parameters hold no gradients) or a named gradient tensor. A value not
    given (None) is not checked."""
    if loss is not None and not math.isfinite(loss):
        return f"loss is {loss}"
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm}"
    return bad_gradient


def any_rank(flag: bool, device=None) -> bool:
    """`flag` agreed over the process group: True on every rank when it is True on any (an all-reduce
    of the maximum); `flag` itself without a group. `device` holds the tensor sent (a GPU for NCCL)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    verdict = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(verdict, op=dist.ReduceOp.MAX)
    return bool(verdict.item() > 0)
