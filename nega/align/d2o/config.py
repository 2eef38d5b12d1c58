"""D²O recipe section (docs/methods.md#d2o)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from nega.bounds import MAX_COUNT, Count, MethodSection

Objective = Literal["d2o", "ga", "dpo_self", "kto_neg", "sft_self"]


class D2OConfig(MethodSection):
    # Which other arms train beside this one and how the toy worlds evaluate: no weights depend on them.
    # The self-samples' system prompt reaches training only through the sample stage, an input of every
    # training stage, so it is hashed there and nowhere else.
    BOOKKEEPING_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"compare", "eval_samples", "eval_temperature", "sample_system_prompt"}
    )

    objective: Objective = Field(
        "d2o", description="d2o, or a baseline on the same data: ga, dpo_self, kto_neg, sft_self"
    )
    alpha: float = Field(0.1, gt=0, description="weight of the negative's log-ratio")
    beta: float = Field(
        0.1, gt=0, description="weight of the K self-samples' mean log-ratio (also β of dpo_self and kto_neg)"
    )
    k: Count | None = Field(
        None, description="self-samples per prompt used in the loss (default: sampling.n)"
    )
    rounds: Count = Field(1, description="1 = offline; >1 resamples from the trained adapter each round")
    refresh_reference: bool = Field(
        False, description="online: move the references to the last round's policy"
    )
    sample_system_prompt: str | None = Field(
        None,
        description="system prompt the self-samples are drawn with; training and evaluation never see it "
        "(the training rows hold the prompt without it): null = the prompts as the data gives them",
    )
    filter_self_samples: bool = Field(False, description="drop self-samples that the harm scorer flags")
    filter_scorer: str = Field(
        "auto", description="harm scorer for filter_self_samples: auto (toy oracle on toy data, else refusal), "
        "toy, refusal, classifier:<model>, judge:<model>, or module:function, which imports and runs your code"
    )  # fmt: skip
    compare: list[Literal["d2o", "ga", "dpo_self", "kto_neg", "sft_self", "d2o_online"]] = Field(
        default_factory=list,
        description="also train these on the same samples, references and steps, and report them side by side; "
        "sft_self = SFT on the self-samples alone (no negatives); d2o_online = d2o over compare_rounds rounds",
    )
    compare_rounds: int = Field(2, ge=2, le=MAX_COUNT, description="rounds of the d2o_online comparison")
    eval_samples: Count = Field(4, description="toy worlds: completions per test prompt")
    eval_temperature: float = Field(
        1.0, ge=0, description="toy worlds: sampling temperature of the evaluation (0 = greedy)"
    )

    @field_validator("sample_system_prompt")
    @classmethod
    def _some_text(cls, v: str | None) -> str | None:
        # An empty system prompt would still replace a chat template's default one: say so, not guess.
        if v is not None and not v.strip():
            raise ValueError("is empty; give the system prompt's text, or null to sample without one")
        return v

    @field_validator("filter_scorer")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        # Checked here so a typo fails at validation, not after the sampling stage has run.
        from nega.rewards.scorer_spec import check_scorer_spec

        return v if v == "auto" else check_scorer_spec(v)
