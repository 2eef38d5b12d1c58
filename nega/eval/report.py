"""Statistics, tables and plots shared by the harm and reasoning evaluations.

Rates come with a 95% Wilson score interval, which stays inside [0, 1] and is honest for the small
samples and extreme rates (0/20 refusals) that safety evaluations produce:

    centre = (p̂ + z²/2n) / (1 + z²/n),   half = z·sqrt(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n),   z = 1.96

pass@k is the unbiased estimator of Chen et al. (2021) from n samples with c correct,
1 − C(n − c, k) / C(n, k), computed as a running product so large n never overflows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion; (0, 1) when n == 0 (nothing is known)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(flags: Sequence[bool]) -> dict:
    """{"rate", "ci95", "count", "n"} for a list of yes/no outcomes (rate is None when n == 0)."""
    n, count = len(flags), sum(bool(f) for f in flags)
    lo, hi = wilson_interval(count, n)
    return {"rate": count / n if n else None, "ci95": [lo, hi], "count": count, "n": n}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n−c, k)/C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    # C(n−c, k)/C(n, k) = Π_{i=n−c+1..n} (1 − k/i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """maj@k for one problem: vote over the first k samples' extracted answers.

    Samples without an answer (None) do not vote; ties go to the answer seen first. The vote is
    right when the winning answer's first sample was graded correct.
    """
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return False
    best = max(votes.values())
    winner = next(a for a in answers[:k] if a is not None and votes[a] == best)
    return bool(correct[list(answers).index(winner)])


def powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, ... up to `limit` (inclusive)."""
    ks, k = [], 1
    while k <= limit:
        ks.append(k)
        k *= 2
    return ks


def fmt_rate(entry: dict | None) -> str:
    """'0.250 [0.046, 0.699] (1/4)' or '—' when the rate is undefined."""
    if not entry or entry.get("rate") is None:
        return "—"
    lo, hi = entry["ci95"]
    return f"{entry['rate']:.3f} [{lo:.3f}, {hi:.3f}] ({entry['count']}/{entry['n']})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def bar_plot(path: Path, bars: dict[str, dict], title: str, xlabel: str = "rate", highlight: int = 0) -> Path:
    """Horizontal bars with 95% interval whiskers; `bars` maps a label to a `rate()` entry (undefined
    ones are skipped). The first `highlight` bars (overall rates) get their own colour."""
    plt = _pyplot()
    items = [(i, k, v) for i, (k, v) in enumerate(bars.items()) if v and v.get("rate") is not None]
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.32 * max(1, len(items))))
    if items:
        positions = list(range(len(items)))[::-1]  # first bar on top
        values = [v["rate"] for _, _, v in items]
        # max(0, ...) absorbs float round-off at rates of exactly 0 or 1
        low = [max(0.0, v["rate"] - v["ci95"][0]) for _, _, v in items]
        high = [max(0.0, v["ci95"][1] - v["rate"]) for _, _, v in items]
        colours = ["#4c72b0" if i < highlight else "#8fa8c8" for i, _, _ in items]
        ax.barh(positions, values, xerr=[low, high], capsize=3, color=colours)
        ax.set_yticks(positions, [f"{k} (n={v['n']})" for _, k, v in items], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_plot(
    path: Path, ks: list[int], curves: dict[str, list[float]], title: str, hline: float | None
) -> Path:
    """Accuracy against k (log2 axis), one line per curve, with greedy accuracy as a dashed line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, values in curves.items():
        ax.plot(ks, values, marker="o", label=name)
    if hline is not None:
        ax.axhline(hline, linestyle="--", color="grey", label="greedy")
    if len(ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, 1)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
