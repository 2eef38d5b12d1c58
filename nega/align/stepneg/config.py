"""Per-step negative RL recipe section (METHODS.md §2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StepNegConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loss: Literal["dpo", "awr", "outcome_dpo"] = Field(
        "dpo", description="per-step DPO, AWR, or the outcome-DPO baseline"
    )
    beta: float = Field(0.1, gt=0)
    sft_epochs: float = Field(3.0, gt=0)
    rft_samples: int = Field(4, ge=1, description="solutions sampled per problem for RFT")
    rft: bool = Field(True, description="run the RFT stage (and use its data for pairs)")
    negatives: int = Field(8, ge=1, description="M: solutions sampled per problem for negatives")
    best_of: int = Field(5, ge=1, description="K of BoK(π_sft) in the Q estimate")
    rollout_groups: int = Field(2, ge=1, description="R: groups of best_of continuations per prefix")
    step_regex: str = Field(
        r"[^\n]*\S[^\n]*\n?", description="one match = one step (default: non-empty lines)"
    )
    awr_clip: float = Field(20.0, gt=0, description="max weight after normalisation in the AWR variant")
    answer_format: Literal["auto", "gsm8k", "boxed", "number", "toy"] = "auto"
