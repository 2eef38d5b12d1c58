"""Per-step values of π_sft's solutions by rollouts from π_sft, advantages, and the first pit.

For a solution ŷ = ŷ_1..ŷ_L of problem x, the value of the prefix ŷ_1..i is the chance that
BoK(π_sft) — best of K samples — completes it correctly (docs/methods.md#per-step-negative-rl, K = 5):

    Q_i ≈ (1/R) Σ_r max_{k ≤ K} correct(ŷ_1..i ⊕ z_rk),   z_rk ~ π_sft(· | x, ŷ_1..i)

R groups of K continuations each (default R = 2). For a plain success rate p the same quantity is
`bok_value(p, K) = 1 − (1 − p)^K`. Q_0 is the value of the bare prompt; the advantage of step i is
A_i = Q_i − Q_{i−1}.

A solution that ended on its own (EOS) is an outcome: its value is the verifier's, Q_L = 0 for a
wrong one and 1 for a right one, with no rollouts. A solution cut at max_tokens is no outcome — the
model had not finished — so its last prefix is rolled out like the others (`outcomes` None).

The first pit c is the first step where Q reaches its minimum over steps 1..L. No value is below 0,
so once an estimate Q̂_i = 0 (all R·K continuations failed), i is a minimum and no later step can be
an earlier one: later prefixes of that solution are not rolled out (`skip_after_pit`), as ties go to
the first step. The pit equals the one from rolling out every prefix, at a fraction of the cost.
Stopping on anything weaker (a large drop, a low but non-zero Q̂) would move c and is not done. The
advantage-weighted objective needs every step's value, so it runs without the skip.

With `skip_after_pit` the prefixes go to the sampler in waves by step index (wave t holds prefix t of
every solution still open, wave 1 also the bare prompts), so one call serves all solutions at once
and vLLM's prefix cache shares the prompt between a prefix's R·K continuations. Within a call the
requests are ordered by problem, then prefix text, so those sharing a prompt are adjacent. Without it, one call
holds every prefix of every solution. Identical prefixes (same problem, same text) are rolled out once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nega.align.stepneg.steps import prefixes


def bok_value(p: float, k: int) -> float:
    """Success probability of best-of-k sampling when one sample succeeds with probability p."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability, got {p}")
    return 1.0 - (1.0 - p) ** k


def group_value(correct: Sequence[bool], best_of: int, groups: int) -> float:
    """Mean over `groups` groups of `best_of` outcomes of "any in the group is correct"."""
    if len(correct) != best_of * groups:
        raise ValueError(
            f"expected {best_of * groups} outcomes ({groups} groups of {best_of}), got {len(correct)}"
        )
    hits = [any(correct[g * best_of : (g + 1) * best_of]) for g in range(groups)]
    return sum(hits) / groups


def step_advantages(values: Sequence[float | None]) -> list[float | None]:
    """A_i = Q_i − Q_{i−1} for i = 1..L from values [Q_0, Q_1, ..., Q_L]; None where a value is unknown."""
    return [
        None if values[i] is None or values[i - 1] is None else values[i] - values[i - 1]
        for i in range(1, len(values))
    ]


def first_pit(values: Sequence[float | None]) -> int:
    """c in 1..L: the first step whose value equals the minimum of Q_1..Q_L (unknown values ignored).

    `values` is [Q_0, Q_1, ..., Q_L]; ties go to the earliest step.
    """
    known = [(q, i) for i, q in enumerate(values) if i >= 1 and q is not None]
    if not known:
        raise ValueError("first_pit needs at least one known value among Q_1..Q_L")
    lowest = min(q for q, _ in known)
    return next(i for q, i in known if q == lowest)


@dataclass
class StepValues:
    """Rollout result for one negative: values [Q_0..Q_L] (None = not rolled out), A_1..A_L, pit c."""

    values: list[float | None]
    advantages: list[float | None]
    pit: int


@dataclass
class RolloutStats:
    prefixes_rolled: int = 0
    prefixes_skipped: int = 0
    rollouts: int = 0
    sampler_calls: int = 0
    seconds: float = 0.0
    per_call: list[dict] = field(default_factory=list)

    @property
    def rollouts_per_s(self) -> float:
        return self.rollouts / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "prefixes_rolled": self.prefixes_rolled,
            "prefixes_skipped": self.prefixes_skipped,
            "rollouts": self.rollouts,
            "sampler_calls": self.sampler_calls,
            "seconds": round(self.seconds, 3),
            "rollouts_per_s": round(self.rollouts_per_s, 2),
        }


def estimate_step_values(
    sampler,
    prompts: Sequence[str],
    solutions: Sequence[tuple[int, list[str]]],
    is_correct: Callable[[int, str], bool],
    *,
    outcomes: Sequence[float | None] | None = None,
    best_of: int = 5,
    groups: int = 2,
    skip_after_pit: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
) -> tuple[list[StepValues], RolloutStats]:
    """Q_0..Q_L, advantages and first pit of every solution (see the module docstring).

    prompts: rendered prompt text per problem (continuations are sampled from prompt + prefix).
    solutions: (problem index, steps ŷ_1..ŷ_L) per solution; L >= 1.
    is_correct(problem index, full solution text) -> bool: the verifier.
    outcomes: per solution, Q_L when it ended on its own (0.0 wrong, 1.0 right), or None when it was
    cut at max_tokens and its last prefix must be rolled out; default 0.0 for every solution (all
    finished negatives).
    """
    for j, (_, steps) in enumerate(solutions):
        if not steps:
            raise ValueError(f"solution {j} has no steps; drop empty solutions before estimating values")
    if outcomes is None:
        outcomes = [0.0] * len(solutions)
    if len(outcomes) != len(solutions):
        raise ValueError(f"got {len(outcomes)} outcomes for {len(solutions)} solutions")
    n = best_of * groups
    known: dict[tuple[int, str], float] = {}
    values: list[list[float | None]] = [
        [None] * len(steps) + [outcome] for (_, steps), outcome in zip(solutions, outcomes, strict=True)
    ]
    # The last prefix index rolled out: L - 1 for a finished solution, L for a cut one.
    top = [
        len(steps) - (outcome is not None) for (_, steps), outcome in zip(solutions, outcomes, strict=True)
    ]
    stats = RolloutStats()
    started = time.perf_counter()

    def roll(keys: list[tuple[int, str]], wave: int) -> None:
        # A problem's bare prompt, then its prefixes in text order, each a prefix of the next: requests
        # sharing a prompt (and a prefix) sit side by side, where vLLM's prefix cache reuses their blocks.
        keys = sorted(k for k in dict.fromkeys(keys) if k not in known)
        if not keys:
            return
        t0 = time.perf_counter()
        outputs = sampler.generate(
            [prompts[p] + prefix for p, prefix in keys],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed + wave,
            description=f"rollouts (wave {wave}, {len(keys)} prefixes x {n})",
        )
        for (p, prefix), completions in zip(keys, outputs, strict=True):
            correct = [is_correct(p, prefix + c.text) for c in completions]
            known[(p, prefix)] = group_value(correct, best_of, groups)
        stats.sampler_calls += 1
        stats.prefixes_rolled += len(keys)
        stats.rollouts += len(keys) * n
        stats.per_call.append({"prefixes": len(keys), "seconds": round(time.perf_counter() - t0, 3)})

    all_prefixes = [prefixes(steps) for _, steps in solutions]
    if not skip_after_pit:
        roll(
            [
                (p, pre[i])
                for (p, _), pre, last in zip(solutions, all_prefixes, top, strict=True)
                for i in range(last + 1)
            ],
            0,
        )
        for j, ((p, _), pre) in enumerate(zip(solutions, all_prefixes, strict=True)):
            for i in range(top[j] + 1):
                values[j][i] = known[(p, pre[i])]
    else:
        open_solutions = list(range(len(solutions)))
        wave = 1
        while open_solutions:
            keys = [(solutions[j][0], all_prefixes[j][wave]) for j in open_solutions if wave <= top[j]]
            if wave == 1:
                keys = [(solutions[j][0], "") for j in open_solutions] + keys
            roll(keys, wave)
            still_open = []
            for j in open_solutions:
                p, pre = solutions[j][0], all_prefixes[j]
                if wave == 1:
                    values[j][0] = known[(p, "")]
                if wave <= top[j]:
                    values[j][wave] = known[(p, pre[wave])]
                    if values[j][wave] > 0.0:
                        still_open.append(j)
                    else:
                        stats.prefixes_skipped += top[j] - wave
            open_solutions = still_open
            wave += 1
    stats.seconds = time.perf_counter() - started
    results = [StepValues(values=v, advantages=step_advantages(v), pit=first_pit(v)) for v in values]
    return results, stats
