"""QCRD recipe section (docs/methods.md#qcrd)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from nega.bounds import Count, LearningRate, MethodSection, Rows, Steps
from nega.distill.qcrd.schedule import DEFAULT_PERIODS, lag_warning, steps_per_epoch

Objective = Literal["qcrd", "qcrd_no_disc", "step_by_step", "label_only"]


class QCRDConfig(MethodSection):
    # Which other arms train beside this one and how many test questions are evaluated.
    BOOKKEEPING_FIELDS: ClassVar[frozenset[str]] = frozenset({"baselines", "eval_limit"})

    objective: Objective = "qcrd"
    baselines: list[Objective] = Field(
        default_factory=list,
        description="also train these objectives on the same data and steps, reported beside `objective`",
    )
    teacher: str | None = Field(
        None, description="teacher model (hub id or folder); null = rationales from data"
    )
    teacher_prompt: str = Field(
        "{question}", description="the teacher's user message; {question} is replaced by the input"
    )
    answer_pattern: str = Field(
        r"(?i)\banswer(?: is|:)\s*([^\n]+?)\.?[ \t]*(?:\n|$)",
        description="regex whose first group (last match) is a rationale's answer, for self-consistency",
    )
    teacher_samples: Count = 5
    teacher_temperature: float = Field(0.7, ge=0)
    consistency: Literal["majority", "gold"] = "majority"
    alpha1: float = Field(0.5, ge=0)
    alpha2: float = Field(0.5, ge=0)
    alpha3: float = Field(0.5, ge=0)
    alpha3_decay: float = Field(0.9, gt=0, le=1)
    delta: float = Field(3.0, gt=0, description="hinge margin on the negative's CE")
    negatives_every_steps: Steps | None = Field(
        None,
        description="optimizer steps per period: self-adversarial negatives are resampled and α3 decays "
        f"once per period; null = an eighth of the run's steps ({DEFAULT_PERIODS} periods)",
    )
    lag: Count = Field(
        1,
        description="negatives come from the student this many periods back (clipped to the start); "
        "lag × negatives_every_steps well under the run's steps keeps that student a trained one",
    )
    negative_temperature: float = Field(1.5, gt=0)
    disc_steps: Steps = Field(500, description="steps per discriminator fit (docs/methods.md#qcrd)")
    disc_folds: Count = Field(
        2,
        description="cross-fitting folds: each input is scored by a discriminator that did not train on it",
    )
    disc_every: Count = Field(
        1, description="re-train the discriminator at the first period of every disc_every-th epoch"
    )
    disc_backbone: Literal["student", "encoder"] = "student"
    disc_lr: LearningRate = 1e-3
    disc_batch_size: Count = 32
    disc_augment_rate: float = Field(0.15, gt=0, le=1, description="word-mask / word-replace rate")
    eval_limit: Rows | None = Field(500, description="test questions evaluated (null = all)")
    step_by_step_alpha: float = Field(
        0.5, ge=0, le=1, description="label weight of the step-by-step baseline"
    )


def recipe_warnings(recipe) -> list[str]:
    """What `nega validate` warns about a qcrd recipe: a lag that spans the whole run.

    The run's optimizer steps depend on the data's size, unknown before it loads; `train.max_steps` or
    `data.limit` bound them from above (one process), and a lag that spans the bound spans the run.
    `nega run` checks again with the real count.
    """
    train, cfg = recipe.train, recipe.qcrd
    rows = recipe.data.limit
    if train.max_steps is None and rows is None:
        if cfg.negatives_every_steps is None and cfg.lag >= DEFAULT_PERIODS:
            return [
                f"qcrd.lag = {cfg.lag} periods ≥ the run's {DEFAULT_PERIODS} periods (qcrd.negatives_every_steps: "
                "null): every self-adversarial negative comes from the starting student. Lower qcrd.lag."
            ]
        return []
    per_epoch = train.max_steps if rows is None else steps_per_epoch(rows, train)
    warning = lag_warning(cfg.lag, cfg.negatives_every_steps, max(1, int(train.epochs)) * per_epoch)
    return [warning] if warning else []
