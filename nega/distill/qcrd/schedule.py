"""QCRD's step schedule: periods of optimizer steps, which rows each step trains on, and the lag.

Training is cut into periods of `qcrd.negatives_every_steps` optimizer steps (docs/methods.md#qcrd).
At the start of period p the student is checkpoint p (checkpoint 0 = the starting student, checkpoint
p = the student after period p − 1). Period p's self-adversarial negatives are sampled from checkpoint
max(p − `qcrd.lag`, 0): the student `lag` periods back, clipped to the oldest kept, the start. α3
decays once per period.

Which rows a step trains on is fixed by the schedule, not by the Trainer's sampler, so that a period's
negatives are sampled for exactly the inputs it will train on::

    epoch e: the N inputs shuffled (seeded by e), repeated until they fill steps_per_epoch steps
    step s:  epoch s // S, rows [j·B, (j+1)·B) of that order, j = s mod S, B = examples per step

A whole epoch is at least every input once; when N is not a multiple of B the last step of an epoch
tops up with the first rows of the same order (a few inputs seen twice), so every step is full.

Standard library only: `nega validate` uses it before anything heavy loads.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DEFAULT_PERIODS = 8  # qcrd.negatives_every_steps: null cuts the run into this many periods


def steps_per_epoch(n_examples: int, train_cfg, world_size: int = 1) -> int:
    """Optimizer steps that see every example once (train.max_steps caps it)."""
    per_step = train_cfg.batch_size * train_cfg.grad_accum * world_size
    steps = max(1, math.ceil(n_examples / per_step))
    return min(steps, train_cfg.max_steps) if train_cfg.max_steps else steps


def period_steps(negatives_every_steps: int | None, total_steps: int) -> int:
    """Optimizer steps per period: `negatives_every_steps`, or (null) an eighth of the run, at least 1."""
    if negatives_every_steps is not None:
        return negatives_every_steps
    return max(1, math.ceil(total_steps / DEFAULT_PERIODS))


@dataclass(frozen=True)
class PeriodSchedule:
    """The whole run's steps, periods and rows; every method is a pure function of these numbers."""

    n_examples: int  # training inputs N
    per_step: int  # examples per optimizer step: batch size × accumulation × processes
    steps_per_epoch: int
    epochs: int
    period: int  # optimizer steps per period
    lag: int  # periods between the student and the checkpoint its negatives come from
    seed: int = 0

    @classmethod
    def of(cls, recipe, n_examples: int, epochs: int, world_size: int = 1) -> PeriodSchedule:
        train, cfg = recipe.train, recipe.qcrd
        per_epoch = steps_per_epoch(n_examples, train, world_size)
        return cls(
            n_examples=n_examples,
            per_step=train.batch_size * train.grad_accum * world_size,
            steps_per_epoch=per_epoch,
            epochs=epochs,
            period=period_steps(cfg.negatives_every_steps, epochs * per_epoch),
            lag=cfg.lag,
            seed=recipe.seed,
        )

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def periods(self) -> int:
        return math.ceil(self.total_steps / self.period)

    def steps(self, period: int) -> range:
        """The global optimizer steps of `period` (0-based), the last period possibly shorter."""
        return range(period * self.period, min((period + 1) * self.period, self.total_steps))

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def source(self, period: int) -> int:
        """The checkpoint period `period` samples its negatives from: `lag` back, clipped to the start."""
        return max(period - self.lag, 0)

    def checkpoint_step(self, checkpoint: int) -> int:
        """The global optimizer step checkpoint `checkpoint` was saved at (0 = the starting student)."""
        return min(checkpoint * self.period, self.total_steps)

    def epoch_order(self, epoch: int) -> list[int]:
        """Row indices of `epoch` in training order, exactly steps_per_epoch × per_step long."""
        order = list(range(self.n_examples))
        random.Random(f"qcrd-rows/{self.seed}/{epoch}").shuffle(order)
        need = self.steps_per_epoch * self.per_step
        return (order * math.ceil(need / len(order)))[:need]

    def rows(self, period: int) -> list[int]:
        """Row indices of every step of `period`, step after step (per_step rows each)."""
        rows: list[int] = []
        orders: dict[int, list[int]] = {}
        for step in self.steps(period):
            epoch, j = divmod(step, self.steps_per_epoch)
            order = orders.setdefault(epoch, self.epoch_order(epoch))
            rows.extend(order[j * self.per_step : (j + 1) * self.per_step])
        return rows

    def refits_discriminator(self, period: int, every_epochs: int) -> bool:
        """Is the discriminator (re)trained at the start of `period`? At period 0, and at the first period
        that starts in a later epoch e with e a multiple of `every_epochs` (qcrd.disc_every counts epochs)."""
        if period == 0:
            return True
        now = self.epoch_of(self.steps(period).start) // every_epochs
        before = self.epoch_of(self.steps(period - 1).start) // every_epochs
        return now != before


def lag_warning(lag: int, negatives_every_steps: int | None, total_steps: int) -> str | None:
    """A warning when `lag` periods span the whole run, so every negative comes from the untrained start."""
    period = period_steps(negatives_every_steps, total_steps)
    if lag * period < total_steps:
        return None
    shown = " (null: an eighth of the run)" if negatives_every_steps is None else ""
    return (
        f"qcrd.lag × qcrd.negatives_every_steps = {lag} × {period}{shown} ≥ the run's {total_steps} "
        "optimizer steps: the lagged student is never a trained one, and every self-adversarial negative "
        "comes from the starting student. Lower qcrd.lag or qcrd.negatives_every_steps (e.g. a quarter "
        "of an epoch's steps with lag 1)."
    )
