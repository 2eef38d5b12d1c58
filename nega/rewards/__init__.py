"""Reward functions: one signature, `(prompts, completions, **columns) -> list[float]`.

`REWARDS` is the explicit table of the built-in ones, by name. Heavy dependencies (math-verify,
classifier models) load inside the functions, so importing this package is instant.
"""

from nega.rewards.math import boxed_reward, gsm8k_reward, math_reward

REWARDS = {
    "math": math_reward,  # final answer (####, \boxed{} or last number) vs the `answer` column
    "gsm8k": gsm8k_reward,  # the answer after `####` only
    "boxed": boxed_reward,  # the last \boxed{} only
}

__all__ = ["REWARDS", "boxed_reward", "gsm8k_reward", "math_reward"]
