"""Targets decided by paired tests on the same test items, pooled over seeds and reported seed by seed.

A target says `left op scale * right + offset` on one metric (e.g. `d2o harmful_rate <= 0.2 x sft`).
Both arms answered the same items (the same prompts of the same world per seed), so the comparison is
paired item by item:

- binary outcomes (greedy accuracy, refused or not) with scale 1 and offset 0: McNemar's exact test on
  the discordant items, b (left right, right arm wrong) against c (the other way), pooled over seeds by
  adding their counts; the statistic is the paired difference (b - c) / n with a 95% Wald interval;
- anything else (rates over several samples per item, NLLs, scaled or offset thresholds): a paired
  bootstrap of `mean(left) - scale * mean(right) - offset`, items resampled with their pairs kept and
  within each seed (a seed is its own world), 95% percentile interval, two-sided p from the share of
  resampled statistics on each side of 0.

Three outcomes (`decide`): **met** when p < 0.05 with the statistic on the target's side and the
per-seed statistics on that side on at least 2/3 of the seeds; **not met** when the same test is
significant the other way; **undecided** otherwise. A `<=` target and a `<` target are decided alike:
"within noise of the bound" is undecided, never met.

    from paired import compare_items
    target = compare_items({0: d2o_items, 1: ...}, {0: sft_items, 1: ...}, op="<=", scale=0.2)
    target["outcome"], target["p"], target["ci95"]
"""

from __future__ import annotations

import math

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
OUTCOMES = ("met", "not met", "undecided")
SIDE = {"<": -1, "<=": -1, ">": 1, ">=": 1}  # the sign the statistic must have for the target


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: twice the binomial(b + c, 1/2) tail at min(b, c), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def discordant(left: list[float], right: list[float]) -> tuple[int, int]:
    """(b, c): items where only `left` is 1, and where only `right` is."""
    b = sum(1 for x, y in zip(left, right, strict=True) if x == 1 and y == 0)
    c = sum(1 for x, y in zip(left, right, strict=True) if x == 0 and y == 1)
    return b, c


def mcnemar(left: list[float], right: list[float]) -> dict:
    """McNemar on paired 0/1 outcomes: the paired difference (b - c) / n, its 95% Wald interval, the
    exact p, and b, c, n."""
    b, c = discordant(left, right)
    n = len(left)
    diff = (b - c) / n if n else 0.0
    se = math.sqrt(max(0.0, b + c - (b - c) ** 2 / n)) / n if n else 0.0
    return {
        "test": "mcnemar_exact",
        "statistic": diff,
        "ci95": [diff - 1.959964 * se, diff + 1.959964 * se],
        "p": mcnemar_exact(b, c),
        "b": b,
        "c": c,
        "n": n,
    }


def paired_bootstrap(
    left: list[list[float]],
    right: list[list[float]],
    *,
    scale: float = 1.0,
    offset: float = 0.0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Paired bootstrap of `mean(left) - scale * mean(right) - offset` over every item of every group
    (`left[g][i]` pairs with `right[g][i]`; a group is a seed, resampled on its own). Returns the
    statistic, its 95% percentile interval, the two-sided p and n."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lefts = [np.asarray(x, dtype=float) for x in left]
    rights = [np.asarray(y, dtype=float) for y in right]
    for x, y in zip(lefts, rights, strict=True):
        if x.shape != y.shape or x.size == 0:
            raise ValueError(f"paired items must match and be non-empty: {x.size} left, {y.size} right")
    n = sum(x.size for x in lefts)
    observed = (sum(x.sum() for x in lefts) - scale * sum(y.sum() for y in rights)) / n - offset
    sums = np.zeros(resamples)
    for x, y in zip(lefts, rights, strict=True):
        picks = rng.integers(0, x.size, size=(resamples, x.size))
        sums += x[picks].sum(axis=1) - scale * y[picks].sum(axis=1)
    stats = sums / n - offset
    below = (np.count_nonzero(stats <= 0) + 1) / (resamples + 1)
    above = (np.count_nonzero(stats >= 0) + 1) / (resamples + 1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return {
        "test": "paired_bootstrap",
        "statistic": float(observed),
        "ci95": [float(low), float(high)],
        "p": float(min(1.0, 2 * min(below, above))),
        "n": n,
        "resamples": resamples,
    }


def is_binary(*groups: list[float]) -> bool:
    return all(v in (0, 1) for group in groups for v in group)


def decide(op: str, statistic: float, p: float, per_seed: list[float]) -> str:
    """The three-outcome rule (module docstring) for a target `op` given the pooled statistic and p and
    each seed's statistic."""
    side = SIDE[op]
    if p < ALPHA and statistic * side > 0:
        agreeing = sum(1 for s in per_seed if s * side > 0)
        return "met" if agreeing * 3 >= 2 * len(per_seed) else "undecided"
    if p < ALPHA and statistic * side < 0:
        return "not met"
    return "undecided"


def paired_values(left: list, right: list) -> tuple[list[float], list[float]]:
    """The items both arms have a value for (an item a metric does not apply to is None), in order."""
    if len(left) != len(right):
        raise ValueError(f"the arms answered different items: {len(left)} against {len(right)}")
    kept = [(x, y) for x, y in zip(left, right, strict=True) if x is not None and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def compare_items(
    left: dict, right: dict, *, op: str, scale: float = 1.0, offset: float = 0.0, seed: int = 0
) -> dict:
    """One target decided on per-item values: `left` and `right` are {seed: [value per item]} of the
    two arms on one metric. The pooled test, each seed's, and the outcome."""
    seeds = sorted(left, key=str)
    pairs = {s: paired_values(left[s], right[s]) for s in seeds}
    exact = scale == 1.0 and offset == 0.0 and is_binary(*(v for pair in pairs.values() for v in pair))
    if exact:
        pooled = mcnemar([x for s in seeds for x in pairs[s][0]], [y for s in seeds for y in pairs[s][1]])
        each = {str(s): mcnemar(*pairs[s]) for s in seeds}
    else:

        def boot(ss):
            return paired_bootstrap(
                [pairs[s][0] for s in ss], [pairs[s][1] for s in ss], scale=scale, offset=offset, seed=seed
            )

        pooled = boot(seeds)
        each = {str(s): boot([s]) for s in seeds}
    means = {
        "left": sum(x for s in seeds for x in pairs[s][0]) / pooled["n"],
        "right": sum(y for s in seeds for y in pairs[s][1]) / pooled["n"],
    }
    outcome = decide(op, pooled["statistic"], pooled["p"], [e["statistic"] for e in each.values()])
    return {**pooled, "means": means, "per_seed": each, "outcome": outcome}


def all_of(parts: dict[str, dict]) -> str:
    """The outcome of a target made of several (e.g. below every baseline): met when every part is met,
    not met when any part is not met, undecided otherwise."""
    outcomes = [part["outcome"] for part in parts.values()]
    if "not met" in outcomes:
        return "not met"
    return "met" if all(o == "met" for o in outcomes) else "undecided"


class Target:
    """A pre-registered target `left op scale * right + offset` on `metric`, decided by `decide`."""

    def __init__(
        self, left: str, op: str, right: str, metric: str, *, scale: float = 1.0, offset: float = 0.0
    ):
        if op not in SIDE:
            raise ValueError(f"target operator {op!r} is not one of {sorted(SIDE)}")
        self.left, self.op, self.right, self.metric = left, op, right, metric
        self.scale, self.offset = scale, offset

    @property
    def statement(self) -> str:
        bound = (f"{self.scale:g} x " if self.scale != 1 else "") + self.right
        return f"{self.left} {self.metric} {self.op} {bound}" + (f" {self.offset:+g}" if self.offset else "")

    def decide(self, items: dict) -> dict:
        """The target on `items`, {seed: {arm: {metric: [value per test item]}}}."""
        left = {s: items[s][self.left][self.metric] for s in items}
        right = {s: items[s][self.right][self.metric] for s in items}
        tested = compare_items(left, right, op=self.op, scale=self.scale, offset=self.offset)
        return {"statement": self.statement, "metric": self.metric, "arms": [self.left, self.right], **tested}


def decide_targets(targets: dict, items: dict) -> dict:
    """{name: decided target} for {name: Target, or a list of Targets that must all hold}."""
    out = {}
    for name, target in targets.items():
        if isinstance(target, Target):
            out[name] = target.decide(items)
            continue
        parts = {t.statement: t.decide(items) for t in target}
        out[name] = {
            "statement": " and ".join(parts),
            "metric": target[0].metric,
            "arms": list(dict.fromkeys(a for t in target for a in (t.left, t.right))),
            "outcome": all_of(parts),
            "parts": parts,
        }
    return out
