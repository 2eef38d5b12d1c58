"""Per-step negative RL quality benchmark on the toy reasoning world (docs/methods.md#per-step-negative-rl):
the `toy-sft` and `toy-stepneg` recipes, run as `nega run` runs them, through one sweep (sweep.py) each
over a learning-rate grid declared below, for each of 3 seeds.

Each seed is a new world, toy model and data, with N = 128 training problems (the first N of the same
8N training rows every arm draws from). Arms:

    sft_1x .. sft_8x  `toy-sft`: SFT of the toy model on the gold solutions of the first 1, 2, 4, 8 x N
                      problems, 4 epochs each (so 32 to 256 optimizer steps of batch 16: the SFT
                      multiples train on more data for more steps than the RL arms)
    rft               π_sft fine-tuned on its own verified-correct samples of the N problems
    outcome_dpo       DPO from π_sft: a correct sample vs a whole incorrect sample
    stepneg_dpo       per-step DPO from π_sft: a correct sample vs the incorrect sample's first-pit prefix
    stepneg_awr       advantage-weighted per-step likelihood from π_sft over π_sft's valued samples
    pi_sft            (extra) π_sft itself: sft_1x at the learning rate chosen for sft_1x
    start             (extra) the toy model before any fine-tuning

π_sft is `toy-stepneg`'s SFT stage with `stepneg.sft_lr` set to the learning rate chosen for sft_1x (same
data, epochs and schedule as sft_1x, so the same model). One `toy-stepneg` run per learning rate trains
rft and the three negative-learning objectives from π_sft on the same samples, rollouts and pairs, for
the same optimizer steps (`train.max_steps`, 16 of batch 16, for every one of them, RFT included). Every
grid point is its own run folder, so the toy model, π_sft, samples, rollouts and pairs are computed again
at each; the JSON records per stage which files came out different between the points of a seed
(`identical_across_grid`; the same seeds give the same pairs).

Declared before any run (DESIGN; a run with other arguments records each departure under `deviations`):
the grid, the selection rule (SELECTION: the paper's primary metric, greedy accuracy by the world's exact
verifier, on the world's validation problems, disjoint from the test problems by a hash of each
question; ties go to the lower rate), the seeds, the sizes, and the targets (`targets`), decided by exact
McNemar tests on the test problems, pooled over seeds.

The test metrics (greedy, `--n-test` held-out problems) of each arm's chosen rate: accuracy, all_steps_right, step_accuracy, answered_rate, spurious_rate (right answer
through a wrong step), carry_error_rate and operation_error_rate (the first wrong step is a dropped
carry / a "rows of" read as a sum). The first pit the rollouts found is compared with the world's true
first wrong step of each negative (first_pit_precision: the share whose first pit is the true first
wrong line; first_pit_recall: the same over negatives that have a wrong line).

Writes benchmarks/results/quality_stepneg.json and the per-item values beside it. Work is kept under
--work; a rerun resumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_stepneg.py
"""

from __future__ import annotations

import argparse
import json
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
from sweep import Arm, Selection, deviations, methods_table, point_name, prompt_set_scorer, sweep, write_items

RL_ARMS = ["rft", "outcome_dpo", "stepneg_dpo", "stepneg_awr"]
EXTRA = ["start", "pi_sft"]
METRICS = ["accuracy", "all_steps_right", "step_accuracy", "answered_rate", "spurious_rate",
           "carry_error_rate", "operation_error_rate"]  # fmt: skip
RESULTS = Path(__file__).parent / "results" / "quality_stepneg.json"
DESIGN = {
    "model": "toy",
    "name": "quality_stepneg",
    "seeds": [0, 1, 2],
    "lrs": [1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3],
    "n_train": 128,
    "rl_steps": 16,
    "sft_epochs": 4,
    "n_test": 1000,
    "n_val": 500,
    "sft_multiples": [1, 2, 4, 8],
    "sft_target": "sft_4x",
    "override": [],
    "rl_override": [],
    "work": "runs/bench-quality-stepneg",
    "out": str(RESULTS),
}
SELECTION = Selection("accuracy", "higher")
# The RL arms (and π_sft, RFT) of a toy-stepneg run: {benchmark arm: Arm of the run's results.json}.
RL_RUN_ARMS = {"start": Arm("start", tuned=False), "pi_sft": Arm("sft", tuned=False),
               **{arm: Arm(arm) for arm in RL_ARMS}}  # fmt: skip


def sft_arms(args) -> list[str]:
    return [f"sft_{k}x" for k in args.sft_multiples]


def all_arms(args) -> list[str]:
    return [*sft_arms(args), *RL_ARMS]


def targets(sft_target: str) -> dict:
    """Per-step DPO above outcome DPO and RFT, and at least SFT on `sft_target`'s multiple of the positives."""
    return {
        "stepneg_dpo_above_outcome_dpo": Target("stepneg_dpo", ">", "outcome_dpo", "accuracy"),
        "stepneg_dpo_above_rft": Target("stepneg_dpo", ">", "rft", "accuracy"),
        f"stepneg_dpo_at_least_{sft_target}": Target("stepneg_dpo", ">=", sft_target, "accuracy"),
    }


def real_model_overrides(name: str) -> list[str]:
    """A pretrained model in place of the toy model: its name, float32, room for a chat template and for
    solutions in its tokens (a digit each), LoRA on every linear layer, and vLLM sampling where installed."""
    return [f"model.name={name}", "model.dtype=float32", "model.max_length=320", "lora.target_modules=all-linear",
            "sampling.backend=auto", "sampling.max_tokens=128"]  # fmt: skip


def common(seed: int, args) -> list[str]:
    # Every run has toy.n_train = 8N (the toy model's stage hash includes the toy section, so every run
    # of a seed trains the same toy model) and takes its problems with data.limit.
    model = [] if args.model == "toy" else real_model_overrides(args.model)
    return [*model, f"seed={seed}", f"sampling.seed={seed}", f"toy.n_train={max(args.sft_multiples) * args.n_train}",
            f"toy.n_test={args.n_test}", *args.override]  # fmt: skip


def sft_overrides(seed: int, k: int, args) -> list[str]:
    # The schedule of toy-stepneg's SFT stage (constant, no warm-up), so sft_1x is π_sft's training.
    return [*common(seed, args), f"data.limit={k * args.n_train}", f"train.epochs={args.sft_epochs}",
            "train.lr_scheduler=constant", "train.warmup_ratio=0.0", "eval.before=false"]  # fmt: skip


def stepneg_overrides(seed: int, sft_lr: float, args) -> list[str]:
    return [*common(seed, args), f"data.limit={args.n_train}", f"stepneg.sft_lr={sft_lr}",
            f"stepneg.sft_epochs={args.sft_epochs}", f"train.max_steps={args.rl_steps}", *args.rl_override]  # fmt: skip


def problem_set(n_val: int, n_test: int):
    """Held-out problems of a split, greedy, scored by the world's verifier (as the recipes evaluate)."""

    def build(recipe, split: str):
        from nega.eval.stage import held_out_problems

        return held_out_problems(
            recipe, split, split=split, n_rows=n_val if split == "validation" else n_test
        )

    return build


def first_pit(run_dir: Path, seed: int, args) -> dict:
    """The rollouts' first pit of each negative against the world's true first wrong line."""
    from nega.config import load_recipe
    from nega.pipeline import read_jsonl
    from nega.toy import make_world

    recipe = load_recipe("toy-stepneg", stepneg_overrides(seed, 1.0, args))
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


def parse(argv: list[str] | None = None, design: dict = DESIGN) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=design["seeds"])
    parser.add_argument("--lrs", type=float, nargs="+", default=design["lrs"], help="departs from the design")
    parser.add_argument(
        "--n-train", type=int, default=design["n_train"], help="N: training problems of π_sft and the RL arms"
    )
    parser.add_argument(
        "--rl-steps", type=int, default=design["rl_steps"], help="optimizer steps of rft and each objective"
    )
    parser.add_argument(
        "--sft-epochs", type=float, default=design["sft_epochs"], help="epochs of every SFT arm (and π_sft)"
    )
    parser.add_argument("--n-test", type=int, default=design["n_test"], help="held-out test problems")
    parser.add_argument("--n-val", type=int, default=design["n_val"], help="validation problems")
    parser.add_argument(
        "--model", default=design["model"], help="toy, or a pretrained model (e.g. smollm2-135m-instruct)"
    )
    parser.add_argument(
        "--sft-multiples",
        type=int,
        nargs="+",
        default=design["sft_multiples"],
        help="SFT arms: k x N gold solutions for each k (1 must be first: it is π_sft)",
    )
    parser.add_argument(
        "--sft-target", default=design["sft_target"], help="the SFT arm stepneg_dpo must match"
    )
    parser.add_argument("--name", default=design["name"], help="the benchmark's name in the JSON")
    parser.add_argument(
        "--override", action="append", default=None, help="extra recipe KEY=VALUE (every run)"
    )
    parser.add_argument(
        "--rl-override",
        action="append",
        default=None,
        help="extra KEY=VALUE for the toy-stepneg runs only (e.g. stepneg.negatives=4)",
    )
    parser.add_argument("--work", default=design["work"])
    parser.add_argument("--out", default=design["out"])
    args = parser.parse_args(argv)
    # Extra overrides add to the design's.
    args.override = [*design["override"], *(args.override or [])]
    args.rl_override = [*design["rl_override"], *(args.rl_override or [])]
    if args.sft_multiples[0] != 1:
        parser.error("--sft-multiples must start with 1 (sft_1x is π_sft)")
    if args.sft_target not in sft_arms(args):
        parser.error(f"--sft-target {args.sft_target} is not one of the SFT arms {sft_arms(args)}")
    return args


def main(argv: list[str] | None = None, design: dict = DESIGN) -> dict:
    args = parse(argv, design)
    work, out = Path(args.work), Path(args.out)
    os.environ.setdefault("NEGA_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    # One thread for the toy model (a 28M model gains nothing from more on a busy machine); every core
    # for a pretrained one.
    default_threads = 1 if args.model == "toy" else os.cpu_count() or 1
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", default_threads)))
    record = begin_invocation(work, __file__)
    described = machine("cpu", ("torch", "transformers"))
    started = time.time()
    score = prompt_set_scorer(problem_set(args.n_val, args.n_test))
    grid = {"train.lr": args.lrs}
    # SFT on k x N gold solutions at every rate; then π_sft = sft_1x at its chosen rate, and RFT and the
    # objectives from it at every rate.
    sft = {
        arm: sweep("toy-sft", grid, {arm: Arm("sft")}, SELECTION, args.seeds,
                   lambda seed, k=k: sft_overrides(seed, k, args), score=score, work=work / arm, log=args.name)
        for k, arm in zip(args.sft_multiples, sft_arms(args), strict=True)
    }  # fmt: skip
    sft_lr = {int(s): entry["chosen"]["sft_1x"]["train.lr"] for s, entry in sft["sft_1x"]["seeds"].items()}
    rl = sweep("toy-stepneg", grid, RL_RUN_ARMS, SELECTION, args.seeds,
               lambda seed: stepneg_overrides(seed, sft_lr[seed], args), score=score, work=work / "stepneg",
               log=args.name)  # fmt: skip

    swept = {"seeds": {}}
    for s, entry in rl["seeds"].items():
        merged = {key: dict(entry[key]) for key in ("chosen", "validation", "test", "items", "items_sha256")}
        for part in sft.values():
            for key in merged:
                merged[key].update(part["seeds"][s][key])
        if len(set(merged["items_sha256"].values())) != 1:
            raise SystemExit(f"seed {s}: the arms were tested on different problems {merged['items_sha256']}")
        swept["seeds"][s] = merged
    arms = [*EXTRA, *all_arms(args)]
    methods = methods_table(swept, arms, METRICS)
    for arm in arms:
        methods[arm]["accuracy"] = with_interval(methods[arm]["accuracy"], args.n_test)
    items = {s: entry["items"] for s, entry in swept["seeds"].items()}
    first_run = {
        s: work / "stepneg" / f"seed{s}" / point_name({"train.lr": args.lrs[0]}) / "main" for s in args.seeds
    }
    pits = {str(s): first_pit(first_run[s], s, args) for s in args.seeds}
    counts = {str(s): {k: stage_manifests(first_run[s])[k]["counts"]
                       for k in ("rft-sample", "negatives", "advantages", "pairs")} for s in args.seeds}  # fmt: skip
    result = {
        "benchmark": args.name,
        "model": args.model,
        "recipes": ["toy-sft", "toy-stepneg"],
        "world": f"toy reasoning world (nega.toy.reasoning): {args.n_test} test problems, greedy, exact verifier",
        "seeds": args.seeds,
        "design": design,
        "deviations": deviations({k: v for k, v in design.items() if k not in ("work", "out")}, vars(args)),
        "methods": methods,
        "targets": decide_targets(targets(args.sft_target), items),
        "selection": rl["selection"],
        "chosen_lr": {
            arm: {s: e["chosen"][arm]["train.lr"] for s, e in swept["seeds"].items()}
            for arm in all_arms(args)
        },  # fmt: skip
        "first_pit_precision": seed_summary([pits[str(s)]["precision"] for s in args.seeds]),
        "first_pit_recall": seed_summary([pits[str(s)]["recall"] for s in args.seeds]),
        "first_pit": pits,
        "counts": counts,
        "sweep": {
            "stepneg": {s: {k: v for k, v in e.items() if k != "items"} for s, e in rl["seeds"].items()},
            **{
                arm: {s: {k: v for k, v in e.items() if k != "items"} for s, e in part["seeds"].items()}
                for arm, part in sft.items()
            },
        },  # fmt: skip
        "wall_seconds": round(time.time() - started, 1),
        "config": {
            "grid": grid,
            "sft_overrides": sft_overrides(0, 1, args)[2:],
            "stepneg_overrides": stepneg_overrides(0, 0.0, args)[2:],
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "provenance": end_invocation(work, record),
        "machine": described,
    }
    write_result(out, result)
    write_items(out.with_name(f"{out.stem}_items.json"), items)
    for arm in arms:
        acc = methods[arm]["accuracy"]
        print(f"{arm:12s} {acc['mean']:.3f} ± {acc['std']:.3f}  {acc['per_seed']}")
    print(json.dumps({k: v["outcome"] for k, v in result["targets"].items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
