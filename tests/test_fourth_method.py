"""A fourth method is one folder and one table entry: a package written here, outside nega, with its
recipe section, trainer and run, becomes a method by its entry in `nega.config.registry.METHODS` alone; then
`nega validate` checks its recipes (section keys, ignored keys) and `nega run` trains, evaluates,
reports and names its result, and `nega push` writes its paper on the model card. No nega file is
edited for it."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from nega_testing import CORPUS_PAIRS, lora_b_moved
from typer.testing import CliRunner

FILES = {
    "__init__.py": "",
    "config.py": '''
        """The `fourth:` recipe section."""

        from pydantic import BaseModel, ConfigDict, Field


        class FourthConfig(BaseModel):
            model_config = ConfigDict(extra="forbid")

            weight: float = Field(1.0, gt=0, description="scale of the response NLL")
        ''',
    "trainer.py": '''
        """Weighted SFT: weight x the response-masked NLL."""

        from pathlib import Path

        from nega.sft import SupervisedCollator, encode_sft_pairs, response_nll
        from nega.trainer import MethodTrainer


        class FourthTrainer(MethodTrainer):
            def __init__(self, *args, weight: float, **kwargs):
                super().__init__(*args, metric_prefix="fourth", **kwargs)
                self.weight = weight

            def loss_and_metrics(self, model, inputs):
                nll = response_nll(model, inputs)
                return self.weight * nll, {"nll": nll.detach()}


        def train_policy(recipe, model_path, examples, output_dir, **overrides):
            from nega.models import load_policy
            from nega.training import trained_folder_name, training_arguments

            output_dir = Path(output_dir)
            model, tokenizer = load_policy(model_path, recipe.model, recipe.lora, seed=recipe.seed)
            pairs = [(e["prompt"], e["response"]) for e in examples]
            trainer = FourthTrainer(
                model=model,
                args=training_arguments(recipe.train, output_dir / "checkpoints", seed=recipe.seed, **overrides),
                train_dataset=encode_sft_pairs(tokenizer, pairs, recipe.model.max_length),
                data_collator=SupervisedCollator(tokenizer.pad_token_id),
                weight=recipe.fourth.weight,
            )
            return trainer.fit(tokenizer, output_dir / trained_folder_name(recipe.lora))
        ''',
    "run.py": '''
        """Stages: starting model -> weighted SFT -> greedy accuracy before and after."""

        from nega.data import convert_rows, load_rows
        from nega.eval.stage import START_LABEL, EvalTarget, evaluate, held_out_problems, trained_target
        from nega.models import load_tokenizer
        from nega.sampling.base import render_prompt
        from nega.sft import sft_pair_of
        from nega.stages import base_model, write_report
        from nega.training import train_stage


        def run(recipe, run):
            model_path, model_stage = base_model(run)
            rows, source = load_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed)
            pairs, _ = convert_rows(rows, sft_pair_of, source=source, on_bad_row=recipe.data.on_bad_row)
            tokenizer = load_tokenizer(model_path, recipe.model)
            examples = [{"prompt": render_prompt(tokenizer, p["prompt"]), "response": p["response"]} for p in pairs]
            stage, folder = train_stage(
                run, "fourth-train", "nega_fourth.trainer:train_policy", model_path=model_path, examples=examples,
                config={"train": recipe.train.model_dump(), "fourth": recipe.fourth.model_dump()},
                inputs=[model_stage or model_path],
            )
            run.record_result("fourth", model_path, folder)
            targets = [EvalTarget(START_LABEL, model_path), trained_target("fourth", model_path, folder, recipe.lora)]
            table = evaluate(run, targets, [held_out_problems(recipe)], inputs=[stage])
            write_report(run, table)
            return table
        ''',
}


@pytest.fixture
def fourth_method(tmp_path, monkeypatch):
    """The package on the path and its one entry in the method table."""
    package = tmp_path / "nega_fourth"
    package.mkdir()
    for name, text in FILES.items():
        (package / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    import nega.config.registry
    from nega.config import Method, Paper

    entry = Method(
        section="nega_fourth.config:FourthConfig",
        run="nega_fourth.run:run",
        paper=Paper("Weighted SFT for tests", "Nobody et al., 2026", "https://example.org/fourth"),
        tags=("demo",),
        ignores={"eval.harm": "fourth evaluates held-out problems only"},
    )
    monkeypatch.setattr(nega.config.registry, "METHODS", {**nega.config.registry.METHODS, "fourth": entry})
    yield
    for name in [m for m in sys.modules if m == "nega_fourth" or m.startswith("nega_fourth.")]:
        del sys.modules[name]


def test_a_fourth_method_validates_runs_and_publishes(fourth_method, tiny_model_dir, tmp_path, monkeypatch):
    from nega.cli import app

    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": p, "response": r} for p, r in CORPUS_PAIRS[::9]]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = [{"question": p, "answer": r.rstrip(".").split()[-1]} for p, r in CORPUS_PAIRS[:40:7]]
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems))
    (tmp_path / "fourth.yaml").write_text(
        textwrap.dedent(
            f"""
            name: fourth-demo
            method: fourth
            model: {{name: {tiny_model_dir}, max_length: 64}}
            lora: {{r: 4, alpha: 8, dropout: 0.0}}
            data: {{path: pairs.jsonl}}
            sampling: {{backend: hf, max_tokens: 8}}
            train: {{lr: 0.01, max_steps: 2, batch_size: 4, warmup_ratio: 0.0, logging_steps: 1}}
            eval: {{reasoning: {{data: problems.jsonl, max_tokens: 8}}}}
            fourth: {{weight: 2.0}}
            """
        )
    )
    runner = CliRunner()

    shown = runner.invoke(app, ["validate", "fourth.yaml"])
    assert shown.exit_code == 0, shown.output
    assert "method: fourth\nfourth:\n  weight: 2.0\n" in shown.output
    typo = runner.invoke(app, ["validate", "fourth.yaml", "fourth.wieght=3"])
    assert typo.exit_code == 2 and "fourth.wieght: unknown key; allowed here: weight" in typo.output
    ignored = runner.invoke(app, ["validate", "fourth.yaml", "eval.harm.prompts=advbench"])
    assert ignored.exit_code == 2
    assert (
        "eval.harm: method fourth does not use this key: fourth evaluates held-out problems only"
        in ignored.output
    )
    unknown = runner.invoke(app, ["validate", "fourth.yaml", "method=fifth"])
    assert unknown.exit_code == 2 and "choose one of sft, d2o, stepneg, qcrd, rm, fourth" in unknown.output

    done = runner.invoke(app, ["run", "fourth.yaml"])
    assert done.exit_code == 0, done.output
    run_dir = tmp_path / "runs" / "fourth-demo"
    results = json.loads((run_dir / "results.json").read_text())
    table = results["arms"]
    assert list(table) == ["start", "fourth"] and table["fourth"]["n"] == len(problems)
    (train,) = run_dir.glob("*-fourth-train")
    log = json.loads((train / "train_log.json").read_text())
    assert lora_b_moved(train / "adapter") and log["folder"] == "adapter"
    assert len([h for h in log["history"] if "fourth/nll" in h]) == 2  # the base averaged its metric
    assert results["result"]["label"] == "fourth" and results["method"] == "fourth"

    pushed = runner.invoke(app, ["push", str(run_dir), "--repo-id", "me/fourth", "--dry-run"])
    assert pushed.exit_code == 0, pushed.output
    card = (run_dir / "push" / "me--fourth" / "README.md").read_text()
    assert "[Weighted SFT for tests](https://example.org/fourth) (Nobody et al., 2026)" in card
    assert "\n- demo\n" in card and "| fourth.weight | 2.0 |" in card
