"""nega.plan: the GPU layout as a pure function of the recipe and the device facts, checked on a CPU for
GPU hosts of 1 to 8 GPUs; `nega plan`; and the stages that read the plan (vLLM's engine arguments,
the reference/merge/classifier device, the lone Trainer's GPU count)."""

from __future__ import annotations

import json
import sys

import pytest
from nega_testing import shared_data, smollm2_gguf
from typer.testing import CliRunner

from nega.cli import app
from nega.config import SamplingConfig, load_recipe
from nega.plan import (
    KNOWN_CONFIGS,
    DeviceFacts,
    ModelFacts,
    PlanError,
    engine_dtype,
    facts_from_config,
    make_plan,
    model_facts,
    sampling_layout,
    tensor_parallel_sizes,
    work_device,
)

runner = CliRunner()

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
QWEN = {size: f"Qwen/Qwen2.5-{size}-Instruct" for size in ("0.5B", "1.5B", "7B")}


def known(name: str) -> ModelFacts:
    return facts_from_config(name, KNOWN_CONFIGS[name], "test")


def toy_facts() -> ModelFacts:
    from nega.config import ToyConfig
    from nega.plan import toy_facts

    return toy_facts(ToyConfig(world="harm"))


# (model, heads, KV heads, {GPUs: (tensor parallel, data parallel)})
LAYOUTS = [
    (SMOLLM2, 9, 3, {1: (1, 1), 2: (1, 2), 4: (3, 1), 8: (3, 2)}),
    (QWEN["0.5B"], 14, 2, {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (2, 4)}),
    (QWEN["1.5B"], 12, 2, {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (2, 4)}),
    (QWEN["7B"], 28, 4, {1: (1, 1), 2: (2, 1), 4: (4, 1), 8: (4, 2)}),
    ("toy", 2, 2, {1: (1, 1), 2: (2, 1), 4: (2, 2), 8: (2, 4)}),
]


@pytest.mark.parametrize("name,heads,kv_heads,expected", LAYOUTS, ids=[row[0] for row in LAYOUTS])
def test_tensor_parallel_divides_heads_and_replicas_fill_the_gpus(name, heads, kv_heads, expected):
    facts = toy_facts() if name == "toy" else known(name)
    assert (facts.heads, facts.kv_heads) == (heads, kv_heads)
    for gpus, (tp, dp) in expected.items():
        layout = sampling_layout(
            facts, DeviceFacts(gpus, 80.0), SamplingConfig(backend="vllm"), adapters=True, backend="vllm"
        )
        assert heads % layout.tensor_parallel_size == 0 and kv_heads % layout.tensor_parallel_size == 0
        assert layout.tensor_parallel_size * layout.data_parallel_size <= gpus
        assert (layout.tensor_parallel_size, layout.data_parallel_size) == (tp, dp), gpus
        # The largest size vLLM accepts: no bigger divisor of both head counts fits on these GPUs.
        assert layout.tensor_parallel_size == max(tensor_parallel_sizes(facts, gpus))
        assert layout.dtype == "bfloat16"  # an adapter is active: vLLM's LoRA kernels take 16-bit only


def test_parameter_counts_match_the_published_models():
    # Computed from the config shapes; the models' published totals.
    assert known(SMOLLM2).params == 134_515_008
    assert known(QWEN["0.5B"]).params == 494_032_768
    assert known(QWEN["7B"]).params == 7_615_616_512


def test_engine_dtype_rules():
    gpu, cpu = DeviceFacts(1, 80.0), DeviceFacts()
    fp32 = ModelFacts("m", "test", dtype="float32", local=True)
    fp16 = ModelFacts("m", "test", dtype="float16", local=True)
    hub = ModelFacts("org/m", "test", dtype="bfloat16", local=False)
    assert engine_dtype(fp32, gpu, adapters=False) == "bfloat16"  # a float32 checkpoint on a GPU
    assert engine_dtype(fp16, gpu, adapters=True) == "bfloat16"  # an adapter is active
    assert engine_dtype(fp16, gpu, adapters=False) == "float16"  # the checkpoint's own 16-bit dtype
    # On a CPU: the local checkpoint's dtype, as before plans; a hub id is left to vLLM ("auto").
    assert engine_dtype(fp32, cpu, adapters=True) == "float32"
    assert engine_dtype(hub, cpu, adapters=True) == "auto"


def test_cpu_plan_is_the_cpu_behaviour():
    recipe = load_recipe("toy-d2o", ["sampling.backend=vllm"])
    plan = make_plan(recipe, DeviceFacts(), backend="vllm")
    assert plan.sampling.dtype == "float32"  # the toy checkpoint's dtype
    assert (plan.sampling.tensor_parallel_size, plan.sampling.data_parallel_size) == (1, 1)
    assert plan.sampling.adapter_mode == "merged"
    assert plan.reference_device == plan.merge_device == plan.classifier_device == "cpu"
    assert (plan.training.processes, plan.training.launcher) == (1, "in-process")
    assert plan.training.dtype == "float32"
    assert plan.fits is None  # no GPU memory to check against


def test_gpu_plan_for_a_builtin_recipe():
    recipe = load_recipe("stepneg-gsm8k")  # Qwen2.5-1.5B, 12 heads, 2 KV heads
    plan = make_plan(recipe, DeviceFacts(8, 80.0), backend="vllm")
    assert (plan.sampling.tensor_parallel_size, plan.sampling.data_parallel_size) == (2, 4)
    assert plan.sampling.dtype == "bfloat16" and plan.sampling.adapter_mode == "lora"
    assert plan.reference_device == plan.merge_device == plan.classifier_device == "cuda:0"
    assert plan.training.processes == 8 and plan.training.launcher == "accelerate"
    assert "never nn.DataParallel" not in plan.training.data_parallel  # 8 processes: DDP
    assert "DDP over 8 processes" == plan.training.data_parallel.split(" (")[0]
    assert plan.fits is True


def test_requested_tensor_parallel_size_is_checked():
    facts = known(SMOLLM2)
    with pytest.raises(
        PlanError, match=r"sampling.tensor_parallel_size=2 does not divide .* 9 attention heads"
    ):
        sampling_layout(
            facts,
            DeviceFacts(4, 80.0),
            SamplingConfig(tensor_parallel_size=2),
            adapters=False,
            backend="vllm",
        )
    with pytest.raises(PlanError, match=r"sampling.tensor_parallel_size=3 but 2 GPU\(s\)"):
        sampling_layout(
            facts,
            DeviceFacts(2, 80.0),
            SamplingConfig(tensor_parallel_size=3),
            adapters=False,
            backend="vllm",
        )
    layout = sampling_layout(
        facts, DeviceFacts(8, 80.0), SamplingConfig(tensor_parallel_size=1), adapters=False, backend="vllm"
    )
    assert (layout.tensor_parallel_size, layout.data_parallel_size) == (1, 8)


def test_unknown_model_falls_back_to_tensor_parallel_1_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    facts = model_facts("someone/not-a-cached-model")
    assert not facts.known and "not in the local Hugging Face cache" in facts.note
    recipe = load_recipe("d2o-hh-harmless", ["model.name=someone/not-a-cached-model"])
    plan = make_plan(recipe, DeviceFacts(4, 80.0), backend="vllm")
    assert (plan.sampling.tensor_parallel_size, plan.sampling.data_parallel_size) == (1, 4)
    assert plan.fits is None and any("architecture is unknown" in n for n in plan.notes)


def test_facts_of_a_local_folder_come_from_its_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**KNOWN_CONFIGS[QWEN["7B"]], "torch_dtype": "float16"}))
    facts = model_facts(str(tmp_path))
    assert facts.local and facts.dtype == "float16" and (facts.heads, facts.kv_heads) == (28, 4)
    assert facts.params == known(QWEN["7B"]).params


def test_memory_estimate_parts():
    recipe = load_recipe(
        "d2o-hh-harmless", [f"model.name={QWEN['7B']}", "train.gradient_checkpointing=false"]
    )
    one = make_plan(recipe, DeviceFacts(1, 80.0), backend="vllm")
    four = make_plan(recipe, DeviceFacts(4, 80.0), backend="vllm")
    weights = 7_615_616_512 * 2 / 2**30  # bf16
    assert one.sampling_memory.parts["weights"] == pytest.approx(weights, abs=0.01)
    assert four.sampling_memory.parts["weights"] == pytest.approx(weights / 4, abs=0.01)  # TP 4
    # KV cache of one full 32768-token context: 2 x 28 layers x 4 KV heads x 128 x 2 bytes per token.
    assert one.sampling_memory.parts["kv_cache"] == pytest.approx(
        2 * 28 * 4 * 128 * 2 * 32768 / 2**30, abs=0.01
    )
    assert one.training.memory.parts["weights"] == pytest.approx(weights, abs=0.01)
    zero3 = make_plan(load_recipe("d2o-hh-harmless", [f"model.name={QWEN['7B']}", "train.deepspeed.stage=3"]),
                      DeviceFacts(4, 80.0), backend="vllm")  # fmt: skip
    assert zero3.training.memory.parts["weights"] == pytest.approx(weights / 4, abs=0.01)
    checkpointed = make_plan(
        load_recipe("d2o-hh-harmless", [f"model.name={QWEN['7B']}", "train.gradient_checkpointing=true"]),
        DeviceFacts(1, 80.0),
        backend="vllm",
    )
    assert checkpointed.training.memory.parts["activations"] < one.training.memory.parts["activations"] / 5


@pytest.mark.parametrize("gpus", ["1x24", "1x16", "2x24"])
def test_fixes_make_the_plan_fit(gpus):
    overrides = [f"model.name={QWEN['7B']}"]
    devices = DeviceFacts.parse(gpus)
    plan = make_plan(load_recipe("d2o-hh-harmless", overrides), devices, backend="vllm")
    assert plan.training.memory.fits is False and plan.fits is False
    fixes = [f for f in plan.fixes if f.stage == "training"]
    assert fixes
    for fix in fixes:
        fixed = make_plan(
            load_recipe("d2o-hh-harmless", overrides + fix.overrides.split()), devices, backend="vllm"
        )
        assert fixed.training.memory.fits is True, fix.overrides
        assert fixed.training.memory.total_gib == fix.total_gib


def test_device_facts_parse():
    assert DeviceFacts.parse("8x80") == DeviceFacts(8, 80.0, "assumed", assumed=True)
    assert DeviceFacts.parse("2x40GiB").gib_per_gpu == 40.0
    assert DeviceFacts.parse("cpu").gpus == 0
    with pytest.raises(ValueError, match="not GPUSxGIB"):
        DeviceFacts.parse("eight")


def test_work_device():
    from nega.models import default_device

    assert work_device(DeviceFacts(2, 80.0)) == "cuda:0"
    assert work_device(DeviceFacts()) == "cpu"
    assert default_device() == work_device(DeviceFacts.detect())


def test_engine_arguments_come_from_the_plan_without_vllm(monkeypatch):
    from nega.sampling.vllm import engine_arguments

    monkeypatch.setitem(sys.modules, "vllm", None)  # any import of vllm now fails
    cfg = SamplingConfig(backend="vllm")
    gpu = sampling_layout(known(SMOLLM2), DeviceFacts(8, 80.0), cfg, adapters=True, backend="vllm")
    args = engine_arguments("/models/smollm2", cfg, gpu, max_lora_rank=16, adapters=True)
    assert args["dtype"] == "bfloat16" and args["tensor_parallel_size"] == 3
    assert args["enable_lora"] is True and args["max_lora_rank"] == 16 and args["max_loras"] == 2
    assert "enable_chunked_prefill" not in args and "block_size" not in args  # vLLM's GPU defaults
    cpu_facts = ModelFacts("m", "test", dtype="float32", local=True)
    cpu = sampling_layout(cpu_facts, DeviceFacts(), cfg, adapters=True, backend="vllm")
    args = engine_arguments("/models/m", cfg, cpu, adapters=False)
    assert args["dtype"] == "float32" and args["tensor_parallel_size"] == 1 and args["enable_lora"] is False
    assert args["enable_chunked_prefill"] is False and args["block_size"] == 32


def test_make_sampler_starts_vllm_with_the_planned_layout(monkeypatch, tmp_path):
    import nega.sampling.vllm
    from nega.sampling import make_sampler

    (tmp_path / "config.json").write_text(json.dumps({**KNOWN_CONFIGS[SMOLLM2], "torch_dtype": "float32"}))
    started = {}

    class Recorder:
        def __init__(self, model_path, cfg, **kwargs):
            started.update(kwargs, model_path=model_path)

    monkeypatch.setattr(nega.sampling.vllm, "VLLMSampler", Recorder)
    make_sampler(tmp_path, SamplingConfig(backend="vllm"), adapters=True, devices=DeviceFacts(8, 80.0))
    layout = started["layout"]
    assert (layout.tensor_parallel_size, layout.data_parallel_size, layout.dtype) == (3, 2, "bfloat16")
    assert layout.adapter_mode == "lora" and started["adapters"] is True


def test_lone_trainer_never_wraps_several_gpus_in_data_parallel():
    from transformers import TrainingArguments

    from nega.launch import keep_to_one_device, trainer_gpu_count

    assert trainer_gpu_count(1, 8) == 1
    assert trainer_gpu_count(1, 1) is None and trainer_gpu_count(1, 0) is None
    assert trainer_gpu_count(8, 8) is None  # launched ranks see one GPU each already
    args = TrainingArguments(output_dir="unused", per_device_train_batch_size=4, use_cpu=True, report_to=[])
    args._n_gpu = 8  # what TrainingArguments resolves on a host with 8 visible GPUs
    assert args.train_batch_size == 32  # the batch the Trainer would feed nn.DataParallel
    keep_to_one_device(args, processes=1)
    assert args.n_gpu == 1 and args.train_batch_size == 4


def test_load_base_model_moves_to_the_given_device(tmp_path):
    from nega.models import load_base_model
    from nega.toy.model import build_model, build_tokenizer, save_model

    tokenizer = build_tokenizer(["a small corpus of words", "more words here"], vocab_size=300)
    save_model(build_model(tokenizer), tokenizer, tmp_path / "m")
    assert next(load_base_model(tmp_path / "m").parameters()).device.type == "cpu"
    # "meta" stands in for a GPU here: the weights go where the plan's device says.
    assert next(load_base_model(tmp_path / "m", device="meta").parameters()).device.type == "meta"


def test_plan_command_json_for_smollm2_on_8_gpus(monkeypatch):
    smollm2_gguf()
    monkeypatch.setenv("NEGA_DATA", str(shared_data()))
    result = runner.invoke(app, ["plan", "d2o-smollm2-harmless", "--assume-gpus", "8x80", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    tp = plan["sampling"]["tensor_parallel_size"]
    assert 9 % tp == 0 and tp == 3 and plan["sampling"]["data_parallel_size"] == 2
    assert plan["sampling"]["dtype"] == "bfloat16"
    assert plan["reference_device"].startswith("cuda")
    assert plan["training"]["processes"] == 8 and plan["fits"] is True


def test_plan_command_table_and_warning():
    result = runner.invoke(
        app,
        ["plan", "d2o-hh-harmless", f"model.name={QWEN['7B']}", "train.gradient_checkpointing=false",
         "--assume-gpus", "1x24"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tensor parallel 1 x data parallel 1" in result.output
    assert (
        "warning: training needs about" in result.output
        and "train.gradient_checkpointing=true" in result.output
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--assume-gpus", "lots"], "not GPUSxGIB"),
        (["--assume-gpus", "2x80", "sampling.tensor_parallel_size=4"], "sampling.tensor_parallel_size=4"),
        (["--assume-gpus", "2x80", "--gpus", "4"], "--gpus 4"),
        (["sampling.n=0", "--assume-gpus", "1x80"], "sampling.n"),
    ],
)
def test_plan_command_bad_input_exits_2(args, message):
    result = runner.invoke(app, ["plan", "d2o-hh-harmless", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
