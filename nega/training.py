"""One training path for every method: a run stage that trains on every rank, resumes, and saves.

A method's run.py trains through `train_stage`:

    stage, adapter = train_stage(
        run, "d2o-train", "nega.align.d2o.trainer:train_policy",
        model_path=model_path, examples=rows, config={...}, inputs=[references], objective="d2o",
    )

The stage writes the examples to its folder, then calls the named training function on every rank of
the run's launcher (`nega.launch.Launcher`; in this process on one device) as

    train_policy(recipe, model_path, examples, output_dir, **arguments) -> (saved folder, log history)

or (saved folder, log history, counts): counts the training measured, for the stage's manifest.

Rank 0 writes `train_log.json` ({"folder", "history", "counts"}); the stage draws `training_curve.png`
(the loss, learning rate, gradient norm and the method's own metrics per logged step; at least
MIN_CURVE_POINTS of them, see `logging_interval`) and finishes with its step count and final loss. The
training function builds its model, its `nega.trainer.MethodTrainer` subclass and
`training_arguments`, and calls `trainer.fit(...)`, which trains (resuming from the last checkpoint in
`<stage>/checkpoints`) and saves the adapter (`adapter/`) or full model (`model/`).

Only the standard library is imported at the top; torch and transformers load inside the functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

TRAIN_LOG = "train_log.json"
CURVE = "training_curve.png"  # nega.eval.report.training_curve, linked from report.md
EXAMPLES = "examples.jsonl"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss or gradient; the last good weights were saved first."""


def trained_folder_name(lora_cfg) -> str:
    """A trained folder's name: `adapter` for a LoRA adapter, `model` for a full fine-tune."""
    return "adapter" if lora_cfg.enabled else "model"


def train_stage(
    run,
    name: str,
    train: str,
    *,
    model_path: str,
    examples: list[dict] | str | Path,
    config: dict,
    inputs=(),
    counts: dict | None = None,
    **arguments,
):
    """A run stage that trains with `train` ("module:function", see the module docstring) on every rank;
    returns (stage, trained folder). A finished stage is skipped.

    `examples` are rows, written to `<stage>/examples.jsonl` so that launched ranks read them from disk,
    or the path of a JSONL file of them that an upstream stage wrote. `config` and `inputs` make the
    stage's hash, together with the recipe's `lora` section and its `train` section less the fields that
    leave the weights unchanged (`TrainConfig.stage_key`); `arguments` (JSON-able) go to the training
    function; `counts` join the manifest's.
    """
    from nega.pipeline import read_json, read_jsonl, write_jsonl

    recipe = run.recipe
    config = {"train": recipe.train.stage_key(), "lora": recipe.lora.model_dump(), **config}
    stage = run.stage(name, config=config, inputs=inputs)
    if not stage.done:
        if isinstance(examples, str | Path):
            path, n_examples = Path(examples), len(read_jsonl(Path(examples)))
        else:
            path, n_examples = write_jsonl(stage.dir / EXAMPLES, examples), len(examples)
        kwargs = {"train": train, "recipe": recipe.model_dump(mode="json"), "model_path": str(model_path),
                  "examples": str(path), "output_dir": str(stage.dir), "arguments": arguments}  # fmt: skip
        run.launcher.run(
            "nega.training:train_on_rank", kwargs, stage.dir, needs_launcher=recipe.train.deepspeed.stage > 0
        )
        log = read_json(stage.dir / TRAIN_LOG)
        history = log["history"]
        losses = [h["loss"] for h in history if "loss" in h]
        steps = max((h.get("step", 0) for h in history), default=0)
        final = losses[-1] if losses else None
        from nega.eval.report import training_curve

        training_curve(stage.dir / CURVE, history, f"{run.recipe.name}: {name}")
        counts = {**log.get("counts", {}), **(counts or {})}
        stage.finish(counts={"examples": n_examples, "steps": steps, "final_loss": final, **counts})
    return stage, str(trained_folder(stage.dir))


def trained_folder(stage_dir: Path) -> Path:
    """The folder a finished training stage trained (`adapter/` or `model/`, directly inside the stage),
    named in its train_log.json. Logs of older runs hold the path the stage then had; its last part
    names the same folder."""
    from nega.pipeline import read_json

    return Path(stage_dir) / Path(read_json(Path(stage_dir) / TRAIN_LOG)["folder"]).name


def train_on_rank(
    train: str, recipe: dict, model_path: str, examples: str, output_dir: str, arguments: dict
) -> None:
    """One rank's part of `train_stage`, from JSON-able arguments: rebuild the recipe, read the examples,
    call the training function; rank 0 writes `train_log.json`."""
    import importlib

    from nega.config.loader import validate_recipe
    from nega.console import install_message_hooks
    from nega.launch import is_main_process
    from nega.pipeline import read_jsonl, write_json

    install_message_hooks()  # a launched rank's warnings and errors clear its progress bar too
    module, function = train.split(":")
    fit = getattr(importlib.import_module(module), function)
    output = Path(output_dir)
    recipe = validate_recipe(recipe)
    # Kept alive until the training function has loaded its model (see `partitioned_loading`).
    loading = partitioned_loading(recipe.train, output / "checkpoints", seed=recipe.seed)
    folder, history, *measured = fit(recipe, model_path, read_jsonl(Path(examples)), output, **arguments)
    del loading
    if is_main_process():
        # The trained folder's name inside the stage, not its path: the run folder may move.
        log = {
            "folder": Path(folder).name,
            "history": history,
            **({"counts": measured[0]} if measured else {}),
        }
        write_json(output / TRAIN_LOG, log)


def partitioned_loading(train_cfg, output_dir: Path, *, seed: int = 0):
    """Under ZeRO-3, TrainingArguments built before the model loads: while they live, transformers'
    `from_pretrained` loads each weight straight into its shard (DeepSpeed's `zero.Init`), so no rank
    ever holds the whole model in memory. None for other stages, where every rank holds it anyway.

    The arguments a training function builds afterwards (with its own overrides) replace these once the
    model is loaded; only their DeepSpeed config matters here, and it is the same."""
    if train_cfg.deepspeed.stage != 3:
        return None
    return training_arguments(train_cfg, output_dir, seed=seed)


def training_arguments(train_cfg, output_dir: Path, *, seed: int = 0, **overrides):
    """TrainingArguments for a method's Trainer; `overrides` win (e.g. a method's own max_steps)."""
    import torch
    from transformers import TrainingArguments

    from nega.launch import deepspeed_config, keep_to_one_device, prepare_distributed_state

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
        **tracking_arguments(train_cfg, Path(output_dir)),
        remove_unused_columns=False,
        # DeepSpeed picks its (CPU) accelerator itself; accelerate's "cpu" flag would turn it off.
        use_cpu=not torch.cuda.is_available() and train_cfg.deepspeed.stage == 0,
        bf16=bf16,
        gradient_checkpointing=train_cfg.gradient_checkpointing,
        dataloader_num_workers=0,
        # Off a terminal the step count goes to the log as lines (`log_progress_callback`), not a bar.
        disable_tqdm=os.environ.get("NEGA_QUIET") == "1" or not sys.stderr.isatty(),
        deepspeed=deepspeed_config(train_cfg, on_gpu=torch.cuda.is_available()),
    )
    if prepare_distributed_state(deepspeed=kwargs["deepspeed"] is not None):
        kwargs["accelerator_config"] = {"use_configured_state": True}
    kwargs.update(overrides)
    return keep_to_one_device(TrainingArguments(**kwargs))


# A training curve needs this many points; a recipe's logging_steps that gives fewer is made smaller.
MIN_CURVE_POINTS = 20


def logging_interval(logging_steps: int, max_steps: int) -> int:
    """Steps between logs: `train.logging_steps`, or fewer when that leaves under MIN_CURVE_POINTS
    points over `max_steps` (every step for runs of up to 2 × MIN_CURVE_POINTS steps).

    `logging_steps` is bookkeeping, out of the stage hash (`TrainConfig.stage_key`), so the interval is
    chosen here, where the Trainer knows its step count, and not written back into the recipe."""
    if max_steps <= 0 or max_steps // logging_steps >= MIN_CURVE_POINTS:
        return logging_steps
    return max(1, min(logging_steps, max_steps // MIN_CURVE_POINTS))


def dense_logging_callback():
    """A TrainerCallback setting the Trainer's logging interval to `logging_interval` once the run's
    step count is known (epochs turn into steps only inside `Trainer.train`)."""
    from transformers import TrainerCallback

    class DenseLogging(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if args.logging_strategy == "steps":
                state.logging_steps = logging_interval(args.logging_steps, state.max_steps)

    return DenseLogging()


def log_progress_callback(description: str, stream=None, clock=None):
    """A TrainerCallback writing a training run's progress as `nega.progress.LogProgress` lines (steps
    done, rate, time left, last loss) when stderr is not a terminal and NEGA_QUIET is unset; rank 0
    only. A resumed run counts from its checkpoint's step."""
    import time

    from transformers import TrainerCallback

    from nega.progress import LogProgress

    stream = stream if stream is not None else sys.stderr

    class LogLines(TrainerCallback):
        progress = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and os.environ.get("NEGA_QUIET") != "1" and not stream.isatty():
                self.progress = LogProgress(
                    description, state.max_steps, stream, clock or time.monotonic, initial=state.global_step
                )

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.advance(state.global_step - self.progress.done)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is not None and logs and "loss" in logs:
                self.progress.fields["loss"] = float(logs["loss"])

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.finish()
                self.progress = None

    return LogLines()


def tracking_arguments(train_cfg, output_dir: Path) -> dict:
    """`train.report_to` for TrainingArguments. A run is its project and a training stage its run name
    (`output_dir` is `<run>/<stage>/checkpoints`); TensorBoard writes into `<stage>/tensorboard/`, and
    wandb stays offline unless WANDB_MODE is set: nothing leaves the machine unless the user asks."""
    trackers = list(train_cfg.report_to)
    if not trackers:
        return {"report_to": []}
    stage = output_dir.parent
    if "tensorboard" in trackers:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(stage / "tensorboard")
    if "wandb" in trackers:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(stage))
    from transformers import TrainingArguments

    arguments = {"report_to": trackers, "run_name": stage.name}
    if "project" in {f.name for f in dataclasses.fields(TrainingArguments)}:  # trackio's, transformers 5
        arguments["project"] = stage.parent.name
    return arguments


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

    import torch
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

    # `output_dir` is <run>/<stage>/checkpoints: the stage names the lines in a log.
    added = [
        RecordStart,
        dense_logging_callback(),
        log_progress_callback(f"training {Path(output_dir).parent.name}"),
    ]
    for callback in added:
        trainer.add_callback(callback)
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    finally:
        for callback in added:
            trainer.remove_callback(callback)


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
