"""Every method key that shapes training reaches the loss function with the value the recipe gave it.

One table per method section (`METHODS` in nega/config/registry.py): each field is either a `Loss` row (a
distinctive value set in the recipe must arrive as an argument of the method's pure loss function) or
a `Choice` row (the value picks which loss function is called), or an `Elsewhere` row naming the test
files that check it instead (sampling counts, stage layout, evaluation). `test_the_tables_cover_every_field`
fails when a section gains a field without a row.

The loss functions are wrapped where the trainer module calls them, recording their bound arguments;
each setup then trains on the tiny model through the method's own stage function
(`nega.training.train_stage` -> in-process launcher -> `train_on_rank`, which rebuilds the recipe from
its JSON), so a value lost anywhere between the YAML and the loss call fails its row. D²O, per-step RL
and SFT train one step; QCRD trains three, in two periods, through `train_student` (its negatives
and discriminator stages included, the sampler answering a fixed rationale), so α3 arrives decayed once
per period. The `train` section's fields are pinned the same way at the TrainingArguments every
method's Trainer runs with.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nega.config import METHODS, TrainConfig, validate_recipe

ROOT = Path(__file__).resolve().parents[1]
THIS = "tests/test_flow_method_keys.py"


@dataclass(frozen=True)
class Loss:
    """(setup, loss function, argument, value that must arrive); a dotted argument reads into a
    `**weights` mapping."""

    checks: tuple[tuple[str, str, str, Any], ...]


@dataclass(frozen=True)
class EachCall:
    """A value that must arrive at the loss calls in this order, one per training step."""

    values: tuple


@dataclass(frozen=True)
class Choice:
    """The field's value picks the loss function: value -> the one function the trainer must call."""

    functions: dict[str, str]


@dataclass(frozen=True)
class Elsewhere:
    """Not a loss input: `files` are the tests that check it instead (each mentions the key)."""

    why: str
    files: tuple[str, ...]


D2O = {"alpha": 0.37, "beta": 0.81}
STEPNEG = {"beta": 0.37, "awr_clip": 3.5}
QCRD = {
    "alpha1": 0.11,
    "alpha2": 0.22,
    "alpha3": 0.33,
    "alpha3_decay": 0.5,
    "delta": 2.5,
    "step_by_step_alpha": 0.27,
}
# How QCRD's setups train: 4 inputs, train.max_steps (1) steps an epoch for QCRD_EPOCHS epochs, cut into
# periods of qcrd.negatives_every_steps = 2 steps: period 0 trains steps 0 and 1, period 1 step 2.
QCRD_EPOCHS = 3
QCRD_SCHEDULE = {"negatives_every_steps": 2}
QCRD_PERIOD_OF_STEP = (0, 0, 1)
QCRD_PERIOD_STEPS = (2, 2, 1)  # each step's Trainer runs its period's steps (max_steps)
# α3 decays once per period (α3 · decay^period); with the default period length (null: an eighth of the
# run, here 1 step) it would decay at every step instead.
ALPHA3_BY_STEP = EachCall(tuple(QCRD["alpha3"] * QCRD["alpha3_decay"] ** p for p in QCRD_PERIOD_OF_STEP))
# The discriminator the qcrd objective fits between periods: small, so its fits take a moment.
QCRD_DISCRIMINATOR = {"disc_backbone": "encoder", "disc_steps": 2, "disc_batch_size": 4, "disc_folds": 1}

D2O_OBJECTIVES = {
    "d2o": "d2o_loss",
    "dpo_self": "dpo_loss",
    "ga": "ga_loss",
    "kto_neg": "kto_undesirable_loss",
    "sft_self": "sft_self_loss",
}
STEPNEG_LOSSES = {"dpo": "dpo_loss", "outcome_dpo": "dpo_loss", "awr": "awr_loss"}
QCRD_OBJECTIVES = {
    "qcrd": "qcrd_loss",
    "qcrd_no_disc": "qcrd_no_disc_loss",
    "step_by_step": "step_by_step_loss",
    "label_only": "label_only_loss",
}

# setup -> (method, its section); every setup trains one step and records its loss calls.
SETUPS: dict[str, tuple[str, dict | None]] = {
    **{f"d2o-{o}": ("d2o", {"objective": o, **D2O}) for o in D2O_OBJECTIVES},
    **{f"stepneg-{o}": ("stepneg", {"loss": o, **STEPNEG}) for o in STEPNEG_LOSSES},
    **{
        f"qcrd-{o}": ("qcrd", {"objective": o, **QCRD, **QCRD_SCHEDULE, **QCRD_DISCRIMINATOR})
        for o in QCRD_OBJECTIVES
    },
    "sft": ("sft", None),
}


def _qcrd_weight_checks(field: str, value) -> tuple:
    argument = "alpha3" if field in ("alpha3_decay", "negatives_every_steps") else field
    return (
        ("qcrd-qcrd", "qcrd_loss", argument, value),
        ("qcrd-qcrd_no_disc", "qcrd_no_disc_loss", f"weights.{argument}", value),
    )


FLOW: dict[str, dict[str, Loss | Choice | Elsewhere]] = {
    "sft": {},  # no section of its own: its train section is TRAIN_FLOW below
    "d2o": {
        "objective": Choice(D2O_OBJECTIVES),
        "alpha": Loss((("d2o-d2o", "d2o_loss", "alpha", D2O["alpha"]),)),
        "beta": Loss(
            (
                ("d2o-d2o", "d2o_loss", "beta", D2O["beta"]),
                ("d2o-dpo_self", "dpo_loss", "beta", D2O["beta"]),
                ("d2o-kto_neg", "kto_undesirable_loss", "beta", D2O["beta"]),
            )
        ),
        "k": Elsewhere(
            "self-samples kept per prompt by the reference stage", ("tests/align/d2o/test_data.py",)
        ),
        "rounds": Elsewhere("online rounds: stages and budget split", ("tests/align/d2o/test_run.py",)),
        "refresh_reference": Elsewhere("online reference = last adapter", ("tests/align/d2o/test_run.py",)),
        "sample_system_prompt": Elsewhere(
            "system prompt of the sample stage only", ("tests/align/d2o/test_run.py",)
        ),
        "filter_self_samples": Elsewhere("drops flagged self-samples", ("tests/align/d2o/test_run.py",)),
        "filter_scorer": Elsewhere("scorer of that filter", ("tests/align/d2o/test_run.py",)),
        "compare": Elsewhere("extra objectives trained beside", ("tests/align/d2o/test_run.py",)),
        "compare_rounds": Elsewhere("rounds of d2o_online", ("tests/align/d2o/test_run.py",)),
        "eval_samples": Elsewhere(
            "toy evaluation's completions per prompt", ("tests/test_flow_method_keys.py",)
        ),
        "eval_temperature": Elsewhere("toy evaluation's temperature", (THIS,)),
    },
    "stepneg": {
        "loss": Choice(STEPNEG_LOSSES),
        "beta": Loss(tuple((f"stepneg-{o}", f, "beta", STEPNEG["beta"]) for o, f in STEPNEG_LOSSES.items())),
        "awr_clip": Loss((("stepneg-awr", "awr_loss", "clip", STEPNEG["awr_clip"]),)),
        "compare": Elsewhere("extra objectives trained beside", ("tests/align/stepneg/test_stepneg_run.py",)),
        "sft_epochs": Elsewhere("SFT stage's epochs", ("tests/align/stepneg/test_stepneg_run.py",)),
        "sft_lr": Elsewhere("SFT stage's learning rate", ("tests/align/stepneg/test_stepneg_run.py",)),
        "rft_samples": Elsewhere("RFT samples per problem", ("tests/align/stepneg/test_stepneg_run.py",)),
        "rft": Elsewhere("runs the RFT stage", ("tests/align/stepneg/test_stepneg_run.py",)),
        "negatives": Elsewhere(
            "samples per negatives round", ("tests/align/stepneg/test_stepneg_negatives.py",)
        ),
        "negatives_per_problem": Elsewhere(
            "distinct wrong solutions collected", ("tests/align/stepneg/test_stepneg_negatives.py",)
        ),
        "max_samples_per_problem": Elsewhere(
            "negatives stage's budget", ("tests/align/stepneg/test_stepneg_negatives.py",)
        ),
        "best_of": Elsewhere("K of the value estimate", ("tests/align/stepneg/test_stepneg_rollouts.py",)),
        "rollout_groups": Elsewhere(
            "rollout groups per prefix", ("tests/align/stepneg/test_stepneg_run.py",)
        ),
        "skip_after_pit": Elsewhere("rollouts past a pit", ("tests/align/stepneg/test_stepneg_rollouts.py",)),
        "step_regex": Elsewhere(
            "splits solutions into steps", ("tests/align/stepneg/test_stepneg_steps.py",)
        ),
        "answer_format": Elsewhere("answer grading", ("tests/align/stepneg/test_stepneg_run.py",)),
    },
    "rm": {
        "test_split": Elsewhere("split of the test pairs", ("tests/rewards/rm/test_rm_data.py",)),
        "test_path": Elsewhere("file of the test pairs", ("tests/rewards/rm/test_rm_data.py",)),
        "hold_out": Elsewhere("test pairs held out of the data", ("tests/rewards/rm/test_rm_data.py",)),
        "test_limit": Elsewhere("test pairs scored", ("tests/rewards/rm/test_rm_data.py",)),
        "score_batch_size": Elsewhere("pairs per scoring pass", ("tests/rewards/rm/test_rm_run.py",)),
        "calibration_fraction": Elsewhere(
            "pairs held out to calibrate", ("tests/rewards/rm/test_rm_data.py",)
        ),
    },
    "qcrd": {
        "objective": Choice(QCRD_OBJECTIVES),
        **{k: Loss(_qcrd_weight_checks(k, QCRD[k])) for k in ("alpha1", "alpha2", "delta")},
        "alpha3": Loss(_qcrd_weight_checks("alpha3", ALPHA3_BY_STEP)),
        "alpha3_decay": Loss(_qcrd_weight_checks("alpha3_decay", ALPHA3_BY_STEP)),
        # The period length decides at which steps α3 decays (and the Trainers' max_steps, pinned below).
        "negatives_every_steps": Loss(_qcrd_weight_checks("negatives_every_steps", ALPHA3_BY_STEP)),
        "step_by_step_alpha": Loss(
            (("qcrd-step_by_step", "step_by_step_loss", "alpha", QCRD["step_by_step_alpha"]),)
        ),
        "baselines": Elsewhere("extra objectives trained beside", ("tests/distill/qcrd/test_qcrd_run.py",)),
        "teacher": Elsewhere("teacher model or data rationales", ("tests/distill/qcrd/test_qcrd_run.py",)),
        "answer_pattern": Elsewhere("answer of a rationale", ("tests/test_docs.py",)),
        "consistency": Elsewhere("positive/negative split", ("tests/distill/qcrd/test_qcrd_data.py",)),
        "lag": Elsewhere("lagged negatives' checkpoint", ("tests/distill/qcrd/test_qcrd_run.py",)),
        "disc_steps": Elsewhere("discriminator fit steps", ("tests/distill/qcrd/test_qcrd_run.py",)),
        "disc_folds": Elsewhere("cross-fitting folds", ("tests/distill/qcrd/test_qcrd_discriminator.py",)),
        "disc_batch_size": Elsewhere("discriminator batch", ("tests/distill/qcrd/test_qcrd_run.py",)),
        "eval_limit": Elsewhere("test questions evaluated", ("tests/distill/qcrd/test_qcrd_run.py",)),
        # Read by the teacher, negatives and discriminator stages: pinned at their calls below.
        "teacher_prompt": Elsewhere("teacher's user message", (THIS,)),
        "teacher_samples": Elsewhere("rationales per question from the teacher", (THIS,)),
        "teacher_temperature": Elsewhere("teacher's sampling temperature", (THIS,)),
        "negative_temperature": Elsewhere("lagged student's sampling temperature", (THIS,)),
        "disc_every": Elsewhere("epochs between discriminator fits", (THIS,)),
        "disc_backbone": Elsewhere("discriminator backbone", (THIS,)),
        "disc_lr": Elsewhere("discriminator learning rate", (THIS,)),
        "disc_augment_rate": Elsewhere("discriminator augmentation", (THIS,)),
    },
}

# train field -> (value set in every setup's recipe, TrainingArguments attribute it must reach)
TRAIN_VALUES = {
    "lr": (0.0123, "learning_rate"),
    "epochs": (2.5, "num_train_epochs"),
    "max_steps": (1, "max_steps"),
    "batch_size": (2, "per_device_train_batch_size"),
    "grad_accum": (1, "gradient_accumulation_steps"),
    "weight_decay": (0.031, "weight_decay"),
    "lr_scheduler": ("linear", "lr_scheduler_type"),
    "max_grad_norm": (0.77, "max_grad_norm"),
    "save_steps": (100, "save_steps"),
    "gradient_checkpointing": (True, "gradient_checkpointing"),
    "warmup_ratio": (0.0, None),  # warmup_ratio or warmup_steps by transformers version: below
    "prefix_sharing": (False, None),  # off: no packed batch reaches the loss (below)
}
TRAIN_ELSEWHERE = {
    "logging_steps": ("tests/test_training.py",),
    "bf16": ("tests/test_plan.py",),
    "deepspeed": ("tests/test_distributed.py",),
    "report_to": ("tests/test_training.py",),
}
SEED = 5


def test_the_tables_cover_every_field():
    for name, method in METHODS.items():
        section = method.section_model()
        fields = set(section.model_fields) if section is not None else set()
        assert set(FLOW[name]) == fields, f"{name}: rows missing {fields - set(FLOW[name])}"
    assert set(FLOW) == set(METHODS)
    assert set(TRAIN_VALUES) | set(TRAIN_ELSEWHERE) == set(TrainConfig.model_fields)
    for name, table in FLOW.items():
        for field, row in table.items():
            if isinstance(row, Loss):
                assert all(setup in SETUPS and SETUPS[setup][0] == name for setup, *_ in row.checks)
            if isinstance(row, Choice):
                assert set(row.functions) == set(_literal_values(METHODS[name].section_model(), field))
            if isinstance(row, Elsewhere):
                assert row.files, f"{name}.{field}: name the tests that check it"
                for file in row.files:
                    text = (ROOT / file).read_text()
                    assert re.search(rf"\b{field}\b", text), f"{file} never mentions {name}.{field}"
    for field, files in TRAIN_ELSEWHERE.items():
        assert all(re.search(rf"\b{field}\b", (ROOT / f).read_text()) for f in files), field


def _literal_values(section, field: str) -> tuple:
    return section.model_fields[field].annotation.__args__


# --- one training step per setup, loss calls recorded --------------------------------------------------

PROMPT = "<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n"


def _trainer_module(method: str):
    import nega.align.d2o.trainer
    import nega.align.stepneg.trainer
    import nega.distill.qcrd.trainer
    import nega.sft

    return {
        "d2o": nega.align.d2o.trainer,
        "stepneg": nega.align.stepneg.trainer,
        "qcrd": nega.distill.qcrd.trainer,
        "sft": nega.sft,
    }[method]


LOSS_FUNCTIONS = {
    "d2o": sorted(set(D2O_OBJECTIVES.values())),
    "stepneg": sorted(set(STEPNEG_LOSSES.values())),
    "qcrd": sorted(QCRD_OBJECTIVES.values()),
    "sft": ["response_nll"],
}


def _recipe(model_dir, tmp_path, method: str, section: dict | None):
    data = {
        "name": "flow",
        "method": method,
        "seed": SEED,
        "output_dir": str(tmp_path),
        "model": {"name": str(model_dir), "max_length": 64},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"dataset": "unused"},
        "train": {k: v for k, (v, _) in TRAIN_VALUES.items()},
    }
    if section is not None:
        data[method] = section
    return validate_recipe(data)


def _train_d2o(run, model_dir):
    from nega.align.d2o.data import build_examples
    from nega.align.d2o.run import train_objectives, training_plan
    from nega.pipeline import write_jsonl

    prompts = [PROMPT, "<|user|>\nsay hello.\n<|assistant|>\n"]
    samples = [(["2 plus 3 is 5.", "5"], [True, True]), (["hello there"], [True])]
    counter = iter(range(100))
    examples = build_examples(
        prompts,
        ["2 plus 3 is 9.", "go away"],
        samples,
        lambda pairs, eos: [-3.0 - next(counter) for _ in pairs],
    )
    references = run.stage("reflogps", config={})
    write_jsonl(references.dir / "examples.jsonl", examples)
    references.finish()
    train_objectives(run, str(model_dir), [], prompts, references, training_plan(run.recipe.d2o))


def _train_stepneg(run, model_dir):
    from nega.align.stepneg.run import train_objective

    loss = run.recipe.stepneg.loss
    if loss == "awr":
        examples = [{"prompt": PROMPT, "steps": ["2 plus 3 ", "is 6"], "advantages": [0.5, -1.0]}] * 2
    else:
        pair = {
            "prompt": PROMPT,
            "chosen": "2 plus 3 is 5.",
            "rejected": "2 plus 3 is 6",
            "rejected_eos": False,
        }
        examples = [{**pair, "ref_chosen": -9.0, "ref_rejected": -7.5}] * 2
    train_objective(run, loss, str(model_dir), examples, inputs=[])


QCRD_INPUTS = [
    {
        "id": str(i),
        "question": f"is 7 more than {i}?",
        "label": "yes",
        "positives": ["7 is more than it. answer: yes"],
        "negatives": ["7 is less. answer: no"],
    }
    for i in range(4)
]


def _train_qcrd(run, model_dir):
    from nega.distill.qcrd.run import train_student
    from nega.distill.qcrd.schedule import PeriodSchedule

    # What `nega.distill.qcrd.run.run` does once the teacher stage has split the rationales.
    schedule = PeriodSchedule.of(run.recipe, len(QCRD_INPUTS), QCRD_EPOCHS)
    assert schedule.periods == 2
    train_student(run, run.recipe, run.recipe.qcrd.objective, str(model_dir), QCRD_INPUTS, schedule, [])


def _train_sft(run, model_dir):
    from nega.sft import sft_stage

    sft_stage(run, "sft", str(model_dir), [(PROMPT, "2 plus 3 is 5."), (PROMPT, "5")])


TRAIN = {"d2o": _train_d2o, "stepneg": _train_stepneg, "qcrd": _train_qcrd, "sft": _train_sft}


def _recorder(function, name: str, calls: list):
    signature = inspect.signature(function)

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append((name, dict(bound.arguments)))
        return function(*args, **kwargs)

    return record


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """setup -> {"losses": [(function, arguments)], "args": [TrainingArguments], "packed": [bool]} of its
    training steps, trained on first use."""
    import nega.sampling
    import nega.trainer
    from nega.pipeline import Run, unlock_run_folder

    done: dict[str, dict] = {}

    def get(setup: str) -> dict:
        if setup in done:
            return done[setup]
        method, section = SETUPS[setup]
        module = _trainer_module(method)
        losses, args, packed = [], [], []
        compute_loss = nega.trainer.MethodTrainer.compute_loss

        def compute_and_record(self, model, inputs, *a, **k):
            args.append(self.args)
            packed.append("packed_ids" in inputs)
            return compute_loss(self, model, inputs, *a, **k)

        folder = tmp_path_factory.mktemp(setup)
        with pytest.MonkeyPatch.context() as patch:
            for name in LOSS_FUNCTIONS[method]:
                patch.setattr(module, name, _recorder(getattr(module, name), name, losses))
            patch.setattr(nega.trainer.MethodTrainer, "compute_loss", compute_and_record)
            # QCRD's negatives stages sample the lagged student: a fixed rationale stands in.
            patch.setattr(nega.sampling, "make_sampler", lambda *a, **k: RecordingSampler([]))
            recipe = _recipe(tiny_model_dir, folder, method, section)
            run = Run(recipe, folder / "run")
            try:
                TRAIN[method](run, tiny_model_dir)
            finally:
                unlock_run_folder(run.dir)
        assert losses and args, f"{setup}: no training step ran"
        done[setup] = {"losses": losses, "args": args, "packed": packed}
        return done[setup]

    return get


def _argument(arguments: dict, dotted: str):
    value = arguments
    for part in dotted.split("."):
        value = value[part]
    return value


ROWS = [(m, f) for m, table in FLOW.items() for f, row in table.items() if not isinstance(row, Elsewhere)]


@pytest.mark.parametrize(("method", "field"), ROWS, ids=[f"{m}.{f}" for m, f in ROWS])
def test_a_recipe_value_reaches_the_loss(trained, method, field):
    row = FLOW[method][field]
    if isinstance(row, Choice):
        for value, function in row.functions.items():
            called = {name for name, _ in trained(f"{method}-{value}")["losses"]}
            assert called == {function}, f"{method}.{field}={value} must train with {function}, not {called}"
        return
    for setup, function, argument, expected in row.checks:
        calls = [a for name, a in trained(setup)["losses"] if name == function]
        assert calls, f"{setup}: {function} was never called"
        if isinstance(expected, EachCall):
            got = [_argument(arguments, argument) for arguments in calls]
            assert got == pytest.approx(list(expected.values)), (
                f"{method}.{field}: {function}({argument}=...) got {got} step by step, the recipe said "
                f"{list(expected.values)}"
            )
            continue
        for arguments in calls:
            got = _argument(arguments, argument)
            assert got == pytest.approx(expected), (
                f"{method}.{field}: {function}({argument}=...) got {got}, the recipe said {expected}"
            )


@pytest.mark.parametrize("setup", ["sft", "d2o-d2o", "stepneg-dpo", "qcrd-qcrd"])
def test_train_section_reaches_the_trainers_arguments(trained, setup):
    every = trained(setup)["args"]
    args = every[0]
    for field, (value, attribute) in TRAIN_VALUES.items():
        if attribute is not None and not (setup.startswith("qcrd") and field == "max_steps"):
            assert getattr(args, attribute) == pytest.approx(value), f"train.{field} -> {attribute}"
    warmup = getattr(args, "warmup_ratio", None) or getattr(args, "warmup_steps", None) or 0.0
    assert warmup == pytest.approx(TRAIN_VALUES["warmup_ratio"][0])
    if setup.startswith("qcrd"):
        # train.max_steps caps an epoch's steps (1 here, else 2 for 4 inputs at 2 a step): 3 steps in
        # periods of 2; each period's Trainer runs its own steps and is seeded by its period.
        assert [a.max_steps for a in every] == list(QCRD_PERIOD_STEPS)
        assert [a.seed for a in every] == [SEED + p for p in QCRD_PERIOD_OF_STEP]
    else:
        assert len(every) == 1 and args.seed == SEED
    assert not any(trained(setup)["packed"]), "train.prefix_sharing: false still packed the batch"


# --- keys that shape sampling or evaluation rather than the loss ----------------------------------------


def test_d2o_eval_samples_and_temperature_reach_the_toy_evaluation():
    from nega.align.d2o.run import toy_harm_set

    recipe = validate_recipe(
        {
            "name": "flow", "method": "d2o", "model": {"name": "toy"}, "data": {"dataset": "toy"},
            "toy": {"world": "harm", "n_test": 4}, "d2o": {"eval_samples": 3, "eval_temperature": 0.45},
        }
    )  # fmt: skip
    prompt_set = toy_harm_set(recipe)
    assert (prompt_set.n, prompt_set.temperature) == (3, 0.45)
    assert len(prompt_set.prompts) == 4


class RecordingSampler:
    """Stands in for a sampling engine: records each generate call's arguments, answers "x"."""

    def __init__(self, calls: list):
        self.calls = calls

    def generate(self, prompts, **kwargs):
        from nega.sampling.base import Completion

        self.calls.append({"prompts": prompts, **kwargs})
        return [[Completion(text="x. answer: yes", token_ids=[5])] * kwargs["n"] for _ in prompts]

    def close(self):
        pass


QCRD_SAMPLING = {
    "teacher": "some/teacher",
    "teacher_prompt": "Think it through: {question}",
    "teacher_samples": 3,
    "teacher_temperature": 0.35,
    "negative_temperature": 1.25,
}


class RecordingLauncher:
    """Stands in for a training launch: leaves what a finished training leaves, trains nothing."""

    def run(self, entry, kwargs, work_dir, *, needs_launcher=False):
        from nega.pipeline import write_json
        from nega.training import TRAIN_LOG

        out = Path(kwargs["output_dir"])
        (out / "adapter").mkdir(parents=True, exist_ok=True)
        write_json(out / TRAIN_LOG, {"folder": "adapter", "history": []})


def _qcrd_run(tmp_path, model_name: str, section: dict):
    """A qcrd recipe over 4 toy inputs at 2 a step (2 optimizer steps an epoch), with a launcher that
    trains nothing: the stages between the training stages run for real."""
    from nega.pipeline import Run

    recipe = validate_recipe(
        {
            "name": "flow", "method": "qcrd", "model": {"name": model_name}, "data": {"dataset": "toy"},
            "toy": {"world": "rationale", "n_train": 4, "n_test": 2}, "train": {"batch_size": 2},
            "qcrd": section,
        }
    )  # fmt: skip
    return recipe, Run(recipe, tmp_path / "run", launcher=RecordingLauncher())


def _train_students(run, recipe, objective: str, model_path: str, examples: list[dict], epochs: int):
    """`train_student` of `objective` under the run's own period schedule."""
    from nega.distill.qcrd.run import train_student
    from nega.distill.qcrd.schedule import PeriodSchedule

    schedule = PeriodSchedule.of(recipe, len(examples), epochs)
    train_student(run, recipe, objective, model_path, examples, schedule, [])
    return schedule


def test_qcrd_teacher_and_negative_sampling_keys_reach_their_samplers(tmp_path, monkeypatch):
    import nega.sampling
    from nega.distill.qcrd.run import teacher_stage
    from nega.pipeline import read_jsonl, unlock_run_folder

    calls = []
    monkeypatch.setattr(nega.sampling, "make_sampler", lambda *a, **k: RecordingSampler(calls))
    recipe, run = _qcrd_run(tmp_path, "toy", {**QCRD_SAMPLING, "negatives_every_steps": 1})
    try:
        teacher = teacher_stage(run, recipe, [])
        examples = read_jsonl(teacher.dir / "examples.jsonl")
        schedule = _train_students(run, recipe, "qcrd_no_disc", "base", examples, epochs=1)
    finally:
        unlock_run_folder(run.dir)
    asked, *sampled = calls
    assert (asked["n"], asked["temperature"]) == (3, 0.35)
    assert all(p[-1]["content"].startswith("Think it through: ") for p in asked["prompts"])
    # One negatives stage per period, each drawing one rationale per input at negative_temperature.
    assert schedule.periods == 2 and len(sampled) == 2
    assert {(c["n"], c["temperature"]) for c in sampled} == {(1, 1.25)}


def test_qcrd_discriminator_keys_reach_the_discriminator(tiny_model_dir, tmp_path, monkeypatch):
    import nega.distill.qcrd.discriminator as discriminator
    import nega.sampling
    from nega.pipeline import unlock_run_folder

    builds, fits = [], []

    class Fake:
        def save(self, path):
            Path(path).write_bytes(b"")

        def load(self, path):
            pass

    def build(backbone, tokenizer, **kwargs):
        builds.append({"backbone": backbone, **kwargs})
        return Fake()

    def scores(discriminators, examples, **kwargs):
        fits.append(kwargs)
        scored = [{**e, "pos_scores": [0.9] * len(e["positives"]), "neg_scores": [0.1] * len(e["negatives"])}
                  for e in examples]  # fmt: skip
        return scored, [{} for _ in discriminators]

    monkeypatch.setattr(discriminator.Discriminator, "build", staticmethod(build))
    monkeypatch.setattr(discriminator, "cross_fitted_scores", scores)
    monkeypatch.setattr(nega.sampling, "make_sampler", lambda *a, **k: RecordingSampler([]))
    section = {"disc_every": 2, "disc_backbone": "encoder", "disc_lr": 3e-4, "disc_augment_rate": 0.4,
               "disc_steps": 7, "disc_batch_size": 5, "disc_folds": 3, "negatives_every_steps": 1}  # fmt: skip
    recipe, run = _qcrd_run(tmp_path, str(tiny_model_dir), section)
    examples = [{"id": str(i), "question": f"q{i}", "label": "yes", "positives": ["p"], "negatives": ["n"]}
                for i in range(4)]  # fmt: skip
    try:
        schedule = _train_students(run, recipe, "qcrd", str(tiny_model_dir), examples, epochs=3)
    finally:
        unlock_run_folder(run.dir)
    # 3 epochs of 2 one-step periods: a discriminator stage per period, disc_folds discriminators each.
    assert schedule.periods == 6
    assert len(builds) == 6 * 3
    assert {(b["backbone"], b["lr"]) for b in builds} == {("encoder", 3e-4)}
    # Fitted at the first period of every disc_every-th epoch (epochs 0 and 2), else scored only.
    assert [f["train"] for f in fits] == [True, False, False, False, True, False]
    assert {(f["steps"], f["batch_size"], f["augment_rate"]) for f in fits} == {(7, 5, 0.4)}
