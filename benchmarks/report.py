"""Write benchmarks/README.md from the JSON results under benchmarks/results/.

`make bench` runs the speed benchmarks and then this script; it can also run on its own:

    .venv/bin/python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"

# Top-level ratios each speed benchmark reports, with the target it is held to.
RATIOS = {
    "bench_sampling": {
        "sampling_vllm_vs_generate": ">= 4.0",
        "sampling_hf_vs_generate": ">= 1.0",
        "sampling_vllm_lora_vs_generate": "",
        "sampling_vllm_vs_generate_one_prompt": "",
    },
    "bench_train": {
        "train_tokens_per_s_vs_trl_default": ">= 1.3",
        "train_tokens_per_s_vs_trl_precompute": ">= 1.0",
        "train_peak_rss_vs_trl": "<= 1.0",
        "prefix_sharing_speedup": "",
    },
    "bench_rollouts": {
        "rollouts_prefix_cache_speedup": "> 1.0",
    },
}

INTRO = """# Benchmarks

Speed and memory of nega's sampling and training beside what a user would otherwise run, each measured
side by side in one run (medians over repetitions; the JSON files in `results/` hold every repetition,
the exact settings and the machine). Regenerate with `make bench` (speed, minutes) or
`make bench-quality` (method quality on the toy worlds, hours on a CPU); this page is rewritten from
the JSON each time.

| script | compares |
|---|---|
| `bench_sampling.py` | nega's vLLM backend, nega's HF backend, a plain `transformers.generate` loop |
| `bench_train.py` | one D²O step (K = 8 self-samples + 1 negative) vs TRL's `DPOTrainer` on the same response tokens |
| `bench_rollouts.py` | per-step RL rollouts with vLLM prefix caching on and off |
| `quality_*.py` | each method beside its baselines on its toy world (see the project README) |

Each script takes `--device cuda` and `--size` for a larger model; GPU results go to `*_cuda.json`.
`bench_sampling.py --dtype bfloat16` samples in bfloat16 in every way (`*_bf16.json`).
"""


def met(value: float, target: str) -> str:
    if not target:
        return ""
    op, bound = target.split()
    ok = {">=": value >= float(bound), "<=": value <= float(bound), ">": value > float(bound)}[op]
    return "met" if ok else "**not met**"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def ratio_table(name: str, data: dict) -> list[str]:
    lines = ["| ratio | value | target | |", "|---|---|---|---|"]
    for key, target in RATIOS.get(name, {}).items():
        if key in data:
            lines.append(f"| `{key}` | {data[key]:.2f} | {target or '—'} | {met(data[key], target)} |")
    return lines


def arm_table(arms: dict) -> list[str]:
    """One row per arm: its numeric median fields (per-rep lists left to the JSON)."""
    columns: list[str] = []
    for values in arms.values():
        for key, value in values.items():
            if isinstance(value, int | float) and key not in columns:
                columns.append(key)
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for arm, values in arms.items():
        cells = []
        for key in columns:
            value = values.get(key, "")
            if key.endswith("bytes") and isinstance(value, int | float):
                value = f"{value / 2**20:,.0f} MiB"
            cells.append(fmt(value))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def arms_of(data: dict) -> dict | None:
    for key in ("arms", "ways", "backends", "modes", "variants"):
        if isinstance(data.get(key), dict):
            return data[key]
    return None


def section(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    name = path.stem.removesuffix("_bf16").removesuffix("_cuda")
    machine = data.get("machine", {})
    where = str(machine.get("device", "?"))
    if machine.get("cpus"):
        where += f", {machine['cpus']} CPUs"
    if data.get("config", {}).get("dtype"):
        where += f", {data['config']['dtype']}"
    when = f"{data['date']}, " if data.get("date") else ""
    lines = [f"## {path.stem}", "", f"`results/{path.name}` — {when}{where}", ""]
    lines += ratio_table(name, data)
    arms = arms_of(data)
    if arms:
        lines += ["", *arm_table(arms)]
    if isinstance(data.get("profile"), dict):
        lines += ["", "Profile: " + ", ".join(f"{k} {fmt(v)}" for k, v in data["profile"].items())]
    if data.get("notes"):
        lines += ["", str(data["notes"])]
    return [*lines, ""]


def main() -> None:
    lines = [INTRO]
    files = sorted(RESULTS.glob("bench_*.json"))
    if not files:
        lines.append("No speed results yet: run `make bench`.\n")
    for path in files:
        lines += section(path)
    out = HERE / "README.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
