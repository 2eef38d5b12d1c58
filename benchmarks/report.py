"""Write the tables of benchmarks/README.md from the results under benchmarks/results/, and the project
README's summary of them.

`make bench` and `make bench-quality` run their benchmarks and then this script; it can also run on
its own:

    .venv/bin/python benchmarks/report.py

Each generated table sits between `<!-- nega:<name> -->` and `<!-- /nega:<name> -->`: in
benchmarks/README.md the speed tables (`speed`) and one block per quality benchmark (`quality_<method>`
for the toy worlds, `real_<method>` for the real model); in README.md the summary (`summary`). Only
those blocks are rewritten; the prose around them is kept.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
PROJECT_README = HERE.parent / "README.md"
BENCH_README = HERE / "README.md"

# Top-level ratios each speed benchmark reports: the target it is held to, and the two arms it divides
# with the per-repetition field they are measured by (for the run-to-run spread of the ratio).
RATIOS = {
    # The fractions divide by the decode ceiling measured in each repetition (`ceiling`: no arm of its
    # own, so their spread needs the result's per_rep_ratios). vLLM ÷ generate has no target on a CPU,
    # where even the ceiling is about 2x generate; on a GPU it should be >= 4 (gpu_check).
    "bench_sampling": {
        "sampling_vllm_vs_generate": ("", "vllm", "generate", "tokens_per_s"),
        "sampling_vllm_omp2_vs_generate": ("", "vllm_omp2", "generate", "tokens_per_s"),
        "sampling_hf_vs_generate": (">= 1.0", "hf", "generate", "tokens_per_s"),
        "sampling_vllm_lora_vs_generate": ("", "vllm_lora", "generate", "tokens_per_s"),
        "sampling_vllm_vs_generate_one_prompt": ("", "vllm", "generate_1", "tokens_per_s"),
        "sampling_vllm_merged_vs_lora": ("", "vllm_merged", "vllm_lora", "tokens_per_s"),
        "sampling_vllm_fraction_of_ceiling": (">= 0.8", "vllm", "ceiling", "tokens_per_s"),
        "sampling_vllm_omp2_fraction_of_ceiling": (">= 0.8", "vllm_omp2", "ceiling", "tokens_per_s"),
        "sampling_hf_fraction_of_ceiling": (">= 0.7", "hf", "ceiling", "tokens_per_s"),
        "sampling_generate_fraction_of_ceiling": ("", "generate", "ceiling", "tokens_per_s"),
    },
    # One D²O run's sampling and evaluation, the engine kept for the run (new) against an engine per need
    # (old): wall seconds per repetition, and engine starts (benchmarks/bench_engine.py).
    "bench_engine": {
        "eval_wall_new_vs_old": ("<= 0.6", "new", "old", "seconds"),
        "engine_starts_per_run": ("<= 1.0", "new", "new", "engine_starts"),
    },
    "bench_train": {
        "train_tokens_per_s_vs_trl_default": (">= 1.3", "nega", "trl_default", "tokens_per_s"),
        "train_tokens_per_s_vs_trl_precompute": (">= 1.0", "nega", "trl_precompute", "tokens_per_s"),
        "train_peak_rss_vs_trl": ("<= 1.0", "nega", "trl_default", "peak_bytes"),
        "train_peak_rss_vs_trl_precompute": ("<= 1.0", "nega", "trl_precompute", "peak_bytes"),
        "prefix_sharing_speedup": ("", "nega", "nega_unshared", "tokens_per_s"),
    },
    "bench_rollouts": {
        "rollouts_prefix_cache_speedup": ("> 1.0", "on", "off", "rollouts_per_s"),
    },
    "bench_data": {
        "data_peak_rss_vs_old": ("<= 0.3", "new", "old", "peak_bytes"),
        "data_cached_vs_first": ("<= 0.1", "new_cached", "new", "seconds"),
    },
}


def rep_values(arm: dict, field: str) -> list[float]:
    """An arm's per-repetition values of `field`: a list under the field, or one per entry of its reps."""
    if isinstance(arm.get(field), list):
        return [float(v) for v in arm[field]]
    for key in ("reps", "per_rep"):
        if isinstance(arm.get(key), list):
            return [float(rep[field]) for rep in arm[key] if field in rep]
    return []


def spread(data: dict, numerator: str, denominator: str, field: str) -> tuple[float, float] | None:
    """The lowest and highest the ratio numerator ÷ denominator could be from their repetitions. A result
    that records the ratio inside each repetition (`per_rep_ratios`, the arms run back to back) gives
    their range; otherwise the worst numerator over the best denominator, and the other way round. None
    without repetitions."""
    for key, (_, top_arm, bottom_arm, _field) in RATIOS.get(data.get("benchmark", ""), {}).items():
        per_rep = data.get("per_rep_ratios", {}).get(key)
        if per_rep and (top_arm, bottom_arm, _field) == (numerator, denominator, field):
            return min(per_rep), max(per_rep)
    arms = arms_of(data) or {}
    top = rep_values(arms.get(numerator, {}), field)
    bottom = rep_values(arms.get(denominator, {}), field)
    if not top or not bottom or min(bottom) <= 0:
        return None
    return min(top) / max(bottom), max(top) / min(bottom)


def met(value: float, target: str, span: tuple[float, float] | None = None) -> str:
    """Whether `value` meets `target` ("OP BOUND"). With the run-to-run `span` of the ratio, "met" and
    "not met" need the whole span on one side of the bound; a span across it is undecided."""
    if not target:
        return ""
    op, bound = target.split()

    def ok(x: float) -> bool:
        return {">=": x >= float(bound), "<=": x <= float(bound), ">": x > float(bound)}[op]

    if span is None:
        return ("met" if ok(value) else "**not met**") + " (median only: no repetitions recorded)"
    if ok(span[0]) and ok(span[1]):
        return "met"
    if not ok(span[0]) and not ok(span[1]):
        return "**not met**"
    return "**undecided**: the spread crosses the target"


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def ratio_table(name: str, data: dict) -> list[str]:
    """Each ratio with its run-to-run spread (worst to best repetition pairing) and its target."""
    rows = []
    for key, (target, numerator, denominator, field) in RATIOS.get(name, {}).items():
        if key in data:
            span = spread(data, numerator, denominator, field)
            shown = f"{span[0]:.2f}–{span[1]:.2f}" if span else "—"
            verdict = met(data[key], target, span)
            if "fraction_of_ceiling" in key and max(span or (data[key],)) > 1:
                # No way samples faster than one batched forward step per token: the ceiling is wrong.
                verdict = "**invalid**: a fraction above 1 means the ceiling was measured wrong"
            rows.append(f"| `{key}` | {data[key]:.2f} | {shown} | {target or '—'} | {verdict} |")
    return ["| ratio | value | spread | target | |", "|---|---|---|---|---|", *rows] if rows else []


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
    # The benchmark a file holds, not its name: bench_sampling_smollm2.json is bench_sampling's, and the
    # spread rule applies to it as to the toy model's.
    name = data.get("benchmark") or path.stem.removesuffix("_bf16").removesuffix("_cuda")
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
        lines += [*([""] if lines[-1] else []), *arm_table(arms)]
    if isinstance(data.get("profile"), dict):
        lines += ["", "Profile: " + ", ".join(f"{k} {fmt(v)}" for k, v in data["profile"].items())]
    if data.get("notes"):
        lines += ["", str(data["notes"])]
    return [*lines, "", provenance_line(name, data), ""]


def logps_memory_section(data: dict) -> list[str]:
    """bench_logps_memory: per dtype and size, each way's peak above its logits and time, the ratios
    nega ÷ naive with their per-repetition spread and verdict, and the largest gradient difference."""
    machine = data.get("machine", {})
    lines = [
        "## logps_memory",
        "",
        f"`results/logps_memory.json` — {data.get('date', '?')}, {machine.get('device', '?')}, "
        f"{machine.get('cpus', '?')} CPUs, {data['config']['threads']} thread(s), vocabulary "
        f"{data['config']['vocab']:,}; memory is the peak above the logits' own",
        "",
        "| dtype | positions | nega peak | naive peak | memory ratio (spread) | | nega s | naive s "
        "| time ratio (spread) | | gradient max diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    for dtype, sizes in data["peak_memory_vs_naive"].items():
        if dtype == "overall":
            continue
        for size in sizes:
            ways = data["ways"][f"{dtype}_{size}"]
            nega, naive = ways["nega"], ways["naive"]
            cells = [dtype, f"{int(size):,}", mib(nega["median_peak_above_baseline_bytes"])]
            if "skipped" in naive:
                cells += ["skipped", naive["skipped"], "", fmt(nega["median_seconds"]), "—", "—", ""]
            else:
                cells.append(mib(naive["median_peak_above_baseline_bytes"]))
                for key in ("peak_memory_vs_naive", "time_vs_naive"):
                    entry = data[key][dtype][size]
                    if key == "time_vs_naive":
                        cells += [fmt(nega["median_seconds"]), fmt(naive["median_seconds"])]
                    low, high = entry["spread"]
                    cells += [
                        f"{entry['median']:.2f} ({low:.2f}–{high:.2f}) {entry['target']}",
                        entry["verdict"],
                    ]
            cells.append(f"{data['gradients'][f'{dtype}_{size}']['max_abs_diff']:.1e}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets:", ""]
    lines += [f"- {statement}: {verdict}" for statement, verdict in data["targets"].items()]
    return [*lines, ""]


# The quality benchmarks' tables: per results file, its arms in order and its metrics with the better
# direction (↓ lower, ↑ higher, "" neither), then the extra lines a method reports.
QUALITY = {
    "quality_d2o": {
        "arms": ["sft", "ga", "dpo_self", "kto_neg", "d2o", "d2o_online", "d2o_filtered"],
        "metrics": {"harmful_rate": "↓", "helpful_rate": "↑", "informative_rate": "↑",
                    "degenerate_rate": "↓", "refusal_rate": ""},
    },
    "quality_stepneg": {
        "arms": ["start", "pi_sft", "sft_1x", "sft_2x", "sft_4x", "sft_8x", "rft", "outcome_dpo",
                 "stepneg_dpo", "stepneg_awr"],
        "metrics": {"accuracy": "↑", "all_steps_right": "↑", "carry_error_rate": "↓",
                    "operation_error_rate": "↓", "spurious_rate": "↓"},
    },
    "quality_qcrd": {
        "arms": ["start", "label_only", "step_by_step", "qcrd_no_disc", "qcrd", "qcrd_no_hinge"],
        "metrics": {"accuracy": "↑", "rationale_quality": "↑", "rationale_accuracy": "↑"},
    },
    "real_stepneg": {
        "arms": ["start", "pi_sft", "sft_1x", "sft_2x", "rft", "outcome_dpo", "stepneg_dpo", "stepneg_awr"],
        "metrics": {"accuracy": "↑", "all_steps_right": "↑", "carry_error_rate": "↓",
                    "operation_error_rate": "↓", "spurious_rate": "↓"},
    },
    "real_qcrd": {
        "arms": ["start", "label_only", "step_by_step", "qcrd_no_disc", "qcrd"],
        "metrics": {"accuracy": "↑"},
    },
}  # fmt: skip
# The real-model D²O benchmark's table: metrics with the better direction, each a rate with its interval.
REAL_D2O = {
    "arms": ["base", "ga", "dpo_self", "kto_neg", "sft_self", "d2o", "d2o_online"],
    "metrics": {"rm_harm": "↓", "advbench_compliance": "↓", "xstest_safe_compliance": "↑",
                "xstest_unsafe_refusal": "↑", "gsm8k_nll": "↓", "degenerate_rate": "↓", "truncated_rate": ""},
}  # fmt: skip


def mean_std(summary: dict) -> str:
    """mean ± std over seeds, and the 95% interval over every item when the summary has one."""
    one_seed = len(summary.get("per_seed", [])) == 1
    text = f"{summary['mean']:.3f}" if one_seed else f"{summary['mean']:.3f} ± {summary['std']:.3f}"
    if "ci95" in summary:
        low, high = summary["ci95"]
        text += f" [{low:.3f}, {high:.3f}]"
    return text


def real_d2o_block(data: dict) -> list[str]:
    """The README block of the real-model D²O benchmark: arms × test metrics (rates with their 95%
    interval and item count; NLL as mean over seeds), the chosen rates, and each target's verdict."""
    seeds = data["seeds"]
    arms = [a for a in REAL_D2O["arms"] if a in data["methods"]]
    # rm_harm only when a reward model judged the run (--harm-rm).
    metrics = [m for m in REAL_D2O["metrics"] if m in data["methods"][arms[0]]]
    head = [f"{m} {REAL_D2O['metrics'][m]}".rstrip() for m in metrics]
    lines = ["| arm | " + " | ".join(head) + " | learning rate |", "|---" * (len(metrics) + 2) + "|"]
    for arm in arms:
        entry = data["methods"][arm]
        cells = [mean_std(entry[m]) for m in metrics]
        lrs = ", ".join(f"{lr:g}" for lr in entry.get("chosen_lr", [])) or "—"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {lrs} |")
    first = data["methods"][arms[0]]
    counts = ", ".join(f"{m} n = {first[m]['n']}" for m in metrics if "n" in first.get(m, {}))
    lines += [
        "",
        f"Seeds: {', '.join(map(str, seeds))}. Items per rate: {counts}. Learning rate: {data['selection']}.",
        "",
    ]
    lines += ["Targets:", ""]
    for name, target in data["targets"].items():
        if "outcome" in target:
            lines += target_lines(name, target)
            continue
        value = target["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else json.dumps(value)
        base = f", base {target['base']:.3f}" if "base" in target else ""
        lines.append(f"- `{name}`: {shown}{base} (threshold {target['threshold']}) — {POINT_ONLY}")
    return [*lines, "", provenance_line("real_d2o", data)]


def quality_block(name: str, data: dict) -> list[str]:
    """The README block of one quality benchmark: arms × metrics (mean ± std over seeds) with each arm's
    chosen learning rate per seed, every target with its per-seed verdicts, and for each target not
    met the per-seed values of the arms it compares."""
    spec = QUALITY[name]
    seeds = data["seeds"]
    arms = [a for a in spec["arms"] if a in data["methods"]]
    metrics = [m for m in spec["metrics"] if all(m in data["methods"][a] for a in arms)]
    head = [f"{m} {spec['metrics'][m]}".rstrip() for m in metrics]
    lr_head = "learning rate, seeds " + ", ".join(map(str, seeds))
    lines = ["| arm | " + " | ".join(head) + f" | {lr_head} |", "|---" * (len(metrics) + 2) + "|"]
    for arm in arms:
        chosen = data.get("chosen_lr", {}).get(arm)
        lrs = ", ".join(f"{chosen[str(s)]:g}" for s in seeds) if chosen else "—"
        cells = [mean_std(data["methods"][arm][m]) for m in metrics]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {lrs} |")
    n = len(seeds)
    paired = any("outcome" in t for t in data.get("targets", {}).values())
    if paired:
        heading = (
            f"paired tests on the test items, pooled over {n} seeds"
            if n > 1
            else f"paired tests, seed {seeds[0]}"
        )
    else:
        heading = f"on the means over {n} seeds (and seed by seed)" if n > 1 else f"on seed {seeds[0]}"
    lines += ["", f"Targets, {heading}:", ""]
    for key, target in data.get("targets", {}).items():
        if "outcome" in target:
            lines += target_lines(key, target, seeds)
            continue
        measured = ", ".join(
            f"{arm} {value:.3f}" for arm, value in target["measured"].items() if value is not None
        )
        per_seed = ", ".join("yes" if ok else "no" for ok in target["per_seed"])
        holds = f"; point estimate holds on seeds: {per_seed}" if n > 1 else ""
        lines.append(
            f"- `{target['statement']}`: {measured} (threshold {target['threshold']:.3f}) — {POINT_ONLY}{holds}"
        )
    for extra in spec_lines(data):
        lines += ["", extra]
    # An older result without paired tests: the targets its point estimates missed.
    unmet = [t for t in data.get("targets", {}).values() if not t.get("met", outcome_of(t) == "met")]
    if unmet and n > 1:
        missed = "not met" if paired else "whose point estimate missed"
        lines += ["", f"Per seed, for the targets {missed}:", ""]
        lines += [
            "| metric | arm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|---" + "|---" * n + "|",
        ]
        shown = set()
        for target in unmet:
            metric = target["metric"]
            for arm in target.get("arms") or target["measured"]:
                if (metric, arm) in shown or arm not in data["methods"]:
                    continue
                shown.add((metric, arm))
                values = data["methods"][arm][metric]["per_seed"]
                lines.append(f"| {metric} | {arm} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return [*lines, "", provenance_line(name, data)]


POINT_ONLY = "point estimate only (no paired test)"
VERDICT = {"met": "met", "not met": "**not met**", "undecided": "undecided"}


def outcome_of(target: dict) -> str:
    """A target's outcome: its paired test's, or for an older result without one "point estimate"."""
    return target.get("outcome", "point estimate")


def test_text(target: dict) -> str:
    """The paired test behind a target: difference, 95% interval, p (and McNemar's discordant counts)."""
    low, high = target["ci95"]
    counts = f", b {target['b']} / c {target['c']}" if target["test"] == "mcnemar_exact" else ""
    name = "McNemar" if target["test"] == "mcnemar_exact" else "paired bootstrap"
    return f"{name}: {target['statistic']:+.3f} [{low:+.3f}, {high:+.3f}], p {target['p']:.3g}{counts}, n {target['n']}"


def target_lines(name: str, target: dict, seeds: list | None = None) -> list[str]:
    """One decided target: the arms' test means, the pooled test, each seed's difference, the outcome;
    a target made of several lists each part."""
    if "parts" in target:
        lines = [f"- `{name}`: every part below — {VERDICT[target['outcome']]}"]
        for statement, part in target["parts"].items():
            lines += ["  " + line for line in target_lines(statement, part, seeds)]
        return lines
    left, right = target["arms"]
    means = f"{left} {target['means']['left']:.3f}, {right} {target['means']['right']:.3f}"
    each = ""
    if len(target["per_seed"]) > 1:
        each = "; per seed " + ", ".join(f"{v['statistic']:+.3f}" for v in target["per_seed"].values())
    return [f"- `{target['statement']}`: {means}; {test_text(target)}{each} — {VERDICT[target['outcome']]}"]


def targets_note(targets: dict) -> str:
    """The summary's count of a results file's targets by outcome."""
    if not targets:
        return "—"
    outcomes = [outcome_of(t) for t in targets.values()]
    if all(o == "point estimate" for o in outcomes):
        return f"{len(outcomes)}, {POINT_ONLY}"
    counts = {o: outcomes.count(o) for o in ("met", "not met", "undecided")}
    unmet = [t["statement"] for t in targets.values() if outcome_of(t) == "not met"]
    note = ", ".join(f"{counts[o]} {o}" for o in counts)
    return note + (f" (not met: {'; '.join(f'`{u}`' for u in unmet)})" if unmet else "")


def changed_since(recorded: dict[str, str]) -> list[str]:
    """The files among {path under the repository: sha256} whose bytes differ today (or that are gone)."""
    import hashlib

    root = HERE.parent
    changed = []
    for path, digest in recorded.items():
        file = root / path
        if not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            changed.append(Path(path).name)
    return changed


def provenance_line(name: str, data: dict) -> str:
    """Where a result came from: commit, dirty flag, invocations, and whether its code changed since; and
    where the run departs from its script's declared design."""
    made = data.get("provenance")
    departs = ""
    if data.get("deviations"):
        departs = " **Departs from its declared design**: " + "; ".join(data["deviations"]) + "."
    if not made:
        return "Provenance: **none recorded** (no commit, command line or script hash)." + departs
    commit = (made.get("git_commit") or "no commit")[:10]
    if "invocations" in made:
        dirty = {True: "**dirty tree**", False: "clean tree", None: "tree state unknown"}[made.get("dirty")]
        runs = len(made["invocations"])
        text = f"Provenance: commit {commit}, {dirty}, {runs} invocation{'s' if runs != 1 else ''}"
        if not made.get("same_code_every_invocation", True):
            text += " (**not all on the same code**)"
        changed = changed_since(made.get("scripts_sha256", {}))
    else:
        dirty = "**dirty tree**" if made.get("nega_changed_since_commit") else "clean tree"
        text = f"Provenance: commit {commit}, {dirty}; command line not recorded"
        script = HERE / f"{name}.py"
        recorded = made.get("script_sha256")
        changed = (
            []
            if recorded and changed_since({str(script.relative_to(HERE.parent)): recorded}) == []
            else [script.name]
        )
    if made.get("nega_source_changed_during_run"):
        text += "; nega's source **changed during the run**"
    if changed:
        text += f"; **code changed since**: {', '.join(changed)}"
    return text + "." + departs


def spec_lines(data: dict) -> list[str]:
    """The extra lines under a quality table: the rollouts' first-pit precision and recall, which the
    per-step benchmarks (toy and real model) report."""
    if "first_pit_precision" in data:
        return [
            f"First pits found by rollouts that are the world's true first wrong step: precision "
            f"{mean_std(data['first_pit_precision'])}, recall {mean_std(data['first_pit_recall'])}."
        ]
    return []


def replace_block(text: str, name: str, block: list[str], where: str = "README.md") -> str:
    start, end = f"<!-- nega:{name} -->", f"<!-- /nega:{name} -->"
    if start not in text or end not in text:
        raise SystemExit(
            f"{where} has no {start} ... {end} block for {name}; add the two markers where it goes"
        )
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return before + start + "\n" + "\n".join(block) + "\n" + end + after


def write_quality(readme: Path = BENCH_README) -> list[str]:
    """Rewrite benchmarks/README.md's quality blocks from the results files that exist; their names."""
    text = readme.read_text()
    written = []
    for name, data in quality_results().items():
        block = real_d2o_block(data) if name == "real_d2o" else quality_block(name, data)
        text = replace_block(text, name, block, readme.name)
        written.append(name)
    readme.write_text(text)
    return written


def quality_results() -> dict[str, dict]:
    """{name: results} of the quality and real-model benchmarks that have a results file."""
    names = [*QUALITY, "real_d2o"]
    return {
        n: json.loads((RESULTS / f"{n}.json").read_text()) for n in names if (RESULTS / f"{n}.json").exists()
    }


METHOD_NAMES = {"d2o": "D²O", "stepneg": "per-step negative RL", "qcrd": "QCRD"}


def summary_block(results: dict[str, dict]) -> list[str]:
    """README's summary: per method and test bed, the seeds and how many targets the results file's
    paired tests met, did not meet and left undecided (or that it has point estimates only), with a link
    to the full block in benchmarks/README.md."""
    lines = ["| method | test bed | seeds | targets | details |", "|---|---|---|---|---|"]
    order = ["quality_d2o", "real_d2o", "quality_stepneg", "real_stepneg", "quality_qcrd", "real_qcrd"]
    for name in order:
        if name not in results:
            continue
        data = results[name]
        kind, method = name.split("_", 1)
        bed = "toy world" if kind == "quality" else "SmolLM2-135M-Instruct"
        note = targets_note(data.get("targets", {}))
        anchor = "results-on-the-toy-worlds" if kind == "quality" else "results-on-a-real-model"
        seeds = ", ".join(map(str, data.get("seeds", []))) or "—"
        lines.append(
            f"| {METHOD_NAMES[method]} | {bed} | {seeds} | {note} | "
            f"[`{name}.json`](benchmarks/README.md#{anchor}) |"
        )
    return lines


def write_summary(readme: Path = PROJECT_README) -> None:
    readme.write_text(replace_block(readme.read_text(), "summary", summary_block(quality_results())))


def speed_block() -> list[str]:
    files = sorted(RESULTS.glob("bench_*.json"))
    lines = [] if files else ["No speed results yet: run `make bench`.", ""]
    for path in files:
        lines += section(path)
    if (RESULTS / "logps_memory.json").exists():
        lines += logps_memory_section(json.loads((RESULTS / "logps_memory.json").read_text()))
    return lines


def main() -> None:
    text = replace_block(BENCH_README.read_text(), "speed", speed_block(), BENCH_README.name)
    BENCH_README.write_text(text)
    written = write_quality()
    print(f"wrote the speed tables and the {', '.join(written) or 'no'} quality tables of {BENCH_README}")
    write_summary()
    print(f"wrote the summary of {PROJECT_README}")


if __name__ == "__main__":
    main()
