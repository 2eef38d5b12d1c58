"""QCRD recipe section (docs/methods.md#qcrd)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from nega.bounds import SECTION_CONFIG, Count, LearningRate, Rows, Steps

Objective = Literal["qcrd", "qcrd_no_disc", "step_by_step", "label_only"]


class QCRDConfig(BaseModel):
    model_config = SECTION_CONFIG

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
    lag: Count = Field(5, description="negatives come from the student this many epochs back")
    negative_temperature: float = Field(1.5, gt=0)
    disc_steps: Steps = Field(500, description="steps per discriminator fit (docs/methods.md#qcrd)")
    disc_folds: Count = Field(
        2,
        description="cross-fitting folds: each input is scored by a discriminator that did not train on it",
    )
    disc_every: Count = 1
    disc_backbone: Literal["student", "encoder"] = "student"
    disc_lr: LearningRate = 1e-3
    disc_batch_size: Count = 32
    disc_augment_rate: float = Field(0.15, gt=0, le=1, description="word-mask / word-replace rate")
    eval_limit: Rows | None = Field(500, description="test questions evaluated (null = all)")
    step_by_step_alpha: float = Field(
        0.5, ge=0, le=1, description="label weight of the step-by-step baseline"
    )
