"""D²O recipe section (METHODS.md §1)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class D2OConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    objective: Literal["d2o", "ga", "dpo_self", "kto_neg"] = Field(
        "d2o", description="d2o, or a baseline on the same data: ga, dpo_self, kto_neg"
    )
    alpha: float = Field(0.1, gt=0, description="weight of the negative's log-ratio")
    beta: float = Field(0.1, gt=0, description="weight of the K self-samples' mean log-ratio")
    k: int | None = Field(
        None, ge=1, description="self-samples per prompt used in the loss (default: sampling.n)"
    )
    rounds: int = Field(1, ge=1, description="1 = offline; >1 resamples from the trained adapter each round")
    refresh_reference: bool = Field(False, description="online: move the references to the last round's policy")
    filter_self_samples: bool = Field(False, description="drop self-samples that the harm scorer flags")
    filter_scorer: str = Field("refusal", description="harm scorer used by filter_self_samples")
