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


def comparison_plot(path: Path, arms: dict[str, dict[str, dict | float]], title: str) -> Path:
    """Every arm side by side: one group of bars per metric, one bar per arm (in the order given, the
    starting model first), with 95% interval whiskers where a value is a `rate()` entry."""
    plt = _pyplot()
    metrics = list(dict.fromkeys(m for row in arms.values() for m in row))
    labels = list(arms)
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 1.1 * len(metrics) * max(1, len(labels)) * 0.45), 3.6))
    colours = plt.get_cmap("tab10")
    for j, label in enumerate(labels):
        xs, values, low, high = [], [], [], []
        for i, metric in enumerate(metrics):
            entry = arms[label].get(metric)
            value = _value(entry)
            if value is None:
                continue
            xs.append(i + (j - (len(labels) - 1) / 2) * width)
            values.append(value)
            lo, hi = entry["ci95"] if isinstance(entry, dict) else (value, value)
            low.append(max(0.0, value - lo))
            high.append(max(0.0, hi - value))
        ax.bar(xs, values, width=width, yerr=[low, high], capsize=2, label=label, color=colours(j % 10))
    ax.set_xticks(range(len(metrics)), metrics, fontsize=8)
    values = [v for v in (_value(e) for row in arms.values() for e in row.values()) if v is not None]
    top, bottom = max([1.0, *values]), min([0.0, *values])
    ax.set_ylim(bottom * 1.05, top * 1.05 if top > 1 else 1.0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(len(labels), 4))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _value(entry: dict | float | None) -> float | None:
    return entry.get("rate") if isinstance(entry, dict) else entry


def training_curve(path: Path, history: list[dict], title: str) -> Path | None:
    """The loss and every method metric (`objective/metric`) against the optimizer step, one panel
    each; None when the history logged nothing per step."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if (key == "loss" or "/" in key) and isinstance(value, int | float) and math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    if not series:
        return None
    plt = _pyplot()
    names = ["loss", *sorted(k for k in series if k != "loss")] if "loss" in series else sorted(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        ax.plot(steps, values, marker="." if len(steps) < 40 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
