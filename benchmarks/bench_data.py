"""Preparing D²O's training rows from a large local file: nega's old hand-written reader against the
data layer on `datasets`.

The data is one generated unpaired preference JSONL (TRL's `{prompt, completion, label}`), ROWS rows
with a prompt and a completion of about WORDS words each, every NEGATIVE_EVERY-th row labelled false
(a negative). It is written once into the work folder and reused. Each arm runs in a fresh process,
timed around the preparation alone (its imports done first), its peak resident set read from
/proc/self/status (VmHWM):

    old         nega's reader before it used `datasets` (`old_loader` below, reproduced from
                nega/data.py of that time): the whole file parsed into a list of dicts, then each row
                converted by D²O's converter into a second list
    new         `nega.align.d2o.data.negatives_table`, as a D²O run calls it: the file read as a stream,
                converted batch by batch into an Arrow file keyed by the data (cold: no such file yet)
    new_cached  the same call again: the converted Arrow file is reopened, memory-mapped

Both arms return the same rows (checked: their number, and the first and last rows). Ratios:
`data_peak_rss_vs_old` (new's peak ÷ old's; target ≤ 0.3) and `data_cached_vs_first` (new_cached's
seconds ÷ new's; target ≤ 0.1). Writes benchmarks/results/bench_data.json.

    .venv/bin/python benchmarks/bench_data.py [--rows 1000000] [--work benchmarks/work/bench_data]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from harness import machine, write_result

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RECIPE = HERE.parent / "examples" / "d2o-own-data.yaml"

ROWS = 1_000_000  # rows of the generated file
WORDS = 100  # words of each prompt and each completion, about
NEGATIVE_EVERY = 2  # every 2nd row is labelled false: 500,000 negatives at ROWS
SEED = 0


def generate(path: Path, rows: int) -> Path:
    """The unpaired preference file, written once (to a temporary name, renamed when whole)."""
    if path.is_file():
        return path
    rng = random.Random(SEED)
    vocabulary = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)
    ]
    # Texts drawn from a pool, each made unique by its row number: generation stays fast at 1M rows.
    pool = [" ".join(rng.choices(vocabulary, k=WORDS - 2)) for _ in range(4096)]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for i in range(rows):
            row = {
                "prompt": f"question {i}: {pool[rng.randrange(4096)]}",
                "completion": f"answer {i}: {pool[rng.randrange(4096)]}",
                "label": i % NEGATIVE_EVERY != 0,
            }
            f.write(json.dumps(row) + "\n")
    partial.rename(path)
    return path


def old_loader(path: Path, convert, *, source: str, on_bad_row: str = "error") -> list[dict]:
    """D²O's rows as nega made them before its data layer used `datasets`: `read_table`'s JSONL reader
    (every row parsed into one list of dicts), then `convert_rows` (a second list, bad rows collected),
    then the rows with a negative kept."""
    from nega.data import DataError

    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: row {number} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {number} is a {type(row).__name__}, expected an object")
            rows.append(row)
    if not rows:
        raise DataError(f"{source}: no rows")
    good, bad = [], []
    for number, row in enumerate(rows, start=1):
        try:
            good.append(convert(row))
        except KeyError as exc:
            bad.append(f"row {number}: missing field {exc.args[0]!r} (present: {', '.join(map(str, row))})")
        except (ValueError, TypeError) as exc:
            bad.append(f"row {number}: {exc}")
    if bad and on_bad_row == "error":
        raise DataError(f"{source}: {len(bad)} bad row(s) of {len(rows)}: {bad[:10]}")
    return [r for r in good if r is not None]


def peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_arm(arm: str, data: Path, cache: Path) -> dict:
    """One arm in this process: imports first, then the timed preparation; its rows' fingerprint."""
    import datasets  # noqa: F401  (both arms pay the same imports before the clock starts)

    from nega.align.d2o.data import from_unpaired_preference, negatives_table
    from nega.config import load_recipe

    recipe = load_recipe(str(RECIPE), [f"data.path={data}", "data.format=unpaired_preference"])
    imported = peak_bytes()
    started = time.perf_counter()
    if arm == "old":
        rows = old_loader(data, from_unpaired_preference, source=str(data))
    else:
        rows, _, _ = negatives_table(recipe, cache_dir=cache)
    seconds = time.perf_counter() - started
    first, last = rows[0], rows[len(rows) - 1]
    return {
        "seconds": seconds,
        "peak_bytes": peak_bytes(),
        "peak_bytes_after_imports": imported,
        "rows": len(rows),
        "first": [first["prompt"], first["rejected"]],
        "last": [last["prompt"], last["rejected"]],
    }


def in_subprocess(arm: str, data: Path, cache: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NEGA_QUIET": "1", "HF_DATASETS_CACHE": str(cache / "hf")}
    command = [sys.executable, __file__, "--arm", arm, "--data", str(data), "--cache", str(cache)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    print(
        f"{arm}: {result['seconds']:.1f} s, peak {result['peak_bytes'] / 2**20:,.0f} MiB, {result['rows']} rows",
        file=sys.stderr,
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--work", type=Path, default=HERE / "work" / "bench_data")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_data.json")
    parser.add_argument("--arm", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args.arm, args.data, args.cache)))
        return

    data = generate(args.work / f"unpaired-{args.rows}.jsonl", args.rows)
    cache = args.work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(".negatives-*"):
        stale.unlink()  # the first new run converts from scratch
    described = machine("cpu", packages=("torch", "datasets", "pyarrow", "trl"))
    arms = {
        "old": in_subprocess("old", data, cache),
        "new": in_subprocess("new", data, cache),
        "new_cached": in_subprocess("new", data, cache),
    }
    views = {name: (arm["rows"], arm["first"], arm["last"]) for name, arm in arms.items()}
    if len({json.dumps(v) for v in views.values()}) != 1:
        raise SystemExit(f"the arms prepared different rows: { {k: v[0] for k, v in views.items()} }")
    for arm in arms.values():
        del arm["first"], arm["last"]
    result = {
        "benchmark": "bench_data",
        "data_peak_rss_vs_old": arms["new"]["peak_bytes"] / arms["old"]["peak_bytes"],
        "data_cached_vs_first": arms["new_cached"]["seconds"] / arms["new"]["seconds"],
        "targets": {"data_peak_rss_vs_old": "<= 0.3", "data_cached_vs_first": "<= 0.1"},
        "arms": arms,
        "config": {
            "rows": args.rows,
            "words": WORDS,
            "negative_every": NEGATIVE_EVERY,
            "negatives": arms["old"]["rows"],
            "file_bytes": data.stat().st_size,
            "converted_bytes": sum(p.stat().st_size for p in cache.glob(".negatives-*.arrow")),
        },
        "machine": described,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(
        f"data_peak_rss_vs_old {result['data_peak_rss_vs_old']:.3f}, "
        f"data_cached_vs_first {result['data_cached_vs_first']:.3f}",
        file=sys.stderr,
    )
    write_result(args.out, result)


if __name__ == "__main__":
    main()
