"""The data layer on `datasets`: sources, splits, shuffle, streaming; formats by name and by detection;
the checks `nega validate` and `nega run` make before any model loads."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from nega.cli import app
from nega.config import DataConfig, load_recipe
from nega.data import FORMATS, METHOD_FORMATS, DataError, check_data, detect_format, load_rows

runner = CliRunner()


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def numbered(n, **extra):
    return [{"prompt": f"p{i}", "rejected": f"r{i}", **extra} for i in range(n)]


# ---------------------------------------------------------------- sources


def test_builder_with_globbed_data_files_and_a_split_per_mapping(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d" / "part-0.jsonl", numbered(3))
    write_jsonl(tmp_path / "d" / "part-1.jsonl", numbered(2))
    write_jsonl(tmp_path / "held" / "test.jsonl", [{"prompt": "t", "rejected": "x"}])
    files = {"train": "d/part-*.jsonl", "test": "held/test.jsonl"}
    rows, source = load_rows(DataConfig(dataset="json", data_files=files))
    assert len(rows) == 5 and "(train)" in source
    rows, _ = load_rows(DataConfig(dataset="json", data_files=files, split="test"))
    assert rows == [{"prompt": "t", "rejected": "x"}]
    # A glob as data.dataset picks its builder from the matched files' suffix.
    rows, _ = load_rows(DataConfig(dataset="d/*.jsonl"))
    assert len(rows) == 5


def test_a_folder_gives_its_splits_by_file_name(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", numbered(4))
    write_jsonl(tmp_path / "test.jsonl", numbered(2))
    assert len(load_rows(DataConfig(dataset=str(tmp_path)))[0]) == 4
    assert len(load_rows(DataConfig(dataset=str(tmp_path), split="test"))[0]) == 2
    with pytest.raises(DataError, match="no split 'validation'"):
        load_rows(DataConfig(dataset=str(tmp_path), split="validation"))


def test_source_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="folder with no data files"):
        load_rows(DataConfig(dataset=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="'nowhere/\\*.jsonl' matches no file"):
        load_rows(DataConfig(dataset="json", data_files="nowhere/*.jsonl"))
    with pytest.raises(DataError, match="set data.data_files"):
        load_rows(DataConfig(dataset="parquet"))
    with pytest.raises(DataError, match="no such file or folder"):
        load_rows(DataConfig(dataset="./missing.jsonl"))
    # One local file is one split: asking it for another is an error, not the same rows again.
    path = write_jsonl(tmp_path / "a.jsonl", numbered(2))
    with pytest.raises(DataError, match="one file holds one split"):
        load_rows(DataConfig(path=str(path)), split="test")


def test_shuffle_is_seeded_and_comes_before_limit(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", numbered(50))
    first = [r["prompt"] for r in load_rows(DataConfig(path=str(path), limit=5))[0]]
    assert first == [f"p{i}" for i in range(5)]
    cfg = DataConfig(path=str(path), limit=5, shuffle=True)
    shuffled = [r["prompt"] for r in load_rows(cfg, seed=1)[0]]
    assert shuffled != first and len(set(shuffled)) == 5
    assert [r["prompt"] for r in load_rows(cfg, seed=1)[0]] == shuffled
    assert [r["prompt"] for r in load_rows(cfg, seed=2)[0]] != shuffled


def test_streaming_reads_only_the_rows_asked_for(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", numbered(30))
    rows, _ = load_rows(DataConfig(path=str(path), streaming=True, limit=3))
    assert [r["prompt"] for r in rows] == ["p0", "p1", "p2"]
    rows, _ = load_rows(DataConfig(path=str(path), streaming=True, shuffle=True, limit=30), seed=0)
    assert sorted(r["prompt"] for r in rows) == sorted(f"p{i}" for i in range(30))


def test_csv_cells_stay_text_and_mixed_columns_still_load(tmp_path):
    (tmp_path / "a.csv").write_text("question,answer\nq1,24\nq2,\n")
    rows, _ = load_rows(DataConfig(path=str(tmp_path / "a.csv")))
    assert rows == [{"question": "q1", "answer": "24"}, {"question": "q2", "answer": ""}]
    # Text in one row and chat messages in the next: Arrow cannot type it, the rows still load.
    mixed = [
        {"prompt": "a", "rejected": "b"},
        {"prompt": [{"role": "user", "content": "c"}], "rejected": "d"},
    ]
    rows, _ = load_rows(DataConfig(path=str(write_jsonl(tmp_path / "m.jsonl", mixed))))
    assert rows == mixed
    # A row lacking a column reads as lacking it (Arrow would fill in None).
    rows, _ = load_rows(DataConfig(path=str(write_jsonl(tmp_path / "g.jsonl", [{"a": 1, "b": 2}, {"a": 3}]))))
    assert rows == [{"a": 1, "b": 2}, {"a": 3}]


# ---------------------------------------------------------------- formats


CHAT = [{"role": "user", "content": "q"}]
ROWS = {
    "preference": {"prompt": "q", "chosen": "good", "rejected": "bad"},
    "unpaired_preference": {"prompt": "q", "completion": "bad", "label": False},
    "prompt_completion": {"prompt": CHAT, "completion": [{"role": "assistant", "content": "#### 4"}]},
    "stepwise_supervision": {"prompt": "q", "completions": ["a", "b"], "labels": [True, False]},
    "prompt-rejected": {"prompt": "q", "rejected": "bad"},
    "messages": {"messages": [*CHAT, {"role": "assistant", "content": "bad"}]},
    "hh-rlhf": {"chosen": "\n\nHuman: q\n\nAssistant: ok", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
    "pku-saferlhf": {
        "prompt": "q",
        "response_0": "a",
        "response_1": "b",
        "is_response_0_safe": True,
        "is_response_1_safe": False,
    },
    "problems": {"question": "q", "answer": "4"},
    "rationales": {"question": "q", "label": "yes", "rationales": ["because"]},
}


def test_every_format_is_detected_by_the_methods_reading_it():
    assert set(ROWS) == set(FORMATS) - {"toy"}
    for fmt, row in ROWS.items():
        readers = [m for m, formats in METHOD_FORMATS.items() if fmt in formats]
        for method in readers:
            assert detect_format(list(row), row, METHOD_FORMATS[method]) == fmt, (fmt, method)
    # A method not reading a shape finds no format in it.
    assert detect_format(["question", "rationales"], ROWS["rationales"], METHOD_FORMATS["d2o"]) is None


def _recipe(tmp_path, method, rows, **data):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    data = {"path": str(path), **data}
    text = f"name: t\nmethod: {method}\nmodel: {{name: org/model}}\ndata: {json.dumps(data)}\n"
    (tmp_path / "r.yaml").write_text(text)
    return load_recipe(str(tmp_path / "r.yaml"))


def test_check_names_a_missing_column_and_the_fields_rename(tmp_path):
    recipe = _recipe(tmp_path, "d2o", [{"prompt": "q", "bad_answer": "x"}], format="prompt-rejected")
    (problem,) = check_data(recipe).problems
    assert "column 'rejected' (format prompt-rejected) is missing" in problem
    assert "data.fields.rejected=bad_answer" in problem
    # The rename the message suggests makes the data pass.
    fixed = recipe.data.model_copy(update={"fields": {"rejected": "bad_answer"}})
    assert check_data(SimpleNamespace(data=fixed, method="d2o")).problems == []


def test_check_finds_empty_and_mistyped_columns_and_unknown_formats(tmp_path):
    recipe = _recipe(tmp_path, "d2o", [{"prompt": "q", "rejected": ""}] * 3)
    assert check_data(recipe).problems == [
        f"{recipe.data.path}: column 'rejected' (format prompt-rejected) is empty in the first 3 rows"
    ]
    recipe = _recipe(tmp_path, "d2o", [{"prompt": "q", "completion": "x", "label": "maybe"}])
    (problem,) = check_data(recipe).problems
    assert "column 'label' row 1 holds str 'maybe'; format unpaired_preference needs a boolean" in problem
    recipe = _recipe(tmp_path, "stepneg", [{"query": "q", "gold": "4"}])
    (problem,) = check_data(recipe).problems
    assert (
        "fit none of the formats stepneg reads" in problem
        and "prompt_completion: prompt, completion" in problem
    )
    recipe = _recipe(tmp_path, "qcrd", [{"question": "q", "rationales": []}], format="preference")
    assert check_data(recipe).problems == [
        "data.format 'preference' is not read by qcrd; qcrd reads rationales, toy (or auto, from the columns)"
    ]
    recipe = _recipe(tmp_path, "d2o", [{"prompt": "q", "rejected": "x"}], fields={"prompt": "question"})
    assert "data.fields.prompt: column 'question' is not in" in check_data(recipe).problems[0]


def test_a_hub_dataset_out_of_reach_is_a_note_not_a_problem(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    recipe = SimpleNamespace(data=DataConfig(dataset="some-org/not-here"), method="d2o")
    check = check_data(recipe)
    assert check.problems == [] and "data not checked" in check.notes[0]


# ---------------------------------------------------------------- the command line


def test_validate_exits_2_naming_the_column_and_the_fix(tmp_path):
    _recipe(tmp_path, "d2o", [{"prompt": "q", "bad_answer": "x"}], format="prompt-rejected")
    result = runner.invoke(app, ["validate", str(tmp_path / "r.yaml")])
    assert result.exit_code == 2, result.output
    assert "column 'rejected'" in result.output and "data.fields.rejected=bad_answer" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["validate", str(tmp_path / "r.yaml"), "data.fields.rejected=bad_answer"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.dataset={empty}", "folder with no data files"),
        ("data.dataset=json", "set data.data_files"),
        ("data.split=test", "one file holds one split"),
    ],
)
def test_validate_exits_2_on_a_bad_source(tmp_path, override, message):
    _recipe(tmp_path, "d2o", numbered(2))
    (tmp_path / "empty").mkdir()
    overrides = [override.format(empty=tmp_path / "empty")]
    if "dataset" in override:
        overrides.insert(0, "data.path=null")
    result = runner.invoke(app, ["validate", str(tmp_path / "r.yaml"), *overrides])
    assert result.exit_code == 2 and message in result.output, result.output


def test_validate_exits_2_on_a_glob_with_no_match_and_a_wrong_split(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _recipe(tmp_path, "d2o", numbered(2))
    base = ["validate", "r.yaml", "data.path=null", "data.dataset=json"]
    result = runner.invoke(app, [*base, "data.data_files=nope/*.jsonl"])
    assert result.exit_code == 2 and "matches no file" in result.output, result.output
    result = runner.invoke(app, [*base, "data.data_files=*.jsonl", "data.split=validation"])
    assert result.exit_code == 2 and "no split 'validation'" in result.output, result.output


def test_run_stops_on_bad_data_before_the_model_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _recipe(tmp_path, "d2o", [{"prompt": "q", "bad_answer": "x"}])

    def no_model(*args, **kwargs):
        raise AssertionError("the base-model stage ran before the data was checked")

    monkeypatch.setattr("nega.stages.base_model", no_model)
    result = runner.invoke(app, ["run", "r.yaml"])
    assert result.exit_code == 2, result.output
    assert "data.fields.rejected=bad_answer" in result.output
    assert not (tmp_path / "runs").exists()  # no run folder: nothing started


def test_checking_a_local_file_imports_neither_torch_nor_datasets(tmp_path):
    import subprocess
    import sys

    _recipe(tmp_path, "d2o", numbered(3))
    code = (
        "import sys; from nega.config import load_recipe; from nega.data import check_data; "
        f"assert check_data(load_recipe({str(tmp_path / 'r.yaml')!r})).format == 'prompt-rejected'; "
        "print(sorted(m for m in ('torch', 'datasets', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_conversational_preference_with_an_implicit_prompt_splits_it_off(tmp_path):
    from nega.align.d2o.data import load_negatives

    user = {"role": "user", "content": "How do I pick a lock?"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": "I can't help with that."}],
            "rejected": [user, {"role": "assistant", "content": "Insert a tension wrench."}],
        }
    ]
    recipe = _recipe(tmp_path, "d2o", rows)
    assert check_data(recipe).format == "preference"
    negatives, _, counts = load_negatives(recipe)
    assert negatives == [{"prompt": [user], "rejected": "Insert a tension wrench."}]
    assert counts["ignored"] == "chosen"
