"""The negatives stage's sampling: rounds from π_sft until every problem has its distinct wrong solutions.

The paper learns from about 8 incorrect solutions per problem (docs/methods.md). A fixed number of
samples gives far fewer on the problems π_sft mostly solves (about 4 of 8 at 50% accuracy), so the
stage samples in rounds: M (`stepneg.negatives`) more solutions for each problem that still has fewer
than N (`stepneg.negatives_per_problem`) distinct wrong ones, until none is short or each has had
`stepneg.max_samples_per_problem` samples. Round r samples with seed `seed + r`, so a run is the same
from one time to the next, and each round's samples are kept in `round-NN.jsonl` in the stage folder:
a stage killed between rounds resumes at the first round it had not finished.

Each problem's row holds every sample of every round (its right ones are positives too) and, under
`negatives`, its first N distinct wrong solutions: the ones the advantages stage values::

    {"texts": [...], "token_ids": [[...], ...], "finish_reasons": ["stop", "length", ...],
     "correct": [true, false, ...], "negatives": ["<wrong solution>", ...], "samples": 16}
"""

from __future__ import annotations

from pathlib import Path

from nega.align.stepneg.data import cut_positive_count, negative_texts, positive_texts


def sample_negatives(
    sampler,
    prompts: list,
    verify,
    *,
    per_round: int,
    target: int,
    budget: int,
    seed: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    folder: Path | None = None,
) -> tuple[list[dict], dict]:
    """(one row per problem, counts): sample until each problem has `target` distinct wrong solutions.

    `sampler.generate` is the `nega.sampling` interface; `verify(problem index, text) -> bool`. Every
    short problem has had the same number of samples, so a round is one `generate` call with
    n = min(per_round, what is left of the budget). Empty or repeated wrong texts do not count.
    """
    from nega.pipeline import read_jsonl, write_jsonl

    rows = [{"texts": [], "token_ids": [], "finish_reasons": [], "correct": []} for _ in prompts]
    spent = rounds = 0
    while spent < budget:
        short = [i for i, row in enumerate(rows) if len(negative_texts(row)) < target]
        if not short:
            break
        n = min(per_round, budget - spent)
        path = Path(folder) / f"round-{rounds:02d}.jsonl" if folder is not None else None
        found = read_jsonl(path) if path is not None and path.exists() else None
        if found is None or [f["problem"] for f in found] != short:
            groups = sampler.generate(
                [prompts[i] for i in short],
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                seed=seed + rounds,
                description=f"negatives, round {rounds + 1} ({len(short)} problems x {n})",
            )
            found = [
                {
                    "problem": i,
                    "texts": [c.text for c in group],
                    "token_ids": [c.token_ids for c in group],
                    "finish_reasons": [c.finish_reason for c in group],
                    "correct": [bool(verify(i, c.text)) for c in group],
                }
                for i, group in zip(short, groups, strict=True)
            ]
            if path is not None:
                write_jsonl(path, found)
        for f in found:
            for key in ("texts", "token_ids", "finish_reasons", "correct"):
                rows[f["problem"]][key] += f[key]
        spent += n
        rounds += 1
    for row in rows:
        row["negatives"] = negative_texts(row)[:target]
        row["samples"] = len(row["texts"])
    flat = [ok for row in rows for ok in row["correct"]]
    counts = {
        "problems": len(rows),
        "samples": len(flat),
        "rounds": rounds,
        "correct_rate": sum(flat) / max(1, len(flat)),
        "solved_problems": sum(bool(positive_texts(row)) for row in rows),
        "correct_cut": sum(cut_positive_count(row) for row in rows),
        "negatives": sum(len(row["negatives"]) for row in rows),
        "short_problems": sum(len(row["negatives"]) < target for row in rows),
    }
    return rows, counts
