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
is chosen by one rule (SELECTION: the paper's primary metric, accuracy) before any test number is read,
through one sweep (sweep.py) over the grid, seeds and sizes declared in DESIGN (a run with other
arguments records each departure under `deviations`). Test: CQA's whole test split (1,221
questions, never trained or selected on), greedy `predict:` answers, accuracy with a 95% Wilson interval.
The rationale quality of the student cannot be scored here (no oracle for CQA), so only accuracy is
reported. Targets are decided by exact McNemar tests on the test questions (paired.py).

Writes benchmarks/results/real_qcrd.json: {"seeds", "methods": {arm: {"accuracy": {"mean", "std",
"per_seed", "ci95", "n"}}}, "targets", "chosen_lr", "sweep" (validation numbers, stage seconds),
"teacher" (positives and negatives), "sizes", "provenance", ...} and the per-question outcomes beside it.
Work is kept under --work; a rerun resumes and is recorded as another invocation.

    .venv/bin/python benchmarks/real_qcrd.py [--seeds 0] [--lrs 2e-4] [--train-questions 1000]
    # quick check: --train-questions 8 --val-questions 4 --test-questions 4 --disc-steps 2 --max-tokens 16
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import (
    begin_invocation,
    end_invocation,
    machine,
    seed_summary,
    stage_manifests,
    with_interval,
    write_result,
)
from paired import Target, decide_targets
from sweep import Arm, Selection, deviations, point_name, prompt_set_scorer, sweep, test_items, write_items

RECIPE = "qcrd-cqa"
TRAIN_FILE = "data:distill_step_by_step/cqa/cqa_train.json"
ARMS = ["label_only", "step_by_step", "qcrd_no_disc", "qcrd"]
RUN_ARMS = {"start": Arm("start", tuned=False), **{arm: Arm(arm) for arm in ARMS}}
SELECTION = Selection("accuracy", "higher")
TARGETS = {
    "qcrd_above_step_by_step": Target("qcrd", ">", "step_by_step", "accuracy"),
    "step_by_step_above_label_only": Target("step_by_step", ">", "label_only", "accuracy"),
    "discriminator_helps": Target("qcrd", ">", "qcrd_no_disc", "accuracy"),
}
DESIGN = {"model": "smollm2-135m-instruct", "seeds": [0], "lrs": [2e-4], "train_questions": 1000,
          "val_questions": 300, "test_questions": None, "epochs": 2, "batch_size": 8, "lag": 1,
          "disc_steps": 200, "disc_backbone": "encoder", "max_tokens": 64, "max_length": 320, "override": []}  # fmt: skip
RESULTS = Path(__file__).parent / "results" / "real_qcrd.json"
CQA_TEST_QUESTIONS = 1221


def overrides(seed: int, args) -> list[str]:
    return [
        f"model.name={args.model}",
        "model.dtype=float32",
        f"model.max_length={args.max_length}",
        "train.bf16=false",
        f"data.path={TRAIN_FILE}",
        f"data.limit={args.train_questions}",
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


def question_set(val_records: list[dict]):
    """Validation: the held-out training questions; test: CQA's test split (`qcrd.eval_limit` of it)."""

    def build(recipe, split: str):
        from nega.distill.qcrd.run import student_set

        if split == "validation":
            return student_set(recipe, name="validation", records=val_records)
        return student_set(recipe, name="test")

    return build


def answer_right(recipe):
    """One question's greedy `predict:` answer against its label, as the recipe's accuracy counts it."""
    from nega.rewards.math import label_matches

    def metrics(prompt, completions: list[str], columns: dict) -> dict[str, float]:
        return {"accuracy": float(label_matches(completions[0], columns["label"]))}

    return metrics


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DESIGN["model"])
    parser.add_argument("--seeds", type=int, nargs="+", default=DESIGN["seeds"])
    parser.add_argument("--lrs", type=float, nargs="+", default=DESIGN["lrs"])
    parser.add_argument("--train-questions", type=int, default=DESIGN["train_questions"])
    parser.add_argument("--val-questions", type=int, default=DESIGN["val_questions"])
    parser.add_argument(
        "--test-questions", type=int, default=DESIGN["test_questions"], help="default: the whole test split"
    )
    parser.add_argument(
        "--epochs", type=int, default=DESIGN["epochs"], help="QCRD draws its negatives once per epoch"
    )
    parser.add_argument("--batch-size", type=int, default=DESIGN["batch_size"])
    parser.add_argument(
        "--lag",
        type=int,
        default=DESIGN["lag"],
        help="negatives come from the student this many periods back",
    )
    parser.add_argument(
        "--disc-steps", type=int, default=DESIGN["disc_steps"], help="steps per discriminator fit"
    )
    parser.add_argument(
        "--disc-backbone", default=DESIGN["disc_backbone"], choices=["encoder", "student"],
        help="the discriminator: a tiny encoder trained from scratch (default: a CPU affords it), or the "
        "student's base model with LoRA (the recipe's; ~10 s a step on a 2-core CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--max-tokens", type=int, default=DESIGN["max_tokens"], help="tokens of a self-adversarial rationale"
    )
    parser.add_argument("--max-length", type=int, default=DESIGN["max_length"])
    parser.add_argument("--override", action="append", default=[], help="extra recipe KEY=VALUE (every run)")
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work" / "real_qcrd")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    record = begin_invocation(args.work, __file__)
    described = machine("cpu", ("torch", "transformers", "vllm", "peft"))
    started = time.time()
    val_records = validation_records(args)
    swept = sweep(
        RECIPE, {"train.lr": args.lrs}, RUN_ARMS, SELECTION, args.seeds, lambda seed: overrides(seed, args),
        score=prompt_set_scorer(question_set(val_records), answer_right), work=args.work, log="real_qcrd",
    )  # fmt: skip
    n_test = args.test_questions or CQA_TEST_QUESTIONS
    seeds = list(swept["seeds"])
    methods = {
        arm: {"accuracy": with_interval(seed_summary([swept["seeds"][s]["test"][arm]["accuracy"] for s in seeds]), n_test)}
        for arm in RUN_ARMS
    }  # fmt: skip
    items = test_items(swept)
    first = point_name({"train.lr": args.lrs[0]})
    result = {
        "benchmark": "real_qcrd",
        "model": args.model,
        "recipe": RECIPE,
        "seeds": args.seeds,
        "design": DESIGN,
        "deviations": deviations(DESIGN, vars(args)),
        "methods": methods,
        "targets": decide_targets(TARGETS, items),
        "selection": swept["selection"] if len(args.lrs) > 1 else f"one rate ({args.lrs[0]:g}) for every arm: no selection",
        "chosen_lr": {arm: {s: swept["seeds"][s]["chosen"][arm]["train.lr"] for s in seeds} for arm in ARMS},
        "sweep": {s: {k: v for k, v in entry.items() if k != "items"} for s, entry in swept["seeds"].items()},
        "teacher": {str(s): stage_manifests(args.work / f"seed{s}" / first / "main")["teacher"]["counts"] for s in args.seeds},
        "wall_seconds": round(time.time() - started, 1),
        "sizes": {**{k: getattr(args, k) for k in DESIGN if k not in ("model", "seeds", "override")},
                  "test_questions": n_test, "overrides": overrides(0, args)},  # fmt: skip
        "data": {
            "train": "CQA train (distilling step-by-step), the first --train-questions, PaLM rationales",
            "validation": "CQA train, the last --val-questions (disjoint from the training ones)",
            "test": "CQA test split (1,221 questions)",
            "teacher": "one PaLM-540B rationale per question; positive when its answer is the gold label",
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "provenance": end_invocation(args.work, record),
        "machine": described,
    }  # fmt: skip
    write_result(args.out, result)
    write_items(args.out.with_name(f"{args.out.stem}_items.json"), items)
    for arm, m in methods.items():
        acc = m["accuracy"]
        print(
            f"{arm:14s} {acc['mean']:.3f}  95% CI [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]  n {acc['n']}"
        )
    print({k: v["outcome"] for k, v in result["targets"].items()})
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
