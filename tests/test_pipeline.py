"""Stages: manifests written last, skip on match, rerun on change or damage, keep partial work."""

from __future__ import annotations

import json
import warnings

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


def test_changed_input_reruns_downstream_and_clears_it(tmp_path, recipe):
    calls = []
    run_pipeline(tmp_path / "run", recipe, calls)
    (tmp_path / "run" / "02-scale" / "stale.txt").write_text("old")
    calls.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, rows = run_pipeline(tmp_path / "run", recipe, calls, lr=2.0)
    assert calls == ["scale"]
    assert rows[2] == {"i": 4.0}
    assert not (tmp_path / "run" / "02-scale" / "stale.txt").exists()
    assert any("inputs or config changed" in str(w.message) for w in caught)


def test_truncated_output_is_detected_and_stage_reruns(tmp_path, recipe):
    calls = []
    run_pipeline(tmp_path / "run", recipe, calls)
    out = tmp_path / "run" / "01-make" / "rows.jsonl"
    out.write_text(out.read_text()[:-5])
    calls.clear()
    with pytest.warns(UserWarning, match="does not match its recorded hash"):
        _, rows = run_pipeline(tmp_path / "run", recipe, calls)
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
