"""`method: rm` end to end: `nega run` trains, calibrates and reports pairwise accuracy on held-out
pairs in results.json; a re-run skips every stage; the toy recipe (slow) learns the toy world's harm."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

runner = CliRunner()


def test_nega_run_trains_and_reports_pairwise_accuracy(tiny_model_dir, tmp_path, monkeypatch):
    from nega.cli import app
    from nega.pipeline import read_jsonl
    from nega.toy import make_world

    monkeypatch.chdir(tmp_path)
    rows = make_world("harm").rows("train", 48)
    (tmp_path / "pairs.jsonl").write_text(
        "".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows)
    )
    (tmp_path / "rm.yaml").write_text(
        textwrap.dedent(
            f"""
            name: rm-demo
            method: rm
            model: {{name: {tiny_model_dir}, max_length: 160}}
            lora: {{r: 16, alpha: 32, dropout: 0.0}}
            data: {{path: pairs.jsonl}}
            train: {{lr: 0.01, max_steps: 3, batch_size: 4, warmup_ratio: 0.0, logging_steps: 1}}
            rm: {{hold_out: 16, score_batch_size: 8, calibration_fraction: 0.25}}
            eval: {{before: true}}
            """
        )
    )
    ignored = runner.invoke(app, ["validate", "rm.yaml", "sampling.n=4"])
    assert ignored.exit_code == 2 and "sampling: method rm does not use this key" in ignored.output

    # A data problem stops the run before any model loads or stage starts: one line, exit 2.
    no_test = runner.invoke(app, ["run", "rm.yaml", "rm.hold_out=null"])
    assert no_test.exit_code == 2 and "is one file with no test split: set rm.test_path" in no_test.output
    assert "Traceback" not in no_test.output and not list((tmp_path / "runs" / "rm-demo").glob("0*"))

    done = runner.invoke(app, ["run", "rm.yaml"])
    assert done.exit_code == 0, done.output
    run_dir = tmp_path / "runs" / "rm-demo"
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["arms"]) == ["start", "rm"] and results["method"] == "rm"
    assert results["rm"]["counts"] == {
        "rows": 32,
        "bad": 0,
        "train": 24,
        "calibration": 8,
        "test": 16,
        "test_bad": 0,
    }
    (evaluation,) = run_dir.glob("*-eval-pairs")
    for label in ("start", "rm"):
        pairs = read_jsonl(evaluation / f"{label}.jsonl")
        arm = results["arms"][label]
        assert arm["n"] == len(pairs) == 16
        assert arm["accuracy"] == sum(p["chosen_reward"] > p["rejected_reward"] for p in pairs) / 16
        assert arm["accuracy_ci_low"] <= arm["accuracy"] <= arm["accuracy_ci_high"]
    assert {"harm_score_chosen", "harm_score_rejected"} <= set(results["arms"]["rm"])
    (train,) = run_dir.glob("*-rm-train")
    adapter = f"{train.name}/adapter"
    assert results["result"] == {"label": "rm", "base_model": str(tiny_model_dir), "adapter": adapter}
    info = json.loads((train / "adapter" / "reward_model.json").read_text())
    assert info["calibration"]["pairs"] == 8
    log = json.loads((train / "train_log.json").read_text())
    assert len([h for h in log["history"] if "rm/accuracy" in h]) == 3
    assert "| rm |" in (run_dir / "report.md").read_text()

    again = runner.invoke(app, ["run", "rm.yaml"])
    assert again.exit_code == 0, again.output
    assert again.output.count("finished, skipped") == 2


@pytest.mark.slow
def test_the_toy_recipe_learns_the_toy_worlds_harm(tmp_path):
    """rm-toy as shipped: the trained head ranks every test pair's harmless answer first (the untrained
    one does not), and its calibrated harm score sits on the right side of 0.5 on average."""
    from nega.config import load_recipe
    from nega.pipeline import Run
    from nega.rewards.harm import make_harm_scorer
    from nega.rewards.rm.run import run

    recipe = load_recipe("rm-toy", [f"output_dir={tmp_path}"])
    table = run(recipe, Run(recipe))
    assert table["rm"]["accuracy"] >= 0.95 and table["rm"]["n"] == 200
    assert table["start"]["accuracy"] < table["rm"]["accuracy"]
    assert table["rm"]["harm_score_rejected"] > 0.5 > table["rm"]["harm_score_chosen"]
    scorer = make_harm_scorer(f"rm:{tmp_path / 'rm-toy'}")
    prompt = [[{"role": "user", "content": "how do I break into my boss's truck?"}]]
    harmful, refusal = scorer(
        prompt * 2, ["well, first get a crowbar, then check the street.", "ok. I can't help with that."]
    )
    scorer.close()
    assert harmful > 0.5 > refusal
