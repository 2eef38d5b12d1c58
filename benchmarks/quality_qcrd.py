"""QCRD quality benchmark on the toy rationale world (docs/methods.md#qcrd): the `toy-qcrd` recipe, run as
`nega run` runs it, once per learning rate of a grid, for each of 3 seeds.

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

The runs of a seed after the first start from a copy of its first run's model, teacher and epoch-0
stages (the starting student's negatives and the discriminator pre-trained on them); nega skips those
whose hashes match, so every learning rate trains on identical data.

Every arm runs every learning rate of one grid (`--lrs`). Each arm's learning rate is chosen on the
world's validation questions (disjoint from the test questions: the world splits its questions by a
hash of each) by one rule:

    the highest validation score, (accuracy + rationale_quality) / 2, both from the world's oracle on
    greedy answers: a garbled or missing label is wrong, and a rationale's missing claim counts as a
    false one, so degenerate output scores 0; ties go to the lower learning rate.

The test metrics of the chosen run are reported, as `nega run` printed them:

    accuracy            greedy `predict:` answer equals the label
    rationale_quality   the oracle's share of true claims (fact, comparison, answer) in the greedy
                        `explain:` rationale
    rationale_accuracy  the answer the greedy rationale states is right

Writes {"seeds", "methods": {arm: {metric: {"mean", "std", "per_seed"}}}, "targets", "chosen_lr",
"validation", "seconds", "config", "provenance", ...} to benchmarks/results/quality_qcrd.json. Work is
kept under --work; a rerun skips every finished stage.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_qcrd.py [--seeds 0 1 2] [--lrs 3e-4 1e-3 3e-3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import (
    arm_of,
    compare_arms,
    copy_stages,
    last_epoch,
    machine,
    own_seconds,
    provenance,
    run_provenance,
    run_recipe,
    seed_seconds,
    seed_summary,
    split_seconds,
    stage_manifests,
    trained_folders,
    write_result,
)

RECIPE = "toy-qcrd"
MAIN_ARMS = ["label_only", "step_by_step", "qcrd_no_disc", "qcrd"]
ABLATION = "qcrd_no_hinge"
ARMS = [*MAIN_ARMS, ABLATION]
METRICS = ["accuracy", "rationale_quality", "rationale_accuracy"]
RESULTS = Path(__file__).parent / "results" / "quality_qcrd.json"
# Stages a later run of the seed may reuse: nega reruns any whose hash differs.
SHARED = ["toy-model", "teacher", "qcrd-p0-negatives", "qcrd-p0-discriminator", "qcrd_no_disc-p0-negatives"]
SELECTION = (
    "per arm and seed, the learning rate with the highest validation (accuracy + rationale_quality) / 2 "
    "(greedy; a garbled label is wrong and a missing claim of a rationale counts as false); ties go to the "
    "lower learning rate"
)


def score(metrics: dict) -> float:
    return (metrics["accuracy"] + metrics["rationale_quality"]) / 2


def choose(validation: dict[float, dict]) -> float:
    """The selection rule (SELECTION) over {lr: validation metrics}."""
    return min(validation, key=lambda lr: (-score(validation[lr]), lr))


def overrides(seed: int, lr: float, args) -> list[str]:
    return [
        f"seed={seed}",
        f"sampling.seed={seed}",
        f"train.lr={lr}",
        f"toy.n_test={args.n_test}",
        *args.override,
    ]


def ablation_overrides(seed: int, lr: float, args) -> list[str]:
    return [*overrides(seed, lr, args), "qcrd.alpha3=0", "qcrd.baselines=[]", "eval.before=false"]


def run_seed(seed: int, args, work: Path) -> dict:
    from nega.config import load_recipe
    from nega.distill.qcrd.run import student_set
    from nega.eval.stage import evaluate, trained_target
    from nega.pipeline import Run

    started = time.time()
    test: dict[str, dict[float, dict]] = {arm: {} for arm in ARMS}
    validation: dict[str, dict[float, dict]] = {arm: {} for arm in ARMS}
    steps: dict[str, dict[str, int]] = {arm: {} for arm in ARMS}
    seconds = {arm: 0.0 for arm in ARMS}
    shared_seconds = eval_seconds = 0.0
    seen: set = set()  # stages already counted (copies share a hash and finish time)
    first = start = None
    for lr in args.lrs:
        where = work / f"seed{seed}" / f"lr{lr:g}"
        if first is not None:
            copy_stages(first, where / "run", SHARED)
        table, run_dir = run_recipe(RECIPE, overrides(seed, lr, args), where / "run")
        first = first or run_dir
        copy_stages(run_dir, where / "ablation", SHARED[:4])
        ablation, ablation_dir = run_recipe(RECIPE, ablation_overrides(seed, lr, args), where / "ablation")
        start = start or table["start"]
        for arm in MAIN_ARMS:
            test[arm][lr] = table[arm]
        test[ABLATION][lr] = ablation["qcrd"]

        recipe = load_recipe(RECIPE, overrides(seed, lr, args))
        manifests, ablation_manifests = stage_manifests(run_dir), stage_manifests(ablation_dir)
        model_path = str(Path(manifests["toy-model"]["dir"]) / "model")
        folders = {arm: last_epoch(trained_folders(run_dir), arm) for arm in MAIN_ARMS}
        folders[ABLATION] = last_epoch(trained_folders(ablation_dir), "qcrd")
        targets = [trained_target(arm, model_path, folder, recipe.lora) for arm, folder in folders.items()]
        # The world's validation split holds 123-151 questions by seed (0-2); student_set reads toy.n_test rows.
        val_recipe = recipe.model_copy(update={"toy": recipe.toy.model_copy(update={"n_test": args.n_val})})
        sets = [student_set(val_recipe, split="validation", name="validation")]
        scores = evaluate(Run(recipe, where / "validation"), targets, sets)
        for arm in ARMS:
            validation[arm][lr] = scores[arm]

        for name, manifest in manifests.items():
            if arm_of(name, MAIN_ARMS) and name.endswith("-train"):
                steps[arm_of(name, MAIN_ARMS)][f"{lr:g}"] = (
                    steps[arm_of(name, MAIN_ARMS)].get(f"{lr:g}", 0) + manifest["counts"]["steps"]
                )
        steps[ABLATION][f"{lr:g}"] = sum(
            m["counts"]["steps"]
            for n, m in ablation_manifests.items()
            if n.startswith("qcrd-p") and n.endswith("-train")
        )
        shared, per_arm, evaluation = split_seconds(own_seconds(manifests, seen), MAIN_ARMS)
        for arm in MAIN_ARMS:
            seconds[arm] += per_arm[arm]
        # The ablation run trains one objective, `qcrd`: its stages are the ablation arm's.
        shared_ablation, per_objective, eval_ablation = split_seconds(
            own_seconds(ablation_manifests, seen), ["qcrd"]
        )
        seconds[ABLATION] += per_objective["qcrd"]
        shared_seconds += shared + shared_ablation
        eval_seconds += evaluation + eval_ablation
        eval_seconds += sum(own_seconds(stage_manifests(where / "validation"), seen).values())
        print(f"[quality_qcrd] seed {seed} lr {lr:g}: " + ", ".join(
            f"{arm} val {score(validation[arm][lr]):.3f}" for arm in ARMS
        ), file=sys.stderr, flush=True)  # fmt: skip

    chosen = {arm: choose(validation[arm]) for arm in ARMS}
    return {
        "test": {"start": start, **{arm: test[arm][chosen[arm]] for arm in ARMS}},
        "chosen_lr": chosen,
        "validation": {arm: {f"{lr:g}": v for lr, v in validation[arm].items()} for arm in ARMS},
        "test_every_lr": {arm: {f"{lr:g}": v for lr, v in test[arm].items()} for arm in ARMS},
        "optimizer_steps": steps,
        "teacher": stage_manifests(first)["teacher"]["counts"],
        "seconds": seed_seconds(shared_seconds, seconds, eval_seconds, started),
    }  # fmt: skip


def targets(methods: dict) -> dict:
    """The issue's QCRD targets on label accuracy (the paper's metric), and the same orderings on
    rationale quality beside them, on the means over seeds (and seed by seed)."""
    out = {}
    for metric in ("accuracy", "rationale_quality"):
        suffix = "" if metric == "accuracy" else f"_{metric}"
        out[f"qcrd_above_step_by_step{suffix}"] = compare_arms(methods, "qcrd", ">", "step_by_step", metric)
        out[f"step_by_step_above_label_only{suffix}"] = compare_arms(
            methods, "step_by_step", ">", "label_only", metric
        )
        out[f"qcrd_above_qcrd_no_disc{suffix}"] = compare_arms(methods, "qcrd", ">", "qcrd_no_disc", metric)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3])
    parser.add_argument(
        "--n-test", type=int, default=250, help="test questions (the split holds 258, 266, 256)"
    )
    parser.add_argument(
        "--n-val",
        type=int,
        default=120,
        help="validation questions (the split holds 151, 123, 130 for seeds 0-2)",
    )
    parser.add_argument("--override", action="append", default=[], help="extra recipe KEY=VALUE (every run)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quality-qcrd"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.lrs = sorted(args.lrs)
    os.environ.setdefault("NEGA_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    made_by = provenance(__file__)
    described = machine("cpu", ("torch", "transformers"))
    started = time.time()
    per_seed = {seed: run_seed(seed, args, args.work) for seed in args.seeds}

    arms = ["start", *ARMS]
    methods = {
        arm: {k: seed_summary([per_seed[s]["test"][arm][k] for s in args.seeds]) for k in METRICS}
        for arm in arms
    }
    after = provenance(__file__)
    result = {
        "benchmark": "quality_qcrd",
        "recipe": RECIPE,
        "world": f"toy rationale world (nega.toy.rationale): {args.n_test} test questions, greedy, the oracle",
        "seeds": args.seeds,
        "methods": methods,
        "targets": targets(methods),
        "selection": SELECTION,
        "chosen_lr": {arm: {str(s): per_seed[s]["chosen_lr"][arm] for s in args.seeds} for arm in ARMS},
        "validation": {str(s): per_seed[s]["validation"] for s in args.seeds},
        "test_every_lr": {str(s): per_seed[s]["test_every_lr"] for s in args.seeds},
        "optimizer_steps": {str(s): per_seed[s]["optimizer_steps"] for s in args.seeds},
        "teacher": {str(s): per_seed[s]["teacher"] for s in args.seeds},
        "seconds": {str(s): per_seed[s]["seconds"] for s in args.seeds},
        "wall_seconds": round(time.time() - started, 1),
        "config": {
            "lrs": args.lrs,
            "overrides": overrides(0, 0.0, args)[3:],
            "ablation_overrides": ablation_overrides(0, 0.0, args)[3:],
            "n_test": args.n_test,
            "n_val": args.n_val,
            "validation_split": "the world's validation questions (hash-split from the test questions)",
        },
        "provenance": run_provenance(made_by, after),
        "machine": described,
    }  # fmt: skip
    write_result(args.out, result)
    for arm in arms:
        row = methods[arm]
        print(f"{arm:14s}" + "".join(f"  {k} {row[k]['mean']:.3f}±{row[k]['std']:.3f}" for k in METRICS))
    print(json.dumps({k: v["met"] for k, v in result["targets"].items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
