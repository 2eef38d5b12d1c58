"""Per-step negative RL quality benchmark on the toy reasoning world (METHODS.md §2).

For every seed (a new world, toy model and data), with N training problems:

    sft_1x .. sft_8x  SFT of the toy model on the gold solutions of 1, 2, 4, 8 x N problems, each
                      trained until validation accuracy stops improving (checked every epoch)
    rft               π_sft (= sft_1x) fine-tuned on its own verified-correct samples of the N problems
    outcome_dpo       DPO from π_sft: a correct sample vs a whole incorrect sample
    stepneg_dpo       per-step DPO from π_sft: a correct sample vs the incorrect sample's first-pit prefix
    stepneg_awr       advantage-weighted per-step likelihood from π_sft on the same negatives

rft and the three negative-learning methods use the same N problems, the same samples of π_sft and
the same number of optimizer steps (`rl_steps`, about one epoch over the pairs: longer runs overfit
the N problems π_sft was just fine-tuned on). Every method runs each learning rate of one small
sweep; the learning rate (and for sft_kx the epoch) with the best validation accuracy is kept and its
test accuracy reported (greedy decoding, exact verifier). `sample_accuracy` is the same test set
sampled at the sampling temperature (`eval_samples` per problem), reported beside it. The first pit found by rollouts is compared with
the world's true first wrong step of each negative:

    first_pit_precision  share of negatives whose first pit is the true first wrong line
    first_pit_recall     share of negatives with a wrong line whose first wrong line is the first pit

(they differ only on negatives without a wrong line: solutions that stop before their answer line).

Writes {"seeds", "methods": {name: {"accuracy": {"mean", "std", "per_seed"}}}, "first_pit_precision",
"first_pit_recall", "rollouts_per_s", "config", "provenance", ...} to
benchmarks/results/quality_stepneg.json. Work is cached under --work/<key>, where the key hashes the
settings, nega's source and this script: a rerun with the same ones resumes, and one with other
settings or after a code change starts afresh instead of mixing new work with old numbers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/quality_stepneg.py [--seeds 0 1 2] [--n-train 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from harness import write_result

METHODS = ["sft_1x", "sft_2x", "sft_4x", "sft_8x", "rft", "outcome_dpo", "stepneg_dpo", "stepneg_awr"]
RESULTS = Path(__file__).parent / "results" / "quality_stepneg.json"
LOSS_OF = {"outcome_dpo": "outcome_dpo", "stepneg_dpo": "dpo", "stepneg_awr": "awr"}

DEFAULTS = {
    "n_train": 128,
    "n_val": 100,
    "n_test": 200,
    "toy_steps": 800,
    "sft_problems": 4000,
    "max_value": 70,
    "lrs": [1e-4, 3e-4, 1e-3],
    "sft_max_epochs": 8,
    "sft_patience": 1,
    "rl_steps": 16,
    "batch_size": 16,
    "rft_samples": 4,
    "negatives": 8,
    "best_of": 5,
    "rollout_groups": 2,
    "temperature": 0.7,
    "max_tokens": 48,
    "eval_samples": 4,
}


def greedy_texts(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 128
) -> list[str]:
    """Greedy completions of rendered prompts by an in-memory model (for per-epoch validation)."""
    import torch

    was_training = model.training
    model.eval()
    texts = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            encoded = [
                tokenizer(p, add_special_tokens=False)["input_ids"]
                for p in prompts[start : start + batch_size]
            ]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(encoded), width), dtype=torch.long)
            for i, e in enumerate(encoded):
                ids[i, width - len(e) :] = torch.tensor(e)
                attention[i, width - len(e) :] = 1
            out = model.generate(
                input_ids=ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    model.train(was_training)
    return texts


def early_stopping_callback(
    prompts, questions, world, tokenizer, best_dir: Path, patience: int, max_tokens: int
):
    """A TrainerCallback scoring validation accuracy after each epoch; keeps the best adapter, stops when
    `patience` epochs in a row bring no improvement."""
    from transformers import TrainerCallback

    class EarlyStopOnValidation(TrainerCallback):
        def __init__(self):
            self.best, self.best_epoch, self.history, self.stale = -1.0, 0, [], 0

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            texts = greedy_texts(model, tokenizer, prompts, max_tokens)
            acc = sum(world.verify(q, t) for q, t in zip(questions, texts, strict=True)) / len(questions)
            self.history.append(acc)
            if acc > self.best:
                self.best, self.best_epoch, self.stale = acc, len(self.history), 0
                model.save_pretrained(str(best_dir))
            else:
                self.stale += 1
                if self.stale >= patience:
                    control.should_training_stop = True
            return control

    return EarlyStopOnValidation()


def provenance(cfg: dict) -> dict:
    """Hashes of the settings, of nega's source (its .py and recipe files) and of this script."""
    import hashlib

    package = Path(__file__).resolve().parents[1] / "nega"
    source = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.yaml")]):
        source.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    values = {
        "settings_sha256": hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest(),
        "nega_source_sha256": source.hexdigest(),
        "script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    values["key"] = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]
    return values


def cached(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return value


def run_seed(seed: int, cfg: dict, work: Path) -> dict:
    from nega.align.stepneg.data import awr_rows, outcome_pairs, step_pairs
    from nega.align.stepneg.rollouts import estimate_step_values
    from nega.align.stepneg.run import load_problems
    from nega.align.stepneg.steps import split_steps
    from nega.align.stepneg.trainer import attach_reference_logps, train_policy
    from nega.config import SamplingConfig, load_recipe
    from nega.models import load_tokenizer, merge_adapter
    from nega.pipeline import Run
    from nega.sampling.base import render_prompt
    from nega.sampling.hf import HFSampler
    from nega.sft import sft_train
    from nega.stages import base_model
    from nega.toy import make_world

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    n = cfg["n_train"]
    recipe = load_recipe(
        "toy-stepneg",
        [
            f"seed={seed}",
            f"toy.steps={cfg['toy_steps']}",
            f"toy.n_train={n}",
            f"toy.n_test={cfg['n_test']}",
            f"toy.options.sft_problems={cfg['sft_problems']}",
            f"toy.options.max_value={cfg['max_value']}",
            f"train.batch_size={cfg['batch_size']}",
            "train.lr_scheduler=constant",
            "train.warmup_ratio=0.0",
            f"sampling.max_tokens={cfg['max_tokens']}",
        ],
    )
    seed_dir = work / f"seed{seed}"
    run = Run(recipe, seed_dir / "run")
    base, _ = base_model(run)
    lap("toy_model")
    problems, prompts, verify = load_problems(recipe, base)
    world = make_world("reasoning", seed=seed, **recipe.toy.options)
    tokenizer = load_tokenizer(base)
    rows_8x = world.rows("train", 8 * n)
    if [r["question"] for r in rows_8x[:n]] != [p["question"] for p in problems]:
        raise RuntimeError("the first N of 8N training rows must be the N problems every other method uses")

    def render(rows):
        return [render_prompt(tokenizer, [{"role": "user", "content": r["question"]}]) for r in rows]

    val_rows, test_rows = world.rows("validation", cfg["n_val"]), world.rows("test", cfg["n_test"])
    val_prompts, test_prompts = render(val_rows), render(test_rows)

    def accuracy(sampler, prompts_, rows, adapter, temperature=0.0, n_samples=1) -> float:
        outs = sampler.generate(
            prompts_,
            n=n_samples,
            temperature=temperature,
            max_tokens=cfg["max_tokens"],
            adapter=adapter,
            seed=seed,
        )
        hits = [world.verify(r["question"], c.text) for r, o in zip(rows, outs, strict=True) for c in o]
        return sum(hits) / len(hits)

    def test_scores(sampler, adapter) -> dict:
        return {
            "test": accuracy(sampler, test_prompts, test_rows, adapter),
            "sample_test": accuracy(
                sampler, test_prompts, test_rows, adapter, cfg["temperature"], cfg["eval_samples"]
            ),
        }

    hf_cfg = SamplingConfig(backend="hf", batch_size=128, seed=seed)
    results: dict[str, dict] = {}

    # sft_kx: from the toy model, early-stopped on validation, lr sweep.
    base_sampler = HFSampler(base, hf_cfg)
    for k in (1, 2, 4, 8):
        rows = rows_8x[: k * n]
        pairs = list(zip(render(rows), [r["solution"] for r in rows], strict=True))
        per_lr = {}
        for lr in cfg["lrs"]:
            out = seed_dir / f"sft_{k}x" / f"lr{lr:g}"

            def train_sft(out=out, pairs=pairs, lr=lr):
                stopper = early_stopping_callback(
                    val_prompts,
                    [r["question"] for r in val_rows],
                    world,
                    tokenizer,
                    out / "best",
                    cfg["sft_patience"],
                    cfg["max_tokens"],
                )
                sft_train(
                    base,
                    pairs,
                    out,
                    model_cfg=recipe.model,
                    lora_cfg=recipe.lora,
                    train_cfg=recipe.train,
                    seed=seed,
                    callbacks=[stopper],
                    learning_rate=lr,
                    num_train_epochs=cfg["sft_max_epochs"],
                    max_steps=-1,  # epochs decide, whatever the recipe's train.max_steps
                    save_strategy="no",
                )
                return {
                    "validation": stopper.best,
                    "best_epoch": stopper.best_epoch,
                    "curve": stopper.history,
                }

            per_lr[lr] = cached(out / "result.json", train_sft)
        best_lr = max(cfg["lrs"], key=lambda lr: per_lr[lr]["validation"])
        best = seed_dir / f"sft_{k}x" / f"lr{best_lr:g}" / "best"
        test = cached(best.parent / "test.json", lambda best=best: test_scores(base_sampler, best))
        results[f"sft_{k}x"] = {
            "accuracy": test["test"],
            "sample_accuracy": test["sample_test"],
            "lr": best_lr,
            "validation": per_lr[best_lr]["validation"],
            "best_epoch": per_lr[best_lr]["best_epoch"],
            "sweep": {str(lr): per_lr[lr] for lr in cfg["lrs"]},
        }
        lap(f"sft_{k}x")
    base_sampler.close()

    # π_sft = the selected sft_1x adapter, merged into a plain model folder.
    pi_sft = seed_dir / "pi_sft"
    if not (pi_sft / "config.json").exists():
        adapter = seed_dir / "sft_1x" / f"lr{results['sft_1x']['lr']:g}" / "best"
        merge_adapter(base, adapter, pi_sft, recipe.model)
    pi_sft = str(pi_sft)

    # Samples, negatives, rollouts: one sampler of π_sft.
    sampler = HFSampler(pi_sft, hf_cfg)
    sampling = {"temperature": cfg["temperature"], "top_p": 1.0, "max_tokens": cfg["max_tokens"]}

    def sample(n_samples, seed_offset):
        groups = sampler.generate(prompts, n=n_samples, seed=seed * 100 + seed_offset, **sampling)
        return [
            {
                "texts": [c.text for c in g],
                "finish": [c.finish_reason for c in g],
                "correct": [verify(i, c.text) for c in g],
            }
            for i, g in enumerate(groups)
        ]

    rft_samples = cached(seed_dir / "rft_samples.json", lambda: sample(cfg["rft_samples"], 1))
    neg_samples = cached(seed_dir / "neg_samples.json", lambda: sample(cfg["negatives"], 2))
    positives: dict[int, list[str]] = {}
    for samples in (rft_samples, neg_samples):
        for i, row in enumerate(samples):
            good = [t for t, ok in zip(row["texts"], row["correct"], strict=True) if ok]
            if good:
                positives[i] = list(dict.fromkeys(positives.get(i, []) + good))
    lap("samples")

    def rollouts():
        negatives = []
        for i, row in enumerate(neg_samples):
            if i not in positives:
                continue
            for text in dict.fromkeys(
                t for t, ok in zip(row["texts"], row["correct"], strict=True) if not ok and t.strip()
            ):
                reason = row["finish"][row["texts"].index(text)]
                negatives.append(
                    {"problem": i, "text": text, "finish_reason": reason, "steps": split_steps(text)}
                )
        values, stats = estimate_step_values(
            sampler,
            prompts,
            [(x["problem"], x["steps"]) for x in negatives],
            verify,
            best_of=cfg["best_of"],
            groups=cfg["rollout_groups"],
            seed=seed * 100 + 3,
            **sampling,
        )
        rows = [
            {**x, "values": v.values, "advantages": v.advantages, "pit": v.pit}
            for x, v in zip(negatives, values, strict=True)
        ]
        return {"negatives": rows, "stats": stats.as_dict()}

    advantages = cached(seed_dir / "advantages.json", rollouts)
    negatives = advantages["negatives"]
    sampler.close()
    lap("rollouts")

    # First pit vs the world's true first wrong line.
    hits = predicted = with_wrong_line = early = late = 0
    for x in negatives:
        question = problems[x["problem"]]["question"]
        truth = world.first_wrong_step(question, x["text"])
        predicted += 1
        if truth is not None and truth < len(x["steps"]):
            with_wrong_line += 1
            hits += int(truth == x["pit"] - 1)
            early += int(x["pit"] - 1 < truth)
            late += int(x["pit"] - 1 > truth)
    pit = {
        "precision": hits / max(1, predicted),
        "recall": hits / max(1, with_wrong_line),
        "negatives": predicted,
        "negatives_with_wrong_line": with_wrong_line,
        "pit_before_truth": early,
        "pit_after_truth": late,
    }

    # rft and the negative-learning methods: from π_sft, same steps, lr sweep.
    examples = {
        "dpo": step_pairs(negatives, prompts, positives, seed),
        "outcome_dpo": outcome_pairs(negatives, prompts, positives, seed),
        "awr": awr_rows(negatives, prompts, positives),
    }
    for loss in ("dpo", "outcome_dpo"):
        examples[loss] = attach_reference_logps(examples[loss], pi_sft, recipe.model)
    rft_pairs = [
        (prompts[i], y)
        for i, row in enumerate(rft_samples)
        for y in dict.fromkeys(t for t, ok in zip(row["texts"], row["correct"], strict=True) if ok)
    ]
    pi_sampler = HFSampler(pi_sft, hf_cfg)
    results["sft_1x"]["pi_sft_accuracy_check"] = cached(
        seed_dir / "pi_sft_test.json", lambda: accuracy(pi_sampler, test_prompts, test_rows, None)
    )
    common = {"learning_rate": None, "max_steps": cfg["rl_steps"], "save_strategy": "no"}
    for method in ("rft", "outcome_dpo", "stepneg_dpo", "stepneg_awr"):
        per_lr = {}
        for lr in cfg["lrs"]:
            out = seed_dir / method / f"lr{lr:g}"

            def train_method(out=out, lr=lr, method=method):
                args = {**common, "learning_rate": lr}
                if method == "rft":
                    folder, history = sft_train(
                        pi_sft,
                        rft_pairs,
                        out,
                        model_cfg=recipe.model,
                        lora_cfg=recipe.lora,
                        train_cfg=recipe.train,
                        seed=seed,
                        **args,
                    )
                else:
                    folder, history = train_policy(
                        recipe, pi_sft, examples[LOSS_OF[method]], out, loss=LOSS_OF[method], **args
                    )
                losses = [h["loss"] for h in history if "loss" in h]
                return {
                    "validation": accuracy(pi_sampler, val_prompts, val_rows, folder),
                    "folder": folder,
                    "first_loss": losses[0] if losses else None,
                    "last_loss": losses[-1] if losses else None,
                }

            per_lr[lr] = cached(out / "result.json", train_method)
        best_lr = max(cfg["lrs"], key=lambda lr: per_lr[lr]["validation"])
        folder = per_lr[best_lr]["folder"]
        test = cached(
            Path(folder).parent / "test.json", lambda folder=folder: test_scores(pi_sampler, folder)
        )
        results[method] = {
            "accuracy": test["test"],
            "sample_accuracy": test["sample_test"],
            "lr": best_lr,
            "validation": per_lr[best_lr]["validation"],
            "sweep": {str(lr): per_lr[lr] for lr in cfg["lrs"]},
        }
        lap(method)
    pi_sampler.close()
    counts = {
        "problems": n,
        "problems_with_positive": len(positives),
        "negatives": len(negatives),
        "step_pairs": len(examples["dpo"]),
        "rft_pairs": len(rft_pairs),
        "mean_pit": statistics.fmean([x["pit"] for x in negatives]) if negatives else None,
        "mean_steps": statistics.fmean([len(x["steps"]) for x in negatives]) if negatives else None,
    }
    # A resumed run finds most work cached; the timings of the run that did the work are kept.
    timings = cached(seed_dir / "timings.json", lambda: timings)
    return {
        "methods": results,
        "first_pit": pit,
        "rollouts": advantages["stats"],
        "counts": counts,
        "seconds": timings,
    }


def summarise(per_seed: dict[int, dict], seeds: list[int]) -> dict:
    def stats(values: list[float]) -> dict:
        return {
            "mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "per_seed": values,
        }

    metrics = ("accuracy", "sample_accuracy")
    methods = {
        m: {metric: stats([per_seed[s]["methods"][m][metric] for s in seeds]) for metric in metrics}
        for m in METHODS
    }
    return {
        "seeds": seeds,
        "methods": methods,
        "first_pit_precision": stats([per_seed[s]["first_pit"]["precision"] for s in seeds]),
        "first_pit_recall": stats([per_seed[s]["first_pit"]["recall"] for s in seeds]),
        "rollouts_per_s": stats([per_seed[s]["rollouts"]["rollouts_per_s"] for s in seeds]),
        # Mean validation accuracy of every learning rate of the sweep: how fast each objective drifts.
        "validation_by_lr": {
            m: {
                lr: statistics.fmean([per_seed[s]["methods"][m]["sweep"][lr]["validation"] for s in seeds])
                for lr in per_seed[seeds[0]]["methods"][m]["sweep"]
            }
            for m in METHODS
        },
        "pi_sft_validation": stats([per_seed[s]["methods"]["sft_1x"]["validation"] for s in seeds]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=Path("runs") / "bench-stepneg")
    parser.add_argument("--out", type=Path, default=RESULTS)
    for key, value in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, list):
            parser.add_argument(flag, type=float, nargs="+", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = parser.parse_args(argv)
    cfg = {key: getattr(args, key) for key in DEFAULTS}

    import torch

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    os.environ.setdefault("NEGA_QUIET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    made_by = provenance(cfg)
    work = args.work / made_by["key"]
    print(f"work cached under {work}", file=sys.stderr, flush=True)
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(seed, cfg, work)
        print(
            f"seed {seed}: "
            + ", ".join(f"{m} {per_seed[seed]['methods'][m]['accuracy']:.3f}" for m in METHODS),
            f"| first pit P {per_seed[seed]['first_pit']['precision']:.2f} R {per_seed[seed]['first_pit']['recall']:.2f}",
            f"| {per_seed[seed]['seconds']}",
            file=sys.stderr,
            flush=True,
        )
    summary = summarise(per_seed, args.seeds)
    summary.update(
        {
            "metric": "accuracy: greedy, exact verifier, on n_test held-out problems of the toy reasoning world",
            "config": cfg,
            "provenance": made_by,
            "per_seed_details": {str(s): per_seed[s] for s in args.seeds},
            "wall_seconds": round(time.perf_counter() - started, 1),
            "compute_seconds": round(sum(sum(per_seed[s]["seconds"].values()) for s in args.seeds), 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpu, torch {torch.__version__}",
        }
    )
    write_result(args.out, summary)
    for m in METHODS:
        acc = summary["methods"][m]["accuracy"]
        print(f"{m:12s} {acc['mean']:.3f} ± {acc['std']:.3f}  {acc['per_seed']}")
    print(
        f"first pit precision {summary['first_pit_precision']['mean']:.3f}, recall {summary['first_pit_recall']['mean']:.3f}; "
        f"rollouts/s {summary['rollouts_per_s']['mean']:.1f}; wall {summary['wall_seconds']} s "
        f"(compute {summary['compute_seconds']} s, cached work included)"
    )


if __name__ == "__main__":
    main()
