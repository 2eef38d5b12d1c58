"""One training path for every method: a run stage that trains on every rank, resumes, and saves.

A method's run.py trains through `train_stage`:

    stage, adapter = train_stage(
        run, "d2o-train", "nega.align.d2o.trainer:train_policy",
        model_path=model_path, examples=rows, config={...}, inputs=[references], objective="d2o",
    )

The stage writes the examples to its folder, then calls the named training function on every rank of
the run's launcher (`nega.launch.Launcher`; in this process on one device) as

    train_policy(recipe, model_path, examples, output_dir, **arguments) -> (saved folder, log history)

Rank 0 writes `train_log.json` ({"folder", "history"}); the stage draws `training_curve.png` (the
loss and the method's own metrics per logged step) and finishes with its step count and final loss. The training function builds its model, its `nega.trainer.MethodTrainer` subclass and
`training_arguments`, and calls `trainer.fit(...)`, which trains (resuming from the last checkpoint in
`<stage>/checkpoints`) and saves the adapter (`adapter/`) or full model (`model/`).

Only the standard library is imported at the top; torch and transformers load inside the functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

TRAIN_LOG = "train_log.json"
CURVE = "training_curve.png"  # loss and the method's metrics per logged step, linked from report.md
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
        history = read_json(stage.dir / TRAIN_LOG)["history"]
        losses = [h["loss"] for h in history if "loss" in h]
        steps = max((h.get("step", 0) for h in history), default=0)
        final = losses[-1] if losses else None
        from nega.eval.report import training_curve

        training_curve(stage.dir / CURVE, history, f"{run.recipe.name}: {name}")
        stage.finish(counts={"examples": n_examples, "steps": steps, "final_loss": final, **(counts or {})})
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

    from nega.config import validate_recipe
    from nega.launch import is_main_process
    from nega.pipeline import read_jsonl, write_json

    module, function = train.split(":")
    fit = getattr(importlib.import_module(module), function)
    output = Path(output_dir)
    recipe = validate_recipe(recipe)
    # Kept alive until the training function has loaded its model (see `partitioned_loading`).
    loading = partitioned_loading(recipe.train, output / "checkpoints", seed=recipe.seed)
    folder, history = fit(recipe, model_path, read_jsonl(Path(examples)), output, **arguments)
    del loading
    if is_main_process():
        # The trained folder's name inside the stage, not its path: the run folder may move.
        write_json(output / TRAIN_LOG, {"folder": Path(folder).name, "history": history})


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
        disable_tqdm=os.environ.get("NEGA_QUIET") == "1",
        deepspeed=deepspeed_config(train_cfg, on_gpu=torch.cuda.is_available()),
    )
    if prepare_distributed_state(deepspeed=kwargs["deepspeed"] is not None):
        kwargs["accelerator_config"] = {"use_configured_state": True}
    kwargs.update(overrides)
    return keep_to_one_device(TrainingArguments(**kwargs))


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
