"""TrainConfig -> transformers TrainingArguments (+ DeepSpeed config), and training with resume.

Multi-process launching (`--gpus`, `--nodes`) re-runs the training stages under `accelerate launch`;
this module holds the pieces every method's trainer shares.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch


def deepspeed_config(train_cfg) -> dict | None:
    """A DeepSpeed ZeRO config for `train.deepspeed`, or None for stage 0 (plain DDP / one process).

    Batch sizes are "auto" so the Trainer fills them from TrainingArguments. Small parameters are
    sharded too (persistence threshold 0): DeepSpeed's default keeps them whole on every rank, which
    hides sharding bugs on small models.
    """
    ds = train_cfg.deepspeed
    if ds.stage == 0:
        return None
    zero: dict = {
        "stage": ds.stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": 1e5,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.stage == 3:
        zero.update(
            stage3_param_persistence_threshold=0,
            stage3_prefetch_bucket_size=0,
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def training_arguments(train_cfg, output_dir: Path, *, seed: int = 0, **overrides):
    """TrainingArguments for a method's Trainer; `overrides` win (e.g. a method's own max_steps)."""
    from transformers import TrainingArguments

    bf16 = train_cfg.bf16
    if bf16 and train_cfg.deepspeed.stage > 0 and not torch.cuda.is_available():
        import warnings

        warnings.warn("train.bf16 is ignored: DeepSpeed without a GPU trains in float32", stacklevel=2)
        bf16 = False
    kwargs = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum,
        learning_rate=train_cfg.lr,
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps or -1,
        lr_scheduler_type=train_cfg.lr_scheduler,
        **warmup_arguments(TrainingArguments, train_cfg.warmup_ratio),
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=2,
        logging_steps=train_cfg.logging_steps,
        seed=seed,
        data_seed=seed,
        report_to=[],
        remove_unused_columns=False,
        # DeepSpeed picks its (CPU) accelerator itself; accelerate's "cpu" flag would turn it off.
        use_cpu=not torch.cuda.is_available() and train_cfg.deepspeed.stage == 0,
        bf16=bf16,
        gradient_checkpointing=train_cfg.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=os.environ.get("NEGA_QUIET") == "1",
        deepspeed=deepspeed_config(train_cfg),
    )
    if prepare_distributed_state(deepspeed=kwargs["deepspeed"] is not None):
        kwargs["accelerator_config"] = {"use_configured_state": True}
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def warmup_arguments(arguments_class, ratio: float) -> dict:
    """`train.warmup_ratio` in the form this transformers takes: `warmup_ratio` where that field exists
    (4.x), else `warmup_steps`, which reads a float below 1 as a fraction of the total steps (5.x)."""
    names = {f.name for f in dataclasses.fields(arguments_class)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": float(ratio)}


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` folder (one with trainer_state.json), if any."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    if not folders:
        return None
    return str(max(folders, key=lambda p: int(p.name.split("-")[-1])))


def train_with_resume(trainer, output_dir: Path):
    """Run `trainer.train()`, resuming optimizer, scheduler, RNG and data order from the last checkpoint.

    Each start is recorded in `output_dir/starts.jsonl`: which checkpoint it resumed from, if any (so a
    user or a test can see that an interrupted stage continued rather than started over), and how it
    was distributed (accelerate's distributed type, e.g. DEEPSPEED or MULTI_CPU, the process group's
    world size, and the ZeRO stage of the DeepSpeed engine the Trainer built, 0 without one).
    """
    import time

    from transformers import TrainerCallback

    checkpoint = last_checkpoint(output_dir)

    class RecordStart(TrainerCallback):
        # Written once the Trainer has built its engine: the stage it runs, not the one the config asked for.
        def on_train_begin(self, args, state, control, **kwargs):
            if not trainer.is_world_process_zero():
                return
            engine = trainer.model_wrapped
            group = torch.distributed.is_available() and torch.distributed.is_initialized()
            start = {
                "resumed_from": checkpoint,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "distributed": trainer.accelerator.state.distributed_type.value,
                "world_size": torch.distributed.get_world_size() if group else 1,
                "zero_stage": engine.zero_optimization_stage()
                if hasattr(engine, "zero_optimization_stage")
                else 0,
            }
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            with (Path(output_dir) / "starts.jsonl").open("a") as f:
                f.write(json.dumps(start) + "\n")

    trainer.add_callback(RecordStart)
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        trainer.remove_callback(RecordStart)


def save_trained(trainer, tokenizer, path: Path) -> Path:
    """Save what `trainer` trained (a LoRA adapter, or the full model) with the tokenizer; rank 0 writes.

    Every rank must call this. Under DeepSpeed ZeRO-3 each rank holds only a shard of every weight, so
    `model.save_pretrained` would write empty tensors; the Trainer's own save gathers them first
    (`stage3_gather_16bit_weights_on_model_save`). Its pickled `training_args.bin` is not kept: saved
    folders hold safetensors only.
    """
    path = Path(path)
    if trainer.is_deepspeed_enabled:
        trainer.save_model(str(path))
    elif trainer.is_world_process_zero():
        path.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(str(path), safe_serialization=True)
    if trainer.is_world_process_zero():
        (path / "training_args.bin").unlink(missing_ok=True)
        tokenizer.save_pretrained(str(path))
    trainer.accelerator.wait_for_everyone()
    return path


def log_history(trainer) -> list[dict]:
    """Per-step logged metrics (loss, lr, method metrics) for the stage manifest."""
    return [dict(entry) for entry in trainer.state.log_history]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good weights were saved first."""


def guarded_trainer_class():
    """`transformers.Trainer` that stops on a non-finite loss or gradient, after saving the last good state.

    Built lazily so importing nega.launch does not import transformers. Method trainers subclass the
    returned class and override `compute_loss` only. The check runs after backward and before the
    optimizer step, so the weights saved to `<output_dir>/last-good/` are the state before the bad batch.
    Batches may carry `row_index` (dataset rows) so the message names them.
    """
    global _GUARDED
    if _GUARDED is not None:
        return _GUARDED
    from transformers import Trainer

    class GuardedTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            rows = inputs.get("row_index") if isinstance(inputs, dict) else None
            loss = super().training_step(model, inputs, num_items_in_batch)
            what = None
            if not torch.isfinite(loss).all():
                what = f"loss is {loss.item()}"
            else:
                bad = [
                    n
                    for n, p in model.named_parameters()
                    if p.grad is not None and not torch.isfinite(p.grad).all()
                ]
                if bad:
                    what = f"gradient of {bad[0]} is not finite ({len(bad)} tensors)"
            if what is not None:
                model.zero_grad(set_to_none=True)
                good = Path(self.args.output_dir) / "last-good"
                self.save_model(str(good))
                step = self.state.global_step + 1
                rows_text = (
                    f", dataset rows {rows.tolist() if hasattr(rows, 'tolist') else rows}"
                    if rows is not None
                    else ""
                )
                raise NonFiniteLossError(
                    f"training stopped at step {step}{rows_text}: {what}. The weights before this batch are in "
                    f"{good}; the last checkpoint is {last_checkpoint(self.args.output_dir)}. Lower train.lr, "
                    "check those rows, or set train.max_grad_norm lower."
                )
            return loss

    _GUARDED = GuardedTrainer
    return GuardedTrainer


_GUARDED = None


# ---------------------------------------------------------------------------------------------------
# Multi-process training: `nega run RECIPE --gpus N [--nodes M ...]`.
#
# Sampling and evaluation stages run once, in the `nega run` process (vLLM takes every local GPU through
# tensor parallelism). A training stage is handed to `run_training`, which runs it in-process for a
# single device, or re-launches it under `accelerate launch` on every device and node and waits. The
# stage's function takes only JSON-able arguments (paths, the recipe file), so ranks rebuild their
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


_TOPOLOGY = Topology()


def set_topology(topology: Topology) -> None:
    global _TOPOLOGY
    _TOPOLOGY = topology


def topology() -> Topology:
    return _TOPOLOGY


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


def run_training(entry: str, kwargs: dict, work_dir: Path, *, needs_launcher: bool = False) -> None:
    """Call `entry` ("module:function") with `kwargs` on every rank of the current topology.

    One device and no DeepSpeed: a plain call in this process. Otherwise `kwargs` is written to
    `work_dir/launch.json` and the ranks start under accelerate; a failing rank fails the stage with
    the end of its output.
    """
    import importlib

    topo = topology()
    if topo.world_size == 1 and not needs_launcher:
        module, func = entry.split(":")
        getattr(importlib.import_module(module), func)(**kwargs)
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    payload = work_dir / "launch.json"
    payload.write_text(json.dumps({"entry": entry, "kwargs": kwargs}, indent=2, default=str))
    if _COORDINATOR is not None:
        _COORDINATOR.announce(payload)
    log = work_dir / "launch.log"
    returncode = launch_ranks(payload, topo, log)
    if returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"training ranks failed (exit {returncode}); end of {log}:\n{tail}")


def launch_ranks(payload: Path, topo: Topology, log: Path) -> int:
    """Start this node's ranks of `payload` under accelerate, output to `log`; their exit code."""
    import subprocess

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

_COORDINATOR = None


class Coordinator:
    """Node 0's side: one attempt folder of launch announcements and the run's outcome."""

    def __init__(self, folder: Path):
        import uuid

        from nega.pipeline import atomic_write_text

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
        from nega.pipeline import atomic_write_text

        self.launches += 1
        target = self.folder / self.attempt / f"launch-{self.launches:03d}.json"
        atomic_write_text(target, json.dumps({"payload": str(Path(payload).resolve())}))

    def finish(self, status: str, message: str = "") -> None:
        self._finish(self.attempt, status, message)

    def _finish(self, attempt: str, status: str, message: str) -> None:
        from nega.pipeline import atomic_write_text

        atomic_write_text(
            self.folder / attempt / "finished.json", json.dumps({"status": status, "message": message})
        )


def coordinate(folder: Path | None) -> Coordinator | None:
    """Make node 0 announce its training launches in `folder` (None: stop announcing)."""
    global _COORDINATOR
    _COORDINATOR = Coordinator(folder) if folder is not None else None
    return _COORDINATOR


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
            "DeepSpeed; a training entry must build its TrainingArguments (nega.launch.training_arguments) "
            "before anything else creates accelerate's state"
        )
    return True


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _worker(payload: Path) -> None:
    import importlib
    import json

    spec = json.loads(Path(payload).read_text())
    module, func = spec["entry"].split(":")
    try:
        getattr(importlib.import_module(module), func)(**spec["kwargs"])
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Without this, about one run in nine aborted at interpreter shutdown on gloo.
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    import sys

    _worker(Path(sys.argv[1]))
