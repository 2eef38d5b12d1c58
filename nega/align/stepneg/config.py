"""Per-step negative RL recipe section (docs/methods.md#per-step-negative-rl).

Defaults follow the paper where it fixes them.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nega.bounds import Count, Epochs, LearningRate, MethodSection

Loss = Literal["dpo", "awr", "outcome_dpo"]


class StepNegConfig(MethodSection):
    # Every stepneg field changes some stage's output today: the pairs and training stages hash all.
    BOOKKEEPING_FIELDS: ClassVar[frozenset[str]] = frozenset()

    loss: Loss = Field("dpo", description="per-step DPO, AWR, or the outcome-DPO baseline")
    compare: list[Loss] = Field(
        default_factory=list,
        description="more objectives trained on the same data and evaluated beside `loss`",
    )
    beta: float = Field(0.1, gt=0)
    sft_epochs: Epochs = Field(
        3.0, description="epochs of the SFT stage that makes π_sft, whatever train.max_steps says"
    )
    sft_lr: LearningRate | None = Field(None, description="learning rate of the SFT stage (default train.lr)")
    rft_samples: Count = Field(4, description="solutions sampled per problem for RFT")
    rft: bool = Field(
        True,
        description="run the RFT stage (and use its data for pairs); RFT trains as the objectives do "
        "(train.lr, train.max_steps or train.epochs), so it is compared with them at the same budget",
    )
    negatives: Count = Field(
        8, description="M: solutions sampled per problem in each round of the negatives stage"
    )
    negatives_per_problem: Count = Field(
        8,
        description="distinct wrong solutions the negatives stage collects per problem (paper: about 8); "
        "problems still short are sampled again, M at a time, up to max_samples_per_problem",
    )
    max_samples_per_problem: Count = Field(
        64,
        description="sampling budget of the negatives stage per problem; a problem that has fewer than "
        "negatives_per_problem distinct wrong solutions by then is reported and kept as it is",
    )
    best_of: Count = Field(5, description="K of BoK(π_sft) in the Q estimate")
    rollout_groups: Count = Field(2, description="R: groups of best_of continuations per prefix")
    skip_after_pit: bool = Field(
        True, description="no rollouts past a prefix whose value estimate is 0 (cannot move the first pit)"
    )
    step_regex: str = Field(
        r"[^\n]*\S[^\n]*\n?", description="one match = one step (default: non-empty lines)"
    )
    awr_clip: float = Field(20.0, gt=0, description="max weight after normalisation in the AWR variant")
    answer_format: Literal["auto", "gsm8k", "boxed", "number", "toy"] = "auto"

    @field_validator("step_regex")
    @classmethod
    def _valid_regex(cls, v: str) -> str:
        try:
            pattern = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        if pattern.fullmatch(""):
            raise ValueError("matches the empty string; each step must hold at least one character")
        return v

    @model_validator(mode="after")
    def _budget_holds_the_negatives(self) -> StepNegConfig:
        if self.max_samples_per_problem < self.negatives_per_problem:
            raise ValueError(
                f"stepneg.max_samples_per_problem={self.max_samples_per_problem} is below "
                f"stepneg.negatives_per_problem={self.negatives_per_problem}: no problem could get that many "
                "distinct wrong solutions; raise max_samples_per_problem or lower negatives_per_problem"
            )
        return self
