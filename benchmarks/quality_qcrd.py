"""QCRD quality benchmark on the toy rationale world (docs/methods.md#qcrd): the `toy-qcrd` recipe, run as
`nega run` runs it, through one sweep (sweep.py) over a learning-rate grid declared below, for each of
3 seeds.

Each seed is a new world, noisy teacher and starting student (nega/toy/rationale.py). One `toy-qcrd` run
trains every arm from the same starting student on the same teacher rationales (5 per question, split
by self-consistency) for the same optimizer steps (4 epochs of 100 steps, batch 4, full fine-tuning):

    label_only     the label alone (`predict:`)
    step_by_step   distilling step by step: label + the positive rationales (`explain:`)
    qcrd_no_disc   QCRD's loss with D ≡ 1 on positives and ≡ 0 on negatives
    qcrd           QCRD as docs/methods.md#qcrd sets it: α1 = α2 = α3 = 0.5, δ = 3, self-adversarial
                   negatives from the student one epoch back, cross-fitted discriminator of 500 steps per fit
    qcrd_no_hinge  (ablation, a second run of the recipe) QCRD with α3 = 0: no hinge on the negatives;
                   the discriminator still weights the positives
    start          (extra) the starting student

Declared before any run (module constants; a run with other arguments records each departure under
`deviations`): the grid (GRID), the selection rule (SELECTION: the paper's primary metric, label
accuracy, on the world's validation questions, disjoint from the test questions by a hash of each), the
seeds and set sizes (DESIGN), and the targets (TARGETS). Every arm runs at every rate through one sweep
(sweep.py); the starting student is the same at every rate.

Test metrics of each arm's chosen rate, from the world's oracle on greedy answers:

    accuracy            greedy `predict:` answer equals the label
    rationale_quality   the oracle's share of true claims (fact, comparison, answer) in the greedy
                        `explain:` rationale
    rationale_accuracy  the answer the greedy rationale states is right

Targets are decided by paired tests on the test questions (paired.py: exact McNemar on accuracy, the
paired bootstrap on rationale quality), pooled over seeds. Writes benchmarks/results/quality_qcrd.json
and the per-item values beside it (quality_qcrd_items.json). Work is kept under --work; a rerun resumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_qcrd.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from harness import begin_invocation, end_invocation, machine, write_result
from paired import Target, decide_targets
from sweep import (
    Arm,
    Selection,
    deviations,
    methods_table,
    point_name,
    prompt_set_scorer,
    sweep,
    test_items,
    write_items,
)

RECIPE = "toy-qcrd"
GRID = {"train.lr": [3e-4, 1e-3, 3e-3]}
# Test questions: the split holds 258, 266, 256 for seeds 0-2; validation 151, 123, 130.
DESIGN = {"lrs": GRID["train.lr"], "seeds": [0, 1, 2], "n_test": 250, "n_val": 120, "override": []}
ARMS = {
    "start": Arm("start", tuned=False),
    "label_only": Arm("label_only"),
    "step_by_step": Arm("step_by_step"),
    "qcrd_no_disc": Arm("qcrd_no_disc"),
    "qcrd": Arm("qcrd"),
    "qcrd_no_hinge": Arm("qcrd", variant="ablation"),  # QCRD with α3 = 0: no hinge on the negatives
}
VARIANTS = {"ablation": ["qcrd.alpha3=0", "qcrd.baselines=[]", "eval.before=false"]}
METRICS = ["accuracy", "rationale_quality", "rationale_accuracy"]
SELECTION = Selection("accuracy", "higher")
TARGETS = {
    f"{name}{'' if metric == 'accuracy' else '_' + metric}": Target(left, ">", right, metric)
    for metric in ("accuracy", "rationale_quality")
    for name, left, right in (
        ("qcrd_above_step_by_step", "qcrd", "step_by_step"),
        ("step_by_step_above_label_only", "step_by_step", "label_only"),
        ("qcrd_above_qcrd_no_disc", "qcrd", "qcrd_no_disc"),
    )
}
RESULTS = Path(__file__).parent / "results" / "quality_qcrd.json"


def overrides(seed: int, args) -> list[str]:
    return [f"seed={seed}", f"sampling.seed={seed}", f"toy.n_test={args.n_test}", *args.override]


def question_set(n_val: int, n_test: int):
    """The world's questions of a split, greedy `predict:` and `explain:` answers, as the recipe scores them."""

    def build(recipe, split: str):
        from nega.distill.qcrd.run import student_set

        n = n_val if split == "validation" else n_test
        sized = recipe.model_copy(update={"toy": recipe.toy.model_copy(update={"n_test": n})})
        return student_set(sized, split=split, name=split)

    return build


def hinge_activity(swept: dict, work: Path) -> dict:
    """QCRD's hinge over training, from each period's train_log.json counts: per seed and rate, the share
    of examples (with a negative) whose hinge was active and the hardest negative's CE, period by period;
    pooled over seeds at each seed's chosen rate. The target: active on ≥ 50% of examples."""
    per_seed, chosen_shares = {}, []
    for seed, entry in swept["seeds"].items():
        per_seed[seed] = {}
        for point in entry["validation"]["qcrd"]:
            folder = work / f"seed{seed}" / point / "main"
            periods = sorted(
                folder.glob("*-qcrd-p*-train/train_log.json"),
                key=lambda f: int(f.parent.name.split("-p")[1].split("-")[0]),
            )
            counts = [json.loads(f.read_text()).get("counts", {}) for f in periods]
            shares = [c["hinge_active"] for c in counts if "hinge_active" in c]
            per_seed[seed][point] = {
                "hinge_active": shares,
                "hard_negative_ce": [c["hard_negative_ce"] for c in counts if "hard_negative_ce" in c],
                "source_step": [c.get("source_step") for c in counts],
                "mean_hinge_active": sum(shares) / len(shares) if shares else None,
            }
        chosen = point_name(entry["chosen"]["qcrd"])
        chosen_shares += per_seed[seed][chosen]["hinge_active"]
    pooled = sum(chosen_shares) / len(chosen_shares) if chosen_shares else None
    return {
        "per_seed": per_seed,
        "chosen_rate_mean": pooled,
        "target": ">= 0.5",
        "met": None if pooled is None else pooled >= 0.5,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=DESIGN["seeds"])
    parser.add_argument("--lrs", type=float, nargs="+", default=DESIGN["lrs"], help="departs from GRID")
    parser.add_argument("--n-test", type=int, default=DESIGN["n_test"], help="test questions")
    parser.add_argument("--n-val", type=int, default=DESIGN["n_val"], help="validation questions")
    parser.add_argument("--override", action="append", default=[], help="extra recipe KEY=VALUE (every run)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quality-qcrd"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    os.environ.setdefault("NEGA_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    record = begin_invocation(args.work, __file__)
    described = machine("cpu", ("torch", "transformers"))
    started = time.time()
    swept = sweep(
        RECIPE, {"train.lr": args.lrs}, ARMS, SELECTION, args.seeds, lambda seed: overrides(seed, args),
        score=prompt_set_scorer(question_set(args.n_val, args.n_test)), work=args.work, variants=VARIANTS,
        log="quality_qcrd",
    )  # fmt: skip
    items = test_items(swept)
    result = {
        "benchmark": "quality_qcrd",
        "recipe": RECIPE,
        "world": f"toy rationale world (nega.toy.rationale): {args.n_test} test questions, greedy, the oracle",
        "seeds": args.seeds,
        "design": DESIGN,
        "deviations": deviations(DESIGN, vars(args)),
        "methods": methods_table(swept, list(ARMS), METRICS),
        "targets": decide_targets(TARGETS, items),
        "selection": swept["selection"],
        "hinge": hinge_activity(swept, args.work),
        "chosen_lr": {
            arm: {s: swept["seeds"][s]["chosen"][arm]["train.lr"] for s in swept["seeds"]}
            for arm in ARMS
            if ARMS[arm].tuned
        },  # fmt: skip
        "sweep": {s: {k: v for k, v in entry.items() if k != "items"} for s, entry in swept["seeds"].items()},
        "wall_seconds": round(time.time() - started, 1),
        "config": {"overrides": overrides(0, args)[2:], "variants": VARIANTS, "grid": {"train.lr": args.lrs}},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "provenance": end_invocation(args.work, record),
        "machine": described,
    }
    write_result(args.out, result)
    write_items(args.out.with_name(f"{args.out.stem}_items.json"), items)
    print(json.dumps({k: v["outcome"] for k, v in result["targets"].items()}, indent=1))
    print(f"hinge active on {result['hinge']['chosen_rate_mean']} of examples (target >= 0.5)")
    return result


if __name__ == "__main__":
    main()
