"""Training arguments, checkpoint discovery, warm-up, and `MethodTrainer`: the non-finite-loss guard and
metrics averaged over each logging interval."""

from __future__ import annotations

import pytest
import torch

from nega.config import TrainConfig
from nega.training import NonFiniteLossError, last_checkpoint, training_arguments


def test_training_arguments_map_the_recipe(tmp_path):
    cfg = TrainConfig(lr=2e-4, batch_size=3, grad_accum=2, max_steps=7, save_steps=5, warmup_ratio=0.2)
    args = training_arguments(cfg, tmp_path, seed=11)
    assert args.learning_rate == 2e-4 and args.per_device_train_batch_size == 3
    assert args.gradient_accumulation_steps == 2 and args.max_steps == 7 and args.save_steps == 5
    assert args.seed == 11 and args.report_to == [] and args.remove_unused_columns is False
    assert training_arguments(cfg, tmp_path, max_steps=2).max_steps == 2


def test_last_checkpoint_needs_trainer_state(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for step in (5, 10, 20):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    # checkpoint-20 was being written when the run died: not complete, not used.
    assert last_checkpoint(tmp_path).endswith("checkpoint-10")


class _Rows(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)]), "row_index": i}


def test_non_finite_loss_stops_with_step_and_rows(tmp_path):
    from nega.trainer import MethodTrainer

    class Exploding(MethodTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(inputs["x"]).sum()
            # Third optimizer step sees an infinite loss.
            return out * (float("inf") if self.state.global_step == 2 else 1.0)

    model = torch.nn.Linear(1, 1)
    args = training_arguments(TrainConfig(lr=0.1, batch_size=2, max_steps=5, save_steps=1), tmp_path, seed=0)
    trainer = Exploding(
        model=model,
        args=args,
        train_dataset=_Rows(),
        data_collator=lambda rows: {
            "x": torch.stack([r["x"] for r in rows]),
            "row_index": torch.tensor([r["row_index"] for r in rows]),
        },
    )
    before = model.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match=r"step 3, dataset rows \[\d, \d\]: loss is -?inf") as info:
        trainer.train()
    assert "checkpoint-2" in str(info.value)
    # last-good holds the weights of the two good steps, the state before the bad batch: the same as
    # checkpoint-2 and the model in memory, and not the starting weights.
    from safetensors.torch import load_file

    good = load_file(tmp_path / "last-good" / "model.safetensors")
    checkpoint = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert set(good) == {"weight", "bias"}
    assert torch.isfinite(model.weight).all() and not torch.equal(good["weight"], before)
    for name, tensor in good.items():
        assert torch.equal(tensor, checkpoint[name]) and torch.equal(tensor, getattr(model, name).detach())


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_warmup_ratio_is_a_fraction_of_the_steps(tmp_path, ratio):
    """The learning rate climbs over `warmup_ratio` of the run's steps, whatever transformers calls it."""
    from transformers import Trainer

    train = TrainConfig(lr=1e-3, max_steps=8, warmup_ratio=ratio, lr_scheduler="constant_with_warmup")
    args = training_arguments(train, tmp_path)
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    rates = []
    for _ in range(4):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    expected = [1e-3] * 4 if ratio == 0 else [0.0, 0.5e-3, 1e-3, 1e-3]  # 2 warmup steps of 8
    assert rates == pytest.approx(expected)


def test_warmup_goes_to_the_field_this_transformers_has():
    import dataclasses

    from nega.training import warmup_arguments

    @dataclasses.dataclass
    class Args4:  # transformers 4.x: an int warmup_steps and a separate warmup_ratio
        warmup_steps: int = 0
        warmup_ratio: float = 0.0

    @dataclasses.dataclass
    class Args5:  # transformers 5.x: warmup_steps reads a float below 1 as a ratio
        warmup_steps: float = 0

    assert warmup_arguments(Args4, 0.1) == {"warmup_ratio": 0.1}
    assert warmup_arguments(Args5, 0.1) == {"warmup_steps": 0.1}


def test_method_metrics_are_averaged_over_each_logging_interval(tmp_path):
    """Each step's metric reaches the log once, as the mean of the steps since the last log, named
    `<metric_prefix>/<metric>`; the saved folder and the history come back from `fit`."""
    from nega.trainer import MethodTrainer

    class Counting(MethodTrainer):
        def loss_and_metrics(self, model, inputs):
            loss = model(inputs["x"]).pow(2).mean()
            return loss, {"step": torch.tensor(float(self.state.global_step + 1))}

    class Tokenizer:
        def save_pretrained(self, path):
            (tmp_path / "tokenizer-saved").write_text(path)

    model = torch.nn.Linear(1, 1)
    model.save_pretrained = lambda path, **kwargs: __import__("os").makedirs(path, exist_ok=True)
    # 40 steps: logging every 2 still draws 20 points, so nega.training.logging_interval keeps it.
    args = training_arguments(
        TrainConfig(lr=0.01, batch_size=2, max_steps=40, logging_steps=2, save_steps=100), tmp_path / "ckpt"
    )
    trainer = Counting(
        model=model,
        args=args,
        train_dataset=_Rows(),
        data_collator=lambda rows: {"x": torch.stack([r["x"] for r in rows])},
        metric_prefix="toy",
    )
    folder, history = trainer.fit(Tokenizer(), tmp_path / "adapter")
    logged = [h["toy/step"] for h in history if "toy/step" in h]
    assert logged == [2 * k + 1.5 for k in range(20)]  # steps 1-2, then 3-4, ...
    assert folder == str(tmp_path / "adapter") and (tmp_path / "tokenizer-saved").read_text() == folder


def test_report_to_tensorboard_writes_events_and_every_stage_draws_its_curve(tiny_model_dir, tmp_path):
    """A recipe with train.report_to: [tensorboard] leaves event files with the logged loss in the
    training stage's tensorboard/ folder, and report.md links the stage's training curve."""
    import json

    from nega_testing import require_module
    from typer.testing import CliRunner

    from nega.cli import app

    require_module("tensorboard")
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"what is {a} plus 1?", "response": f"{a} plus 1 is {a + 1}."} for a in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"name: tracked\nmethod: sft\nmodel: {{name: {tiny_model_dir}}}\ndata: {{path: {data}}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\nsampling: {backend: hf}\n"
        "train: {lr: 1.0e-3, max_steps: 4, batch_size: 4, logging_steps: 1, save_steps: 100, "
        "report_to: [tensorboard]}\n"
    )
    result = CliRunner().invoke(app, ["run", str(recipe), "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    stage = next((tmp_path / "run").glob("*-sft"))
    events = list((stage / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in stage.iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(stage / "tensorboard")).Reload().Tags()["scalars"]
    assert "train/loss" in scalars
    assert (stage / "training_curve.png").stat().st_size > 1000
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"]({stage.name}/training_curve.png)" in report


def test_report_to_names_the_missing_tracker_package(monkeypatch):
    import importlib.util

    from nega.config import RecipeError, load_recipe

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(
        RecipeError, match=r"train.report_to: wandb is not installed: pip install 'nega\[wandb\]'"
    ):
        load_recipe("toy-sft", ["train.report_to=[wandb]"])
