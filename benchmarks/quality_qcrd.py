"""QCRD quality benchmark on the toy rationale world (METHODS.md §3).

Methods, trained on the same teacher rationales for the same optimizer steps: label_only, step_by_step,
qcrd_no_disc and qcrd. For every seed (a new world, teacher noise and starting student) and every
learning rate of a small sweep, each method trains `toy-qcrd`'s schedule; its learning rate is chosen
by validation accuracy and its test metrics are reported:

    accuracy           greedy `predict:` answer equals the label (unseen creature pairs)
    rationale_quality  the world oracle's share of true claims in the greedy `explain:` rationale

Writes {"seeds": [...], "methods": {name: {metric: {"mean", "std", "per_seed"}}}, ...extras} to
benchmarks/results/quality_qcrd.json. Stages are cached under --work, so a rerun resumes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_qcrd.py [--seeds 0 1 2] [--lrs 1e-3 3e-3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from harness import seed_summary, write_result

METHODS = ["label_only", "step_by_step", "qcrd_no_disc", "qcrd"]
METRICS = ["accuracy", "rationale_quality"]
RESULTS = Path(__file__).parent / "results" / "quality_qcrd.json"

# toy-qcrd (world defaults, full fine-tuning, 4 epochs, lag 2), shrunk from 400 to 240 training questions
# and from 200 to 40 discriminator steps so that 3 seeds x 2 learning rates x 4 methods fit in about
# 16 minutes on 2 shared CPU cores.
OVERRIDES = [
    "toy.n_train=240",
    "toy.n_test=150",
    "train.epochs=4",
    "train.batch_size=16",
    "qcrd.lag=2",
    "qcrd.disc_steps=40",
    "qcrd.eval_limit=150",
]


def run_seed(seed: int, lrs: list[float], work: Path, overrides: list[str]) -> dict:
    """{lr: {"validation": table, "test": table}} for one seed; the toy model is built once per seed."""
    from nega.config import load_recipe
    from nega.distill.qcrd import run as qcrd
    from nega.eval.stage import evaluate, trained_target
    from nega.pipeline import Run, read_jsonl
    from nega.toy.build import TOY_MANIFEST, build_toy_model

    base = load_recipe("toy-qcrd", [*overrides, f"seed={seed}"])
    model_dir = work / f"seed{seed}" / "model"
    if not (model_dir / TOY_MANIFEST).exists():
        build_toy_model(base.toy, model_dir, seed=seed)
    out = {}
    for lr in lrs:
        recipe = load_recipe(
            "toy-qcrd", [*overrides, f"seed={seed}", f"train.lr={lr}", f"model.name={model_dir}"]
        )
        run = Run(recipe, work / f"seed{seed}" / f"lr{lr:g}")
        teacher = qcrd.teacher_stage(run, recipe, [])
        examples = read_jsonl(teacher.dir / "examples.jsonl")
        epochs = qcrd.whole_epochs(recipe.train.epochs)
        adapters = {"start": None}
        for method in METHODS:
            started = time.time()
            adapters[method] = qcrd.train_student(
                run, recipe, method, str(model_dir), examples, epochs, [teacher]
            )
            print(
                f"[bench] seed {seed} lr {lr:g} {method}: {time.time() - started:.0f}s",
                file=sys.stderr,
                flush=True,
            )
        targets = [
            trained_target(label, str(model_dir), folder, recipe.lora) for label, folder in adapters.items()
        ]
        out[lr] = {
            split: evaluate(run, targets, [qcrd.student_set(recipe, split=split, name=f"eval-{split}")])
            for split in ("validation", "test")
        }
    return out


def summarise(per_seed: dict[int, dict], seeds: list[int]) -> dict:
    methods: dict = {}
    chosen: dict = {}
    for method in ["start", *METHODS]:
        methods[method] = {}
        chosen[method] = {}
        for metric in METRICS:
            values = []
            for seed in seeds:
                tables = per_seed[seed]
                best = max(tables, key=lambda lr: (tables[lr]["validation"][method]["accuracy"], -lr))
                chosen[method][str(seed)] = best
                values.append(tables[best]["test"][method][metric])
            methods[method][metric] = seed_summary(values)
    return {"methods": methods, "chosen_lr": chosen}


def source_hash() -> str:
    """sha256 of the rationale world's source: the numbers belong to this exact world."""
    import hashlib

    import nega.toy.rationale

    return hashlib.sha256(Path(nega.toy.rationale.__file__).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-quality-qcrd"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--override", action="append", default=[], help="extra recipe KEY=VALUE")
    args = parser.parse_args(argv)

    import torch

    os.environ.setdefault("NEGA_QUIET", "1")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    overrides = [*OVERRIDES, *args.override]
    world_hash = source_hash()
    started = time.time()
    per_seed = {seed: run_seed(seed, args.lrs, args.work, overrides) for seed in args.seeds}
    summary = summarise(per_seed, args.seeds)
    result = {
        "seeds": args.seeds,
        "methods": {m: summary["methods"][m] for m in METHODS},
        "start": summary["methods"]["start"],
        "chosen_lr": summary["chosen_lr"],
        "lr_sweep": args.lrs,
        "selection": "per method and seed, the learning rate with the best validation accuracy; test reported",
        "tables": {str(s): {f"{lr:g}": t for lr, t in per_seed[s].items()} for s in args.seeds},
        "recipe": "toy-qcrd",
        "overrides": overrides,
        "world_source_sha256": world_hash,
        "wall_seconds": round(time.time() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
    }
    if source_hash() != world_hash:
        raise RuntimeError(
            "nega/toy/rationale.py changed during the benchmark; its numbers mix two worlds, rerun it"
        )
    write_result(args.out, result)
    width = max(map(len, METHODS)) + 2
    print(f"{'method':<{width}}" + "".join(f"{m:>24}" for m in METRICS))
    for method in ["start", *METHODS]:
        row = summary["methods"][method]
        print(
            f"{method:<{width}}" + "".join(f"{row[m]['mean']:>15.3f} ± {row[m]['std']:.3f}" for m in METRICS)
        )
    print(f"wall {result['wall_seconds']}s -> {args.out}")
    return result


if __name__ == "__main__":
    main()
