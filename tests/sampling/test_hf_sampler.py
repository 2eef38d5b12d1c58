"""HFSampler on the trained tiny model: known greedy answers, batching, seeds, stops, adapters."""

from __future__ import annotations

import pytest
from sampling_helpers import KNOWN, chat, peft_greedy, write_lora_adapter

from nega.config import SamplingConfig
from nega.sampling.base import render_prompt

# Out-of-corpus prompts: the tiny model is unsure there, so samples vary.
UNSURE = [chat("tell me a story."), chat("what is 12 plus 31?")]


def test_greedy_gives_the_learned_answers(hf_sampler):
    questions = list(KNOWN)
    out = hf_sampler.generate([chat(q) for q in questions], temperature=0, max_tokens=40)
    assert [g[0].text for g in out] == [KNOWN[q] for q in questions]
    eos = hf_sampler.tokenizer.eos_token_id
    for group in out:
        c = group[0]
        assert c.finish_reason == "stop"
        assert c.token_ids[-1] == eos  # EOS ends the ids, never the text
        assert hf_sampler.tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True) == c.text
        assert hf_sampler.tokenizer.pad_token_id not in c.token_ids


def test_sorted_padded_batches_match_one_prompt_at_a_time(tiny_model_dir, hf_sampler):
    from nega.sampling.hf import HFSampler

    # Prompts of different token lengths, given unsorted: batching must neither mix up nor shift rows.
    prompts = [chat("count to five."), chat("what is 2 plus 3?"), "<|user|>\nsay hello.\n<|assistant|>\n"]
    prompts += [chat("name a color."), chat("tell me a story.")]
    batched = hf_sampler.generate(prompts, temperature=0, max_tokens=20)
    single = HFSampler(tiny_model_dir, SamplingConfig(backend="hf", batch_size=1))
    alone = single.generate(prompts, temperature=0, max_tokens=20)
    single.close()
    assert [g[0].text for g in batched] == [g[0].text for g in alone]
    assert [g[0].token_ids for g in batched] == [g[0].token_ids for g in alone]
    assert batched[1][0].text == KNOWN["what is 2 plus 3?"]


def test_static_cache_on_cpu_gives_the_dynamic_cache_tokens(hf_sampler):
    # The static cache is a CPU speed-up only: greedy tokens and seeded samples must not change.
    assert hf_sampler.cache_implementation == "static"
    prompts = [chat("count to five."), chat("what is 2 plus 3?"), *UNSURE]
    static = [hf_sampler.generate(prompts, temperature=t, n=2, max_tokens=20, seed=3) for t in (0, 1.0)]
    hf_sampler.cache_implementation = None
    try:
        dynamic = [hf_sampler.generate(prompts, temperature=t, n=2, max_tokens=20, seed=3) for t in (0, 1.0)]
    finally:
        hf_sampler.cache_implementation = "static"
    for ours, reference in zip(static, dynamic, strict=True):
        assert [[c.token_ids for c in g] for g in ours] == [[c.token_ids for c in g] for g in reference]


def test_n_samples_per_prompt(hf_sampler):
    out = hf_sampler.generate(UNSURE + [chat("name a color.")], n=4, temperature=1.5, max_tokens=12, seed=0)
    assert [len(g) for g in out] == [4, 4, 4]
    assert len({c.text for c in out[0]}) > 1  # really n samples, not one repeated
    greedy = hf_sampler.generate([chat("say hello.")], n=3, temperature=0, max_tokens=20)
    assert [c.text for c in greedy[0]] == [KNOWN["say hello."]] * 3


def test_same_seed_same_samples_other_seed_other_samples(hf_sampler):
    def sample(seed):
        out = hf_sampler.generate(UNSURE, n=4, temperature=1.5, max_tokens=12, seed=seed)
        return [[c.text for c in g] for g in out]

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_max_tokens_gives_length(hf_sampler):
    out = hf_sampler.generate([chat("say hello."), chat("name a color.")], temperature=0, max_tokens=3)
    for group in out:
        assert group[0].finish_reason == "length"
        assert len(group[0].token_ids) == 3
    assert KNOWN["say hello."].startswith(out[0][0].text)


def test_stop_strings_cut_the_text(hf_sampler):
    prompts = [chat("what is 2 plus 3?"), chat("name a color.")]
    out = hf_sampler.generate(prompts, temperature=0, max_tokens=40, stop=[" is", "zzz"])
    assert out[0][0].text == "2 plus 3"
    assert out[0][0].finish_reason == "stop"
    # Generation stopped right after the stop string, not at the answer's end.
    assert len(out[0][0].token_ids) < len(hf_sampler.generate(prompts[:1], temperature=0)[0][0].token_ids)
    assert out[1][0].text == "blue"  # no stop string in it: untouched


def test_chat_messages_and_rendered_strings_agree(hf_sampler):
    messages = [chat(q) for q in KNOWN]
    rendered = [render_prompt(hf_sampler.tokenizer, m) for m in messages]
    a = hf_sampler.generate(messages, n=2, temperature=1.0, max_tokens=16, seed=3)
    b = hf_sampler.generate(rendered, n=2, temperature=1.0, max_tokens=16, seed=3)
    assert [[c.text for c in g] for g in a] == [[c.text for c in g] for g in b]


def test_adapter_changes_outputs_and_matches_peft(tiny_model_dir, hf_sampler, lora_adapter_dir):
    prompts = [chat(q) for q in KNOWN]
    base = [g[0].text for g in hf_sampler.generate(prompts, temperature=0, max_tokens=16)]
    tuned = [
        g[0].text
        for g in hf_sampler.generate(prompts, temperature=0, max_tokens=16, adapter=lora_adapter_dir)
    ]
    assert tuned != base
    assert tuned == peft_greedy(tiny_model_dir, lora_adapter_dir, prompts, max_tokens=16)
    # Without an adapter the next call is the base model again.
    assert [g[0].text for g in hf_sampler.generate(prompts, temperature=0, max_tokens=16)] == base


def test_adapter_folder_with_new_weights_is_reloaded(tiny_model_dir, hf_sampler, tmp_path):
    import os

    prompts = [chat(q) for q in KNOWN]
    folder = write_lora_adapter(tiny_model_dir, tmp_path / "round", seed=2)
    first = [g[0].text for g in hf_sampler.generate(prompts, temperature=0, max_tokens=12, adapter=folder)]
    write_lora_adapter(tiny_model_dir, folder, seed=3)
    weights = folder / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # coarse clocks: force a change
    second = [g[0].text for g in hf_sampler.generate(prompts, temperature=0, max_tokens=12, adapter=folder)]
    assert second != first
    assert second == peft_greedy(tiny_model_dir, folder, prompts, max_tokens=12)


def test_missing_adapter_is_a_clear_error(hf_sampler, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        hf_sampler.generate([chat("say hello.")], adapter=tmp_path / "nope")


def test_sampling_runs_no_logits_processor_beyond_temperature_and_top_p(hf_sampler, monkeypatch):
    """A checkpoint's own knobs (Qwen sets top_k, repetition_penalty; some min_p) are neutralised, and so
    are nega's neutral values themselves: min_p 0.0 would still run a warper over the whole vocabulary at
    every step of every row."""
    from transformers.generation.logits_process import LogitsProcessorList

    used = []
    real_call = LogitsProcessorList.__call__

    def recording(self, input_ids, scores, **kwargs):
        used.append(tuple(type(p).__name__ for p in self))
        return real_call(self, input_ids, scores, **kwargs)

    monkeypatch.setattr(LogitsProcessorList, "__call__", recording)
    config = hf_sampler.base.generation_config
    monkeypatch.setattr(config, "min_p", 0.2, raising=False)
    monkeypatch.setattr(config, "top_k", 20, raising=False)
    monkeypatch.setattr(config, "repetition_penalty", 1.05, raising=False)
    hf_sampler.generate(UNSURE, n=2, temperature=1.0, top_p=1.0, max_tokens=4, seed=0)
    assert used and set(used) == {()}
    used.clear()
    hf_sampler.generate(UNSURE, n=2, temperature=0.7, top_p=0.9, max_tokens=4, seed=0)
    assert set(used) == {("TemperatureLogitsWarper", "TopPLogitsWarper")}
