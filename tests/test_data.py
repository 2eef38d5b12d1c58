"""Dataset loading: file types, renames, bad rows reported or skipped."""

from __future__ import annotations

import json

import pytest

from nega.config import DataConfig
from nega.data import DataError, convert_rows, load_rows, read_table, require_text


def test_read_each_file_type(tmp_path):
    rows = [{"prompt": "p1", "rejected": "r1"}, {"prompt": "p2", "rejected": "r2"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "a.csv").write_text("prompt,rejected\np1,r1\np2,r2\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.csv", "a.parquet"):
        assert read_table(tmp_path / name) == rows, name


def test_bad_files_name_the_problem(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match="row 2 is not valid JSON"):
        read_table(tmp_path / "bad.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_table(tmp_path / "bin.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        read_table(tmp_path / "x.txt")


def test_renames_and_limit(tmp_path):
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(5)))
    cfg = DataConfig(path=str(tmp_path / "q.jsonl"), fields={"prompt": "question"}, limit=3)
    rows, source = load_rows(cfg)
    assert [r["prompt"] for r in rows] == ["q0", "q1", "q2"] and source.endswith("q.jsonl")


def test_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="point data.path at a local"):
        load_rows(DataConfig(dataset="some-org/not-a-dataset-here"))


def convert(row):
    return {"prompt": require_text(row, "prompt"), "rejected": require_text(row, "rejected")}


def test_bad_rows_error_lists_rows_and_fix():
    rows = [
        {"prompt": "p", "rejected": "r"},
        {"prompt": "p"},
        {"prompt": "", "rejected": "r"},
        {"prompt": 3, "rejected": "r"},
    ]
    with pytest.raises(DataError) as info:
        convert_rows(rows, convert, source="f.jsonl")
    text = str(info.value)
    assert "f.jsonl: 3 bad row(s) of 4" in text
    assert "row 2: missing field 'rejected'" in text
    assert "row 3: field 'prompt' is empty" in text
    assert "row 4: field 'prompt' must be text, got int" in text
    assert "data.on_bad_row=skip" in text


def test_bad_rows_skipped_and_counted_when_asked():
    rows = [{"prompt": "p", "rejected": "r"}, {"prompt": "p"}, {"prompt": "x" * 300_000, "rejected": "r"}]
    good, bad = convert_rows(rows, convert, source="f", on_bad_row="skip")
    assert good == [{"prompt": "p", "rejected": "r"}] and bad == 2
