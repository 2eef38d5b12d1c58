"""D²O trainer: two steps on the tiny LoRA model; references come from frozen weights, not the policy."""

from __future__ import annotations

import math

import pytest
import torch

from nega.align.d2o.data import build_examples
from nega.align.d2o.trainer import train_policy
from nega.config import validate_recipe
from nega.logps import LogpCache, reference_logps


def _recipe(model_dir, tmp_path, objective="d2o", **train):
    return validate_recipe(
        {
            "name": "t",
            "method": "d2o",
            "output_dir": str(tmp_path),
            "model": {"name": str(model_dir), "max_length": 64},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"dataset": "unused"},
            "d2o": {"objective": objective, "alpha": 0.5, "beta": 0.5},
            "train": {
                "lr": 5e-2,
                "max_steps": 2,
                "batch_size": 2,
                "logging_steps": 1,
                "save_steps": 1,
                "warmup_ratio": 0.0,
                "lr_scheduler": "constant",
                **train,
            },
        }
    )


def _examples(model_dir, recipe, cache=None):
    from nega.models import load_tokenizer
    from nega.sampling.base import render_prompt

    tokenizer = load_tokenizer(model_dir)
    questions = ["what is 1 plus 2?", "name a color.", "say hello.", "count to five."]
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    negatives = ["1 plus 2 is 9.", "a cat", "one two", "hello there, friend!"]
    samples = [
        (["1 plus 2 is 3.", "3"], [True, True]),
        (["blue"], [True]),
        (["hello there"], [False]),
        (["one two three four five", "one", "five"], [True, True, True]),
    ]

    def score(pairs, eos):
        return reference_logps(str(model_dir), recipe.model, pairs, eos, cache=cache)

    return build_examples(prompts, negatives, samples, score)


def _policy_logps(model, tokenizer, examples, disable_adapter):
    from nega.logps import batched_sequence_logps

    pairs = [(e["prompt"], t) for e in examples for t in e["self"]] + [
        (e["prompt"], e["rejected"]) for e in examples
    ]
    eos = [f for e in examples for f in e["self_eos"]] + [True] * len(examples)
    return batched_sequence_logps(
        model, tokenizer, pairs, add_eos=eos, max_length=64, disable_adapter=disable_adapter
    )


def _refs(examples):
    return [v for e in examples for v in e["ref_self"]] + [e["ref_rejected"] for e in examples]


@pytest.mark.parametrize("objective", ["d2o", "dpo_self", "ga", "kto_neg", "sft_self"])
def test_two_steps_train_lora_only_with_frozen_references(tiny_model_dir, tmp_path, objective):
    from peft import PeftModel

    from nega.models import load_base_model, load_tokenizer

    torch.manual_seed(0)
    recipe = _recipe(tiny_model_dir, tmp_path, objective)
    cache = LogpCache(tmp_path / "ref.jsonl")
    examples = _examples(tiny_model_dir, recipe, cache)
    assert len(cache.values) == 4 + 7 + 4  # self-samples + negatives + KL partners, each scored once
    adapter, history = train_policy(
        recipe, str(tiny_model_dir), examples, tmp_path / "train", objective=objective
    )

    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    if objective in ("d2o", "dpo_self"):
        # The LoRA adapter starts at identity (B = 0): policy = reference, so the first loss is log 2.
        assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
        assert any(f"{objective}/reward_accuracy" in h for h in history)
    if objective == "kto_neg":
        assert losses[0] == pytest.approx(0.5, abs=1e-4)  # 1 - σ(β (0 - 0))
    if objective == "sft_self":
        # The adapter starts at identity: the first loss is the reference's token-mean NLL of the
        # self-samples of the first batch, whichever two prompts the shuffle put there.
        import itertools

        from nega.align.d2o.data import D2OCollator

        collate = D2OCollator(load_tokenizer_for(tiny_model_dir), "sft_self", 64)
        possible = []
        for pair in itertools.combinations(examples, 2):
            batch = collate(list(pair))
            tokens = batch["self_tokens"][batch["self_mask"]].sum().item()
            possible.append(-sum(v for e in pair for v in e["ref_self"]) / tokens)
        assert min(abs(losses[0] - nll) for nll in possible) < 1e-4 * losses[0], (losses[0], possible)

    base = load_base_model(tiny_model_dir)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    trained = PeftModel.from_pretrained(base, adapter)
    tokenizer = load_tokenizer(tiny_model_dir)
    # Base weights are untouched; LoRA B matrices moved away from zero.
    for name, tensor in trained.base_model.model.state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            torch.testing.assert_close(tensor, start[key], rtol=0, atol=0)
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and max(p.abs().max().item() for p in lora_b) > 0

    # The batch's reference log-probs are the adapter-disabled values; the trained policy's differ.
    frozen = _policy_logps(trained, tokenizer, examples, disable_adapter=True)
    live = _policy_logps(trained, tokenizer, examples, disable_adapter=False)
    assert _refs(examples) == pytest.approx(frozen, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(live, frozen, strict=True)) > 1e-3


def load_tokenizer_for(model_dir):
    from nega.models import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.mark.parametrize("pack", [False, True])
def test_sft_self_batches_forward_the_self_samples_and_no_negative(tiny_model_dir, tmp_path, pack):
    from nega.align.d2o.data import D2OCollator
    from nega.logps import encode_pair

    recipe = _recipe(tiny_model_dir, tmp_path, "sft_self")
    examples = _examples(tiny_model_dir, recipe)
    tokenizer = load_tokenizer_for(tiny_model_dir)
    d2o = D2OCollator(tokenizer, "d2o", 64, pack=pack)(examples)
    sft = D2OCollator(tokenizer, "sft_self", 64, pack=pack)(examples)
    assert sft["neg_index"].numel() == 0 and d2o["neg_index"].numel() == len(examples)
    # The same self-samples in the same slots, with the response tokens each one is scored on.
    assert torch.equal(sft["self_index"], d2o["self_index"]) and torch.equal(
        sft["self_mask"], d2o["self_mask"]
    )
    expected = []
    for e in examples:
        for text, eos in zip(e["self"], e["self_eos"], strict=True):
            ids, prompt_len = encode_pair(tokenizer, e["prompt"], text, add_eos=eos, max_length=64)
            expected.append(len(ids) - prompt_len)
    assert sft["self_tokens"][sft["self_mask"]].tolist() == expected
    if not pack:
        assert sft["input_ids"].size(0) == sum(len(e["self"]) for e in examples)


def test_d2o_steps_lower_the_negative_relative_to_self_samples(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from nega.models import load_base_model, load_tokenizer

    torch.manual_seed(0)
    recipe = _recipe(tiny_model_dir, tmp_path, "d2o", max_steps=6, lr=1e-2)
    examples = _examples(tiny_model_dir, recipe)
    adapter, _ = train_policy(recipe, str(tiny_model_dir), examples, tmp_path / "train", objective="d2o")
    trained = PeftModel.from_pretrained(load_base_model(tiny_model_dir), adapter)
    live = _policy_logps(trained, load_tokenizer(tiny_model_dir), examples, disable_adapter=False)
    ratios = [a - b for a, b in zip(live, _refs(examples), strict=True)]
    n_self = sum(len(e["self"]) for e in examples)
    neg_ratio = sum(ratios[n_self:]) / len(examples)
    self_ratio = sum(ratios[:n_self]) / n_self
    assert neg_ratio < 0 and neg_ratio < self_ratio


def test_reference_cache_is_reused(tiny_model_dir, tmp_path, monkeypatch):
    recipe = _recipe(tiny_model_dir, tmp_path)
    cache = LogpCache(tmp_path / "ref.jsonl")
    pairs, eos = [("<|user|>\nsay hello.\n<|assistant|>\n", "hello there, friend!")], [True]
    first = reference_logps(str(tiny_model_dir), recipe.model, pairs, eos, cache=cache)
    assert first[0] < 0

    def no_load(*args, **kwargs):
        raise AssertionError("cached values must not reload the model")

    monkeypatch.setattr("nega.models.load_base_model", no_load)
    again = reference_logps(
        str(tiny_model_dir), recipe.model, pairs, eos, cache=LogpCache(tmp_path / "ref.jsonl")
    )
    assert again == first


@pytest.mark.parametrize("objective", ["d2o", "kto_neg"])
def test_prefix_sharing_gives_the_unpacked_loss_and_gradients(tiny_model_dir, tmp_path, objective):
    """One packed row per prompt (self-samples, negative and KL pair together) changes no number."""
    from nega.align.d2o.data import D2OCollator
    from nega.align.d2o.trainer import OBJECTIVES
    from nega.logps import packed_sequence_logps, sequence_logps
    from nega.models import load_policy

    recipe = _recipe(tiny_model_dir, tmp_path, objective)
    examples = _examples(tiny_model_dir, recipe)
    model, tokenizer = load_policy(str(tiny_model_dir), recipe.model, recipe.lora, seed=0)
    results = []
    for pack in (False, True):
        batch = D2OCollator(tokenizer, objective, 64, pack=pack)(examples)
        if pack:
            assert batch["packed_ids"].size(0) == len(examples)
            logps = packed_sequence_logps(model, batch)
        else:
            logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        loss, _ = OBJECTIVES[objective](logps, batch, 0.5, 0.5)
        model.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((loss.item(), grads))
    (plain_loss, plain_grads), (packed_loss, packed_grads) = results
    assert packed_loss == pytest.approx(plain_loss, rel=1e-5, abs=1e-6)
    for a, b in zip(plain_grads, packed_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
