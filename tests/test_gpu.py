"""GPU correctness that the CPU can check: the non-finite guard's verdict and its agreement across
ranks, ZeRO-3 loading straight into shards, memory handed back and checked before an engine starts,
one engine at a time, QLoRA settings, the doctor, and the prepared GPU check script."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nega_testing import require_module

TESTS = str(Path(__file__).parent)


# ---------------------------------------------------------------- the non-finite guard


def test_nonfinite_reason_reads_loss_and_gradient_norm():
    from nega.trainer import nonfinite_reason

    assert nonfinite_reason(loss=0.5, grad_norm=3.0) is None
    assert nonfinite_reason() is None  # nothing to check: nothing wrong
    assert nonfinite_reason(loss=math.nan) == "loss is nan"
    assert nonfinite_reason(loss=-math.inf, grad_norm=1.0) == "loss is -inf"
    # Under ZeRO the parameters hold no gradient; the engine's global norm tells.
    assert nonfinite_reason(loss=1.0, grad_norm=math.inf) == "gradient norm is inf"
    assert (
        nonfinite_reason(loss=1.0, bad_gradient="gradient of w is not finite")
        == "gradient of w is not finite"
    )


def test_any_rank_without_a_process_group_is_the_flag_itself():
    from nega.trainer import any_rank

    assert any_rank(True) is True and any_rank(False) is False


def _agree(rank: int, world: int, port: int, cases: list[list[bool]], out: str) -> None:
    import torch.distributed as dist

    from nega.trainer import any_rank

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        Path(out, f"{rank}.json").write_text(json.dumps([any_rank(flags[rank]) for flags in cases]))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: about half a minute on a busy 2-core machine
def test_any_rank_agrees_over_a_gloo_group(tmp_path):
    import torch.multiprocessing as mp

    cases = [[False, True], [True, False], [False, False]]
    mp.start_processes(_agree, args=(2, 29711, cases, str(tmp_path)), nprocs=2, start_method="spawn")
    verdicts = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert verdicts == [[True, True, False]] * 2


@pytest.mark.slow
def test_zero3_loads_into_shards_and_a_nan_on_one_rank_stops_both(tiny_model_dir, tmp_path, monkeypatch):
    """Two gloo ranks under ZeRO-3: the model loads already partitioned (TrainingArguments first), and a
    NaN loss on rank 1 alone stops both ranks at the same step after saving last-good together (a lone
    save would hang the gather), within the time limit."""
    require_module("deepspeed")
    from nega.launch import Topology, accelerate_command

    out = tmp_path / "run"
    out.mkdir()
    payload = out / "launch.json"
    kwargs = {"model_dir": str(tiny_model_dir), "out_dir": str(out)}
    payload.write_text(json.dumps({"entry": "guard_entry:nan_on_one_rank", "kwargs": kwargs}))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([TESTS, str(Path(TESTS).parent), env.get("PYTHONPATH", "")])
    topo = Topology(gpus=2, cpu=True, main_port=29731)
    done = subprocess.run(
        accelerate_command(payload, topo), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for record in ranks:
        assert record["partitioned"] and record["local_numel"] < record["full_numel"], record
        assert record["global_step"] == 1 and "training stopped at step 2" in record["ended"], record
    assert "loss is nan" in ranks[1]["ended"] and "another rank" in ranks[0]["ended"]
    from safetensors.torch import load_file

    saved = load_file(out / "checkpoints" / "last-good" / "adapter_model.safetensors")
    assert saved and all(t.numel() > 0 and t.isfinite().all() for t in saved.values())
