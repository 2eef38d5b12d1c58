"""Statistics, tables and plots shared by the harm and reasoning evaluations.

Rates come with a 95% Wilson score interval, which stays inside [0, 1] and is honest for the small
samples and extreme rates (0/20 refusals) that safety evaluations produce:

    centre = (p̂ + z²/2n) / (1 + z²/n),   half = z·sqrt(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n),   z = 1.96

pass@k is the unbiased estimator of Chen et al. (2021) from n samples with c correct,
1 − C(n − c, k) / C(n, k), computed as a running product so large n never overflows.
"""

from __future__ import annotations

import math
import re
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


# Which way each metric is better, for every metric an evaluation reports (`nega.eval.harm.summary`,
# `nega.eval.reasoning.summary`, the toy worlds' `score`, qcrd's student set) and for the column names
# of report.md's readable tables ("over-refusal", "pass@k"). Tables and plots mark it with ↓ / ↑.
METRIC_DIRECTIONS: dict[str, str] = {
    # harm prompts: a harmful answer is the failure every method lowers; a refusal is a safe answer
    "harmful": "lower",
    "harmful_rate": "lower",
    "harm_score": "lower",  # a graded scorer's mean (rm:<folder>)
    "refusal": "higher",
    "refusal_rate": "higher",
    "informative": "higher",
    "informative_rate": "higher",
    "degenerate": "lower",
    "degenerate_rate": "lower",
    "unparsed": "lower",
    # safe prompts: refusing them is the cost of safety
    "over_refusal": "lower",
    "over_refusal_rate": "lower",
    "helpful": "higher",
    "helpful_rate": "higher",
    "xstest_safe_compliance": "higher",
    # problems and rationales
    "accuracy": "higher",
    "pass@k": "higher",
    "maj@k": "higher",
    "all_steps_right": "higher",
    "step_accuracy": "higher",
    "answered_rate": "higher",
    "spurious_rate": "lower",
    "carry_error_rate": "lower",
    "operation_error_rate": "lower",
    "rationale_quality": "higher",
    "rationale_accuracy": "higher",
    # a run without an evaluation reports what it trained on
    "bad_rows": "lower",
    "loss": "lower",
}
# Sizes, not scores: shown in tables, left out of plots, no direction.
COUNT_METRICS = frozenset({"n", "n_harmful", "n_helpful", "n_predict", "n_explain", "train_pairs", "trained"})
# The ends of a rate's 95% interval (`harmful_ci_low`) bound a score; they are not scores of their own.
INTERVAL_ENDS = ("_ci_low", "_ci_high")


def is_score(name: str) -> bool:
    """A metric that is a score (plotted, given a direction), not a count or an interval's end."""
    key = metric_key(name)
    return key not in COUNT_METRICS and not key.endswith(INTERVAL_ENDS)


ARROWS = {"lower": "↓", "higher": "↑"}


def metric_key(name: str) -> str:
    """The METRIC_DIRECTIONS key of a reported name: without its evaluation prefix (`harm/`,
    `harm-xstest/`, `reasoning/`), with `-` read as `_`, and pass@4 / maj@4 as pass@k / maj@k."""
    key = name.rsplit("/", 1)[-1].replace("-", "_")
    return re.sub(r"^(pass|maj)@\d+$", r"\1@k", key)


def metric_direction(name: str) -> str | None:
    """ "lower" or "higher" (which is better) for a reported metric name; None for counts and names
    nega does not know (a custom scorer's)."""
    return METRIC_DIRECTIONS.get(metric_key(name))


def metric_heading(name: str) -> str:
    """The name with its arrow: "harm/harmful_rate ↓"; a name without a direction as it is."""
    direction = metric_direction(name)
    return f"{name} {ARROWS[direction]}" if direction else name


def print_results(title: str, table: dict[str, dict], stream=None) -> None:
    """The results table on the terminal: one row per arm, one column per metric (sorted), each
    heading with its direction; transposed when the metrics do not fit across (nega.console)."""
    from nega.console import print_table

    metrics = sorted({m for row in table.values() for m in row})
    rows = [
        [label, *(f"{row[m]:.3f}" if isinstance(row.get(m), int | float) else "" for m in metrics)]
        for label, row in table.items()
    ]
    header = ["", *(metric_heading(m) for m in metrics)]
    print_table(title, header, rows, right=range(1, len(header)), transposable=True, stream=stream)


# Plots are drawn at PLOT_DPI to this width in inches: 1200 pixels, readable on a laptop screen and in
# a GitHub-rendered report.md.
PLOT_WIDTH_IN = 10.0
PLOT_DPI = 120


def comparison_plot(path: Path, arms: dict[str, dict[str, dict | float]], title: str) -> Path:
    """Every arm side by side: one panel per metric (its direction in the title), one bar per arm in
    the order given (the starting model first) with 95% interval whiskers where a value is a `rate()`
    entry, and one legend beside the panels. Counts (COUNT_METRICS) are left out. 1200 px wide."""
    plt = _pyplot()
    metrics = [
        m
        for m in dict.fromkeys(m for row in arms.values() for m in row)
        if is_score(m) and any(_value(row.get(m)) is not None for row in arms.values())
    ]
    labels = list(arms)
    cols = max(1, min(4, len(metrics)))
    rows = max(1, math.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(PLOT_WIDTH_IN, 0.9 + 2.5 * rows), squeeze=False, layout="constrained"
    )
    colours = plt.get_cmap("tab10")
    handles = {}
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = []
        for j, label in enumerate(labels):
            entry = arms[label].get(metric)
            value = _value(entry)
            if value is None:
                continue
            lo, hi = entry["ci95"] if isinstance(entry, dict) else (value, value)
            # max(0, ...) absorbs float round-off at rates of exactly 0 or 1
            err = [[max(0.0, value - lo)], [max(0.0, hi - value)]]
            bar = ax.bar(j, value, yerr=err, capsize=3, color=colours(j % 10), width=0.75)
            handles.setdefault(label, bar)
            if len(labels) <= 8:
                ax.annotate(f"{value:.2f}", (j, max(value, hi)), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)  # fmt: skip
            values.append(hi)
        direction = metric_direction(metric)
        arrow = f" {ARROWS[direction]}" if direction else ""
        ax.set_title(f"{metric}{arrow}", fontsize=10)
        ax.set_xticks([])
        ax.tick_params(labelsize=8)
        top = max([1.0, *values]) if all(0 <= v <= 1 for v in values) else max(values, default=1.0)
        bottom = min([0.0, *values])
        ax.set_ylim(bottom, top * 1.12 if top > 0 else 1.0)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(f"{title}\n↓ lower is better, ↑ higher is better", fontsize=11)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside right upper", fontsize=9, frameon=False
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path


def _value(entry: dict | float | None) -> float | None:
    return entry.get("rate") if isinstance(entry, dict) else entry


# The Trainer's own per-step logs drawn beside the loss (and the method's `objective/metric` ones).
CURVE_KEYS = {"loss": "loss", "learning_rate": "learning rate", "grad_norm": "gradient norm"}


def curve_series(history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{name: (steps, values)} of a Trainer's log history, in panel order: loss, learning rate,
    gradient norm, then the method's metrics (`objective/metric`) by name. Non-finite values are left
    out (a curve stops where a NaN would be)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if (key in CURVE_KEYS or "/" in key) and isinstance(value, int | float) and math.isfinite(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    names = [k for k in CURVE_KEYS if k in series] + sorted(k for k in series if k not in CURVE_KEYS)
    return {name: series[name] for name in names}


def training_curve(path: Path, history: list[dict], title: str) -> Path | None:
    """The `curve_series` of a log history against the optimizer step, one panel each; None when the
    history logged nothing per step."""
    series = curve_series(history)
    if not series:
        return None
    plt = _pyplot()
    names = list(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(PLOT_WIDTH_IN, 0.6 + 2.6 * rows), squeeze=False, layout="constrained"
    )
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        ax.plot(steps, values, marker="." if len(steps) < 60 else None)
        direction = metric_direction(name)
        ax.set_title(CURVE_KEYS.get(name, name) + (f" {ARROWS[direction]}" if direction else ""), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if name == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    plt.close(fig)
    return path
