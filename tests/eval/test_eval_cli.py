"""`nega eval harm` / `nega eval reasoning` end to end on the tiny model, and the metrics on known answers."""

from __future__ import annotations

import json

import pytest
from nega_testing import shared_data
from typer.testing import CliRunner

from nega.cli import app
from nega.eval.reasoning import evaluate_problems
from nega.eval.sets import ProblemSet
from nega.pipeline import read_jsonl
from nega.sampling.base import Completion

runner = CliRunner()


def make_adapter(model_dir, out, seed=0):
    """A LoRA adapter with random (non-zero) weights, so it changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from nega.models import load_base_model, load_tokenizer, save_adapter

    torch.manual_seed(seed)
    model = get_peft_model(
        load_base_model(model_dir),
        LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules="all-linear"),
    )
    return save_adapter(model, load_tokenizer(model_dir), out)


@pytest.fixture
def data_env(monkeypatch):
    monkeypatch.setenv("NEGA_DATA", str(shared_data()))


def test_eval_harm_xstest(tiny_model_dir, tmp_path, data_env):
    shared_data("xstest", "xstest_prompts.csv")
    out = tmp_path / "out"
    args = ["eval", "harm", str(tiny_model_dir), "--prompts", "xstest", "--limit", "6", "--backend", "hf"]
    result = runner.invoke(app, [*args, "--max-tokens", "12", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "harmful rate:" in result.output and "over-refusal rate:" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["harm.json", "harm.md", "harm.png", "samples.jsonl"]
    metrics = json.loads((out / "harm.json").read_text())
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == metrics["n_prompts"] == 6
    unsafe = [r for r in rows if r["label"] == "harmful"]
    safe = [r for r in rows if r["label"] == "safe"]
    assert unsafe and safe
    assert metrics["harmful"]["count"] == sum(r["harmful"] for r in unsafe) and metrics["harmful"][
        "n"
    ] == len(unsafe)
    assert metrics["over_refusal"]["count"] == sum(r["refused"] for r in safe)
    assert set(metrics["categories"]) == {r["category"] for r in rows}
    lo, hi = metrics["harmful"]["ci95"]
    assert 0 <= lo <= metrics["harmful"]["rate"] <= hi <= 1
    assert (out / "harm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "over-refusal rate (safe prompts)" in (out / "harm.md").read_text()


def test_eval_harm_with_a_judge_of_the_evaluated_model_starts_one_engine(tiny_model_dir, tmp_path, data_env):
    """The judge answers through the engine that sampled the answers: one start, not two."""
    from nega.sampling.base import ENGINE_STARTS

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": p, "label": "harmful"}) + "\n" for p in ["steal a car", "hi"])
    )
    before = len(ENGINE_STARTS)
    args = [
        "eval",
        "harm",
        str(tiny_model_dir),
        "--prompts",
        str(prompts),
        "--backend",
        "hf",
        "--max-tokens",
        "6",
    ]
    result = runner.invoke(app, [*args, "--scorer", f"judge:{tiny_model_dir}", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert [s.model for s in ENGINE_STARTS[before:]] == [str(tiny_model_dir)]
    rows = read_jsonl(tmp_path / "out" / "samples.jsonl")
    assert len(rows) == 2 and all("judge_output" in r for r in rows)  # the judge did answer


def test_eval_harm_on_a_run_directory(tiny_model_dir, tmp_path, data_env, monkeypatch):
    """A run directory is evaluated as base model + its final adapter; outputs go under the run."""
    shared_data("advbench", "harmful_behaviors.csv")
    run = tmp_path / "runs" / "demo"
    make_adapter(tiny_model_dir, run / "02-train" / "adapter")
    (run / "recipe.yaml").write_text(
        f"name: demo\nmodel: {{name: {tiny_model_dir}}}\nsampling: {{backend: hf}}\n"
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["eval", "harm", str(run), "--limit", "4", "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    out = run / "eval" / "harm-advbench"
    metrics = json.loads((out / "harm.json").read_text())
    assert metrics["harmful"]["n"] == 4 and metrics["n_safe_prompts"] == 0
    assert str(run / "02-train" / "adapter") in metrics["info"]["target"]


def test_eval_harm_errors_are_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("NEGA_DATA", str(tmp_path / "none"))
    result = runner.invoke(app, ["eval", "harm", "org/model", "--prompts", "advbench"])
    assert result.exit_code == 2 and "NEGA_DATA" in result.output and "Traceback" not in result.output
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    result = runner.invoke(app, ["eval", "harm", "org/model", "--prompts", str(prompts), "--scorer", "nope"])
    assert result.exit_code == 2 and "unknown harm scorer" in result.output
    result = runner.invoke(app, ["eval", "reasoning", "org/model", "--backend", "gpu"])
    assert result.exit_code == 2 and "choose one of auto, hf, vllm, server" in result.output


def test_eval_reasoning_gsm8k(tiny_model_dir, tmp_path, data_env):
    shared_data("gsm8k", "test.jsonl")
    out = tmp_path / "r"
    args = ["eval", "reasoning", str(tiny_model_dir), "--data", "gsm8k", "--samples", "4", "--limit", "4"]
    result = runner.invoke(app, [*args, "--backend", "hf", "--max-tokens", "12", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy (greedy):" in result.output and "pass@4:" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "reasoning.json",
        "reasoning.md",
        "reasoning.png",
        "samples.jsonl",
    ]
    metrics = json.loads((out / "reasoning.json").read_text())
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 4 and all(len(r["samples"]) == 4 for r in rows)
    assert set(metrics["pass@k"]) == set(metrics["maj@k"]) == {"1", "2", "4"}
    assert metrics["pass@k"]["1"] == pytest.approx(sum(r["n_correct"] for r in rows) / 16)
    assert metrics["accuracy"]["count"] == sum(r["greedy_correct"] for r in rows)
    assert [r["answer"] for r in rows] == ["18", "14", "3", "45"]  # spread over 1,319: rows 0, 329, 659, 989


class ScriptedSampler:
    """Greedy calls get `greedy`; sampled calls get `sampled`, one list per prompt."""

    def __init__(self, greedy, sampled):
        self.greedy, self.sampled = greedy, sampled

    def generate(self, prompts, *, n, temperature, **kwargs):
        texts = [[g] for g in self.greedy] if temperature == 0 else self.sampled
        return [[Completion(text=t, finish_reason="stop") for t in group[:n]] for group in texts]


def test_accuracy_pass_and_majority_on_known_answers():
    problems = ProblemSet(
        name="t",
        items=[
            {"question": "2+3?", "answer": "5", "category": "a"},
            {"question": "4+4?", "answer": "8", "category": "b"},
        ],
        source="test",
    )
    sampler = ScriptedSampler(
        greedy=["so \\boxed{5}", "it is 7"],
        sampled=[["5", "5", "6", "\\boxed{5}"], ["8", "9", "9", "no idea"]],
    )
    metrics, rows = evaluate_problems(
        sampler, problems, adapter=None, samples=4, temperature=0.7, max_tokens=8
    )
    assert metrics["accuracy"]["rate"] == 0.5
    assert [r["n_correct"] for r in rows] == [3, 1]
    # pass@k: problem 1 has c=3 of 4, problem 2 c=1 of 4
    assert metrics["pass@k"] == pytest.approx({"1": 0.5, "2": (1.0 + 0.5) / 2, "4": 1.0})
    # maj@4 on problem 2: "9" twice beats "8" once; maj@2 is a tie won by the first answer, "8"
    assert metrics["maj@k"] == pytest.approx({"1": 1.0, "2": 1.0, "4": 0.5})
    assert rows[1]["sample_answers"] == ["8", "9", "9", None]
    assert (
        metrics["categories"]["a"]["accuracy"]["rate"] == 1.0
        and metrics["categories"]["b"]["accuracy"]["rate"] == 0.0
    )
