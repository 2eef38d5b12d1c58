"""QCRD beside its baselines on a real pretrained student: SmolLM2-135M-Instruct on CommonsenseQA.

Teacher: the PaLM-540B rationales that distilling step-by-step released for CQA (the shared data's
`distill_step_by_step/cqa`). PaLM was sampled once per question, so there is one teacher rationale per
question and self-consistency has nothing to vote on: the recipe's `consistency: gold` keeps as
positives the rationales whose answer matches the gold label, and the others seed S_neg. Every arm runs
through the recipe `qcrd-cqa` with overrides (the model, float32, sizes for a CPU), all arms of a learning
rate in one run, so they share the teacher split, the optimizer steps and the schedule:

    start          (extra) the student as shipped
    label_only     the label alone (`predict:`)
    step_by_step   distilling step by step: label + the positive rationale (`explain:`)
    qcrd_no_disc   QCRD's loss with D = 1 on positives and 0 on negatives
    qcrd           QCRD (docs/methods.md#qcrd): self-adversarial negatives from the student `qcrd.lag`
                   periods back, a cross-fitted discriminator on the student's backbone, the hinge on the
                   hardest negative

Training questions: the first `--train-questions` of the CQA training file. Validation: the last
`--val-questions` of the same file (disjoint from the training ones), on which each arm's learning rate
is chosen by one rule (SELECTION) before any test number is read. Test: CQA's whole test split (1,221
questions, never trained or selected on), greedy `predict:` answers, accuracy with a 95% Wilson interval.
The rationale quality of the student cannot be scored here (no oracle for CQA), so only accuracy is
reported.

Writes benchmarks/results/real_qcrd.json: {"seeds", "methods": {arm: {"accuracy": {"mean", "std",
"per_seed", "ci95", "n"}}}, "targets", "chosen_lr", "validation", "teacher" (positives and negatives),
"optimizer_steps", "seconds", "sizes", ...}. Work is kept under --work; a rerun skips finished stages.

    .venv/bin/python benchmarks/real_qcrd.py [--seeds 0] [--lrs 2e-4] [--train-questions 1000]
    # quick check: --train-questions 8 --val-questions 4 --test-questions 4 --disc-steps 2 --max-tokens 16
"""

from __future__ import annotations

import argparse
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
    with_interval,
    write_result,
)

RECIPE = "qcrd-cqa"
TRAIN_FILE = "data:distill_step_by_step/cqa/cqa_train.json"
ARMS = ["label_only", "step_by_step", "qcrd_no_disc", "qcrd"]
# Stages every learning rate's run may take from the first one (nega reruns any whose hash differs).
SHARED = ["teacher", "qcrd-p0-negatives", "qcrd-p0-discriminator", "qcrd_no_disc-p0-negatives"]
SELECTION = "per arm, the highest validation accuracy (greedy `predict:` answers); ties go to the lower rate"
RESULTS = Path(__file__).parent / "results" / "real_qcrd.json"


def overrides(seed: int, lr: float, args) -> list[str]:
    return [
        f"model.name={args.model}",
        "model.dtype=float32",
        f"model.max_length={args.max_length}",
        "train.bf16=false",
        f"data.path={TRAIN_FILE}",
        f"data.limit={args.train_questions}",
        f"train.lr={lr}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}",
        "train.grad_accum=1",
        "train.save_steps=25",  # a killed run resumes inside a 125-step epoch, not from its start
        f"sampling.max_tokens={args.max_tokens}",
        f"qcrd.lag={args.lag}",
        f"qcrd.disc_steps={args.disc_steps}",
        f"qcrd.disc_backbone={args.disc_backbone}",
        f"qcrd.baselines=[{','.join(a for a in ARMS if a != 'qcrd')}]",
        f"qcrd.eval_limit={'null' if args.test_questions is None else args.test_questions}",
        f"seed={seed}",
        f"sampling.seed={seed}",
        *args.override,
    ]


def validation_records(args) -> list[dict]:
    """The last `--val-questions` questions of the training file: never among the first
    `--train-questions`, which the arms train on."""
    from nega.data import find_data_file
    from nega.distill.qcrd.data import parse_step_by_step

    records = parse_step_by_step(find_data_file("distill_step_by_step", "cqa/cqa_train.json"))
    if args.train_questions + args.val_questions > len(records):
        raise SystemExit(
            f"--train-questions {args.train_questions} + --val-questions {args.val_questions} exceed the "
            f"{len(records)} questions of the CQA training file"
        )
    return records[len(records) - args.val_questions :]


def run_seed(seed: int, args, work: Path, val_records: list[dict]) -> dict:
    from nega.config import load_recipe
    from nega.distill.qcrd.run import student_set
    from nega.eval.stage import evaluate, trained_target
    from nega.models import resolve_model
    from nega.pipeline import Run

    started = time.time()
    model_path = resolve_model(args.model)
    test: dict[str, dict[float, dict]] = {arm: {} for arm in ARMS}
    validation: dict[str, dict[float, dict]] = {arm: {} for arm in ARMS}
    steps: dict[str, dict[str, int]] = {arm: {} for arm in ARMS}
    seconds = {arm: 0.0 for arm in ARMS}
    shared_seconds = eval_seconds = 0.0
    seen: set = set()
    first = start = None
    for lr in args.lrs:
        where = work / f"seed{seed}" / f"lr{lr:g}"
        if first is not None:
            copy_stages(first, where / "run", SHARED)
        table, run_dir = run_recipe(RECIPE, overrides(seed, lr, args), where / "run")
        first = first or run_dir
        start = start or table["start"]
        for arm in ARMS:
            test[arm][lr] = table[arm]
        recipe = load_recipe(RECIPE, overrides(seed, lr, args))
        manifests = stage_manifests(run_dir)
        folders = trained_folders(run_dir)
        targets = [trained_target(arm, model_path, last_epoch(folders, arm), recipe.lora) for arm in ARMS]
        held_out = student_set(recipe, name="validation", records=val_records)
        scores = evaluate(Run(recipe, where / "validation"), targets, [held_out])
        for arm in ARMS:
            validation[arm][lr] = scores[arm]
            steps[arm][f"{lr:g}"] = sum(
                m["counts"]["steps"]
                for n, m in manifests.items()
                if arm_of(n, ARMS) == arm and n.endswith("-train")
            )
        shared, per_arm, evaluation = split_seconds(own_seconds(manifests, seen), ARMS)
        shared_seconds, eval_seconds = shared_seconds + shared, eval_seconds + evaluation
        for arm in ARMS:
            seconds[arm] += per_arm[arm]
        eval_seconds += sum(own_seconds(stage_manifests(where / "validation"), seen).values())
        print(f"[real_qcrd] seed {seed} lr {lr:g}: " + ", ".join(
            f"{arm} val {validation[arm][lr]['accuracy']:.3f} test {test[arm][lr]['accuracy']:.3f}" for arm in ARMS
        ), file=sys.stderr, flush=True)  # fmt: skip

    chosen = {
        arm: min(validation[arm], key=lambda lr, a=arm: (-validation[a][lr]["accuracy"], lr)) for arm in ARMS
    }
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
    return {
        "qcrd_above_step_by_step": compare_arms(methods, "qcrd", ">", "step_by_step", "accuracy"),
        "step_by_step_above_label_only": compare_arms(methods, "step_by_step", ">", "label_only", "accuracy"),
        "discriminator_helps": compare_arms(methods, "qcrd", ">", "qcrd_no_disc", "accuracy"),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-4])
    parser.add_argument("--train-questions", type=int, default=1000)
    parser.add_argument("--val-questions", type=int, default=300)
    parser.add_argument("--test-questions", type=int, default=None, help="default: the whole test split")
    parser.add_argument("--epochs", type=int, default=2, help="QCRD draws its negatives once per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--lag", type=int, default=1, help="negatives come from the student this many periods back"
    )
    parser.add_argument("--disc-steps", type=int, default=200, help="steps per discriminator fit")
    parser.add_argument(
        "--disc-backbone", default="encoder", choices=["encoder", "student"],
        help="the discriminator: a tiny encoder trained from scratch (default: a CPU affords it), or the "
        "student's base model with LoRA (the recipe's; ~10 s a step on a 2-core CPU)",
    )  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens of a self-adversarial rationale")
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--override", action="append", default=[], help="extra recipe KEY=VALUE (every run)")
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work" / "real_qcrd")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.lrs = sorted(args.lrs)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    made_by = provenance(__file__)
    described = machine("cpu", ("torch", "transformers", "vllm", "peft"))
    started = time.time()
    val_records = validation_records(args)
    per_seed = {seed: run_seed(seed, args, args.work, val_records) for seed in args.seeds}

    n_test = args.test_questions or 1221
    methods = {
        arm: {
            "accuracy": with_interval(
                seed_summary([per_seed[s]["test"][arm]["accuracy"] for s in args.seeds]), n_test
            )
        }
        for arm in ["start", *ARMS]
    }
    result = {
        "benchmark": "real_qcrd",
        "model": args.model,
        "recipe": RECIPE,
        "seeds": args.seeds,
        "methods": methods,
        "targets": targets(methods),
        "selection": SELECTION if len(args.lrs) > 1 else f"one rate ({args.lrs[0]:g}) for every arm: no selection",
        "chosen_lr": {arm: {str(s): per_seed[s]["chosen_lr"][arm] for s in args.seeds} for arm in ARMS},
        "validation": {str(s): per_seed[s]["validation"] for s in args.seeds},
        "test_every_lr": {str(s): per_seed[s]["test_every_lr"] for s in args.seeds},
        "teacher": {str(s): per_seed[s]["teacher"] for s in args.seeds},
        "optimizer_steps": {str(s): per_seed[s]["optimizer_steps"] for s in args.seeds},
        "seconds": {str(s): per_seed[s]["seconds"] for s in args.seeds},
        "wall_seconds": round(time.time() - started, 1),
        "sizes": {
            "train_questions": args.train_questions,
            "val_questions": args.val_questions,
            "test_questions": args.test_questions or 1221,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lag": args.lag,
            "disc_steps": args.disc_steps,
            "disc_backbone": args.disc_backbone,
            "rationale_tokens": args.max_tokens,
            "lrs": args.lrs,
            "overrides": overrides(0, 0.0, args),
        },
        "data": {
            "train": "CQA train (distilling step-by-step), the first --train-questions, PaLM rationales",
            "validation": "CQA train, the last --val-questions (disjoint from the training ones)",
            "test": "CQA test split (1,221 questions)",
            "teacher": "one PaLM-540B rationale per question; positive when its answer is the gold label",
        },
        "provenance": run_provenance(made_by, provenance(__file__)),
        "machine": described,
    }  # fmt: skip
    write_result(args.out, result)
    for arm, m in methods.items():
        acc = m["accuracy"]
        print(
            f"{arm:14s} {acc['mean']:.3f}  95% CI [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]  n {acc['n']}"
        )
    print({k: v["met"] for k, v in result["targets"].items()})
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
