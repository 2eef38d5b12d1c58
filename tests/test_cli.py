"""The command line through typer's CliRunner, and what it imports at start-up."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from nega.cli import app

runner = CliRunner()

GOOD = "name: demo\nmethod: d2o\nmodel: {name: org/model}\ndata: {dataset: org/data}\n"


def test_validate_prints_resolved_recipe(tmp_path):
    (tmp_path / "r.yaml").write_text(GOOD)
    result = runner.invoke(app, ["validate", str(tmp_path / "r.yaml"), "d2o.alpha=0.3"])
    assert result.exit_code == 0, result.output
    assert (
        "alpha: 0.3" in result.output
        and "beta: 0.1" in result.output
        and "trust_remote_code: false" in result.output
    )


def test_bad_recipe_exits_2_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(GOOD.replace("d2o}", "d2o}") + "train: {lr: 0}\nbogus: 1\n")
    result = runner.invoke(app, ["run", "r.yaml", "sampling.n=0"])
    assert result.exit_code == 2
    assert "recipe r.yaml has 3 problems" in result.output
    for key in ("train.lr", "bogus: unknown key", "sampling.n"):
        assert key in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_unknown_recipe_name(tmp_path):
    result = runner.invoke(app, ["validate", "nope"])
    assert result.exit_code == 2 and "no built-in recipe" in result.output


def test_recipes_table_lists_builtins():
    from nega.config import builtin_recipes

    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    for name in builtin_recipes():
        assert name in result.output


def test_help_imports_no_heavy_package():
    # What keeps `nega --help` and `nega validate` instant; their time is measured in benchmarks.
    out = subprocess.run(
        [sys.executable, "-m", "nega.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "run" in out.stdout and "validate" in out.stdout
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, nega.cli, nega.config; print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert heavy.stdout.strip() == "[]"


def test_sample_command_writes_samples_and_skips_when_rerun(tiny_model_dir, tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"question": q}) + "\n" for q in ["what is 2 plus 3?", "name a color."])
    )
    (tmp_path / "r.yaml").write_text(
        f"name: s\nmethod: d2o\nmodel: {{name: {tiny_model_dir}}}\ndata: {{path: p.jsonl}}\n"
        "sampling: {backend: hf, n: 2, temperature: 0, max_tokens: 12}\n"
    )
    result = runner.invoke(app, ["sample", "r.yaml"])
    assert result.exit_code == 0, result.output
    rows = [
        json.loads(line) for line in (tmp_path / "runs/s/01-sample/samples.jsonl").read_text().splitlines()
    ]
    assert [r["completions"] for r in rows] == [["2 plus 3 is 5."] * 2, ["blue"] * 2]
    manifest = (tmp_path / "runs/s/01-sample/manifest.json").read_text()
    again = runner.invoke(app, ["sample", "r.yaml"])
    assert again.exit_code == 0 and (tmp_path / "runs/s/01-sample/manifest.json").read_text() == manifest


def test_sample_command_reports_bad_rows(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"text": "no prompt column"}\n')
    (tmp_path / "r.yaml").write_text(
        f"name: s\nmethod: d2o\nmodel: {{name: {tiny_model_dir}}}\ndata: {{path: p.jsonl}}\n"
    )
    result = runner.invoke(app, ["sample", "r.yaml"])
    assert result.exit_code == 2
    assert "row 1: missing field 'prompt'" in result.output and "data.fields" in result.output


def test_sample_command_reports_malformed_messages(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"messages": ["hi", 3]}\n')
    (tmp_path / "r.yaml").write_text(
        f"name: s\nmethod: d2o\nmodel: {{name: {tiny_model_dir}}}\ndata: {{path: p.jsonl}}\n"
    )
    result = runner.invoke(app, ["sample", "r.yaml"])
    assert result.exit_code == 2, result.output
    assert "row 1" in result.output and "'messages' must be a list of" in result.output
    assert "Traceback" not in result.output
