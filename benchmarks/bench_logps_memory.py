"""Memory and time of nega's per-token log-probs under gradient against the plain float32 log-softmax.

Two ways compute the same thing, log p(target) at every position of a [N, V] logits tensor, and its
gradient (forward + backward of their sum):

    nega     nega.logps.token_logps: chunked log-softmax of the targets, recomputed in the backward
    naive    torch.log_softmax(logits.float(), -1).gather(-1, targets)

The logits are a leaf tensor that requires grad (what a model's last layer hands the loss), with
SmolLM2's vocabulary. Each measurement runs in a fresh process: the logits are made, the resident-set
high-water mark (VmHWM) is reset to the current RSS, and one forward + backward runs. Its peak memory
is counted ABOVE that baseline, which already holds the logits (N·V·4 bytes in float32): the ratio
compares what each way adds on top of its input. Repetitions interleave the ways (nega, naive, nega,
naive, ...) so load on a shared machine hits both alike. A way whose estimated peak would pass
MEMORY_LIMIT is skipped at that size, and the JSON says so.

Targets, per size, on the per-repetition ratios nega ÷ naive (met or not met when every repetition's
ratio lies on one side of the bound, undecided when they straddle it, as in `report.met`):

    peak_memory_vs_naive  <= 0.5
    time_vs_naive         <= 1.15
    gradients             nega's equal the naive float32 log-softmax's within 1e-5 (float32 logits;
                          checked row block by row block, so also where the naive way does not fit)

    .venv/bin/python benchmarks/bench_logps_memory.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import report
from harness import invocation, machine, write_result
from harness import summarize as summarize_invocations

# Decided before the run.
SIZES = [2048, 8192, 32768]
VOCAB = 49152  # SmolLM2's
DTYPES = ["float32", "bfloat16"]
REPS = 3
WAYS = ["nega", "naive"]
THREADS = 1  # as bench_train: with two threads per worker a shared 2-core machine measures the neighbours
MEMORY_LIMIT = 18 * 10**9  # bytes the whole measuring process may reach, logits included
TARGETS = {"peak_memory_vs_naive": "<= 0.5", "time_vs_naive": "<= 1.15"}
GRAD_TOLERANCE = {"float32": 1e-5, "bfloat16": None}  # bfloat16: reported, no target
SEED = 0
RESULT = Path(__file__).parent / "results" / "logps_memory.json"


def naive_peak(n: int, dtype: str) -> int:
    """Bytes the naive way's process reaches, logits included: it keeps a float32 log-softmax and makes
    two more float32 [N, V] tensors in its backward (and, for half-precision logits, a float32 copy of
    them and a gradient in their dtype)."""
    logits = n * VOCAB * (4 if dtype == "float32" else 2)
    return logits + 3 * n * VOCAB * 4 + (0 if dtype == "float32" else n * VOCAB * 4 + logits)


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def make_logits(n: int, dtype: str):
    """Seeded logits [n, VOCAB] (std 3, like a trained model's) and targets, filled block by block so no
    float32 copy of half-precision logits ever exists."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    logits = torch.empty(n, VOCAB, dtype=getattr(torch, dtype))
    for start in range(0, n, 1024):
        block = torch.randn(min(1024, n - start), VOCAB, generator=generator).mul_(3.0)
        logits[start : start + block.size(0)] = block
    targets = torch.randint(0, VOCAB, (n,), generator=generator)
    return logits.requires_grad_(True), targets


def naive_logps(logits, targets):
    import torch

    return torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def measure(way: str, n: int, dtype: str, check: bool) -> dict:
    """One forward + backward in this (fresh) process: seconds, peak bytes above the baseline that holds
    the logits, and with `check` nega's largest gradient difference from the naive way, row block by
    row block (the naive way's rows are independent, so a block's gradient is its full-size one)."""
    import torch

    from nega.logps import token_logps

    torch.set_num_threads(THREADS)
    logits, targets = make_logits(n, dtype)
    fn = token_logps if way == "nega" else naive_logps
    baseline = vm_rss()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS (Linux)
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    fn(logits, targets).sum().backward()
    seconds = time.perf_counter() - start
    out = {
        "seconds": seconds,
        "peak_above_baseline_bytes": vm_hwm() - baseline,
        "baseline_bytes": baseline,
        "peak_reset": reset,
    }
    if check:
        diff = 0.0
        for start in range(0, n, 1024):
            block = logits.detach()[start : start + 1024].requires_grad_(True)
            naive_logps(block, targets[start : start + 1024]).sum().backward()
            mine = logits.grad[start : start + 1024].float()
            diff = max(diff, (mine - block.grad.float()).abs().max().item())
        out["grad_max_abs_diff"] = diff
    return out


def child(way: str, n: int, dtype: str, check: bool) -> dict:
    command = [sys.executable, __file__, "--child", way, str(n), dtype] + (["--check"] if check else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{way} at {n} positions ({dtype}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def verdict(values: list[float], target: str) -> str:
    """met / not met / undecided: `report.met`'s rule on the per-repetition ratios' spread."""
    text = report.met(statistics.median(values), target, (min(values), max(values)))
    return "met" if text == "met" else "not met" if "not met" in text else "undecided"


def summarize(reps: list[dict], size: int, dtype: str, skipped: str | None) -> dict:
    """Per-repetition ratios nega ÷ naive of peak memory and time, their median, spread and verdicts."""
    nega = [r["nega"] for r in reps]
    out = {"nega": way_summary(nega)}
    if skipped:
        out["naive"] = {"skipped": skipped}
        return out
    naive = [r["naive"] for r in reps]
    out["naive"] = way_summary(naive)
    for key, field in (("peak_memory_vs_naive", "peak_above_baseline_bytes"), ("time_vs_naive", "seconds")):
        ratios = [a[field] / b[field] for a, b in zip(nega, naive, strict=True)]
        out[key] = {
            "median": statistics.median(ratios),
            "per_rep": ratios,
            "spread": [min(ratios), max(ratios)],
            "target": TARGETS[key],
            "verdict": verdict(ratios, TARGETS[key]),
        }
    return out


def way_summary(runs: list[dict]) -> dict:
    return {
        "median_seconds": statistics.median(r["seconds"] for r in runs),
        "median_peak_above_baseline_bytes": statistics.median(r["peak_above_baseline_bytes"] for r in runs),
        "reps": runs,
    }


def combined(verdicts: list[str]) -> str:
    if verdicts and all(v == "met" for v in verdicts):
        return "met"
    return "not met" if "not met" in verdicts else "undecided"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, metavar=("WAY", "N", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    if args.child:
        way, n, dtype = args.child
        print(json.dumps(measure(way, int(n), dtype, args.check)))
        return

    started = time.time()
    before = summarize_invocations([invocation(__file__)])
    runs = {dtype: {size: [] for size in SIZES} for dtype in DTYPES}
    skipped = {
        (dtype, size): f"naive would need ~{naive_peak(size, dtype) / 1e9:.1f} GB "
        f"(limit {MEMORY_LIMIT / 1e9:.0f} GB)"
        for dtype in DTYPES
        for size in SIZES
        if naive_peak(size, dtype) > MEMORY_LIMIT
    }
    for rep in range(REPS):
        for size in SIZES:
            for dtype in DTYPES:
                results = {}
                for way in WAYS:
                    if way == "naive" and (dtype, size) in skipped:
                        continue
                    results[way] = child(way, size, dtype, check=(way == "nega" and rep == 0))
                    print(f"rep {rep} {size} {dtype} {way}: {results[way]}", file=sys.stderr)
                runs[dtype][size].append(results)

    result: dict = {"peak_memory_vs_naive": {}, "time_vs_naive": {}, "gradients": {}, "ways": {}}
    verdicts: dict[str, list[str]] = {key: [] for key in TARGETS}
    for dtype in DTYPES:
        for key in TARGETS:
            result[key][dtype] = {}
        for size in SIZES:
            summary = summarize(runs[dtype][size], size, dtype, skipped.get((dtype, size)))
            result["ways"][f"{dtype}_{size}"] = {"nega": summary["nega"], "naive": summary["naive"]}
            for key in TARGETS:
                if key in summary:
                    result[key][dtype][str(size)] = summary[key]
                    verdicts[key].append(summary[key]["verdict"])
                else:
                    result[key][dtype][str(size)] = {"skipped": skipped[(dtype, size)]}
            if (dtype, size) in skipped:
                # Beside the naive way's estimated peak above its logits (no verdict: not measured).
                above = naive_peak(size, dtype) - size * VOCAB * (4 if dtype == "float32" else 2)
                mine = summary["nega"]["median_peak_above_baseline_bytes"]
                result["peak_memory_vs_naive"][dtype][str(size)]["vs_naive_estimate"] = mine / above
            diff = runs[dtype][size][0]["nega"]["grad_max_abs_diff"]
            tolerance = GRAD_TOLERANCE[dtype]
            result["gradients"][f"{dtype}_{size}"] = {
                "max_abs_diff": diff,
                "tolerance": tolerance,
                "verdict": ("met" if diff <= tolerance else "not met") if tolerance is not None else "",
            }
    for key in TARGETS:
        worst = max(
            entry["median"] for sizes in result[key].values() for entry in sizes.values() if "median" in entry
        )
        result[key]["overall"] = {
            "worst_median": worst,
            "target": TARGETS[key],
            "verdict": combined(verdicts[key]),
            "over": "every size and dtype at which the naive way ran",
        }
    grads = [g["verdict"] for g in result["gradients"].values() if g["verdict"]]
    result["gradients"]["overall"] = {"tolerance": 1e-5, "verdict": combined(grads), "over": "float32 logits"}
    measured = ", ".join(f"{d} {s}" for d in DTYPES for s in SIZES if (d, s) not in skipped)
    memory, speed = (result[key]["overall"]["verdict"] for key in TARGETS)
    result["targets"] = {
        f"peak_memory_vs_naive <= 0.5 at every size the naive way fits ({measured})": memory,
        f"time_vs_naive <= 1.15 at every size the naive way fits ({measured})": speed,
        "gradients equal the naive way's within 1e-5 at every size (float32)": combined(grads),
    }
    result["skipped"] = {f"{d}_{s}": why for (d, s), why in skipped.items()}
    result["memory_counted"] = (
        "peak resident set (VmHWM) above the baseline taken after the logits were made: the logits "
        "themselves (N x V x 4 bytes in float32, x 2 in bfloat16) are not counted for either way"
    )
    result["config"] = {
        "sizes": SIZES,
        "vocab": VOCAB,
        "dtypes": DTYPES,
        "reps": REPS,
        "threads": THREADS,
        "memory_limit_bytes": MEMORY_LIMIT,
        "chunk_bytes": __import__("nega.logps", fromlist=["CHUNK_BYTES"]).CHUNK_BYTES,
        "logits": "leaf tensor requiring grad, std 3, seeded; targets uniform",
    }
    result["machine"] = {**machine("cpu", packages=("torch",)), "node": platform.node()}
    result["date"] = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    result["seconds"] = round(time.time() - started, 1)
    result["provenance"] = {
        **before,
        "dirty": tree_dirty(),
        "command": [Path(sys.executable).name, *sys.argv],
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")
    print(json.dumps(result["targets"], indent=2))


def tree_dirty() -> bool | None:
    """Whether the working tree had uncommitted changes (anywhere, not only in nega/)."""
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain"], cwd=Path(__file__).parent, capture_output=True, text=True
        )
    except OSError:
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


if __name__ == "__main__":
    main()
