"""QCRD recipes and stages end to end: real-data recipes on a tiny local student, the toy recipe (slow)."""

from __future__ import annotations

import json

import pytest
from nega_testing import shared_data

from nega.config import load_recipe

REAL = {"qcrd-cqa": ("cqa", "cqa_train.json"), "qcrd-svamp": ("svamp", "svamp_train.json")}


def stage_folders(run_dir):
    """name -> folder of a run's stages (`NN-name`); other folders, such as the report's plots, skipped."""
    return {p.name.split("-", 1)[1]: p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit()}


def test_toy_recipe_validates():
    recipe = load_recipe("toy-qcrd")
    assert recipe.method == "qcrd" and recipe.toy.world == "rationale"
    assert recipe.qcrd.objective == "qcrd"
    assert recipe.qcrd.baselines == ["label_only", "step_by_step", "qcrd_no_disc"]


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_recipes_validate_and_their_files_parse(name):
    from nega.distill.qcrd.data import load_teacher_records, split_by_consistency

    folder, file = REAL[name]
    path = shared_data("distill_step_by_step", folder, file)
    recipe = load_recipe(name, [f"data.path={path}"])
    assert recipe.qcrd.consistency == "gold" and recipe.qcrd.teacher is None
    assert "/" in recipe.model.name  # a hub id
    records, _ = load_teacher_records(recipe.data)
    test_records, _ = load_teacher_records(recipe.data, split="test")
    assert len(records) == {"cqa": 9741, "svamp": 800}[folder]
    assert len(test_records) == {"cqa": 1221, "svamp": 200}[folder]
    examples = [split_by_consistency(r, recipe.qcrd.consistency) for r in records]
    assert all(len(e["positives"]) + len(e["negatives"]) == 1 for e in examples)
    assert (
        0.7 < sum(len(e["positives"]) for e in examples) / len(examples) < 0.8
    )  # PaLM's agreement with gold


def tiny_student_for(records, folder):
    from nega.toy.model import build_model, build_tokenizer, save_model

    lines = [r["question"] + " " + r["label"] + " " + r["rationales"][0]["text"] for r in records]
    tokenizer = build_tokenizer(lines * 2, vocab_size=400)
    return save_model(build_model(tokenizer, size="tiny", seed=0), tokenizer, folder)


def label_loss(student, adapter, examples) -> float:
    """Mean NLL of each example's label after its `predict:` prompt, as QCRD's label term scores it."""
    import torch
    from peft import PeftModel

    from nega.distill.qcrd.data import MultiTaskCollator
    from nega.models import load_base_model, load_tokenizer
    from nega.sft import response_nll

    model = load_base_model(student)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    batch = MultiTaskCollator(load_tokenizer(student), rationales=False)(examples)
    with torch.no_grad():
        return response_nll(model.eval(), batch).item()


def test_cqa_recipe_runs_a_few_steps_with_a_tiny_local_student(tmp_path):
    from nega.distill.qcrd.data import parse_step_by_step
    from nega.distill.qcrd.run import run
    from nega.pipeline import Run, read_json, read_jsonl

    path = shared_data("distill_step_by_step", "cqa", "cqa_train.json")
    student = tiny_student_for(parse_step_by_step(path)[:40], tmp_path / "student")
    overrides = [
        f"data.path={path}", f"model.name={student}", "model.dtype=float32", "model.max_length=160",
        "train.bf16=false", "data.limit=12", "train.epochs=1", "train.max_steps=2", "train.batch_size=4",
        "train.grad_accum=1", "train.lr=1e-2", "train.warmup_ratio=0.0", "lora.r=4", "lora.alpha=8",
        "sampling.backend=hf", "sampling.max_tokens=8",
        "qcrd.disc_steps=3", "qcrd.disc_batch_size=8", "qcrd.eval_limit=6", "qcrd.baselines=[]",
        "qcrd.negatives_every_steps=2", "qcrd.lag=1",
    ]  # fmt: skip
    recipe = load_recipe("qcrd-cqa", overrides)
    table = run(recipe, Run(recipe, tmp_path / "run"))
    assert set(table) == {"start", "qcrd"}
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in table.values())
    stages = stage_folders(tmp_path / "run")
    assert set(stages) == {"teacher", "qcrd-p0-negatives", "qcrd-p0-discriminator", "qcrd-p0-train", "eval"}
    teacher = read_json(stages["teacher"] / "manifest.json")["counts"]
    assert teacher["inputs"] == 12 and teacher["positives"] + teacher["negatives"] == 12
    scored = read_jsonl(stages["qcrd-p0-discriminator"] / "examples.jsonl")
    assert all(
        len(e["neg_scores"]) == len(e["negatives"]) and len(e["pos_scores"]) == len(e["positives"])
        for e in scored
    )
    assert all(0.0 <= s <= 1.0 for e in scored for s in e["pos_scores"] + e["neg_scores"])
    assert sum(len(e["negatives"]) for e in scored) > teacher["negatives"]  # self-adversarial samples added
    # Training moved the adapter and lowered the student's label loss on the inputs it trained on.
    from safetensors.torch import load_file

    adapter = stages["qcrd-p0-train"] / "adapter"
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any(t.abs().max() > 0 for name, t in weights.items() if "lora_B" in name)  # B starts at zero
    start, trained = label_loss(student, None, scored), label_loss(student, adapter, scored)
    assert trained < start - 0.05, (start, trained)  # measured: 5.98 -> 5.85
    eval_rows = [json.loads(line) for line in (stages["eval"] / "qcrd.jsonl").read_text().splitlines()]
    assert len(eval_rows) == 6 and all("label" in r for r in eval_rows)


def test_negatives_of_the_second_epoch_come_from_the_student_lag_periods_back(tmp_path):
    """2 epochs of 4 steps, a period of 2 steps, lag 1: periods 2 and 3 (epoch 2) sample the students
    saved after periods 0 and 1, trained ones; α3 decays per period; each period's training stage
    records its hinge statistics and the lagged checkpoint's step."""
    from nega.distill.qcrd.data import parse_step_by_step
    from nega.distill.qcrd.run import run
    from nega.pipeline import Run, read_json

    path = shared_data("distill_step_by_step", "cqa", "cqa_train.json")
    student = tiny_student_for(parse_step_by_step(path)[:40], tmp_path / "student")
    overrides = [
        f"data.path={path}", f"model.name={student}", "model.dtype=float32", "model.max_length=128",
        "train.bf16=false", "data.limit=8", "train.epochs=2", "train.batch_size=2", "train.grad_accum=1",
        "train.lr=1e-2", "train.warmup_ratio=0.0", "lora.r=4", "lora.alpha=8", "sampling.backend=hf",
        "sampling.max_tokens=6", "qcrd.disc_backbone=encoder", "qcrd.disc_folds=1", "qcrd.disc_steps=2",
        "qcrd.eval_limit=2", "qcrd.baselines=[]", "qcrd.negatives_every_steps=2", "qcrd.lag=1",
        "eval.before=false",
    ]  # fmt: skip
    recipe = load_recipe("qcrd-cqa", overrides)
    run(recipe, Run(recipe, tmp_path / "run"))
    stages = stage_folders(tmp_path / "run")
    manifest = {name: read_json(folder / "manifest.json") for name, folder in stages.items()}
    negatives = [manifest[f"qcrd-p{p}-negatives"] for p in range(4)]
    # checkpoint k = the student after k periods of 2 steps; period p samples checkpoint p − 1 (≥ 0)
    assert [n["counts"]["source_checkpoint"] for n in negatives] == [0, 0, 1, 2]
    assert [n["counts"]["source_step"] for n in negatives] == [0, 0, 2, 4]
    assert negatives[0]["source"] == negatives[1]["source"] == "start"
    for p in (2, 3):  # epoch 2: a trained student, exactly one period behind
        assert negatives[p]["counts"]["source_step"] > 0
        assert negatives[p]["source"] == f"@run/{stages[f'qcrd-p{p - 2}-train'].name}/adapter"
    assert "qcrd-p4-negatives" not in manifest  # 8 steps in all
    train = [manifest[f"qcrd-p{p}-train"]["counts"] for p in range(4)]
    assert [t["steps"] for t in train] == [2, 2, 2, 2]
    assert [t["first_step"] for t in train] == [0, 2, 4, 6]
    assert [t["source_step"] for t in train] == [0, 0, 2, 4]
    assert [t["alpha3"] for t in train] == pytest.approx([0.5 * 0.9**p for p in range(4)])
    for t in train:
        assert 0.0 <= t["hinge_active"] <= 1.0 and t["hard_negative_ce"] > 0
    log = read_json(stages["qcrd-p3-train"] / "train_log.json")["history"]
    assert log[-1]["period_source_step"] == 4 and log[-1]["period_hinge_active"] == train[3]["hinge_active"]
    # The optimizer carries over: every period leaves its state for the next.
    assert all((stages[f"qcrd-p{p}-train"] / "optimizer.safetensors").exists() for p in range(4))
    # Discriminator: fitted at the first period of each epoch, reused in between.
    assert [manifest[f"qcrd-p{p}-discriminator"]["counts"]["trained"] for p in range(4)] == [1, 0, 1, 0]
    # Each period trains on the negatives it sampled for exactly its own rows.
    for p in range(4):
        rows = [json.loads(line) for line in (stages[f"qcrd-p{p}-train"] / "examples.jsonl").open()]
        sampled = {
            json.loads(line)["id"] for line in (stages[f"qcrd-p{p}-negatives"] / "negatives.jsonl").open()
        }
        assert len(rows) == 4 and {r["id"] for r in rows} == sampled
    # Periods are stages: running again finds every one finished and redoes none.
    run(recipe, Run(recipe, tmp_path / "run"))
    again = {
        name: read_json(folder / "manifest.json") for name, folder in stage_folders(tmp_path / "run").items()
    }
    assert again == manifest


@pytest.mark.slow
def test_toy_qcrd_runs_every_objective_and_draws_negatives_from_the_lagged_student(tmp_path):
    from typer.testing import CliRunner

    from nega.cli import app
    from nega.pipeline import read_json, read_jsonl

    overrides = [
        "toy.steps=200", "toy.n_train=48", "toy.n_test=24", "train.epochs=3", "qcrd.lag=1", "qcrd.disc_steps=20",
        "qcrd.negatives_every_steps=12",
    ]  # fmt: skip
    result = CliRunner().invoke(app, ["run", "toy-qcrd", *overrides, "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    table = read_json(tmp_path / "run" / "results.json")["arms"]
    assert set(table) == {"start", "qcrd", "label_only", "step_by_step", "qcrd_no_disc"}
    for row in table.values():
        assert set(row) == {"accuracy", "rationale_quality", "rationale_accuracy"}
    stages = stage_folders(tmp_path / "run")
    # 12 steps an epoch, a period of 12, lag 1: periods 0 and 1 sample the starting student, period 2
    # the student after period 0
    assert read_json(stages["qcrd-p0-negatives"] / "manifest.json")["source"] == "start"
    assert read_json(stages["qcrd-p1-negatives"] / "manifest.json")["source"] == "start"
    assert read_json(stages["qcrd-p2-negatives"] / "manifest.json")["source"] == (
        f"@run/{stages['qcrd-p0-train'].name}/model"  # toy-qcrd fine-tunes fully
    )
    assert "label_only-p0-negatives" not in stages and "step_by_step-p1-negatives" not in stages
    assert "qcrd_no_disc-p1-negatives" in stages and "qcrd_no_disc-p1-discriminator" not in stages
    # cross-fitted: one discriminator per fold, each scoring the inputs it did not train on
    disc = read_json(stages["qcrd-p0-discriminator"] / "manifest.json")
    assert len(disc["fit"]) == 2 and sum(f["held_out"] for f in disc["fit"]) == 48
    assert all(0.0 <= f["held_out_accuracy"] <= 1.0 for f in disc["fit"])
    assert {p.name for p in stages["qcrd-p1-discriminator"].glob("*.safetensors")} == {
        "discriminator-fold0.safetensors",
        "discriminator-fold1.safetensors",
    }
    # Every objective's final student differs from the starting one and has a lower label loss on the
    # training inputs (each trains on the label term, weighted or not). Where the toy student starts
    # good at labels the fall is small, hence a relative bound; an untrained student gives an equal loss.
    import torch
    from safetensors.torch import load_file

    start = stages["toy-model"] / "model"
    examples = read_jsonl(stages["teacher"] / "examples.jsonl")
    start_loss = label_loss(start, None, examples)
    start_weights = load_file(start / "model.safetensors")
    for objective in table.keys() - {"start"}:
        final = stages[f"{objective}-p2-train"] / "model"
        weights = load_file(final / "model.safetensors")
        assert any(not torch.equal(weights[k], start_weights[k]) for k in start_weights), objective
        loss = label_loss(final, None, examples)
        assert loss < 0.997 * start_loss, (objective, start_loss, loss)


def test_the_students_are_evaluated_on_the_test_split_never_on_their_training_rows(tmp_path):
    """A distilling step-by-step file's test split is read whole (data.limit counts training rows, the
    test size is qcrd.eval_limit); a rationale file with no test split is not evaluated at all, rather than
    on the rows the students trained on."""
    from nega.distill.qcrd.data import PREDICT_PREFIX
    from nega.distill.qcrd.run import student_set

    path = shared_data("distill_step_by_step", "svamp", "svamp_train.json")
    recipe = load_recipe("qcrd-svamp", [f"data.path={path}", "data.limit=3", "qcrd.eval_limit=20"])
    held_out = student_set(recipe)
    test_questions = [json.loads(line)["input"] for line in (path.parent / "svamp_test.json").open()]
    assert [p[0]["content"].removeprefix(PREDICT_PREFIX) for p in held_out.prompts] == test_questions[:20]

    own = tmp_path / "rationales.jsonl"
    own.write_text(json.dumps({"question": "2 + 2?", "label": "4", "rationale": "2 and 2 make 4."}) + "\n")
    assert student_set(load_recipe("qcrd-svamp", [f"data.path={own}", "data.format=rationales"])) is None
    records = [{"question": "3 + 1?", "label": "4", "rationales": []}]
    given = student_set(load_recipe("qcrd-svamp", [f"data.path={own}"]), records=records, name="validation")
    assert len(given.prompts) == 1 and given.score(["4"])["accuracy"] == 1.0
    # Records given by the caller (a benchmark's validation set) are used whole: qcrd.eval_limit sizes
    # the test split only.
    five = records * 5
    limited = load_recipe("qcrd-svamp", [f"data.path={own}", "qcrd.eval_limit=2"])
    assert len(student_set(limited, records=five, name="validation").prompts) == 5


def test_a_teacher_model_is_sampled_once_through_the_sample_stage_and_its_engine_closed(tmp_path):
    """qcrd.teacher: `teacher-sample` samples teacher_samples rationales per input on the run's engine for
    the teacher (one start, closed when the stage ends); `teacher` splits them; a second run starts none."""
    from nega.distill.qcrd.data import parse_step_by_step
    from nega.distill.qcrd.run import teacher_stage
    from nega.pipeline import Run, read_json, read_jsonl
    from nega.sampling.base import ENGINE_STARTS

    path = shared_data("distill_step_by_step", "cqa", "cqa_train.json")
    student = tiny_student_for(parse_step_by_step(path)[:40], tmp_path / "student")
    teacher = tiny_student_for(parse_step_by_step(path)[40:80], tmp_path / "teacher")
    overrides = [
        f"data.path={path}", f"model.name={student}", "data.limit=5", "sampling.backend=hf",
        "sampling.max_tokens=6", f"qcrd.teacher={teacher}", "qcrd.teacher_samples=3",
        "qcrd.teacher_temperature=1.0", "qcrd.consistency=majority", "qcrd.answer_pattern=(\\w+)",
    ]  # fmt: skip
    recipe = load_recipe("qcrd-cqa", overrides)
    before = len(ENGINE_STARTS)
    with Run(recipe, tmp_path / "run") as run:
        stage = teacher_stage(run, recipe, [])
        assert run.engines is not None and not run.engines.samplers  # the teacher's engine is closed
    assert [(s.backend, s.model) for s in ENGINE_STARTS[before:]] == [("hf", str(teacher))]
    stages = stage_folders(tmp_path / "run")
    assert list(stages) == ["teacher-sample", "teacher"] and stages["teacher"] == stage.dir
    records = read_jsonl(stage.dir / "records.jsonl")
    sampled = read_jsonl(stages["teacher-sample"] / "samples.jsonl")
    assert records == sampled and len(records) == 5
    rows = parse_step_by_step(path)[:5]
    assert [r["id"] for r in records] == [r["id"] for r in rows]
    assert all(0 < len(r["rationales"]) <= 3 for r in records)
    assert any(len({x["text"] for x in r["rationales"]}) > 1 for r in records)  # sampled, not repeated
    counts = read_json(stage.dir / "manifest.json")["counts"]
    assert counts["positives"] + counts["negatives"] == sum(len(r["rationales"]) for r in records)
    with Run(recipe, tmp_path / "run") as run:
        teacher_stage(run, recipe, [])
    assert len(ENGINE_STARTS) == before + 1
