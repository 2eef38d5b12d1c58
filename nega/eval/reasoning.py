"""Reasoning evaluation: greedy accuracy, maj@k and pass@k on a problem set.

Prompt: the question as one user turn followed by `nega.eval.sets.ANSWER_INSTRUCTION` ("Solve the
problem step by step. Put the final answer in \\boxed{} on the last line."); the toy world's questions
are asked bare, as its model was trained. Grading: `nega.rewards.math.math_reward` (the answer after
`####`, else the last `\\boxed{}`, else the last number, compared by value or by math-verify), or the
toy world's exact verifier.

- `accuracy`: one greedy answer per problem, with a 95% Wilson interval.
- with `samples` = n > 1, n answers per problem at `temperature`, then for k = 1, 2, 4, ... ≤ n:
  `pass@k` = mean over problems of the unbiased 1 − C(n−c, k)/C(n, k) (c correct of n), and
  `maj@k` = share of problems whose majority answer over the first k samples is right (answers
  compared after light normalisation; ties go to the answer seen first; no answer = no vote).

Outputs: `reasoning.json`, `reasoning.md`, `reasoning.png` (accuracy against k), `samples.jsonl`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from nega.eval.report import (
    curve_plot,
    fmt_rate,
    majority_correct,
    markdown_table,
    pass_at_k,
    powers_of_two,
    rate,
)
from nega.eval.sets import ProblemSet, prompt_of


def grade(problem_set: ProblemSet, completions: list[str], items: list[dict]) -> list[bool]:
    """Correctness of each completion against its item's answer."""
    if problem_set.grade is not None:
        return [problem_set.grade(item, text) for item, text in zip(items, completions, strict=True)]
    from nega.rewards.math import math_reward

    prompts = [prompt_of(problem_set, item) for item in items]
    return [s >= 1.0 for s in math_reward(prompts, completions, answer=[item["answer"] for item in items])]


def final_answer(problem_set: ProblemSet, completion: str) -> str | None:
    """The completion's final answer in a form where equal answers compare equal (for voting)."""
    if problem_set.answer_of is not None:
        found = problem_set.answer_of(completion)
        return None if found is None else str(found)
    from nega.rewards.math import extract_answer

    found = extract_answer(completion)
    if found is None:
        return None
    text = re.sub(r"\s+", "", found.strip().strip("$")).rstrip(".")
    text = text.replace("\\dfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    try:
        return str(Fraction(text.replace(",", "")))
    except (ValueError, ZeroDivisionError):
        return text


def reasoning_metrics(rows: list[dict], samples: int) -> dict:
    metrics: dict = {
        "n_problems": len(rows),
        "samples": samples,
        "accuracy": rate([r["greedy_correct"] for r in rows]),
        "answered": rate([r["greedy_answer"] is not None for r in rows]),
        "truncated": sum(r["greedy_finish_reason"] == "length" for r in rows),
        "pass@k": {},
        "maj@k": {},
    }
    if samples > 1:
        for k in powers_of_two(samples):
            metrics["pass@k"][str(k)] = sum(pass_at_k(samples, r["n_correct"], k) for r in rows) / len(rows)
            metrics["maj@k"][str(k)] = sum(
                majority_correct(r["sample_answers"], r["sample_correct"], k) for r in rows
            ) / len(rows)
    categories = {}
    for name in sorted({r["category"] for r in rows if r["category"]}):
        members = [r for r in rows if r["category"] == name]
        categories[name] = {"n": len(members), "accuracy": rate([r["greedy_correct"] for r in members])}
    metrics["categories"] = categories
    return metrics


def summary(metrics: dict) -> dict[str, float]:
    out = {"accuracy": metrics["accuracy"]["rate"]}
    out["accuracy_ci_low"], out["accuracy_ci_high"] = metrics["accuracy"]["ci95"]
    for kind in ("pass@k", "maj@k"):
        for k, value in metrics[kind].items():
            out[kind.replace("k", k)] = value
    return out


def evaluate_problems(
    sampler,
    problem_set: ProblemSet,
    *,
    adapter: str | None,
    samples: int,
    temperature: float,
    top_p: float = 1.0,
    max_tokens: int,
    seed: int = 0,
    label: str = "",
) -> tuple[dict, list[dict]]:
    """Greedy answers (+ `samples` sampled ones when > 1), graded: (metrics, per-problem rows)."""
    items = problem_set.items
    prompts = [prompt_of(problem_set, item) for item in items]
    suffix = f" ({label})" if label else ""
    greedy = sampler.generate(
        prompts,
        n=1,
        temperature=0.0,
        top_p=1.0,
        max_tokens=max_tokens,
        seed=seed,
        adapter=adapter,
        description=f"greedy answers{suffix}",
    )
    greedy_texts = [g[0].text for g in greedy]
    greedy_correct = grade(problem_set, greedy_texts, items)
    sampled: list[list[str]] = [[] for _ in items]
    flat_correct: list[bool] = []
    if samples > 1:
        groups = sampler.generate(
            prompts,
            n=samples,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            adapter=adapter,
            description=f"{samples} samples per problem{suffix}",
        )
        sampled = [[c.text for c in g] for g in groups]
        flat_items = [item for item, g in zip(items, sampled, strict=True) for _ in g]
        flat_correct = grade(problem_set, [t for g in sampled for t in g], flat_items)
    rows, start = [], 0
    for i, item in enumerate(items):
        texts = sampled[i]
        correct = flat_correct[start : start + len(texts)]
        start += len(texts)
        rows.append(
            {
                "index": i,
                "question": item["question"],
                "answer": item["answer"],
                "category": item["category"],
                "greedy": greedy_texts[i],
                "greedy_finish_reason": greedy[i][0].finish_reason,
                "greedy_answer": final_answer(problem_set, greedy_texts[i]),
                "greedy_correct": bool(greedy_correct[i]),
                "samples": texts,
                "sample_answers": [final_answer(problem_set, t) for t in texts],
                "sample_correct": [bool(c) for c in correct],
                "n_correct": int(sum(correct)),
            }
        )
    metrics = reasoning_metrics(rows, samples)
    metrics["temperature"] = temperature
    return metrics, rows


def reasoning_markdown(metrics: dict, title: str) -> str:
    info = metrics.get("info", {})
    lines = [f"# {title}", ""]
    for key in ("target", "data", "source", "prompt", "generation"):
        if key in info:
            lines.append(f"- {key}: {info[key]}")
    lines.append("")
    rows = [
        ("accuracy (greedy)", fmt_rate(metrics["accuracy"])),
        ("answered (greedy)", fmt_rate(metrics["answered"])),
    ]
    rows += [(f"pass@{k}", f"{v:.3f}") for k, v in metrics["pass@k"].items()]
    rows += [(f"maj@{k}", f"{v:.3f}") for k, v in metrics["maj@k"].items()]
    rows.append(("answers cut at max_tokens (greedy)", f"{metrics['truncated']} of {metrics['n_problems']}"))
    lines.append(markdown_table(["metric", "value"], rows))
    if metrics["categories"]:
        lines += ["## Per category", ""]
        lines.append(
            markdown_table(
                ["category", "n", "accuracy (greedy)"],
                [(name, c["n"], fmt_rate(c["accuracy"])) for name, c in metrics["categories"].items()],
            )
        )
    return "\n".join(lines)


def write_reasoning_outputs(out_dir: Path, metrics: dict, rows: list[dict], title: str) -> Path:
    from nega.pipeline import atomic_write_text, write_json, write_jsonl

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "samples.jsonl", rows)
    write_json(out_dir / "reasoning.json", metrics)
    atomic_write_text(out_dir / "reasoning.md", reasoning_markdown(metrics, title))
    ks = [int(k) for k in metrics["pass@k"]] or [1]
    curves = {}
    if metrics["pass@k"]:
        curves = {"pass@k": list(metrics["pass@k"].values()), "maj@k": list(metrics["maj@k"].values())}
    curve_plot(out_dir / "reasoning.png", ks, curves, title, hline=metrics["accuracy"]["rate"])
    return out_dir


def evaluate_reasoning(
    target: str,
    *,
    data: str = "gsm8k",
    samples: int = 1,
    limit: int | None = None,
    max_tokens: int = 256,
    temperature: float = 0.7,
    backend: str | None = None,
    output: Path | None = None,
) -> tuple[dict, Path]:
    """`nega eval reasoning`: answer, grade, write the outputs; returns (metrics, output folder)."""
    from nega.eval.harm import default_output, sampling_config
    from nega.eval.sets import load_problem_set, set_slug
    from nega.eval.target import resolve_target
    from nega.sampling import make_sampler

    if samples < 1:
        raise ValueError(f"--samples must be >= 1 (got {samples})")
    resolved = resolve_target(target)
    problem_set = load_problem_set(data, limit=limit, toy=resolved.toy, seed=resolved.seed)
    out_dir = Path(output) if output else default_output(resolved, f"reasoning-{set_slug(data)}")
    cfg = sampling_config(resolved, backend)
    sampler = make_sampler(
        resolved.base_model, cfg, max_lora_rank=resolved.lora_rank, adapters=resolved.adapter is not None
    )
    try:
        metrics, rows = evaluate_problems(
            sampler,
            problem_set,
            adapter=resolved.adapter,
            samples=samples,
            temperature=temperature,
            top_p=cfg.top_p,
            max_tokens=max_tokens,
            seed=resolved.seed,
        )
    finally:
        sampler.close()
    metrics["info"] = reasoning_info(resolved.describe(), problem_set, samples, temperature, max_tokens)
    write_reasoning_outputs(out_dir, metrics, rows, f"Reasoning evaluation: {problem_set.name}")
    return metrics, out_dir


def reasoning_info(
    target: str, problem_set: ProblemSet, samples: int, temperature: float, max_tokens: int
) -> dict:
    sampled = f"; {samples} samples at temperature {temperature}" if samples > 1 else ""
    return {
        "target": target,
        "data": f"{problem_set.name} ({len(problem_set.items)} problems)",
        "source": problem_set.source,
        "prompt": "question as a user turn"
        + (f" + {problem_set.instruction!r}" if problem_set.instruction else ""),
        "generation": f"greedy, max_tokens {max_tokens}{sampled}",
    }
