"""Each method trains the tiny model from a small local file in a TRL format: the example recipes under
examples/, with the tiny model's overrides, read their data as the method needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nega_testing import CORPUS_PAIRS

from nega.config import load_recipe
from nega.pipeline import Run, read_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_recipes_validate_with_their_data(path, monkeypatch):
    from typer.testing import CliRunner

    from nega.cli import app

    monkeypatch.chdir(ROOT)  # their data paths start at the repository root, as their comments say
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert load_recipe(str(path)).name == path.stem


def _tiny(model_dir, tmp_path, **extra):
    values = {
        "model.name": str(model_dir),
        "model.dtype": "float32",
        "model.max_length": 128,
        "train.max_steps": 2,
        "train.batch_size": 4,
        "train.bf16": "false",
        "sampling.n": 2,
        "sampling.backend": "hf",
        "sampling.max_tokens": 8,
        "lora.r": 4,
        "lora.alpha": 8,
        "output_dir": str(tmp_path / "runs"),
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def _stage(run_dir, name):
    (folder,) = [p for p in run_dir.iterdir() if p.is_dir() and p.name.split("-", 1)[-1] == name]
    return folder


def _d2o(recipe):
    from nega.align.d2o.run import run

    target = Run(recipe)
    table = run(recipe, target)
    examples = read_jsonl(_stage(target.dir, "reflogps") / "examples.jsonl")
    history = read_json(_stage(target.dir, "d2o-train") / "train_log.json")["history"]
    assert max(h.get("step", 0) for h in history) == 2 and "d2o" in table
    return examples


def test_d2o_trains_on_trl_preference_rows_and_ignores_chosen(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(str(EXAMPLES / "d2o-own-data.yaml"), _tiny(tiny_model_dir, tmp_path))
    examples = _d2o(recipe)
    rows = [json.loads(line) for line in (EXAMPLES / "data" / "preference.jsonl").read_text().splitlines()]
    assert [e["rejected"] for e in examples] == [r["rejected"] for r in rows]
    assert not {r["chosen"] for r in rows} & {t for e in examples for t in [e["kl_response"], *e["self"]]}
    assert "the chosen responses are not used" in capsys.readouterr().err


def test_d2o_trains_on_conversational_unpaired_rows_labelled_false(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = EXAMPLES / "data" / "unpaired_preference.jsonl"
    recipe = load_recipe(
        str(EXAMPLES / "d2o-own-data.yaml"), _tiny(tiny_model_dir, tmp_path, **{"data.path": data})
    )
    examples = _d2o(recipe)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    negatives = [r["completion"][-1]["content"] for r in rows if r["label"] is False]
    assert len(negatives) == 8 and [e["rejected"] for e in examples] == negatives
    # The chat prompt went through the tokenizer's chat template.
    assert all(
        r["prompt"][0]["content"] in e["prompt"] and e["prompt"] != r["prompt"][0]["content"]
        for e, r in zip(examples, rows[::2], strict=True)
    )


def test_d2o_refuses_unpaired_rows_with_no_negative(tmp_path):
    from nega.align.d2o.data import load_negatives
    from nega.data import DataError

    path = tmp_path / "good.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "fine", "label": True}) + "\n")
    recipe = load_recipe(str(EXAMPLES / "d2o-own-data.yaml"), [f"data.path={path}"])
    with pytest.raises(DataError, match="no row is labelled false"):
        load_negatives(recipe)


def test_stepneg_trains_on_conversational_prompt_completion_gold_solutions(
    tiny_model_dir, tmp_path, monkeypatch
):
    from nega.align.stepneg.run import run

    # Problems the tiny model half-solves (it was trained on "what is a plus b?"), as chat prompts.
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "completion": [{"role": "assistant", "content": f"{r}\n#### {r.rstrip('.').split()[-1]}"}],
        }
        for p, r in CORPUS_PAIRS[:100:13]
    ]
    data = tmp_path / "solutions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = {
        "data.path": data,
        "data.format": "auto",
        "model.max_length": 64,
        "sampling.max_tokens": 12,
        "sampling.temperature": 2.0,
        "sampling.batch_size": 32,
        "train.lr": 1e-3,
        "train.batch_size": 2,
        "stepneg.sft_lr": 1e-3,
        "stepneg.negatives": 4,
        "stepneg.negatives_per_problem": 4,
        "stepneg.max_samples_per_problem": 8,
        "stepneg.best_of": 2,
        "stepneg.rollout_groups": 1,
        "stepneg.answer_format": "number",
        "eval.reasoning.limit": 4,
        "eval.reasoning.max_tokens": 12,
    }
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(str(EXAMPLES / "stepneg-own-data.yaml"), _tiny(tiny_model_dir, tmp_path, **extra))
    table = run(recipe, Run(recipe))
    assert {"sft", "stepneg_dpo"} <= set(table)
    run_dir = tmp_path / "runs" / recipe.name
    pairs = read_jsonl(_stage(run_dir, "pairs") / "dpo.jsonl")
    # Each pair's prompt is a problem of the file, rendered through the chat template.
    assert pairs and all(any(r["prompt"][0]["content"] in p["prompt"] for r in rows) for p in pairs)


def test_nega_data_shows_rows_as_the_method_reads_them_with_token_counts(tiny_model_dir, monkeypatch):
    from typer.testing import CliRunner

    from nega.cli import app
    from nega.models import load_tokenizer
    from nega.sampling.base import render_prompt

    monkeypatch.chdir(ROOT)
    data = EXAMPLES / "data" / "unpaired_preference.jsonl"
    args = ["data", str(EXAMPLES / "d2o-own-data.yaml"), f"model.name={tiny_model_dir}", f"data.path={data}"]
    result = CliRunner().invoke(app, [*args, "--rows", "2"])
    assert result.exit_code == 0, result.output
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    negatives = [r for r in rows if r["label"] is False][:2]
    assert result.output.count("── row") == 2
    for row in negatives:
        text = render_prompt(tokenizer, row["prompt"])
        response = row["completion"][-1]["content"]
        assert text in result.output and response in result.output
        counts = (
            f"prompt {len(tokenizer(text, add_special_tokens=False)['input_ids'])} tokens · "
            f"response {len(tokenizer(response, add_special_tokens=False)['input_ids'])} tokens"
        )
        assert counts in result.output
    # The rows labelled true (the good responses) are not shown: D²O does not read them.
    assert rows[1]["completion"][-1]["content"] not in result.output


def test_qcrd_trains_on_rationale_rows_and_is_graded_on_the_data_files_test_split(
    tiny_model_dir, tmp_path, monkeypatch
):
    from nega.distill.qcrd.run import run

    held_out = [{"question": f"Sam has {a} marbles and finds 1 more. How many?", "label": str(a + 1),
                 "rationales": [f"{a} + 1 = {a + 1}. The answer is {a + 1}."]} for a in range(5)]  # fmt: skip
    test_file = tmp_path / "held_out.jsonl"
    test_file.write_text("".join(json.dumps(r) + "\n" for r in held_out))
    files = f"{{train: {EXAMPLES / 'data' / 'rationales.jsonl'}, test: {test_file}}}"
    extra = {
        "data.path": "null",
        "data.dataset": "json",
        "data.data_files": files,
        "data.limit": 8,
        "train.lr": 1e-2,
        "qcrd.disc_steps": 3,
        "qcrd.disc_batch_size": 8,
        "qcrd.eval_limit": 5,
        "qcrd.negatives_every_steps": 2,
        "qcrd.lag": 1,
    }
    monkeypatch.chdir(ROOT)
    recipe = load_recipe(str(EXAMPLES / "qcrd-own-data.yaml"), _tiny(tiny_model_dir, tmp_path, **extra))
    table = run(recipe, Run(recipe))
    assert set(table) == {"qcrd"} and 0.0 <= table["qcrd"]["accuracy"] <= 1.0
    run_dir = tmp_path / "runs" / recipe.name
    teacher = read_json(_stage(run_dir, "teacher") / "manifest.json")["counts"]
    assert teacher["inputs"] == 8
    graded = read_jsonl(_stage(run_dir, "eval") / "qcrd.jsonl")
    assert sorted(r["label"] for r in graded) == sorted(r["label"] for r in held_out)
