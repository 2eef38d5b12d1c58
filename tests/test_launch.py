"""Distribution: DeepSpeed configs, the launcher (in-process or under accelerate), and the nodes that
follow node 0's training launches."""

from __future__ import annotations

import json

from nega.config import TrainConfig
from nega.launch import Launcher, Topology, deepspeed_config


def test_deepspeed_config_per_stage():
    assert deepspeed_config(TrainConfig(), on_gpu=False) is None
    assert deepspeed_config(TrainConfig(), on_gpu=True) is None
    two = deepspeed_config(TrainConfig(deepspeed={"stage": 2, "offload_optimizer": True}), on_gpu=False)
    assert two["zero_optimization"]["stage"] == 2
    assert two["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "stage3_param_persistence_threshold" not in two["zero_optimization"]
    three = deepspeed_config(TrainConfig(deepspeed={"stage": 3, "offload_params": True}), on_gpu=False)
    zero = three["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_param"]["device"] == "cpu" and "offload_optimizer" not in zero
    assert three["train_micro_batch_size_per_gpu"] == "auto"


def test_deepspeed_config_on_gpus_uses_auto_buckets_and_overlap():
    cfg = TrainConfig(deepspeed={"stage": 3, "offload_optimizer": True, "offload_params": True})
    cpu = deepspeed_config(cfg, on_gpu=False)["zero_optimization"]
    gpu = deepspeed_config(cfg, on_gpu=True)["zero_optimization"]
    # CPU ranks: small buckets, no overlap, every parameter sharded (MACHINE.md).
    assert cpu["overlap_comm"] is False and cpu["reduce_bucket_size"] == 1e5
    assert cpu["stage3_prefetch_bucket_size"] == 0 and cpu["stage3_param_persistence_threshold"] == 0
    assert cpu["offload_param"]["pin_memory"] is False
    # GPUs: buckets sized by the Trainer, overlap on, DeepSpeed's own prefetch and persistence.
    assert gpu["overlap_comm"] is True and gpu["reduce_bucket_size"] == "auto"
    assert "stage3_prefetch_bucket_size" not in gpu and "stage3_param_persistence_threshold" not in gpu
    assert gpu["offload_param"]["pin_memory"] is True and gpu["offload_optimizer"]["pin_memory"] is True
    assert gpu["stage3_gather_16bit_weights_on_model_save"] is True
    two = deepspeed_config(TrainConfig(deepspeed={"stage": 2}), on_gpu=True)["zero_optimization"]
    assert two["overlap_comm"] is True and two["reduce_bucket_size"] == "auto"


def test_one_process_launcher_calls_the_entry_here(tmp_path, monkeypatch):
    import nega.launch as launch

    monkeypatch.setattr(launch, "launch_ranks", lambda *a: (_ for _ in ()).throw(AssertionError("launched")))
    calls = []
    monkeypatch.setattr(launch, "_call", lambda entry, kwargs: calls.append((entry, kwargs)))
    Launcher().run("m:f", {"x": 1}, tmp_path / "stage")
    assert calls == [("m:f", {"x": 1})] and not (tmp_path / "stage" / "launch.json").exists()


def test_launcher_writes_the_payload_announces_it_and_starts_the_ranks(tmp_path, monkeypatch):
    """Two processes (or DeepSpeed on one): the payload goes to disk, node 0's coordinator announces it,
    and the ranks start under accelerate with the launcher's own topology; a failing rank fails the stage."""
    import pytest

    import nega.launch as launch

    started = []

    def fake_ranks(payload, topo, log):
        started.append((json.loads(payload.read_text()), topo))
        log.write_text("rank 1: out of memory\n")
        return len(started) - 1  # the second launch fails

    monkeypatch.setattr(launch, "launch_ranks", fake_ranks)
    topology = Topology(gpus=2, nodes=2, main_port=29555)
    launcher = Launcher(topology, launch.Coordinator(tmp_path / "nodes"))
    launcher.run("m:f", {"x": 1}, tmp_path / "a")
    assert started == [({"entry": "m:f", "kwargs": {"x": 1}}, topology)]
    announced = json.loads(
        (tmp_path / "nodes" / launcher.coordinator.attempt / "launch-001.json").read_text()
    )
    assert announced == {"payload": str((tmp_path / "a" / "launch.json").resolve())}
    with pytest.raises(RuntimeError, match="(?s)exit 1.*rank 1: out of memory"):
        Launcher(Topology(), None).run("m:f", {}, tmp_path / "b", needs_launcher=True)


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


def test_nega_run_trains_on_every_visible_gpu_unless_told():
    from nega.launch import training_processes

    assert training_processes(None, 8) == 8  # one process per GPU, never one process over eight
    assert training_processes(None, 0) == 1  # no GPU: one process in place
    assert training_processes(2, 8) == 2  # as asked
    assert training_processes(None, 8, cpu=True) == 1  # --cpu without --gpus: one CPU process
