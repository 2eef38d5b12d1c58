"""Stages: manifests written last, skip on match, rerun on change or damage, keep partial work."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from nega.config import load_recipe
from nega.pipeline import Run, atomic_write_text, read_jsonl, write_jsonl


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: demo\nmethod: sft\nmodel: {name: m}\ndata: {dataset: d}\n")
    return load_recipe(str(path))


def run_pipeline(root, recipe, calls, *, crash_in_second=False, lr=1.0):
    """Two stages; the second reads the first's output. `calls` records which stages did work."""
    run = Run(recipe, root)
    first = run.stage("make", config={"n": 3})
    if not first.done:
        calls.append("make")
        write_jsonl(first.dir / "rows.jsonl", [{"i": i} for i in range(3)])
        first.finish(counts={"rows": 3})
    second = run.stage("scale", config={"lr": lr}, inputs=[first])
    if not second.done:
        calls.append("scale")
        (second.dir / "partial.txt").write_text("checkpoint")
        if crash_in_second:
            raise RuntimeError("killed")
        rows = [{"i": r["i"] * lr} for r in read_jsonl(first.dir / "rows.jsonl")]
        write_jsonl(second.dir / "out.jsonl", rows)
        second.finish(counts={"rows": len(rows)})
    return run, read_jsonl(second.dir / "out.jsonl")


def test_rerun_skips_finished_stages(tmp_path, recipe):
    calls = []
    run, rows = run_pipeline(tmp_path / "run", recipe, calls)
    assert calls == ["make", "scale"] and rows == [{"i": 0.0}, {"i": 1.0}, {"i": 2.0}]
    assert (run.dir / "recipe.yaml").exists()
    manifest = json.loads((run.dir / "02-scale" / "manifest.json").read_text())
    assert manifest["counts"] == {"rows": 3} and "out.jsonl" in manifest["files"]
    calls.clear()
    run_pipeline(tmp_path / "run", recipe, calls)
    assert calls == []


def test_interrupted_stage_resumes_keeping_partial_work(tmp_path, recipe):
    calls = []
    with pytest.raises(RuntimeError):
        run_pipeline(tmp_path / "run", recipe, calls, crash_in_second=True)
    assert not (tmp_path / "run" / "02-scale" / "manifest.json").exists()
    run = Run(recipe, tmp_path / "run")
    first = run.stage("make", config={"n": 3})
    second = run.stage("scale", config={"lr": 1.0}, inputs=[first])
    assert first.done and not second.done
    assert (second.dir / "partial.txt").read_text() == "checkpoint"
    calls.clear()
    _, rows = run_pipeline(tmp_path / "run", recipe, calls)
    assert calls == ["scale"] and len(rows) == 3


def test_changed_input_reruns_downstream_and_clears_it(tmp_path, recipe, capsys):
    calls = []
    run_pipeline(tmp_path / "run", recipe, calls)
    (tmp_path / "run" / "02-scale" / "stale.txt").write_text("old")
    calls.clear()
    capsys.readouterr()
    _, rows = run_pipeline(tmp_path / "run", recipe, calls, lr=2.0)
    assert calls == ["scale"]
    assert rows[2] == {"i": 4.0}
    assert not (tmp_path / "run" / "02-scale" / "stale.txt").exists()
    assert not (tmp_path / "run" / ".partial" / "02-scale").exists()
    lines = capsys.readouterr().err.splitlines()
    assert "[nega] stage 01-make: finished, skipped" in lines
    assert "[nega] stage 02-scale: reruns, config changed: lr 1.0 -> 2.0" in lines


def test_an_upstream_change_names_the_input_that_changed(tmp_path, recipe, capsys):
    run = Run(recipe, tmp_path / "run")
    first = run.stage("make", config={"n": 3})
    write_jsonl(first.dir / "rows.jsonl", [{"i": 1}])
    first.finish()
    run.stage("use", inputs=[first]).finish()
    run = Run(recipe, tmp_path / "run")
    first = run.stage("make", config={"n": 3})
    assert first.done
    (first.dir / "rows.jsonl").write_text('{"i": 2}\n')
    run = Run(recipe, tmp_path / "run")
    first = run.stage("make", config={"n": 3})
    write_jsonl(first.dir / "rows.jsonl", [{"i": 2}])
    first.finish()
    capsys.readouterr()
    assert not run.stage("use", inputs=[first]).done
    assert "[nega] stage 02-use: reruns, input changed: stage 01-make" in capsys.readouterr().err


def test_truncated_output_is_detected_and_stage_reruns(tmp_path, recipe, capsys):
    calls = []
    run_pipeline(tmp_path / "run", recipe, calls)
    out = tmp_path / "run" / "01-make" / "rows.jsonl"
    out.write_text(out.read_text()[:-5])
    calls.clear()
    _, rows = run_pipeline(tmp_path / "run", recipe, calls)
    assert "rows.jsonl does not match its recorded hash" in capsys.readouterr().err
    # Stage 1 rewrote identical rows, so stage 2's inputs are unchanged and it stays skipped.
    assert calls == ["make"] and len(rows) == 3
    assert out.read_text().count("\n") == 3


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_read_jsonl_names_bad_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def tree_hashes(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_a_moved_run_resumes_from_another_directory_with_every_stage_skipped(tmp_path, recipe, capsys):
    """Paths the stages hashed or stored lie inside the run folder: the copy resumes as if in place."""
    calls = []
    first_place = tmp_path / "a" / "run"
    run = Run(recipe, first_place)
    stage = run.stage("make", config={"n": 3})
    write_jsonl(stage.dir / "rows.jsonl", [{"i": 1}])
    stage.finish(counts={"rows": 1}, made_from=str(stage.dir / "rows.jsonl"))
    model = stage.dir / "rows.jsonl"
    # A later stage that names an upstream file in its config and as an input, as training stages do.
    use = run.stage("use", config={"model": str(model)}, inputs=[stage, model])
    use.finish()
    assert json.loads((use.dir / "manifest.json").read_text())["config"] == {
        "model": "@run/01-make/rows.jsonl"
    }
    assert json.loads((stage.dir / "manifest.json").read_text())["made_from"] == "@run/01-make/rows.jsonl"

    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first_place, copy)
    shutil.rmtree(tmp_path / "a")
    before = tree_hashes(copy)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        capsys.readouterr()
        run = Run(recipe, copy.relative_to(tmp_path))
        stage = run.stage("make", config={"n": 3})
        use = run.stage(
            "use", config={"model": str(stage.dir / "rows.jsonl")}, inputs=[stage, stage.dir / "rows.jsonl"]
        )
    finally:
        os.chdir(cwd)
    assert stage.done and use.done and calls == []
    assert tree_hashes(copy) == before
    err = capsys.readouterr().err
    assert "01-make: finished, skipped" in err and "02-use: finished, skipped" in err


def test_a_kill_during_a_rerun_keeps_the_old_result_whole(tmp_path, recipe):
    calls = []
    run_pipeline(tmp_path / "run", recipe, calls)
    finished = tree_hashes(tmp_path / "run" / "02-scale")
    with pytest.raises(RuntimeError):  # the rerun with a new rate dies half way
        run_pipeline(tmp_path / "run", recipe, calls, lr=2.0, crash_in_second=True)
    assert tree_hashes(tmp_path / "run" / "02-scale") == finished
    assert (tmp_path / "run" / ".partial" / "02-scale" / "partial.txt").exists()
    # The old recipe again: its result is still there and is reused as it is.
    calls.clear()
    _, rows = run_pipeline(tmp_path / "run", recipe, calls)
    assert calls == [] and rows[2] == {"i": 2.0}
    # The new one: the rerun finishes and only then replaces the old result.
    _, rows = run_pipeline(tmp_path / "run", recipe, calls, lr=2.0)
    assert calls == ["scale"] and rows[2] == {"i": 4.0}
    assert not (tmp_path / "run" / ".partial" / "02-scale").exists()


def test_a_kill_between_the_two_renames_of_a_swap_loses_neither_result(tmp_path, recipe):
    from nega.pipeline import _recover_swap

    calls = []
    run_pipeline(tmp_path / "run", recipe, calls)
    final, partial = tmp_path / "run" / "02-scale", tmp_path / "run" / ".partial" / "02-scale"
    old = partial.with_name("02-scale.old")
    partial.parent.mkdir()
    os.replace(final, old)  # killed after moving the old result aside, before the new one came in
    _recover_swap(final, partial)
    assert (final / "manifest.json").exists() and not old.exists()
    calls.clear()
    run_pipeline(tmp_path / "run", recipe, calls)
    assert calls == []
