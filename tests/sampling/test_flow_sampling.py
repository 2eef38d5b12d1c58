"""Sampling parameters beyond greedy vs sampled: each one changes the samples the way it should.

On the HF backend and the trained tiny model, with the same seed throughout: a low temperature draws
tokens the model finds likelier and fewer distinct completions than a high one; a tiny top_p keeps only
the likeliest token (every sample is the greedy answer) while top_p 1 varies; max_tokens bounds every
sampled completion; a seed reproduces its samples. Then the recipe's sampling section must reach the
sampler's call in a D²O sample stage.
"""

from __future__ import annotations

import pytest
from sampling_helpers import chat

from nega.logps import batched_sequence_logps
from nega.sampling.base import render_prompt

# Out-of-corpus prompts, where the tiny model is unsure, and one it knows.
PROMPTS = [chat("tell me a story."), chat("what is 12 plus 31?"), chat("name a color.")]
N, MAX_TOKENS, SEED = 12, 10, 3


def _sample(sampler, **kwargs):
    options = {"n": N, "max_tokens": MAX_TOKENS, "seed": SEED, "temperature": 1.0, "top_p": 1.0, **kwargs}
    return sampler.generate(PROMPTS, **options)


def _mean_token_logp(sampler, groups) -> float:
    """Mean log-prob per token, under the model at temperature 1, of every sampled token."""
    tokenizer = sampler.tokenizer
    pairs = [
        (render_prompt(tokenizer, p), c.token_ids) for p, g in zip(PROMPTS, groups, strict=True) for c in g
    ]
    pairs = [(p, ids) for p, ids in pairs if ids]
    totals = batched_sequence_logps(sampler.base, tokenizer, pairs, add_eos=False)
    return sum(totals) / sum(len(ids) for _, ids in pairs)


def _distinct(groups) -> int:
    return sum(len({c.text for c in g}) for g in groups)


def test_temperature_sharpens_or_flattens_the_samples(hf_sampler):
    cold = _sample(hf_sampler, temperature=0.3)
    hot = _sample(hf_sampler, temperature=1.5)
    assert cold != hot
    cold_logp, hot_logp = _mean_token_logp(hf_sampler, cold), _mean_token_logp(hf_sampler, hot)
    assert cold_logp > hot_logp + 0.5, (cold_logp, hot_logp)
    assert _distinct(cold) < _distinct(hot), (_distinct(cold), _distinct(hot))


def test_a_tiny_top_p_keeps_only_the_likeliest_token(hf_sampler):
    greedy = [g[0].text for g in hf_sampler.generate(PROMPTS, temperature=0, max_tokens=MAX_TOKENS)]
    narrow = _sample(hf_sampler, temperature=1.5, top_p=1e-4)
    assert [{c.text for c in g} for g in narrow] == [{t} for t in greedy]
    wide = _sample(hf_sampler, temperature=1.5, top_p=1.0)
    assert _distinct(wide) > len(PROMPTS)
    middle = _sample(hf_sampler, temperature=1.5, top_p=0.6)
    assert _mean_token_logp(hf_sampler, middle) > _mean_token_logp(hf_sampler, wide)


@pytest.mark.parametrize("max_tokens", [1, 4, 9])
def test_max_tokens_bounds_every_sampled_completion(hf_sampler, max_tokens):
    groups = _sample(hf_sampler, temperature=1.5, max_tokens=max_tokens)
    lengths = [len(c.token_ids) for g in groups for c in g]
    assert max(lengths) == max_tokens  # reached (a story runs long) and never passed
    cut = [c for g in groups for c in g if len(c.token_ids) == max_tokens]
    assert all(c.finish_reason == "length" for c in cut if c.token_ids[-1] not in hf_sampler.eos_ids)


def test_a_seed_reproduces_its_samples_at_any_temperature_and_top_p(hf_sampler):
    for options in ({"temperature": 1.2, "top_p": 0.95}, {"temperature": 1.5, "top_p": 1.0}):
        first = _sample(hf_sampler, **options)
        again = _sample(hf_sampler, **options)
        other = _sample(hf_sampler, **options, seed=SEED + 1)
        assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in first]
        assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in first]


def test_the_recipes_sampling_section_reaches_the_d2o_sampler(tiny_model_dir, tmp_path, monkeypatch):
    """The sample stage calls its sampler with sampling.n, temperature, top_p, max_tokens and seed."""
    import nega.sampling
    from nega.align.d2o.run import sample_stage
    from nega.config import validate_recipe
    from nega.pipeline import Run, unlock_run_folder
    from nega.sampling.base import Completion

    calls = []

    class RecordingSampler:
        def generate(self, prompts, **kwargs):
            calls.append(kwargs)
            return [[Completion(text="x", token_ids=[5])] * kwargs["n"] for _ in prompts]

        def close(self):
            pass

    monkeypatch.setattr(nega.sampling, "make_sampler", lambda *a, **k: RecordingSampler())
    sampling = {"n": 3, "temperature": 0.45, "top_p": 0.85, "max_tokens": 17, "seed": 11}
    recipe = validate_recipe(
        {
            "name": "flow", "method": "d2o", "model": {"name": str(tiny_model_dir)},
            "data": {"dataset": "unused"}, "sampling": sampling,
        }
    )  # fmt: skip
    run = Run(recipe, tmp_path / "run")
    try:
        sample_stage(run, "sample", str(tiny_model_dir), ["p1", "p2"], None, 1, [])
        sample_stage(run, "r2-sample", str(tiny_model_dir), ["p1", "p2"], None, 2, [])
    finally:
        unlock_run_folder(run.dir)
    first, second = calls
    assert {k: first[k] for k in sampling} == sampling
    # A later round draws other samples: its seed moves by round, the rest stays the recipe's.
    assert second["seed"] != sampling["seed"] and {k: second[k] for k in sampling if k != "seed"} == {
        k: v for k, v in sampling.items() if k != "seed"
    }
