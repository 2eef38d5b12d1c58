"""Speed and memory of one D²O training step against TRL's DPOTrainer, both with LoRA.

nega's step is the D²O step of `nega run`: B prompts, each with K self-samples and one negative, scored
by one policy forward (with `train.prefix_sharing`, each prompt computed once for its K + 1 responses)
against reference log-probs computed beforehand from frozen weights. A TRL user with the same data
forms (chosen, rejected) pairs: the same B·(K + 1) response texts become B·(K + 1)/2 pairs of the
same prompts (`dpo_pairs`), so both trainers see exactly the same number of response tokens per
optimizer step. TRL runs twice: with its defaults (the reference scored every
step with the adapter disabled) and with `precompute_ref_log_probs=True`.

Arms, each in its own subprocess so peak memory is its own:

    nega             D2OTrainer, objective d2o, prefix sharing on (nega's default)
    nega_unshared    the same with `train.prefix_sharing: false` (one padded row per response)
    trl_default      trl.DPOTrainer, DPOConfig's defaults (the reference scored every step)
    trl_precompute   the same with precompute_ref_log_probs=True

Same model (a toy Llama of --size, random weights: speed does not depend on what it learned), same
LoRA (r 16, all linear layers), AdamW, lr 1e-5, and the same numerics in every arm: by default
DPOConfig's own, bf16 autocast and gradient checkpointing (nega's recipe fields `train.bf16` and
`train.gradient_checkpointing` set to match); `--precision fp32 --no-checkpointing` compares both
without them. Every prompt is --prompt-tokens
tokens and every response --response-tokens tokens (+ EOS); words are single tokens of the toy
tokenizer, and the counts are checked. A step's time is the wall time between consecutive optimizer
steps (data collation, forward, backward and optimizer update) after --warmup steps. Peak memory is
the process's resident-set high-water mark (VmHWM) during `train()`, reset after set-up; on CUDA,
`torch.cuda.max_memory_allocated`. Work that happens before training is timed separately:
nega's reference log-probs (its reflogps stage) and, in the time to the first step, TRL's precompute pass.

Each CPU worker uses --threads torch threads (default 1: on a small shared machine, two threads per
worker measured mostly the neighbours' load). Repetitions interleave the arms (nega, TRL, TRL, nega, ...) so load on a shared machine hits all of
them alike. Each ratio is taken inside a repetition and the median of the per-repetition ratios is
reported, with the list under `per_rep_ratios` (report.py's spread rule reads it). Top-level ratios:

    train_tokens_per_s_vs_trl_default     nega tokens/s ÷ trl_default tokens/s
    train_tokens_per_s_vs_trl_precompute  nega tokens/s ÷ trl_precompute tokens/s
    train_peak_rss_vs_trl                 nega peak ÷ trl_default peak (lower is better)
    train_peak_rss_vs_trl_precompute      nega peak ÷ trl_precompute peak (lower is better)
    prefix_sharing_speedup                nega tokens/s ÷ nega_unshared tokens/s (extra)

    .venv/bin/python benchmarks/bench_train.py [--size 25m] [--reps 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import machine, write_result

RESULTS = Path(__file__).parent / "results"
ARMS = ["nega", "nega_unshared", "trl_default", "trl_precompute"]
LR = 1e-5
# Top-level ratios: (numerator arm, denominator arm, per-repetition field).
RATIOS = {
    "train_tokens_per_s_vs_trl_default": ("nega", "trl_default", "tokens_per_s"),
    "train_tokens_per_s_vs_trl_precompute": ("nega", "trl_precompute", "tokens_per_s"),
    "train_peak_rss_vs_trl": ("nega", "trl_default", "peak_bytes"),
    "train_peak_rss_vs_trl_precompute": ("nega", "trl_precompute", "peak_bytes"),
    "prefix_sharing_speedup": ("nega", "nega_unshared", "tokens_per_s"),
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


# --- set-up: model, tokenizer and data shared by every arm ------------------------------------------------


def build_setup(work: Path, size: str, args) -> dict:
    """Save a toy tokenizer + randomly initialised model of `size` (or resolve the real `--model`), and
    the step data, under `work`."""
    rng = random.Random(0)
    if args.model:
        from transformers import AutoConfig, AutoTokenizer

        from nega.models import resolve_model

        model_dir = resolve_model(args.model)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        hidden, layers = config.hidden_size, config.num_hidden_layers
        n_params = config.vocab_size * hidden + layers * (
            4 * hidden * hidden + 3 * hidden * config.intermediate_size
        )
        # Words that are one token each with their leading space, so texts have exact token counts.
        words = sorted(
            {
                tokenizer.decode([i]).strip()
                for i in range(1000, 20000)
                if tokenizer.decode([i]).startswith(" ") and tokenizer.decode([i]).strip().isalpha()
            }
        )
        words = [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1][
            :400
        ]
    else:
        from nega.toy.model import build_model, build_tokenizer, save_model

        # 200 five-letter words, each frequent enough to become one token of a 1024-token vocabulary.
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5)) for _ in range(200)]
        corpus = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(400)]
        tokenizer = build_tokenizer(corpus, vocab_size=1024)
        model = build_model(tokenizer, size=size, seed=0, max_positions=2048)
        model_dir = save_model(model, tokenizer, work / "model")
        n_params = sum(p.numel() for p in model.parameters())

    def text(n_tokens: int) -> str:
        for _ in range(100):
            candidate = " " + " ".join(rng.choice(words) for _ in range(n_tokens))
            if len(tokenizer(candidate, add_special_tokens=False)["input_ids"]) == n_tokens:
                return candidate
        raise RuntimeError("could not build a text of an exact token count; the toy vocabulary changed")

    total_prompts = args.prompts_per_step * (args.warmup + args.steps)
    prompts = [text(args.prompt_tokens) for _ in range(total_prompts)]
    self_samples = [[text(args.response_tokens) for _ in range(args.k)] for _ in prompts]
    negatives = [text(args.response_tokens) for _ in prompts]
    data = {"prompts": prompts, "self": self_samples, "negatives": negatives}
    (work / "data.json").write_text(json.dumps(data))
    return {"model_dir": str(model_dir), "parameters": n_params}


def dpo_pairs(data: dict) -> list[dict]:
    """The same responses as (chosen, rejected) pairs of the same prompts, as a TRL user would form them.

    A prompt's K + 1 responses (self-samples, then the negative) are paired in order: (s1, s2), (s3, s4),
    ..., with the negative last. When K + 1 is odd, prompts alternate between repeating the negative in
    one more pair and dropping their last self-sample, so every two prompts give exactly 2(K + 1)
    responses, as in nega's step.
    """
    pairs = []
    for index, (prompt, selfs, negative) in enumerate(
        zip(data["prompts"], data["self"], data["negatives"], strict=True)
    ):
        responses = [*selfs, negative]
        if len(responses) % 2:
            responses = [*responses, negative] if index % 2 == 0 else [*selfs[:-1], negative]
        pairs += [
            {"prompt": prompt, "chosen": responses[i], "rejected": responses[i + 1]}
            for i in range(0, len(responses), 2)
        ]
    return pairs


# --- workers: one arm, one repetition, in a fresh process -------------------------------------------------


def step_clock(device: str):
    """A Trainer callback recording the wall time at the end of every optimizer step."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                import torch

                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    return StepClock()


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass


def peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_nega(setup: dict, data: dict, args, out_dir: Path, prefix_sharing: bool) -> dict:
    from nega.align.d2o.data import D2OCollator, build_examples
    from nega.align.d2o.trainer import D2OTrainer
    from nega.config import validate_recipe
    from nega.logps import reference_logps, supports_packing
    from nega.models import load_policy
    from nega.training import training_arguments

    recipe = validate_recipe(
        {
            "name": "bench",
            "method": "d2o",
            "output_dir": str(out_dir),
            "model": {"name": setup["model_dir"], "max_length": 4096},
            "lora": LORA,
            "data": {"dataset": "unused"},
            "d2o": {"k": args.k},
            "train": {
                "batch_size": args.prompts_per_step,
                "prefix_sharing": prefix_sharing,
                "bf16": args.precision == "bf16",
                "gradient_checkpointing": args.checkpointing,
            },
        }
    )
    scored: list = []

    def score(pairs, eos):
        scored.extend(pairs)
        return reference_logps(setup["model_dir"], recipe.model, pairs, eos, batch_size=16)

    started = time.perf_counter()
    samples = [(selfs, [True] * len(selfs)) for selfs in data["self"]]
    examples = build_examples(data["prompts"], data["negatives"], samples, score)
    reference_seconds = time.perf_counter() - started
    started = time.perf_counter()
    model, tokenizer = load_policy(setup["model_dir"], recipe.model, recipe.lora, seed=0)
    load_seconds = time.perf_counter() - started  # reference_logps loads the same weights once too
    if args.device == "cuda":
        model = model.cuda()
    clock = step_clock(args.device)
    training = training_arguments(
        recipe.train,
        out_dir / "checkpoints",
        max_steps=args.warmup + args.steps,
        learning_rate=LR,
        save_strategy="no",
        logging_steps=1000,
        warmup_steps=0,
        lr_scheduler_type="constant",
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
    )
    collator = D2OCollator(tokenizer, "d2o", None, pack=prefix_sharing and supports_packing(model))
    trainer = D2OTrainer(
        model=model, args=training, train_dataset=examples, data_collator=collator, callbacks=[clock]
    )
    reset_peak_memory(args.device)
    baseline = current_rss()
    called = time.perf_counter()
    trainer.train()
    tokens = _response_tokens(tokenizer, [[*ex["self"], ex["rejected"]] for ex in examples])
    reference_tokens = _response_tokens(tokenizer, [[response for _, response in scored]])
    scoring_seconds = max(reference_seconds - load_seconds, 1e-9)
    return {
        "reference_seconds": reference_seconds,
        "reference_load_seconds": load_seconds,
        "reference_tokens": reference_tokens,
        "reference_tokens_per_s": reference_tokens / scoring_seconds,
        **_timings(clock, args, tokens, baseline, called),
    }


def run_trl(setup: dict, data: dict, args, out_dir: Path, arm: str) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from nega.config import LoraConfig
    from nega.models import load_base_model, load_tokenizer, lora_peft_config

    tokenizer = load_tokenizer(setup["model_dir"])
    model = load_base_model(setup["model_dir"])
    if args.device == "cuda":
        model = model.cuda()
    pairs = dpo_pairs(data)
    per_step = len(pairs) // (args.warmup + args.steps)
    config = DPOConfig(
        output_dir=str(out_dir / "trl"),
        per_device_train_batch_size=per_step,
        max_steps=args.warmup + args.steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=0.1,
        max_length=None,
        precompute_ref_log_probs=arm == "trl_precompute",
        bf16=args.precision == "bf16",
        gradient_checkpointing=args.checkpointing,
        save_strategy="no",
        logging_steps=1000,
        report_to=[],
        disable_tqdm=True,
        use_cpu=args.device == "cpu",
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
    )
    clock = step_clock(args.device)
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=lora_peft_config(LoraConfig(**LORA)),
        callbacks=[clock],
    )
    reset_peak_memory(args.device)
    baseline = current_rss()
    called = time.perf_counter()
    trainer.train()
    responses = [[p["chosen"], p["rejected"]] for p in pairs]
    result = _timings(clock, args, _response_tokens(tokenizer, responses), baseline, called)
    result["pairs_per_step"] = per_step
    return result


def _response_tokens(tokenizer, groups: list[list[str]]) -> int:
    """Response tokens (+ EOS each) over all steps."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for g in groups for r in g)


def _timings(clock, args, total_tokens: int, baseline_rss: int, called: float) -> dict:
    """Per-step times after warm-up, tokens/s and peak memory. `before_first_step_seconds` runs from the
    train() call to the end of the first step: start-up plus, for trl_precompute, its reference pass."""
    steps = args.warmup + args.steps
    if len(clock.marks) != steps:
        raise RuntimeError(f"expected {steps} optimizer steps, saw {len(clock.marks)}")
    measured = [b - a for a, b in itertools.pairwise(clock.marks[args.warmup - 1 :])]
    tokens_per_step = total_tokens / steps
    step_seconds = statistics.median(measured)
    peak = peak_memory(args.device)
    return {
        "step_seconds": measured,
        "median_step_seconds": step_seconds,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / step_seconds,
        "peak_bytes": peak,
        "peak_over_start_bytes": peak - baseline_rss if args.device == "cpu" else peak,
        "before_first_step_seconds": clock.marks[0] - called,
    }


def worker(args) -> None:
    work = Path(args.work)
    setup = json.loads((work / "setup.json").read_text())
    data = json.loads((work / "data.json").read_text())
    out_dir = Path(tempfile.mkdtemp(dir=work))
    if args.device == "cpu":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
    if args.worker in ("nega", "nega_unshared"):
        result = run_nega(setup, data, args, out_dir, prefix_sharing=args.worker == "nega")
    else:
        result = run_trl(setup, data, args, out_dir, args.worker)
    print("RESULT " + json.dumps(result), flush=True)


# --- driver -----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", default="25m", help="toy model size (nega.toy.model.SIZES)")
    parser.add_argument(
        "--model", default=None, help="a real model (e.g. smollm2-135m-instruct) instead of --size"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per repetition")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured optimizer steps first (>= 1)")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--k", type=int, default=8, help="self-samples per prompt (plus one negative)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per CPU worker: 1 keeps a shared machine's numbers steady; 0 for torch's default",
    )
    parser.add_argument(
        "--precision", choices=["bf16", "fp32"], default="bf16", help="bf16: DPOConfig's default"
    )
    parser.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gradient checkpointing in every arm (DPOConfig's default: on)",
    )
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--work", default=None, help="folder for the model and data (default: a temp dir)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if (args.k + 1) % 2 and args.prompts_per_step % 2:
        parser.error(
            "with an odd K + 1, --prompts-per-step must be even so TRL's pairs hold the same responses"
        )
    family = f"_{args.model.split('-')[0]}" if args.model else ""
    out = (
        Path(args.out)
        if args.out
        else RESULTS / f"bench_train{family}{'' if args.device == 'cpu' else '_cuda'}.json"
    )

    work = Path(args.work or tempfile.mkdtemp(prefix="nega-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = build_setup(work, args.size, args)
    (work / "setup.json").write_text(json.dumps(setup))

    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for rep in range(args.reps):
        order = args.arms if rep % 2 == 0 else list(reversed(args.arms))
        for arm in order:
            command = [sys.executable, __file__, "--worker", arm, "--work", str(work)]
            command += _forwarded(args)
            print(f"[rep {rep + 1}/{args.reps}] {arm} ...", flush=True)
            proc = subprocess.run(
                command, capture_output=True, text=True, env={**os.environ, "NEGA_QUIET": "1"}
            )
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
                raise SystemExit(f"{arm} failed (exit {proc.returncode})")
            result = json.loads(lines[-1][len("RESULT ") :])
            runs[arm].append(result)
            print(
                f"    {result['tokens_per_s']:.0f} response tokens/s, "
                f"step {result['median_step_seconds']:.3f} s, peak {result['peak_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )

    summary = {}
    for arm, results in runs.items():
        summary[arm] = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "median_step_seconds": statistics.median(r["median_step_seconds"] for r in results),
            "peak_bytes": statistics.median(r["peak_bytes"] for r in results),
            "peak_over_start_bytes": statistics.median(r["peak_over_start_bytes"] for r in results),
            "tokens_per_step": results[0]["tokens_per_step"],
            "per_rep": results,
        }
    report = {"benchmark": "bench_train", "arms": summary}
    # Each ratio is taken within a repetition (its arms ran back to back, under the same load) and the
    # median of those per-repetition ratios is reported, with the list beside it for the spread rule.
    for key, (numerator, denominator, field) in RATIOS.items():
        if {numerator, denominator} <= runs.keys():
            per_rep = [
                top[field] / bottom[field]
                for top, bottom in zip(runs[numerator], runs[denominator], strict=True)
            ]
            report[key] = statistics.median(per_rep)
            report["per_rep_ratios"] = {**report.get("per_rep_ratios", {}), key: per_rep}
    if "nega" in summary:
        summary["nega"]["reference_tokens_per_s"] = statistics.median(
            r["reference_tokens_per_s"] for r in runs["nega"]
        )
        report["reflogps_tokens_per_s_vs_train"] = (
            summary["nega"]["reference_tokens_per_s"] / summary["nega"]["tokens_per_s"]
        )
    report["targets"] = {
        "train_tokens_per_s_vs_trl_default": ">= 1.3",
        "train_tokens_per_s_vs_trl_precompute": ">= 1.0",
        "train_peak_rss_vs_trl": "<= 1.0",
        "train_peak_rss_vs_trl_precompute": "<= 1.0",
        "reflogps_tokens_per_s_vs_train": ">= 2.5",
    }
    report["config"] = {
        **{k: v for k, v in vars(args).items() if k not in ("worker", "out", "work")},
        "parameters": setup["parameters"],
        "lora": LORA,
        "lr": LR,
    }
    report["machine"] = machine(args.device, ("torch", "transformers", "trl"))
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_result(out, report)
    for key in [*RATIOS, "reflogps_tokens_per_s_vs_train"]:
        if key in report:
            per_rep = report.get("per_rep_ratios", {}).get(key, [])
            shown = f" (per repetition {', '.join(f'{v:.3f}' for v in per_rep)})" if per_rep else ""
            print(f"{key}: {report[key]:.3f}{shown}")
    print(f"wrote {out}")


def _forwarded(args) -> list[str]:
    flags = ["--model", args.model] if args.model else []
    for name in (
        "device",
        "steps",
        "warmup",
        "prompts_per_step",
        "k",
        "prompt_tokens",
        "response_tokens",
        "threads",
    ):
        flags += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    flags += [
        "--precision",
        args.precision,
        "--checkpointing" if args.checkpointing else "--no-checkpointing",
    ]
    return flags


if __name__ == "__main__":
    main()
