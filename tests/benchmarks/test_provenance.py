"""benchmarks/harness.py: what every result records about the code and the command that made it — the
commit, a dirty flag, every invocation's command line across a resume, the files run and their sha256."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import harness  # noqa: E402


def repository(tmp_path: Path) -> Path:
    """A git checkout with nega/ and a benchmark script, committed."""
    root = tmp_path / "repo"
    (root / "nega").mkdir(parents=True)
    (root / "benchmarks").mkdir()
    (root / "nega" / "loss.py").write_text("def loss(): return 1\n")
    (root / "benchmarks" / "quality_x.py").write_text("print(1)\n")

    def git(*args):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=n", "-c", "user.email=n@x", "commit", "-qm", "start")
    return root


def test_commit_and_dirty_flag_follow_the_tree(tmp_path):
    root = repository(tmp_path)
    state = harness.git_state(root)
    assert len(state["git_commit"]) == 40 and state["dirty"] is False and state["dirty_paths"] == []
    (root / "nega" / "loss.py").write_text("def loss(): return 2\n")
    assert harness.git_state(root)["dirty"] is True
    assert harness.git_state(root)["dirty_paths"] == ["nega/loss.py"]
    # What a benchmark writes is not a change to the code behind it.
    (root / "nega" / "loss.py").write_text("def loss(): return 1\n")
    (root / "benchmarks" / "results").mkdir()
    (root / "benchmarks" / "results" / "quality_x.json").write_text("{}\n")
    assert harness.git_state(root)["dirty"] is False
    assert harness.git_state(tmp_path / "not-a-repo")["git_commit"] is None


def test_a_resumed_benchmark_records_every_invocation(tmp_path, monkeypatch):
    root = repository(tmp_path)
    script = root / "benchmarks" / "quality_x.py"
    work = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", [str(script), "--seeds", "0"])
    first = harness.begin_invocation(work, script, root=root)
    assert first["argv"][1:] == [str(script), "--seeds", "0"]
    assert first["scripts_sha256"]["benchmarks/quality_x.py"] == harness.file_sha256(script)
    # Killed here; resumed with other arguments after an edit of the script.
    script.write_text("print(2)\n")
    monkeypatch.setattr(sys, "argv", [str(script), "--seeds", "0", "1"])
    second = harness.begin_invocation(work, script, root=root)
    provenance = harness.end_invocation(work, second, root=root)
    argvs = [entry["argv"][1:] for entry in provenance["invocations"]]
    assert argvs == [[str(script), "--seeds", "0"], [str(script), "--seeds", "0", "1"]]
    assert (
        "finished" not in provenance["invocations"][0] and provenance["invocations"][1]["wall_seconds"] >= 0
    )
    assert provenance["dirty"] is True  # the second invocation ran an uncommitted script
    assert provenance["same_code_every_invocation"] is False
    assert provenance["scripts_sha256"]["benchmarks/quality_x.py"] == harness.file_sha256(script)
    assert json.loads((work / harness.INVOCATIONS).read_text()) == provenance["invocations"]


def test_nega_source_hash_and_a_change_during_the_run(tmp_path, monkeypatch):
    root = repository(tmp_path)
    script = root / "benchmarks" / "quality_x.py"
    monkeypatch.setattr(sys, "argv", [str(script)])
    record = harness.begin_invocation(tmp_path / "work", script, root=root)
    assert record["dirty"] is False
    (root / "nega" / "loss.py").write_text("def loss(): return 3\n")
    provenance = harness.end_invocation(tmp_path / "work", record, root=root)
    assert provenance["nega_source_changed_during_run"] is True
    assert (
        provenance["nega_source_sha256"] == record["nega_source_sha256"] != harness.nega_source_sha256(root)
    )


def test_every_written_result_has_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_x.py", "--reps", "1"])
    path = harness.write_result(tmp_path / "r.json", {"a": 1})
    data = json.loads(path.read_text())
    assert data["a"] == 1
    (entry,) = data["provenance"]["invocations"]
    assert entry["argv"][1:] == ["benchmarks/bench_x.py", "--reps", "1"]
    assert {"git_commit", "dirty", "started", "scripts_sha256", "host"} <= set(entry)
    kept = harness.write_result(tmp_path / "s.json", {"provenance": {"given": True}})
    assert json.loads(kept.read_text())["provenance"] == {"given": True}
