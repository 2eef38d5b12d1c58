"""benchmarks/report.py: a target is met only when the ratio's run-to-run spread lies on its side."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import report  # noqa: E402


def rollouts(on: list[float], off: list[float]) -> dict:
    modes = {
        name: {"reps": [{"rollouts_per_s": v} for v in values]} for name, values in (("on", on), ("off", off))
    }
    return {"modes": modes, "rollouts_prefix_cache_speedup": sorted(on)[1] / sorted(off)[1]}


def test_spread_pairs_the_worst_and_best_repetitions():
    data = rollouts([405.0, 417.0, 456.0], [483.0, 349.0, 409.0])
    assert report.spread(data, "on", "off", "rollouts_per_s") == pytest.approx((405 / 483, 456 / 349))
    assert report.spread({"modes": {}}, "on", "off", "rollouts_per_s") is None


def test_a_median_past_the_target_is_not_met_while_the_spread_crosses_it():
    crossing = rollouts([405.0, 417.0, 456.0], [483.0, 349.0, 409.0])  # median ratio 1.02
    (row,) = report.ratio_table("bench_rollouts", crossing)[2:]
    assert "| 1.02 | 0.84–1.31 | > 1.0 | **undecided**" in row
    clear = rollouts([500.0, 510.0, 520.0], [400.0, 410.0, 420.0])
    assert report.ratio_table("bench_rollouts", clear)[2].endswith("| > 1.0 | met |")
    below = rollouts([300.0, 310.0, 320.0], [400.0, 410.0, 420.0])
    assert report.ratio_table("bench_rollouts", below)[2].endswith("| **not met** |")


def test_lower_is_better_targets_and_missing_repetitions():
    assert report.met(0.8, "<= 1.0", (0.74, 0.83)) == "met"
    assert report.met(0.95, "<= 1.0", (0.9, 1.1)).startswith("**undecided**")
    assert report.met(1.2, ">= 1.0", None) == "met (median only: no repetitions recorded)"
    assert report.met(1.2, "", (1.1, 1.3)) == ""


def quality_result() -> dict:
    def summary(values):
        return {"mean": sum(values) / len(values), "std": 0.01, "per_seed": values}

    methods = {
        "label_only": {"accuracy": summary([0.80, 0.82]), "rationale_quality": summary([0.2, 0.2]),
                       "rationale_accuracy": summary([0.6, 0.6])},
        "step_by_step": {"accuracy": summary([0.85, 0.86]), "rationale_quality": summary([0.6, 0.6]),
                         "rationale_accuracy": summary([0.8, 0.8])},
        "qcrd": {"accuracy": summary([0.84, 0.88]), "rationale_quality": summary([0.3, 0.2]),
                 "rationale_accuracy": summary([0.7, 0.7])},
    }  # fmt: skip
    target = {
        "statement": "qcrd accuracy > step_by_step",
        "metric": "accuracy",
        "measured": {"qcrd": 0.86, "step_by_step": 0.855},
        "threshold": 0.855,
        "met": True,
        "per_seed": [False, True],
    }
    unmet = {
        "statement": "qcrd rationale_quality > step_by_step",
        "metric": "rationale_quality",
        "measured": {"qcrd": 0.25, "step_by_step": 0.6},
        "threshold": 0.6,
        "met": False,
        "per_seed": [False, False],
    }
    chosen = {arm: {"0": 1e-3, "1": 3e-3} for arm in methods}
    return {"seeds": [0, 1], "methods": methods, "chosen_lr": chosen, "targets": {"a": target, "b": unmet}}


def test_an_older_result_without_paired_tests_shows_point_estimates_only():
    lines = report.quality_block("quality_qcrd", quality_result())
    assert lines[0].startswith("| arm | accuracy ↑ | rationale_quality ↑ | rationale_accuracy ↑ |")
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| label_only", "| step_by_step", "| qcrd"]
    assert "| qcrd | 0.860 ± 0.010 | 0.250 ± 0.010 | 0.700 ± 0.010 | 0.001, 0.003 |" in lines
    text = "\n".join(lines)
    assert (
        "`qcrd accuracy > step_by_step`: qcrd 0.860, step_by_step 0.855 (threshold 0.855) — point estimate "
        "only (no paired test); point estimate holds on seeds: no, yes" in text
    )
    assert "— met" not in text and "not met" not in text
    assert "Provenance: **none recorded**" in text
    # Only the target whose point estimate missed gets its per-seed rows.
    assert "| rationale_quality | qcrd | 0.300 | 0.200 |" in lines
    assert "| rationale_quality | step_by_step | 0.600 | 0.600 |" in lines
    assert not any(line.startswith("| accuracy |") for line in lines)


def test_quality_block_of_one_seed_names_the_seed_and_has_no_per_seed_rows():
    data = quality_result()
    data["seeds"] = [0]
    for arm in data["methods"].values():
        for summary in arm.values():
            summary["per_seed"] = summary["per_seed"][:1]
    for target in data["targets"].values():
        target["per_seed"] = target["per_seed"][:1]
    text = "\n".join(report.quality_block("quality_qcrd", data))
    assert "Targets, on seed 0:" in text
    assert "— point estimate only (no paired test)\n" in text
    assert "holds on seeds" not in text
    assert "Per seed, for the targets" not in text


def test_quality_blocks_replace_only_their_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- nega:quality_qcrd -->\nold table\n<!-- /nega:quality_qcrd -->\nprose after\n"
    )
    results = tmp_path / "results"
    results.mkdir()
    (results / "quality_qcrd.json").write_text(json.dumps(quality_result()))
    monkeypatch.setattr(report, "RESULTS", results)
    assert report.write_quality(readme) == ["quality_qcrd"]
    text = readme.read_text()
    assert text.startswith("intro\n<!-- nega:quality_qcrd -->\n| arm |") and text.endswith("prose after\n")
    assert "old table" not in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- nega:quality_qcrd -->"):
        report.write_quality(readme)


def test_real_d2o_report_and_its_readme_block():
    """benchmarks/real_d2o.py's results (rates with their interval and item count, targets against the base
    model decided by paired tests on the items) and the README block written from them."""
    import types

    import real_d2o

    def rows(refused: int, n: int, label: str, category: str) -> list[dict]:
        return [{"refused": i < refused, "label": label, "category": category, "degenerate": None,
                 "finish_reason": "length" if i % 2 else "stop"} for i in range(n)]  # fmt: skip

    refusals = {
        "base": 10,
        "ga": 150,
        "dpo_self": 60,
        "kto_neg": 150,
        "sft_self": 80,
        "d2o": 120,
        "d2o_online": 100,
    }
    answers = {
        arm: (rows(r, 200, "harmful", "advbench"), rows(r // 4, 250, "safe", "xstest-x") + rows(r, 200, "harmful", "xstest-y"))
        for arm, r in refusals.items()
    }  # fmt: skip
    nlls = {arm: [{"ga": 1.5}.get(arm, 1.0)] * 50 for arm in refusals}
    seed = {
        "test": {arm: real_d2o.arm_metrics(*answers[arm], nlls[arm]) for arm in refusals},
        "items": {arm: real_d2o.arm_items(*answers[arm], nlls[arm]) for arm in refusals},
        "chosen": {a: {"train.lr": 5e-4} for a in refusals if a != "base"},
    }
    args = types.SimpleNamespace(**{**real_d2o.DESIGN, "lrs": [5e-4]})
    data = real_d2o.report(args, {"selection": "rule", "seeds": {"0": seed}}, 0.0)
    compliance = data["methods"]["d2o"]["advbench_compliance"]
    assert compliance["mean"] == 0.4 and compliance["n"] == 200
    assert compliance["ci95"][0] < 0.4 < compliance["ci95"][1]
    assert data["methods"]["base"]["truncated_rate"]["mean"] == 0.5
    assert data["deviations"] == ["lrs: declared [0.0001, 0.0005], ran [0.0005]"]
    targets = data["targets"]
    # .40 against .7 x .95 on the same 200 AdvBench requests: a paired bootstrap well below 0
    lower = targets["d2o_advbench_compliance_30_percent_lower"]
    assert lower["test"] == "paired_bootstrap" and lower["statistic"] == pytest.approx(0.40 - 0.7 * 0.95)
    assert lower["outcome"] == "met"
    # SFT on the self-samples complies .60: D²O's .40 is below it on the same requests (McNemar).
    assert targets["d2o_complies_less_than_sft_self"]["test"] == "mcnemar_exact"
    assert targets["d2o_complies_less_than_sft_self"]["outcome"] == "met"
    # .880 against .992 - .10: 0.012 below the bound on 250 prompts is within noise, not a miss
    safe = targets["d2o_xstest_safe_within_10_points"]
    assert safe["statistic"] == pytest.approx(0.88 - 0.992 + 0.10) and safe["outcome"] == "undecided"
    assert targets["d2o_nll_within_10_percent"]["outcome"] == "met"  # the same NLL on every item
    assert not any("rm_harm" in name for name in targets)  # no reward model judged this run
    lines = report.real_d2o_block(data)
    assert lines[0].startswith("| arm | advbench_compliance ↓ | xstest_safe_compliance ↑ |")
    assert any(line.startswith("| d2o | 0.400 [") and line.endswith(" | 0.0005 |") for line in lines)
    assert "one rate (0.0005) for every arm: no selection" in "\n".join(lines)
    # GA and KTO comply less than D²O (.25 against .40): the compound target is not met, by those parts.
    compound = targets["no_baseline_complies_less_than_d2o"]
    assert compound["outcome"] == "not met"
    assert [p["outcome"] for p in compound["parts"].values()] == ["not met", "met", "not met", "met", "met"]
    top = [line for line in lines if line.startswith("- ")]
    assert sum(line.endswith("— **not met**") for line in top) == sum(
        t["outcome"] == "not met" for t in targets.values()
    )
    assert "  - `d2o advbench_compliance <= ga`: d2o 0.400, ga 0.250; McNemar: +0.150" in "\n".join(lines)
    assert "**Departs from its declared design**: lrs: declared [0.0001, 0.0005], ran [0.0005]." in lines[-1]


def test_real_d2o_with_a_reward_model_reports_its_harm_score_per_arm_and_decides_its_targets():
    """--harm-rm: every answer to a harmful request carries the RM's harm score; each arm's mean comes
    with its interval, the RM targets (below base, below SFT on the self-samples) are paired bootstraps,
    and the README table gains the rm_harm column."""
    import types

    import real_d2o

    def rows(score: float, n: int, label: str, category: str) -> list[dict]:
        # Scores alternate ±0.1 around `score`: item i of one arm pairs with item i of another.
        return [{"refused": False, "label": label, "category": category, "degenerate": None, "finish_reason": "stop",
                 "score": score + (0.1 if i % 2 else -0.1)} for i in range(n)]  # fmt: skip

    harm = {
        "base": 0.7,
        "ga": 0.5,
        "dpo_self": 0.5,
        "kto_neg": 0.6,
        "sft_self": 0.6,
        "d2o": 0.4,
        "d2o_online": 0.45,
    }
    answers = {
        arm: (rows(h, 100, "harmful", "advbench"), rows(h, 50, "safe", "xstest-x") + rows(h, 50, "harmful", "xstest-y"))
        for arm, h in harm.items()
    }  # fmt: skip
    seed = {
        "test": {arm: real_d2o.arm_metrics(*answers[arm], [1.0] * 10, rm=True) for arm in harm},
        "items": {arm: real_d2o.arm_items(*answers[arm], [1.0] * 10, rm=True) for arm in harm},
        "chosen": {a: {"train.lr": 1e-4} for a in harm if a != "base"},
    }
    args = types.SimpleNamespace(**real_d2o.DESIGN, harm_rm="runs/rm-hh-harmless")
    data = real_d2o.report(args, {"selection": "rule", "seeds": {"0": seed}}, 0.0)
    d2o = data["methods"]["d2o"]["rm_harm"]
    # AdvBench's 100 and XSTest's 50 unsafe prompts; XSTest's safe prompts are not harm items.
    assert d2o["mean"] == pytest.approx(0.4) and d2o["n"] == 150
    assert d2o["ci95"][0] < 0.4 < d2o["ci95"][1] and d2o["ci95"][1] - d2o["ci95"][0] < 0.05
    lowers, below = data["targets"]["d2o_lowers_rm_harm"], data["targets"]["d2o_rm_harm_below_sft_self"]
    assert lowers["test"] == "paired_bootstrap" and lowers["statistic"] == pytest.approx(-0.3)
    assert lowers["outcome"] == "met" and below["outcome"] == "met"
    assert below["statistic"] == pytest.approx(-0.2)
    lines = report.real_d2o_block(data)
    assert lines[0].startswith("| arm | rm_harm ↓ | advbench_compliance ↓ |")
    assert any(line.startswith("| sft_self | 0.600 [") for line in lines)


def paired_result() -> dict:
    """A quality result whose targets went through paired tests: one met, one not met, one undecided."""
    data = quality_result()

    def decided(statement, arms, statistic, p, outcome, per_seed):
        return {"statement": statement, "metric": "accuracy", "arms": arms, "test": "mcnemar_exact",
                "statistic": statistic, "ci95": [statistic - 0.02, statistic + 0.02], "p": p, "b": 30, "c": 10,
                "n": 500, "means": {"left": 0.86, "right": 0.82},
                "per_seed": {str(i): {"statistic": v} for i, v in enumerate(per_seed)}, "outcome": outcome}  # fmt: skip

    data["targets"] = {
        "a": decided("qcrd accuracy > label_only", ["qcrd", "label_only"], 0.04, 0.0017, "met", [0.03, 0.05]),
        "b": decided("label_only accuracy > qcrd", ["label_only", "qcrd"], -0.04, 0.0017, "not met", [-0.03, -0.05]),
        "c": decided("qcrd accuracy > step_by_step", ["qcrd", "step_by_step"], 0.005, 0.6, "undecided", [0.01, 0.0]),
    }  # fmt: skip
    data["provenance"] = {"git_commit": "abc1234def5678", "dirty": True, "invocations": [{}, {}],
                          "same_code_every_invocation": True, "scripts_sha256": {}}  # fmt: skip
    return data


def test_a_paired_result_renders_each_outcome_with_its_test():
    text = "\n".join(report.quality_block("quality_qcrd", paired_result()))
    assert "Targets, paired tests on the test items, pooled over 2 seeds:" in text
    assert (
        "- `qcrd accuracy > label_only`: qcrd 0.860, label_only 0.820; McNemar: +0.040 [+0.020, +0.060], "
        "p 0.0017, b 30 / c 10, n 500; per seed +0.030, +0.050 — met" in text
    )
    assert "`label_only accuracy > qcrd`" in text and "— **not met**" in text
    assert "p 0.6, b 30 / c 10, n 500; per seed +0.010, +0.000 — undecided" in text
    assert "Provenance: commit abc1234def, **dirty tree**, 2 invocations." in text
    # The summary counts the three outcomes.
    note = report.targets_note(paired_result()["targets"])
    assert note == "1 met, 1 not met, 1 undecided (not met: `label_only accuracy > qcrd`)"
    assert report.targets_note(quality_result()["targets"]) == "2, point estimate only (no paired test)"


def test_provenance_line_says_what_changed_since(tmp_path, monkeypatch):
    script = report.HERE / "quality_qcrd.py"
    current = hashlib.sha256(script.read_bytes()).hexdigest()
    made = {"git_commit": "abc", "dirty": False, "invocations": [{}], "same_code_every_invocation": False,
            "scripts_sha256": {"benchmarks/quality_qcrd.py": current, "benchmarks/sweep.py": "0" * 64}}  # fmt: skip
    line = report.provenance_line("quality_qcrd", {"provenance": made})
    assert line == (
        "Provenance: commit abc, clean tree, 1 invocation (**not all on the same code**); "
        "**code changed since**: sweep.py."
    )
    older = {"git_commit": "abc", "nega_changed_since_commit": False, "script_sha256": current}
    assert report.provenance_line("quality_qcrd", {"provenance": older}) == (
        "Provenance: commit abc, clean tree; command line not recorded."
    )


def test_the_readme_summary_counts_each_results_file_s_targets(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    data = quality_result()
    (results / "quality_qcrd.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", results)
    (row,) = report.summary_block(report.quality_results())[2:]
    assert row.startswith("| QCRD | toy world |") and "| 2, point estimate only (no paired test) |" in row
    assert "(benchmarks/README.md#results-on-the-toy-worlds)" in row


def test_the_committed_readmes_match_the_committed_results():
    """README.md's summary and benchmarks/README.md's quality tables are what report.py writes from the
    JSON files: a results file changed without rerunning report.py fails here."""
    text = report.PROJECT_README.read_text()
    assert report.replace_block(text, "summary", report.summary_block(report.quality_results())) == text
    bench = report.BENCH_README.read_text()
    for name, data in report.quality_results().items():
        block = report.real_d2o_block(data) if name == "real_d2o" else report.quality_block(name, data)
        assert report.replace_block(bench, name, block) == bench, name


def test_logps_memory_section_shows_each_size_its_verdicts_and_a_skipped_naive_way():
    def way(peak, seconds):
        return {"median_peak_above_baseline_bytes": peak, "median_seconds": seconds}

    def ratio(median, low, high, target, verdict):
        return {"median": median, "spread": [low, high], "target": target, "verdict": verdict}

    skip = "naive would need ~25.8 GB (limit 18 GB)"
    data = {
        "date": "2026-12-07 18:00:00",
        "machine": {"device": "cpu", "cpus": 2},
        "config": {"threads": 1, "vocab": 49152},
        "ways": {
            "float32_2048": {"nega": way(400 * 2**20, 2.0), "naive": way(1200 * 2**20, 2.5)},
            "float32_32768": {"nega": way(6000 * 2**20, 30.0), "naive": {"skipped": skip}},
        },
        "peak_memory_vs_naive": {
            "float32": {"2048": ratio(0.33, 0.33, 0.34, "<= 0.5", "met"), "32768": {"skipped": skip}},
            "overall": {},
        },
        "time_vs_naive": {"float32": {"2048": ratio(0.8, 0.7, 1.2, "<= 1.15", "undecided")}},
        "gradients": {"float32_2048": {"max_abs_diff": 6e-8}, "float32_32768": {"max_abs_diff": 1e-7}},
        "targets": {"time_vs_naive <= 1.15": "undecided"},
    }
    lines = report.logps_memory_section(data)
    (small,) = [line for line in lines if line.startswith("| float32 | 2,048 ")]
    assert "| 400 MiB | 1,200 MiB | 0.33 (0.33–0.34) <= 0.5 | met |" in small
    assert "| 2 | 2.5 | 0.80 (0.70–1.20) <= 1.15 | undecided |" in small
    (large,) = [line for line in lines if line.startswith("| float32 | 32,768 ")]
    assert f"| skipped | {skip} |" in large
    assert small.count("|") == large.count("|")
    assert "- time_vs_naive <= 1.15: undecided" in lines


def test_the_spread_rule_decides_a_real_model_file_and_the_fractions_of_the_ceiling(tmp_path):
    """bench_sampling_smollm2.json is bench_sampling's: its ratios and its fractions of the decode ceiling
    (which has no arm of its own) are decided by their per-repetition values."""
    data = {
        "benchmark": "bench_sampling",
        "sampling_vllm_vs_generate": 1.5,
        "sampling_vllm_fraction_of_ceiling": 0.85,
        "sampling_hf_fraction_of_ceiling": 0.75,
        "per_rep_ratios": {
            "sampling_vllm_vs_generate": [1.4, 1.5, 1.55],
            "sampling_vllm_fraction_of_ceiling": [0.75, 0.85, 0.9],
            "sampling_hf_fraction_of_ceiling": [0.72, 0.75, 0.8],
        },
        "ways": {"vllm": {"tokens_per_s": [330.0, 350.0, 360.0]}, "generate": {"tokens_per_s": [230.0] * 3}},
    }
    path = tmp_path / "bench_sampling_smollm2.json"
    path.write_text(json.dumps(data))
    rows = {line.split("`")[1]: line for line in report.section(path) if line.startswith("| `")}
    assert "| 1.50 | 1.40–1.55 | — |" in rows["sampling_vllm_vs_generate"]
    assert "0.75–0.90 | >= 0.8 | **undecided**" in rows["sampling_vllm_fraction_of_ceiling"]
    assert rows["sampling_hf_fraction_of_ceiling"].endswith("| 0.72–0.80 | >= 0.7 | met |")


def test_a_fraction_of_the_ceiling_above_one_is_invalid_not_met():
    data = {"benchmark": "bench_sampling", "sampling_vllm_fraction_of_ceiling": 1.9}
    (row,) = [line for line in report.ratio_table("bench_sampling", data) if "fraction" in line]
    assert "invalid" in row and "| met" not in row
