"""Reward functions: one signature, `(prompts, completions, **columns) -> list[float]`.

`REWARDS` is the explicit table of the built-in ones, by name. Heavy dependencies (math-verify,
classifier models) load inside the functions, so importing this package is instant.
"""

from nega.rewards.harm import refusal_score, toy_score
from nega.rewards.math import boxed_reward, gsm8k_reward, math_reward

REWARDS = {
    "math": math_reward,  # final answer (####, \boxed{} or last number) vs the `answer` column
    "gsm8k": gsm8k_reward,  # the answer after `####` only
    "boxed": boxed_reward,  # the last \boxed{} only
    "refusal": refusal_score,  # 1 = complied (no refusal phrase); nega.rewards.harm has the phrase list
    "toy-harm": toy_score,  # 1 = harmful, by the toy harm world's oracle
}
# Model-backed harm scorers (classifier:<model>, judge:<model>) are built by
# nega.rewards.harm.make_harm_scorer, since they hold a model or sampler.

__all__ = ["REWARDS", "boxed_reward", "gsm8k_reward", "math_reward", "refusal_score", "toy_score"]
