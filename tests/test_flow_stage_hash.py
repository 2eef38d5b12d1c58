"""Every recipe key a training stage hashes makes that stage rerun when it changes; bookkeeping keys don't.

Table-driven over the `train` section (less `BOOKKEEPING_FIELDS`), the `lora` section and every field of
each method's section (less its declared `BOOKKEEPING_FIELDS`: one rule, `stage_key`), through the
stage functions the methods run (`nega.training.train_stage`, D²O's
`train_round`, per-step RL's `train_objective`, QCRD's `train_student`, which trains one stage per
period). A launcher stands in for the training itself: it records each launch and writes the log a
finished training leaves, so "reran" is "every training stage launched again" and "skipped" is "none
did". A table test checks that every field of those sections has a row, so a new field must say
whether it is hashed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nega.config import BOOKKEEPING_FIELDS, DeepSpeedConfig, LoraConfig, TrainConfig, validate_recipe
from nega.pipeline import Run, unlock_run_folder, write_json, write_jsonl
from nega.training import TRAIN_LOG

# field -> a value other than its default; each must rerun a finished training stage.
TRAIN_CHANGES = {
    "lr": 1e-4,
    "epochs": 2.0,
    "max_steps": 7,
    "batch_size": 3,
    "grad_accum": 2,
    "warmup_ratio": 0.25,
    "weight_decay": 0.01,
    "lr_scheduler": "linear",
    "max_grad_norm": 0.5,
    "bf16": True,
    "prefix_sharing": False,
    "deepspeed.stage": 2,
    "deepspeed.offload_optimizer": True,
    "deepspeed.offload_params": True,
}
# Bookkeeping: how often a stage checkpoints or logs, where it reports, and whether activations are
# recomputed (the same weights for less memory); a change must reuse the stage.
TRAIN_BOOKKEEPING = {
    "save_steps": 7,
    "logging_steps": 3,
    "report_to": ["tensorboard"],
    "gradient_checkpointing": True,
}
LORA_CHANGES = {"enabled": False, "r": 8, "alpha": 7, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}

# method -> {section field -> changed value}: every field its training stage must hash.
METHOD_CHANGES = {
    "d2o": {
        "objective": "ga",
        "alpha": 0.37,
        "beta": 0.81,
        "k": 2,
        "rounds": 2,
        "refresh_reference": True,
        "filter_self_samples": True,
        "filter_scorer": "refusal",
        "compare_rounds": 3,
    },
    "stepneg": {
        "loss": "awr",
        "compare": ["outcome_dpo"],
        "beta": 0.37,
        "sft_epochs": 2.0,
        "sft_lr": 1e-4,
        "rft_samples": 2,
        "rft": False,
        "negatives": 3,
        "negatives_per_problem": 3,
        "max_samples_per_problem": 16,
        "best_of": 3,
        "rollout_groups": 3,
        "skip_after_pit": False,
        "step_regex": "[^.]+[.]",
        "awr_clip": 3.5,
        "answer_format": "number",
    },
    "qcrd": {
        "objective": "step_by_step",
        "teacher": "some-org/teacher",
        "teacher_prompt": "Q: {question}",
        "answer_pattern": "answer: (.+)",
        "teacher_samples": 3,
        "teacher_temperature": 0.9,
        "consistency": "gold",
        "alpha1": 0.11,
        "alpha2": 0.22,
        "alpha3": 0.33,
        "alpha3_decay": 0.5,
        "delta": 2.5,
        # One step a period, as the default (null) cuts this 3-step run: the same three stages.
        "negatives_every_steps": 1,
        "lag": 2,
        "negative_temperature": 1.1,
        "disc_steps": 7,
        "disc_folds": 3,
        "disc_every": 2,
        "disc_backbone": "encoder",
        "disc_lr": 1e-4,
        "disc_batch_size": 4,
        "disc_augment_rate": 0.3,
        "step_by_step_alpha": 0.27,
    },
}
# method -> {declared bookkeeping field -> changed value}: none may rerun a finished training stage.
METHOD_BOOKKEEPING = {
    "d2o": {
        "compare": ["ga"],
        "eval_samples": 2,
        "eval_temperature": 0.5,
        "sample_system_prompt": "Be safe.",
    },
    "stepneg": {},
    "qcrd": {"baselines": ["label_only"], "eval_limit": 7},
}

TOY_WORLDS = {"sft": "reasoning", "d2o": "harm", "stepneg": "reasoning", "qcrd": "rationale"}


def _nested_fields(model, prefix: str = "") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        if info.annotation is DeepSpeedConfig:
            out |= _nested_fields(DeepSpeedConfig, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def test_the_tables_cover_every_field():
    from nega.config.registry import METHODS

    assert set(TRAIN_CHANGES) | set(TRAIN_BOOKKEEPING) == _nested_fields(TrainConfig)
    assert set(TRAIN_BOOKKEEPING) == BOOKKEEPING_FIELDS
    assert set(LORA_CHANGES) == set(LoraConfig.model_fields)
    for method in METHOD_CHANGES:
        section = METHODS[method].section_model()
        assert set(METHOD_BOOKKEEPING[method]) == section.BOOKKEEPING_FIELDS, f"{method}: bookkeeping rows"
        hashed = set(section.model_fields) - section.BOOKKEEPING_FIELDS
        assert set(METHOD_CHANGES[method]) == hashed, f"{method}: hashed fields without a row"
        default = section()
        for key, value in (METHOD_CHANGES[method] | METHOD_BOOKKEEPING[method]).items():
            assert getattr(default, key) != value, f"{method}.{key}: the changed value is the default"
    defaults = {"train": TrainConfig(), "lora": LoraConfig()}
    for section, table in [("train", TRAIN_CHANGES | TRAIN_BOOKKEEPING), ("lora", LORA_CHANGES)]:
        for key, value in table.items():
            default = defaults[section]
            for part in key.split("."):
                default = getattr(default, part)
            assert default != value, f"{section}.{key}: the changed value is the default"


def _set(data: dict, dotted: str, value) -> dict:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def _recipe(method: str, changes: dict | None = None):
    data = {
        "name": "flow",
        "method": method,
        "model": {"name": "toy"},
        "data": {"dataset": "toy"},
        "toy": {"world": TOY_WORLDS[method]},
    }
    for dotted, value in (changes or {}).items():
        _set(data, dotted, value)
    return validate_recipe(data)


class RecordingLauncher:
    """Stands in for the training launch: records it and leaves what a finished training leaves."""

    def __init__(self):
        self.launches: list[dict] = []

    def run(self, entry, kwargs, work_dir, *, needs_launcher=False):
        self.launches.append(kwargs)
        out = Path(kwargs["output_dir"])
        (out / "adapter").mkdir(parents=True, exist_ok=True)
        write_json(out / TRAIN_LOG, {"folder": "adapter", "history": []})


def _generic_train(run):
    from nega.training import train_stage

    train_stage(
        run, "train", "nega.sft:train_pairs", model_path="base",
        examples=[{"prompt": "p", "response": "r"}], config={"seed": run.recipe.seed},
    )  # fmt: skip


def _d2o_train(run):
    from nega.align.d2o.run import train_round

    stage = run.stage("reflogps", config={})
    if not stage.done:
        write_jsonl(stage.dir / "examples.jsonl", [{"prompt": "p"}])
        stage.finish()
    train_round(run, "d2o-train", "base", stage, run.recipe.d2o.objective, None, 1)


def _stepneg_train(run):
    from nega.align.stepneg.run import train_objective

    train_objective(run, run.recipe.stepneg.loss, "pi_sft", [{"prompt": "p"}], inputs=[])


# QCRD's rows: at the default 8 per step, three optimizer steps an epoch, each its own period
# (qcrd.negatives_every_steps: null cuts a 3-step run into periods of one step), so three training stages.
QCRD_EXAMPLES = [{"id": str(i), "question": f"q{i}", "label": "a"} for i in range(24)]


def _qcrd_train(run):
    from nega.distill.qcrd.run import train_student
    from nega.distill.qcrd.schedule import PeriodSchedule

    # label_only draws no negatives and fits no discriminator: its periods are training stages only.
    schedule = PeriodSchedule.of(run.recipe, len(QCRD_EXAMPLES), epochs=1)
    train_student(run, run.recipe, "label_only", "base", QCRD_EXAMPLES, schedule, [])


STAGE_OF = {"sft": _generic_train, "d2o": _d2o_train, "stepneg": _stepneg_train, "qcrd": _qcrd_train}
TRAINING_STAGES = {"sft": 1, "d2o": 1, "stepneg": 1, "qcrd": 3}


def _relaunches(tmp_path: Path, method: str, changes: dict) -> int:
    """Finish the method's training stages under the default recipe, open them again unchanged (they must
    all skip), then with `changes`: how many training stages that launched again."""
    folder = tmp_path / "run"
    launcher = RecordingLauncher()
    try:
        STAGE_OF[method](Run(_recipe(method), folder, launcher=launcher))
        first = len(launcher.launches)
        assert first == TRAINING_STAGES[method], (
            f"{method}: {first} training stages, not {TRAINING_STAGES[method]}"
        )
        STAGE_OF[method](Run(_recipe(method), folder, launcher=launcher))
        assert len(launcher.launches) == first, "an unchanged recipe must skip its finished training stages"
        STAGE_OF[method](Run(_recipe(method, changes), folder, launcher=launcher))
    finally:
        unlock_run_folder(folder)
    return len(launcher.launches) - first


def _reruns(tmp_path: Path, method: str, changes: dict) -> bool:
    """Whether `changes` launched every one of the method's training stages again."""
    return _relaunches(tmp_path, method, changes) == TRAINING_STAGES[method]


def _reuses(tmp_path: Path, method: str, changes: dict) -> bool:
    """Whether `changes` left every finished training stage of the method as it was."""
    return _relaunches(tmp_path, method, changes) == 0


@pytest.mark.parametrize("key", sorted(TRAIN_CHANGES))
def test_a_changed_train_key_reruns_the_training_stage(tmp_path, key):
    assert _reruns(tmp_path, "sft", {f"train.{key}": TRAIN_CHANGES[key]}), f"train.{key} is not hashed"


@pytest.mark.parametrize("key", sorted(LORA_CHANGES))
def test_a_changed_lora_key_reruns_the_training_stage(tmp_path, key):
    assert _reruns(tmp_path, "sft", {f"lora.{key}": LORA_CHANGES[key]}), f"lora.{key} is not hashed"


@pytest.mark.parametrize("method", sorted(STAGE_OF))
@pytest.mark.parametrize("key", sorted(TRAIN_BOOKKEEPING))
def test_a_changed_bookkeeping_key_reuses_the_training_stage(tmp_path, method, key):
    assert _reuses(tmp_path, method, {f"train.{key}": TRAIN_BOOKKEEPING[key]}), (
        f"train.{key} leaves the weights unchanged but reran {method}'s training"
    )


@pytest.mark.parametrize(
    ("method", "key"), [(m, k) for m, table in METHOD_CHANGES.items() for k in sorted(table)]
)
def test_a_changed_method_key_reruns_the_methods_training_stage(tmp_path, method, key):
    value = METHOD_CHANGES[method][key]
    assert _reruns(tmp_path, method, {f"{method}.{key}": value}), f"{method}.{key} is not in the train hash"


@pytest.mark.parametrize(
    ("method", "key"), [(m, k) for m, table in METHOD_BOOKKEEPING.items() for k in sorted(table)]
)
def test_a_changed_method_bookkeeping_key_reuses_the_methods_training_stage(tmp_path, method, key):
    value = METHOD_BOOKKEEPING[method][key]
    assert _reuses(tmp_path, method, {f"{method}.{key}": value}), f"{method}.{key} reran the training"


@pytest.mark.parametrize("method", sorted(STAGE_OF))
def test_train_and_lora_keys_rerun_every_methods_training_stage(tmp_path, method):
    """The method's own stage function goes through train_stage, whose hash holds train and lora."""
    assert _reruns(tmp_path / "train", method, {"train.lr": 1e-4})
    assert _reruns(tmp_path / "lora", method, {"lora.r": 8})


def test_a_changed_qcrd_period_length_retrains_its_one_period(tmp_path):
    """Periods of 3 steps instead of 1: the one period left trains other rows for other steps."""
    assert _relaunches(tmp_path / "period", "qcrd", {"qcrd.negatives_every_steps": 3}) == 1
