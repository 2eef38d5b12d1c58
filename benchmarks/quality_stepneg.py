"""Per-step negative RL quality benchmark on the toy reasoning world (docs/methods.md#per-step-negative-rl):
the `toy-sft` and `toy-stepneg` recipes, run as `nega run` runs them, once per learning rate of a grid,
for each of 3 seeds.

Each seed is a new world, toy model and data, with N = 128 training problems (the first N of the same
8N training rows every arm draws from). Arms:

    sft_1x .. sft_8x  `toy-sft`: SFT of the toy model on the gold solutions of the first 1, 2, 4, 8 x N
                      problems, 4 epochs each (so 32 to 256 optimizer steps of batch 16)
    rft               π_sft fine-tuned on its own verified-correct samples of the N problems
    outcome_dpo       DPO from π_sft: a correct sample vs a whole incorrect sample
    stepneg_dpo       per-step DPO from π_sft: a correct sample vs the incorrect sample's first-pit prefix
    stepneg_awr       advantage-weighted per-step likelihood from π_sft over π_sft's valued samples
    pi_sft            (extra) π_sft itself: sft_1x at the learning rate chosen for sft_1x
    start             (extra) the toy model before any fine-tuning

π_sft is `toy-stepneg`'s SFT stage with `stepneg.sft_lr` set to the learning rate chosen for sft_1x (same
data, epochs and schedule as sft_1x, so the same model). One `toy-stepneg` run per learning rate trains
rft and the three negative-learning objectives from π_sft on the same samples, rollouts and pairs, for
the same optimizer steps (`train.max_steps`, 16 of batch 16, for every one of them, RFT included); the
runs after a seed's first start from a copy of its stages, and nega skips those whose content hashes
match, so every learning rate trains on identical pairs (checked: `pairs_sha256` in the JSON).

Every arm runs every learning rate of one grid (`--lrs`). Each arm's learning rate is chosen on the
world's validation problems (disjoint from the test problems: the world splits its problem space by a
hash of each question) by one rule:

    the highest validation accuracy (greedy, the world's exact verifier: a wrong, missing or garbled
    answer line is a failure); ties go to the lower learning rate.

The test metrics (greedy, `--n-test` held-out problems) of the chosen run are reported, as `nega run`
printed them: accuracy, all_steps_right, step_accuracy, answered_rate, spurious_rate (right answer
through a wrong step), carry_error_rate and operation_error_rate (the first wrong step is a dropped
carry / a "rows of" read as a sum). The first pit the rollouts found is compared with the world's true
first wrong step of each negative (first_pit_precision: the share whose first pit is the true first
wrong line; first_pit_recall: the same over negatives that have a wrong line).

Writes {"seeds", "methods": {arm: {metric: {"mean", "std", "per_seed"}}}, "targets", "chosen_lr",
"validation", "first_pit", "seconds", "config", "provenance", ...} to
benchmarks/results/quality_stepneg.json. Work is kept under --work; a rerun skips every finished stage.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_stepneg.py [--seeds 0 1 2] [--lrs 1e-4 2e-4 4e-4 8e-4 1.6e-3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import (
    compare_arms,
    copy_stages,
    machine,
    own_seconds,
    provenance,
    run_provenance,
    run_recipe,
    seed_seconds,
    seed_summary,
    stage_manifests,
    trained_folders,
    with_interval,
    write_result,
)

RL_ARMS = ["rft", "outcome_dpo", "stepneg_dpo", "stepneg_awr"]
EXTRA = ["start", "pi_sft"]
TRAIN_STAGE = {"rft": "rft", "outcome_dpo": "train-outcome_dpo", "stepneg_dpo": "train-dpo",
               "stepneg_awr": "train-awr"}  # fmt: skip
METRICS = ["accuracy", "all_steps_right", "step_accuracy", "answered_rate", "spurious_rate",
           "carry_error_rate", "operation_error_rate"]  # fmt: skip
RESULTS = Path(__file__).parent / "results" / "quality_stepneg.json"
# Stages of the first run each later run of the seed may reuse; nega reruns any whose hash differs.
SHARED = ["toy-model", "sft", "sft-merge", "rft-sample", "negatives", "advantages", "pairs",
          "reflogps-dpo", "reflogps-outcome_dpo"]  # fmt: skip
SELECTION = (
    "per arm and seed, the learning rate with the highest validation accuracy (greedy; a wrong, missing or "
    "garbled answer is a failure); ties go to the lower learning rate"
)


def sft_arms(args) -> list[str]:
    return [f"sft_{k}x" for k in args.sft_multiples]


def all_arms(args) -> list[str]:
    return [*sft_arms(args), *RL_ARMS]


def real_model_overrides(name: str) -> list[str]:
    """A pretrained model in place of the toy model: its name, float32, room for a chat template and for
    solutions in its tokens (a digit each), LoRA on every linear layer, and vLLM sampling where installed."""
    return [f"model.name={name}", "model.dtype=float32", "model.max_length=320", "lora.target_modules=all-linear",
            "sampling.backend=auto", "sampling.max_tokens=128"]  # fmt: skip


def choose(validation: dict[float, dict]) -> float:
    """The selection rule (SELECTION) over {lr: validation metrics}."""
    return min(validation, key=lambda lr: (-validation[lr]["accuracy"], lr))


def common(seed: int, args) -> list[str]:
    # Every run has toy.n_train = 8N (the toy model's stage hash includes the toy section, so every run
    # of a seed can share one model) and takes its problems with data.limit.
    model = [] if args.model == "toy" else real_model_overrides(args.model)
    return [*model, f"seed={seed}", f"sampling.seed={seed}", f"toy.n_train={max(args.sft_multiples) * args.n_train}",
            f"toy.n_test={args.n_test}", *args.override]  # fmt: skip


def sft_overrides(seed: int, lr: float, k: int, args) -> list[str]:
    # The schedule of toy-stepneg's SFT stage (constant, no warm-up), so sft_1x is π_sft's training.
    return [*common(seed, args), f"data.limit={k * args.n_train}", f"train.lr={lr}",
            f"train.epochs={args.sft_epochs}", "train.lr_scheduler=constant", "train.warmup_ratio=0.0",
            "eval.before=false"]  # fmt: skip


def stepneg_overrides(seed: int, lr: float, sft_lr: float, args) -> list[str]:
    return [*common(seed, args), f"data.limit={args.n_train}", f"train.lr={lr}",
            f"stepneg.sft_lr={sft_lr}", f"stepneg.sft_epochs={args.sft_epochs}",
            f"train.max_steps={args.rl_steps}", *args.rl_override]  # fmt: skip


def first_pit(run_dir: Path, seed: int, args) -> dict:
    """The rollouts' first pit of each negative against the world's true first wrong line."""
    from nega.config import load_recipe
    from nega.pipeline import read_jsonl
    from nega.toy import make_world

    recipe = load_recipe("toy-stepneg", stepneg_overrides(seed, 1.0, 1.0, args))
    world = make_world("reasoning", seed=seed, **recipe.toy.options)
    questions = [r["question"] for r in world.rows("train", recipe.toy.n_train)[: recipe.data.limit]]
    hits = negatives = with_wrong_line = early = late = 0
    for row in read_jsonl(Path(stage_manifests(run_dir)["advantages"]["dir"]) / "advantages.jsonl"):
        if row.get("correct"):
            continue
        negatives += 1
        truth = world.first_wrong_step(questions[row["problem"]], row["text"])
        if truth is not None and truth < len(row["steps"]):
            with_wrong_line += 1
            hits += int(truth == row["pit"] - 1)
            early += int(row["pit"] - 1 < truth)
            late += int(row["pit"] - 1 > truth)
    return {
        "precision": hits / max(1, negatives),
        "recall": hits / max(1, with_wrong_line),
        "negatives": negatives,
        "negatives_with_wrong_line": with_wrong_line,
        "pit_before_truth": early,
        "pit_after_truth": late,
    }


def arm_seconds(seconds: dict[str, float], arm: str) -> float:
    """The seconds of an arm's own stages in a toy-stepneg run (its reference log-probs and training)."""
    stage = TRAIN_STAGE[arm]
    return seconds.get(stage, 0.0) + seconds.get(stage.replace("train-", "reflogps-"), 0.0) * (stage != "rft")


def run_seed(seed: int, args, work: Path) -> dict:
    from nega.config import load_recipe
    from nega.eval.stage import evaluate, held_out_problems, trained_target
    from nega.pipeline import Run, hash_value

    started = time.time()
    seed_dir = work / f"seed{seed}"
    ARMS, SFT_ARMS = all_arms(args), sft_arms(args)
    test: dict[str, dict[float, dict]] = {arm: {} for arm in ARMS}
    steps: dict[str, dict[str, int]] = {arm: {} for arm in ARMS}
    seconds = {arm: 0.0 for arm in ARMS}
    shared_seconds = eval_seconds = 0.0
    seen: set = set()  # stages already counted (copies share a hash and finish time)

    # SFT on k x N gold solutions, from the toy model (or --model), at every learning rate.
    model_run = None
    sft_folders: dict[str, dict[float, str]] = {arm: {} for arm in SFT_ARMS}
    for k, arm in zip(args.sft_multiples, SFT_ARMS, strict=True):
        for lr in args.lrs:
            if model_run is not None:
                copy_stages(model_run, seed_dir / f"lr{lr:g}" / arm, ["toy-model"])
            table, run_dir = run_recipe(
                "toy-sft", sft_overrides(seed, lr, k, args), seed_dir / f"lr{lr:g}" / arm
            )
            model_run = model_run or run_dir
            test[arm][lr] = table["sft"]
            manifests = stage_manifests(run_dir)
            ran = own_seconds(manifests, seen)
            seconds[arm] += ran.get("sft", 0.0)
            shared_seconds += ran.get("toy-model", 0.0)
            eval_seconds += ran.get("eval", 0.0)
            steps[arm][f"{lr:g}"] = manifests["sft"]["counts"]["steps"]
            sft_folders[arm][lr] = trained_folders(run_dir)["sft"]
    recipe = load_recipe("toy-sft", sft_overrides(seed, args.lrs[0], 1, args))
    if args.model == "toy":
        start_model = str(Path(stage_manifests(model_run)["toy-model"]["dir"]) / "model")
    else:
        from nega.models import resolve_model

        start_model = resolve_model(args.model)
    targets = [trained_target(f"{arm}-lr{lr:g}", start_model, folder, recipe.lora)
               for arm in SFT_ARMS for lr, folder in sft_folders[arm].items()]  # fmt: skip
    problems = held_out_problems(recipe, "validation", split="validation", n_rows=args.n_val)
    scores = evaluate(Run(recipe, seed_dir / "validation-sft"), targets, [problems])
    validation = {arm: {lr: scores[f"{arm}-lr{lr:g}"] for lr in args.lrs} for arm in SFT_ARMS}
    sft_lr = choose(validation["sft_1x"])

    # π_sft = sft_1x at its chosen learning rate; RFT and the objectives from it, at every learning rate.
    first = None
    pairs_hash, pi_sft_hash, start, pi_sft = {}, {}, None, None
    rl_targets = []
    for lr in args.lrs:
        where = seed_dir / f"lr{lr:g}" / "stepneg"
        copy_stages(first or model_run, where, SHARED if first else ["toy-model"])
        table, run_dir = run_recipe("toy-stepneg", stepneg_overrides(seed, lr, sft_lr, args), where)
        first = first or run_dir
        start, pi_sft = start or table["start"], pi_sft or table["sft"]
        manifests = stage_manifests(run_dir)
        ran = own_seconds(manifests, seen)
        for arm in RL_ARMS:
            test[arm][lr] = table[arm]
            seconds[arm] += arm_seconds(ran, arm)
            steps[arm][f"{lr:g}"] = manifests[TRAIN_STAGE[arm]]["counts"]["steps"]
        own = {
            s for arm in RL_ARMS for s in (TRAIN_STAGE[arm], TRAIN_STAGE[arm].replace("train-", "reflogps-"))
        }
        shared_seconds += sum(v for s, v in ran.items() if s not in own and not s.startswith("eval"))
        eval_seconds += sum(v for s, v in ran.items() if s.startswith("eval"))
        pairs_hash[f"{lr:g}"] = hash_value(manifests["pairs"]["files"])
        pi_sft_hash[f"{lr:g}"] = hash_value(manifests["sft-merge"]["files"])
        base = str(Path(manifests["sft-merge"]["dir"]) / "model")
        folders = trained_folders(run_dir)
        rl_targets += [trained_target(f"{arm}-lr{lr:g}", base, folders[TRAIN_STAGE[arm]], recipe.lora)
                       for arm in RL_ARMS]  # fmt: skip
    scores = evaluate(Run(recipe, seed_dir / "validation-stepneg"), rl_targets, [problems])
    validation.update({arm: {lr: scores[f"{arm}-lr{lr:g}"] for lr in args.lrs} for arm in RL_ARMS})
    for which in ("sft", "stepneg"):
        eval_seconds += sum(own_seconds(stage_manifests(seed_dir / f"validation-{which}"), seen).values())

    chosen = {arm: choose(validation[arm]) for arm in ARMS}
    print(f"[quality_stepneg] seed {seed}: chosen {chosen}", file=sys.stderr, flush=True)
    return {
        "test": {"start": start, "pi_sft": pi_sft, **{arm: test[arm][chosen[arm]] for arm in ARMS}},
        "chosen_lr": chosen,
        "validation": {arm: {f"{lr:g}": v for lr, v in validation[arm].items()} for arm in ARMS},
        "test_every_lr": {arm: {f"{lr:g}": v for lr, v in test[arm].items()} for arm in ARMS},
        "optimizer_steps": steps,
        "first_pit": first_pit(first, seed, args),
        "counts": {s: stage_manifests(first)[s]["counts"] for s in ("rft-sample", "negatives", "advantages", "pairs")},
        "pairs_sha256": pairs_hash,
        "same_pairs_every_lr": len(set(pairs_hash.values())) == 1,
        "pi_sft_sha256": pi_sft_hash,
        "same_pi_sft_every_lr": len(set(pi_sft_hash.values())) == 1,
        "seconds": seed_seconds(shared_seconds, seconds, eval_seconds, started),
    }  # fmt: skip


def targets(methods: dict, sft_target: str) -> dict:
    """The per-step RL targets, on the means over seeds (and seed by seed): above outcome DPO and RFT, and
    at least SFT on `sft_target`'s multiple of the positives."""
    return {
        "stepneg_dpo_above_outcome_dpo": compare_arms(methods, "stepneg_dpo", ">", "outcome_dpo", "accuracy"),
        "stepneg_dpo_above_rft": compare_arms(methods, "stepneg_dpo", ">", "rft", "accuracy"),
        f"stepneg_dpo_at_least_{sft_target}": compare_arms(
            methods, "stepneg_dpo", ">=", sft_target, "accuracy"
        ),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3])
    parser.add_argument(
        "--n-train", type=int, default=128, help="N: training problems of π_sft and the RL arms"
    )
    parser.add_argument("--rl-steps", type=int, default=16, help="optimizer steps of rft and each objective")
    parser.add_argument("--sft-epochs", type=float, default=4, help="epochs of every SFT arm (and π_sft)")
    parser.add_argument("--n-test", type=int, default=1000, help="held-out test problems")
    parser.add_argument("--n-val", type=int, default=500, help="validation problems")
    parser.add_argument(
        "--model", default="toy", help="toy, or a pretrained model (e.g. smollm2-135m-instruct)"
    )
    parser.add_argument(
        "--sft-multiples",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8],
        help="SFT arms: k x N gold solutions for each k (1 must be first: it is π_sft)",
    )
    parser.add_argument("--sft-target", default="sft_4x", help="the SFT arm stepneg_dpo must match")
    parser.add_argument("--name", default="quality_stepneg", help="the benchmark's name in the JSON")
    parser.add_argument("--override", action="append", default=[], help="extra recipe KEY=VALUE (every run)")
    parser.add_argument(
        "--rl-override",
        action="append",
        default=[],
        help="extra KEY=VALUE for the toy-stepneg runs only (e.g. stepneg.negatives=4)",
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quality-stepneg"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.sft_multiples[0] != 1:
        parser.error("--sft-multiples must start with 1 (sft_1x is π_sft)")
    if args.sft_target not in sft_arms(args):
        parser.error(f"--sft-target {args.sft_target} is not one of the SFT arms {sft_arms(args)}")
    args.lrs = sorted(args.lrs)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    os.environ.setdefault("NEGA_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    # One thread for the toy model (a 28M model gains nothing from more on a busy machine); every core
    # for a pretrained one.
    default_threads = 1 if args.model == "toy" else os.cpu_count() or 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", default_threads)))
    made_by = provenance(__file__)
    described = machine("cpu", ("torch", "transformers"))
    started = time.time()
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(seed, args, args.work)

    ARMS = all_arms(args)
    arms = [*EXTRA, *ARMS]
    methods = {
        arm: {k: seed_summary([per_seed[s]["test"][arm][k] for s in args.seeds]) for k in METRICS}
        for arm in arms
    }
    for arm in arms:
        methods[arm]["accuracy"] = with_interval(methods[arm]["accuracy"], args.n_test)
    pits = {
        k: seed_summary([per_seed[s]["first_pit"][k] for s in args.seeds]) for k in ("precision", "recall")
    }
    after = provenance(__file__)
    result = {
        "benchmark": args.name,
        "model": args.model,
        "recipes": ["toy-sft", "toy-stepneg"],
        "world": f"toy reasoning world (nega.toy.reasoning): {args.n_test} test problems, greedy, exact verifier",
        "seeds": args.seeds,
        "methods": methods,
        "targets": targets(methods, args.sft_target),
        "selection": SELECTION,
        "chosen_lr": {arm: {str(s): per_seed[s]["chosen_lr"][arm] for s in args.seeds} for arm in ARMS},
        "validation": {str(s): per_seed[s]["validation"] for s in args.seeds},
        "test_every_lr": {str(s): per_seed[s]["test_every_lr"] for s in args.seeds},
        "first_pit_precision": pits["precision"],
        "first_pit_recall": pits["recall"],
        "first_pit": {str(s): per_seed[s]["first_pit"] for s in args.seeds},
        "optimizer_steps": {str(s): per_seed[s]["optimizer_steps"] for s in args.seeds},
        "counts": {str(s): per_seed[s]["counts"] for s in args.seeds},
        "same_data": {str(s): {k: per_seed[s][k] for k in ("same_pairs_every_lr", "same_pi_sft_every_lr",
                                                           "pairs_sha256", "pi_sft_sha256")}
                      for s in args.seeds},
        "seconds": {str(s): per_seed[s]["seconds"] for s in args.seeds},
        "wall_seconds": round(time.time() - started, 1),
        "config": {
            "lrs": args.lrs,
            "n_train": args.n_train,
            "rl_steps": args.rl_steps,
            "sft_epochs": args.sft_epochs,
            "n_test": args.n_test,
            "n_val": args.n_val,
            "sft_multiples": args.sft_multiples,
            "sft_overrides": sft_overrides(0, 0.0, 1, args)[2:],
            "stepneg_overrides": stepneg_overrides(0, 0.0, 0.0, args)[2:],
            "validation_split": "the world's validation problems (hash-split from the test problems)",
        },
        "provenance": run_provenance(made_by, after),
        "machine": described,
    }  # fmt: skip
    write_result(args.out, result)
    for arm in arms:
        acc = methods[arm]["accuracy"]
        chosen = result["chosen_lr"].get(arm, {})
        print(
            f"{arm:12s} {acc['mean']:.3f} ± {acc['std']:.3f}  {acc['per_seed']}  lr {list(chosen.values())}"
        )
    print(f"first pit precision {pits['precision']['mean']:.3f}, recall {pits['recall']['mean']:.3f}")
    print(json.dumps({k: v["met"] for k, v in result["targets"].items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
