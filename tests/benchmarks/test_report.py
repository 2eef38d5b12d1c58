"""benchmarks/report.py: a target is met only when the ratio's run-to-run spread lies on its side."""

from __future__ import annotations

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


def test_quality_block_shows_every_arm_target_and_the_seeds_behind_a_target_not_met():
    lines = report.quality_block("quality_qcrd", quality_result())
    assert lines[0].startswith("| arm | accuracy ↑ | rationale_quality ↑ | rationale_accuracy ↑ |")
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| label_only", "| step_by_step", "| qcrd"]
    assert "| qcrd | 0.860 ± 0.010 | 0.250 ± 0.010 | 0.700 ± 0.010 | 0.001, 0.003 |" in lines
    text = "\n".join(lines)
    assert "`qcrd accuracy > step_by_step`: qcrd 0.860, step_by_step 0.855 (threshold 0.855) — met; " in text
    assert "holds on seeds: no, yes" in text
    assert "— **not met**; holds on seeds: no, no" in text
    # Only the target not met gets its per-seed rows.
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
    assert "— **not met**\n" in text + "\n"
    assert "holds on seeds" not in text
    assert "Per seed, for the targets not met" not in text


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
    """benchmarks/real_d2o.py's results (rates with their interval and item count, targets relative to the
    base model) and the README block written from them."""
    import types

    import real_d2o

    def rows(refused: int, n: int, label: str, category: str) -> list[dict]:
        return [{"refused": i < refused, "label": label, "category": category, "degenerate": None,
                 "finish_reason": "length" if i % 2 else "stop"} for i in range(n)]  # fmt: skip

    refusals = {"base": 10, "ga": 150, "dpo_self": 60, "kto_neg": 150, "d2o": 120, "d2o_online": 100}
    tests = {
        arm: real_d2o.arm_metrics(
            rows(r, 200, "harmful", "advbench"),
            rows(r // 4, 250, "safe", "xstest-x") + rows(r, 200, "harmful", "xstest-y"),
            {"nll": {"ga": 1.5}.get(arm, 1.0)},
        )
        for arm, r in refusals.items()
    }
    args = types.SimpleNamespace(model="m", k=4, epochs=1, batch_size=4, grad_accum=2, sample_tokens=64,
                                 max_tokens=64, advbench=200, xstest=None, nll_items=200, val_nll_items=64)  # fmt: skip
    seed = {
        "test": tests,
        "chosen_lr": {a: 5e-4 for a in refusals if a != "base"},
        "validation": {},
        "seconds": {},
    }
    data = real_d2o.report(args, [0], [5e-4], {0: seed}, 0.0, 128, 64)
    compliance = data["methods"]["d2o"]["advbench_compliance"]
    assert (
        compliance["mean"] == 0.4
        and compliance["n"] == 200
        and compliance["ci95"][0] < 0.4 < compliance["ci95"][1]
    )
    assert data["methods"]["base"]["truncated_rate"]["mean"] == 0.5
    targets = data["targets"]
    assert targets["d2o_halves_advbench_compliance"]["met"]  # .40 <= .5 x .95
    assert not targets["d2o_xstest_safe_within_10_points"]["met"]  # .880 < .992 - .10
    # kto_neg: less compliant, but more over-refusal; ga: the same and a higher NLL
    assert targets["no_baseline_better_on_all_three"]["value"] == []
    lines = report.real_d2o_block(data)
    assert lines[0].startswith("| arm | advbench_compliance ↓ | xstest_safe_compliance ↑ |")
    assert any(line.startswith("| d2o | 0.400 [") and line.endswith(" | 0.0005 |") for line in lines)
    assert "one rate (0.0005) for every arm: no selection" in "\n".join(lines)
    assert sum("**not met**" in line for line in lines) == sum(not t["met"] for t in targets.values())


def test_the_readme_summary_counts_each_results_file_s_targets(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    data = quality_result()
    (results / "quality_qcrd.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", results)
    (row,) = report.summary_block(report.quality_results())[2:]
    met = sum(1 for t in data["targets"].values() if t["met"])
    assert row.startswith("| QCRD | toy world |") and f"| {met} of {len(data['targets'])}" in row
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
