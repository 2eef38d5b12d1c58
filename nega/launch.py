"""Distribution of training stages: the topology, `accelerate launch` on every rank and node, the
DeepSpeed config, and the multi-node coordination.

`nega run RECIPE --gpus N [--nodes M ...]` builds a `Launcher` for the run (`Run.launcher`); every
training stage goes through it (`nega.training.train_stage`). Nothing here is module state: the
topology and the coordinator live on the launcher. torch is imported inside the functions that need
it, so building a launcher is instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path


def deepspeed_config(train_cfg, *, on_gpu: bool) -> dict | None:
    """A DeepSpeed ZeRO config for `train.deepspeed`, or None for stage 0 (plain DDP / one process).

    Batch sizes are "auto" so the Trainer fills them from TrainingArguments. On GPUs the buckets are
    "auto" too (sized by the Trainer from the model's hidden size), communication overlaps the backward
    pass, and ZeRO-3 keeps DeepSpeed's own prefetch and persistence defaults. Without GPUs (gloo ranks,
    the test machines) small buckets, no overlap, no prefetch and a persistence threshold of 0 are
    needed: DeepSpeed's defaults keep a tiny model's parameters whole on every rank, which would hide
    sharding bugs, and its overlapping streams do not exist on a CPU.
    """
    ds = train_cfg.deepspeed
    if ds.stage == 0:
        return None
    zero: dict = {"stage": ds.stage, "contiguous_gradients": True}
    if on_gpu:
        zero.update(overlap_comm=True, reduce_bucket_size="auto")
    else:
        zero.update(overlap_comm=False, reduce_bucket_size=1e5)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if not on_gpu:
            zero.update(stage3_param_persistence_threshold=0, stage3_prefetch_bucket_size=0)
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


# ---------------------------------------------------------------------------------------------------
# Multi-process training: `nega run RECIPE --gpus N [--nodes M ...]`.
#
# Sampling and evaluation stages run once, in the `nega run` process (vLLM takes every local GPU through
# tensor parallelism). A training stage is handed to `Launcher.run`, which runs it in-process for a
# single device, or re-launches it under `accelerate launch` on every device and node and waits. The
# stage's function takes only JSON-able arguments (paths, the recipe as data), so ranks rebuild their
# state from disk; rank 0 writes the artifacts, the parent process writes the manifest.
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Topology:
    gpus: int = 1  # processes per node (devices, or CPU processes with cpu=True)
    nodes: int = 1
    node_rank: int = 0
    main_address: str = "127.0.0.1"
    main_port: int = 29500
    cpu: bool = False  # gloo on CPU processes: for testing sharding on a machine without GPUs

    @property
    def world_size(self) -> int:
        return self.gpus * self.nodes


def training_processes(requested: int | None, visible_gpus: int, *, cpu: bool = False) -> int:
    """Training processes per node for `nega run --gpus`: as asked, else one per visible GPU (never one
    process over several GPUs, which the Trainer would wrap in nn.DataParallel), else one."""
    if requested is not None:
        return requested
    return 1 if cpu else max(1, visible_gpus)


@dataclasses.dataclass
class Launcher:
    """Where a run's training stages execute: the topology, and on node 0 of several the coordinator
    that announces each launch to the other nodes (`Coordinator`; None on one node)."""

    topology: Topology = dataclasses.field(default_factory=Topology)
    coordinator: Coordinator | None = None

    def run(self, entry: str, kwargs: dict, work_dir: Path, *, needs_launcher: bool = False) -> None:
        """Call `entry` ("module:function") with `kwargs` on every rank of the topology.

        One device and no DeepSpeed: a plain call in this process. Otherwise `kwargs` is written to
        `work_dir/launch.json` and the ranks start under accelerate; a failing rank fails the stage with
        the end of its output.
        """
        if self.topology.world_size == 1 and not needs_launcher:
            from nega.models import hand_back_memory

            try:
                _call(entry, kwargs)
            finally:
                # The trainer and its model are unreachable once the call returns, but their GPU memory
                # stays cached in this process, where the next vLLM engine needs it free.
                hand_back_memory()
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        payload = work_dir / "launch.json"
        payload.write_text(json.dumps({"entry": entry, "kwargs": kwargs}, indent=2, default=str))
        if self.coordinator is not None:
            self.coordinator.announce(payload)
        log = work_dir / "launch.log"
        returncode = launch_ranks(payload, self.topology, log)
        if returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
            raise RuntimeError(f"training ranks failed (exit {returncode}); end of {log}:\n{tail}")


def _call(entry: str, kwargs: dict) -> None:
    import importlib

    module, func = entry.split(":")
    getattr(importlib.import_module(module), func)(**kwargs)


def accelerate_command(payload: Path, topo: Topology) -> list[str]:
    """The `accelerate launch` command line that runs `python -m nega.launch PAYLOAD` on every rank."""
    import sys

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(topo.world_size)]
    cmd += ["--num_machines", str(topo.nodes), "--machine_rank", str(topo.node_rank)]
    cmd += ["--main_process_ip", topo.main_address, "--main_process_port", str(topo.main_port)]
    if topo.world_size > 1:
        # With CPU processes `--multi_gpu` is what starts N synchronised ranks; `--cpu` alone starts one.
        cmd.append("--multi_gpu")
    cmd += ["--mixed_precision", "no", "--module", "nega.launch", str(payload)]
    return cmd


def launch_ranks(payload: Path, topo: Topology, log: Path) -> int:
    """Start this node's ranks of `payload` under accelerate, output to `log`; their exit code."""
    import subprocess

    import torch

    env = dict(os.environ)
    if topo.cpu or not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank: 4x faster than oversubscribing
    if topo.world_size == 1:
        # accelerate starts a lone process without the process-group variables, and DeepSpeed (a
        # single-device ZeRO run, e.g. for offload) would then look for MPI; give it a group of one.
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR=topo.main_address)
        env.update(MASTER_PORT=str(topo.main_port))
    with log.open("w") as out:
        return subprocess.run(
            accelerate_command(payload, topo), env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode


# ---------------------------------------------------------------------------------------------------
# Several nodes: `nega run RECIPE --nodes M --node-rank R` on every machine, over a shared filesystem
# (which multi-node training needs anyway for the data, the model and the checkpoints).
#
# Node 0 runs the pipeline: it alone decides what to skip or resume, samples, evaluates and writes
# every artifact. Before each training launch it announces the launch's payload in
# `<run>/nodes/<attempt>/launch-NNN.json`; the other nodes follow those announcements, start their
# ranks of each launch in order (accelerate joins them to node 0's), and exit with node 0's outcome,
# read from `finished.json`. A rerun of node 0 opens a new attempt and marks an unfinished earlier one
# abandoned, so followers never join a launch that will not happen.
# ---------------------------------------------------------------------------------------------------


class Coordinator:
    """Node 0's side: one attempt folder of launch announcements and the run's outcome."""

    def __init__(self, folder: Path):
        import uuid

        from nega.files import atomic_write_text

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = _read_json(self.folder / "current.json")
        if previous and not (self.folder / previous["attempt"] / "finished.json").exists():
            self._finish(previous["attempt"], "abandoned", "node 0 started the run again")
        self.attempt = uuid.uuid4().hex[:12]
        (self.folder / self.attempt).mkdir()
        self.launches = 0
        atomic_write_text(self.folder / "current.json", json.dumps({"attempt": self.attempt}))

    def announce(self, payload: Path) -> None:
        from nega.files import atomic_write_text

        self.launches += 1
        target = self.folder / self.attempt / f"launch-{self.launches:03d}.json"
        atomic_write_text(target, json.dumps({"payload": str(Path(payload).resolve())}))

    def finish(self, status: str, message: str = "") -> None:
        self._finish(self.attempt, status, message)

    def _finish(self, attempt: str, status: str, message: str) -> None:
        from nega.files import atomic_write_text

        atomic_write_text(
            self.folder / attempt / "finished.json", json.dumps({"status": status, "message": message})
        )


def follow(folder: Path, topo: Topology, *, poll_s: float = 1.0, echo=print) -> tuple[str, str]:
    """Another node's side: join node 0's training launches, in order, until its run ends.

    Returns node 0's (status, message): status "ok" or "failed". An attempt already finished when first
    seen is an earlier run's and is ignored; one that ends "abandoned" is followed by the next.
    """
    import time

    folder = Path(folder)
    attempt, stale, joined = None, None, 0
    echo(f"[nega] node {topo.node_rank}: following node 0 through {folder}")
    while True:
        current = (_read_json(folder / "current.json") or {}).get("attempt")
        if current and current != attempt and current != stale:
            if attempt is None and (folder / current / "finished.json").exists():
                stale = current
            else:
                attempt, joined = current, 0
        if attempt is not None:
            announcement = _read_json(folder / attempt / f"launch-{joined + 1:03d}.json")
            if announcement is not None:
                joined += 1
                payload = Path(announcement["payload"])
                log = payload.parent / f"launch.node{topo.node_rank}.log"
                echo(
                    f"[nega] node {topo.node_rank}: joining training launch {joined} ({payload.parent.name})"
                )
                returncode = launch_ranks(payload, topo, log)
                if returncode != 0:
                    echo(f"[nega] node {topo.node_rank}: its ranks exited {returncode}; see {log}")
                continue
            finished = _read_json(folder / attempt / "finished.json")
            if finished is not None:
                if finished["status"] != "abandoned":
                    return finished["status"], finished.get("message", "")
                attempt, stale = None, attempt
        time.sleep(poll_s)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def prepare_distributed_state(*, deepspeed: bool) -> bool:
    """Make accelerate use gloo for CPU ranks; True when the Trainer must be told to use that state.

    Without CUDA, accelerate leaves the backend unset, believes it has one process, and DeepSpeed's
    batch-size check fails. Creating the shared process state with gloo first fixes that. The state
    fixes the distributed type once, so DeepSpeed is declared before it is created: without
    `ACCELERATE_USE_DEEPSPEED` the ranks would train as plain DDP whatever the DeepSpeed config says.
    The Trainer is then told to use this state (`use_configured_state`); left to itself it would reset
    it and fall back to one process.
    """
    import torch

    if "LOCAL_RANK" not in os.environ or torch.cuda.is_available():
        return False
    from accelerate import PartialState

    if deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        # accelerate only selects DeepSpeed when not told "cpu"; DeepSpeed finds the CPU by itself.
        os.environ.pop("ACCELERATE_USE_CPU", None)
    state = PartialState(backend="gloo")
    if deepspeed and state.distributed_type.value != "DEEPSPEED":
        raise RuntimeError(
            f"the process group was set up as {state.distributed_type.value} before nega could declare "
            "DeepSpeed; a training entry must build its TrainingArguments (nega.training.training_arguments) "
            "before anything else creates accelerate's state"
        )
    return True


def trainer_gpu_count(world_size: int, visible_gpus: int) -> int | None:
    """The GPU count a Trainer in one of `world_size` processes must use, where it would otherwise pick
    its own: 1 for a lone process on a host with several GPUs, else None (leave it as it is).

    Left alone, a lone transformers Trainer counts every visible GPU, wraps the model in
    nn.DataParallel and multiplies the batch by that count: a different run, and a slow one. Several
    GPUs train through the launcher, one process each (DDP or DeepSpeed), never DataParallel."""
    return 1 if world_size == 1 and visible_gpus > 1 else None


def keep_to_one_device(args, processes: int | None = None):
    """Make TrainingArguments `args` of a lone process use one GPU (`trainer_gpu_count`); returns args.

    `processes` defaults to this run's training processes (`world_size()`). The Trainer reads
    `args.n_gpu`, which TrainingArguments sets from the visible GPUs when it first resolves its device
    (reading `n_gpu` resolves it), so pinning it afterwards sticks."""
    processes = processes or world_size()
    if processes == 1:  # a launched rank's arguments already see one GPU: leave its state untouched
        count = trainer_gpu_count(processes, args.n_gpu)
        if count is not None:
            args._n_gpu = count
    return args


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes training together: accelerate's WORLD_SIZE on a launched rank, 1 in-process."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _worker(payload: Path) -> None:
    import torch

    spec = json.loads(Path(payload).read_text())
    try:
        _call(spec["entry"], spec["kwargs"])
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Without this, about one run in nine aborted at interpreter shutdown on gloo.
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    import sys

    _worker(Path(sys.argv[1]))
