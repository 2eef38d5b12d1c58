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
    # Sampling alone leaves a run's results in place (only `nega run` writes them anew).
    (tmp_path / "runs/s/results.json").write_text('{"schema": 1, "finished": true}')
    again = runner.invoke(app, ["sample", "r.yaml"])
    assert again.exit_code == 0 and (tmp_path / "runs/s/01-sample/manifest.json").read_text() == manifest
    assert (tmp_path / "runs/s/results.json").read_text() == '{"schema": 1, "finished": true}'


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


def test_validate_rejects_infinite_learning_rate():
    result = runner.invoke(app, ["validate", "toy-d2o", "train.lr=1e400"])
    assert result.exit_code == 2, result.output
    assert "recipe" in result.output and "has 1 problem" in result.output
    assert "train.lr: Input should be a finite number (got '1e400')" in result.output
    assert "Traceback" not in result.output


def test_validate_folder_missing_or_repeated_keys_exit_2(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"recipe {tmp_path}: is a folder, not a recipe file; give a YAML file or a built-in name (`nega recipes`)"
    )
    result = runner.invoke(app, ["validate", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    (tmp_path / "r.yaml").write_text(GOOD + "d2o: {alpha: 0.2}\ntrain: {lr: 1.0e-5}\nd2o: {alpha: 0.3}\n")
    result = runner.invoke(app, ["validate", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2
    assert "d2o: key given twice in one section (line 5 and line 7)" in result.output


def test_version_prints_the_package_version():
    import tomllib
    from pathlib import Path

    import nega

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"nega {nega.__version__}\n"
    pyproject = Path(nega.__file__).parent.parent / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == nega.__version__


def command_paths(command, prefix=()) -> list[tuple[str, ...]]:
    """Every command and group of the CLI as argument lists, from the command tree typer builds."""
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += command_paths(sub, (*prefix, name))
    return paths


def test_short_and_long_help_on_every_command():
    import typer

    paths = command_paths(typer.main.get_command(app))
    assert ("validate",) in paths and ("eval", "harm") in paths and ("eval", "reasoning") in paths
    for path in paths:
        short = runner.invoke(app, [*path, "-h"])
        assert short.exit_code == 0 and "Usage:" in short.output, (path, short.output)
        assert short.output == runner.invoke(app, [*path, "--help"]).output, path


def complete(words: str) -> list[str]:
    """What bash completion offers for the command line `words` (the last word being typed)."""
    env = {"_NEGA_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
    result = runner.invoke(app, [], env=env, prog_name="nega")
    assert result.exit_code == 0, result.output
    return result.output.split()


def test_shell_completion(tmp_path, monkeypatch):
    import typer.completion

    # `--show-completion` is a flag that asks the process tree for the user's shell; a test run started
    # outside a shell (a detached job) has none, so the shell is named here.
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    script = runner.invoke(app, ["--show-completion"], prog_name="nega")
    assert script.exit_code == 0 and "_NEGA_COMPLETE=complete_bash" in script.output
    assert "--install-completion" in runner.invoke(app, ["--help"]).output
    assert complete("nega val") == ["validate"]
    assert complete("nega eval re") == ["reasoning"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy-mine.yaml").write_text(GOOD)
    assert complete("nega run toy-") == ["toy-d2o", "toy-qcrd", "toy-sft", "toy-stepneg", "toy-mine.yaml"]


def test_both_eval_commands_take_data(tmp_path, monkeypatch):
    # No data folder: the error names the set asked for, so it shows which value reached the evaluation.
    monkeypatch.setenv("NEGA_DATA", str(tmp_path / "none"))
    for args in (["harm", "org/model", "--data", "xstest"], ["harm", "org/model", "--prompts", "xstest"]):
        result = runner.invoke(app, ["eval", *args])
        assert result.exit_code == 2 and "xstest/xstest_prompts.csv" in result.output, (args, result.output)
    result = runner.invoke(app, ["eval", "reasoning", "org/model", "--data", "svamp"])
    assert result.exit_code == 2 and "svamp" in result.output, result.output
    both = runner.invoke(app, ["eval", "harm", "org/model", "--data", "xstest", "--prompts", "advbench"])
    assert both.exit_code == 2 and "give only --data" in both.output
    shown = runner.invoke(app, ["eval", "harm", "-h"]).output
    assert "--data" in shown and "--prompts" not in shown


def test_eval_numbers_are_bounded_like_the_recipe():
    result = runner.invoke(app, ["eval", "reasoning", "org/model", "--temperature", "inf"])
    assert result.exit_code == 2 and "--temperature inf: give a finite number" in result.output
    result = runner.invoke(app, ["eval", "harm", "org/model", "--max-tokens", str(10**7)])
    assert result.exit_code == 2 and "--max-tokens 10000000: at most 1000000" in result.output
