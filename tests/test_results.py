"""results.json as a run's one results file: report.md rendered from it (`nega report`), run folders
listed with their state (`nega runs`), and the errors of both on a folder that is not a run."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from nega.cli import app
from nega.config import load_recipe
from nega.pipeline import Run, read_json, unlock_run_folder, write_json
from nega.results import metric_direction, render_report, update_results
from nega.stages import write_report

runner = CliRunner()


def open_run(tmp_path, name: str, root=None) -> Run:
    recipe_file = tmp_path / f"{name}.yaml"
    recipe_file.write_text(
        f"name: {name}\nmethod: sft\nmodel: {{name: toy}}\ndata: {{dataset: toy}}\ntoy: {{world: reasoning}}\n"
    )
    return Run(load_recipe(str(recipe_file)), (root or tmp_path / "runs") / name)


def finished_run(tmp_path, name: str = "done", root=None) -> Run:
    """A run as an sft recipe leaves it, without the model: two stages, a result, an evaluation."""
    run = open_run(tmp_path, name, root)
    for stage_name in ("toy-model", "sft"):
        stage = run.stage(stage_name)
        stage.finish()
    (run.dir / "01-toy-model" / "model").mkdir()
    (run.dir / "02-sft" / "adapter").mkdir()
    (run.dir / "02-sft" / "adapter" / "adapter_config.json").write_text("{}")
    run.record_result("sft", run.dir / "01-toy-model" / "model", run.dir / "02-sft" / "adapter")
    update_results(
        run.dir,
        evaluations=[
            {
                "name": "eval",
                "title": "eval: 4 prompts, 1 sample(s) each",
                "dataset": "nega toy reasoning world, test split",
                "plot": "eval.png",
                "metrics": ["accuracy", "n"],
                "table": {"start": {"accuracy": 0.25, "n": 4.0}, "sft": {"accuracy": 0.75, "n": 4.0}},
            }
        ],
    )
    write_report(run, {"start": {"accuracy": 0.25, "n": 4.0}, "sft": {"accuracy": 0.75, "n": 4.0}})
    unlock_run_folder(run.dir)
    return run


def test_results_json_holds_the_run_and_report_md_is_rendered_from_it(tmp_path):
    run = finished_run(tmp_path)
    results = read_json(run.dir / "results.json")
    assert results["schema"] == 1 and results["recipe"] == "done" and results["method"] == "sft"
    assert results["result"] == {
        "label": "sft",
        "base_model": "01-toy-model/model",
        "adapter": "02-sft/adapter",
    }
    assert results["arms"]["sft"] == {"accuracy": 0.75, "n": 4.0}
    assert results["directions"] == {"accuracy": "higher"} and results["finished"] is True
    assert list(results["stages"]) == ["01-toy-model", "02-sft"]
    report = (run.dir / "report.md").read_text()
    assert report == render_report(results)
    assert "| sft | 0.750 | 4.000 |" in report and "![eval](eval.png)" in report
    assert "| 02-sft |" in report and "Higher is better for accuracy." in report


def test_nega_report_rerenders_the_same_report(tmp_path):
    run = finished_run(tmp_path)
    original = (run.dir / "report.md").read_text()
    (run.dir / "report.md").write_text("edited by hand\n")
    done = runner.invoke(app, ["report", str(run.dir)])
    assert done.exit_code == 0, done.output
    assert (run.dir / "report.md").read_text() == original
    # A changed results.json is what a re-render shows: the report is never its own source.
    results = read_json(run.dir / "results.json")
    results["arms"]["sft"]["accuracy"] = 0.5
    write_json(run.dir / "results.json", results)
    assert runner.invoke(app, ["report", str(run.dir)]).exit_code == 0
    assert "| sft | 0.500 | 4.000 |" in (run.dir / "report.md").read_text()


def test_report_and_runs_exit_2_with_one_line_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, expected in (
        (["report", str(tmp_path / "empty")], "not a run folder"),
        (["report", str(tmp_path / "missing")], "not a run folder"),
        (["runs", str(tmp_path / "empty")], "holds no run folders"),
        (["runs", str(tmp_path / "missing")], "no such folder"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1
    # A results.json of another layout (an older nega's flat table) is named, not misread.
    run = finished_run(tmp_path)
    (run.dir / "results.json").write_text(json.dumps({"sft": {"accuracy": 0.5}}))
    old = runner.invoke(app, ["report", str(run.dir)])
    assert old.exit_code == 2 and "schema" in old.output and len(old.output.strip().splitlines()) == 1


def test_nega_runs_lists_each_run_with_its_state(tmp_path):
    root = tmp_path / "runs"
    finished_run(tmp_path, "done", root)
    running = open_run(tmp_path, "running", root)  # this process holds its lock, as `nega run` does
    running.stage("toy-model").finish()
    running.stage("sft")  # started, not finished
    stopped = open_run(tmp_path, "stopped", root)
    stopped.stage("toy-model")
    unlock_run_folder(stopped.dir)  # its process ended before the stage finished
    (root / "not-a-run").mkdir()

    listed = runner.invoke(app, ["runs", str(root)])
    assert listed.exit_code == 0, listed.output
    rows = {line.split("│")[1].strip(): line for line in listed.output.splitlines() if line.count("│") > 3}
    assert set(rows) == {"done", "running", "stopped"}
    assert "finished" in rows["done"] and "sft: accuracy 0.750" in rows["done"]
    assert "in progress (in 02-sft)" in rows["running"]
    assert "failed (stopped in 01-toy-model)" in rows["stopped"]
    # A run folder given itself lists that run.
    one = runner.invoke(app, ["runs", str(root / "done")])
    assert one.exit_code == 0 and "done" in one.output and "running" not in one.output
    unlock_run_folder(running.dir)


def test_metric_directions():
    assert (
        metric_direction("harm/harmful_rate") == "lower" and metric_direction("reasoning/pass@8") == "higher"
    )
    assert metric_direction("accuracy") == "higher" and metric_direction("n") is None


def test_report_md_headings_say_which_way_is_better():
    results = {"recipe": "r", "arms": {"start": {"harmful_rate": 0.4, "helpful_rate": 0.5, "n": 10}}}
    header = next(line for line in render_report(results).splitlines() if line.startswith("| |"))
    assert header == "| | harmful_rate ↓ | helpful_rate ↑ | n |"


def test_report_md_carries_the_recipe_description():
    text = render_report({"recipe": "qcrd-cqa", "description": "single-rationale variant", "arms": {}})
    assert "*single-rationale variant*" in text.splitlines()
