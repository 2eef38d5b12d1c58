"""Training arguments, DeepSpeed configs, checkpoint discovery, and the non-finite-loss guard."""

from __future__ import annotations

import pytest
import torch

from nega.config import TrainConfig
from nega.launch import (
    NonFiniteLossError,
    deepspeed_config,
    guarded_trainer_class,
    last_checkpoint,
    training_arguments,
)


def test_deepspeed_config_per_stage():
    assert deepspeed_config(TrainConfig()) is None
    two = deepspeed_config(TrainConfig(deepspeed={"stage": 2, "offload_optimizer": True}))
    assert two["zero_optimization"]["stage"] == 2
    assert two["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "stage3_param_persistence_threshold" not in two["zero_optimization"]
    three = deepspeed_config(TrainConfig(deepspeed={"stage": 3, "offload_params": True}))
    zero = three["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_param"]["device"] == "cpu" and "offload_optimizer" not in zero
    assert three["train_micro_batch_size_per_gpu"] == "auto"


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
    base = guarded_trainer_class()

    class Exploding(base):
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


# --- several nodes: node 0 announces its training launches, the others follow -------------------------


def _follow_in_thread(folder, monkeypatch, joined):
    import threading

    import nega.launch as launch

    def fake_launch(payload, topo, log):
        joined.append((payload, topo.node_rank))
        return 0

    monkeypatch.setattr(launch, "launch_ranks", fake_launch)
    result = {}
    topo = launch.Topology(gpus=1, nodes=2, node_rank=1)
    thread = threading.Thread(
        target=lambda: result.update(outcome=launch.follow(folder, topo, poll_s=0.01, echo=lambda t: None)),
        daemon=True,
    )
    thread.start()
    return thread, result


def _wait_for(condition, seconds=10.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_follower_joins_each_launch_in_order_and_ends_with_node_0(tmp_path, monkeypatch):
    from nega.launch import Coordinator

    folder = tmp_path / "nodes"
    # An earlier run that finished: its launch must not be joined again.
    old = Coordinator(folder)
    old.announce(tmp_path / "old.json")
    old.finish("ok")

    joined = []
    thread, result = _follow_in_thread(folder, monkeypatch, joined)
    node0 = Coordinator(folder)
    node0.announce(tmp_path / "a" / "launch.json")
    node0.announce(tmp_path / "b" / "launch.json")
    _wait_for(lambda: len(joined) == 2)
    node0.finish("ok")
    thread.join(10)
    assert result["outcome"] == ("ok", "")
    # Both payloads are named launch.json: their folders show each was joined once, in announced order.
    assert joined == [(tmp_path / "a" / "launch.json", 1), (tmp_path / "b" / "launch.json", 1)]


def test_follower_moves_to_the_new_attempt_after_node_0_restarts(tmp_path, monkeypatch):
    from nega.launch import Coordinator

    folder = tmp_path / "nodes"
    joined = []
    thread, result = _follow_in_thread(folder, monkeypatch, joined)
    killed = Coordinator(folder)  # node 0 dies after this (no finish)
    killed.announce(tmp_path / "first.json")
    _wait_for(lambda: len(joined) == 1)
    again = Coordinator(folder)  # the rerun marks the old attempt abandoned
    assert (folder / killed.attempt / "finished.json").exists()
    again.announce(tmp_path / "second.json")
    _wait_for(lambda: len(joined) == 2)
    again.finish("failed", "data error: rows.jsonl row 3")
    thread.join(10)
    assert result["outcome"] == ("failed", "data error: rows.jsonl row 3")
    assert [payload.name for payload, _ in joined] == ["first.json", "second.json"]


@pytest.mark.parametrize("ratio", [0.0, 0.25])
def test_warmup_ratio_is_a_fraction_of_the_steps(tmp_path, ratio):
    """The learning rate climbs over `warmup_ratio` of the run's steps, whatever transformers calls it."""
    from transformers import Trainer

    from nega.launch import training_arguments

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

    from nega.launch import warmup_arguments

    @dataclasses.dataclass
    class Args4:  # transformers 4.x: an int warmup_steps and a separate warmup_ratio
        warmup_steps: int = 0
        warmup_ratio: float = 0.0

    @dataclasses.dataclass
    class Args5:  # transformers 5.x: warmup_steps reads a float below 1 as a ratio
        warmup_steps: float = 0

    assert warmup_arguments(Args4, 0.1) == {"warmup_ratio": 0.1}
    assert warmup_arguments(Args5, 0.1) == {"warmup_steps": 0.1}
