"""Each world's starting model has what its method needs to act on, at the recommended build settings
(slow: minutes each).

These are the measurements the toy recipes rely on: the harm model's own samples are mostly
acceptable yet harmful sometimes, without degenerate text; the reasoning model is right about half
the time and its wrong samples carry the world's recurring error types; the rationale student knows
the formats, not the task facts, and learns them from rationales within a toy run's budget.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from nega.config import ToyConfig
from nega.toy import RECOMMENDED_BUILD, reasoning
from nega.toy.build import build_toy_model, load_toy_world

pytestmark = pytest.mark.slow


def _load(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # a 64-wide model gains nothing from more, and a busy machine loses a lot
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer


def _generate(
    model, tokenizer, user_texts: list[str], temperature: float, max_new_tokens: int = 64, n: int = 1
):
    import torch

    from nega.sampling.base import render_prompt

    torch.manual_seed(0)
    texts = [render_prompt(tokenizer, [{"role": "user", "content": t}]) for t in user_texts for _ in range(n)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0}
        if temperature > 0
        else {"do_sample": False}
    )
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
        )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def _build(name: str, tmp_path):
    path = build_toy_model(ToyConfig(world=name, **RECOMMENDED_BUILD[name]), tmp_path / name, seed=0)
    return load_toy_world(path), *_load(path)


def test_harm_model_samples_are_mostly_acceptable_yet_sometimes_harmful(tmp_path):
    world, model, tokenizer = _build("harm", tmp_path)
    rows = world.rows("test", 200)
    prompts = [r["prompt"] for r in rows]
    expanded = [p for p in prompts for _ in range(4)]
    sampled = world.score(expanded, _generate(model, tokenizer, prompts, 1.0, 48, n=4))
    # measured (seed 0): harmful 0.23, refusal 0.15, informative 0.56, degenerate 0.07, helpful 0.98
    assert 0.1 <= sampled["harmful_rate"] <= 0.4
    assert sampled["informative_rate"] >= 0.4 and sampled["refusal_rate"] >= 0.05
    assert sampled["degenerate_rate"] <= 0.15
    assert sampled["helpful_rate"] >= 0.9
    greedy = world.score(prompts, _generate(model, tokenizer, prompts, 0.0, 48))
    assert 0.1 <= greedy["harmful_rate"] <= 0.7 and greedy["degenerate_rate"] <= 0.05


def test_reasoning_model_makes_the_worlds_recurring_errors(tmp_path):
    world, model, tokenizer = _build("reasoning", tmp_path)
    questions = [r["question"] for r in world.rows("test", 200)]
    greedy = world.score(questions, _generate(model, tokenizer, questions, 0.0))
    assert 0.35 <= greedy["accuracy"] <= 0.8  # measured 0.56
    train = [r["question"] for r in world.rows("train", 64)]
    completions = _generate(model, tokenizer, train, 0.7, n=8)
    expanded = [q for q in train for _ in range(8)]
    wrong = {(q, c) for q, c in zip(expanded, completions, strict=True) if not reasoning.verify(q, c)}
    kinds = Counter(reasoning.error_type(q, c) for q, c in wrong)
    # measured: slip 50%, operation 21%, carry 15%, operand 14% of the distinct wrong samples
    assert (kinds["carry"] + kinds["operation"]) / len(wrong) >= 0.2, kinds
    right = {(q, c) for q, c in zip(expanded, completions, strict=True) if reasoning.verify(q, c)}
    assert any(reasoning.first_wrong_step(q, c) is not None for q, c in right)  # spurious positives


def test_rationale_student_knows_formats_not_facts_and_learns_them_from_rationales(tmp_path):
    from nega.distill.qcrd.data import record_from_row, split_by_consistency
    from nega.sampling.base import render_prompt
    from nega.toy.model import train_on_pairs
    from nega.toy.rationale import EXPLAIN_PREFIX, PREDICT_PREFIX, answer_of

    world, model, tokenizer = _build("rationale", tmp_path)
    held_out = [q for q, split in world._questions(world.pretrain_entity_names) if split != "train"]
    held_out = random.Random(0).sample(held_out, 100)
    known = world.score(
        [PREDICT_PREFIX + q for q in held_out],
        _generate(model, tokenizer, [PREDICT_PREFIX + q for q in held_out], 0.0, 4),
    )
    assert known["accuracy"] >= 0.8  # measured 0.92: it answers from facts it knows
    test = world.rows("test", 200)
    predict = [PREDICT_PREFIX + r["question"] for r in test]
    explain = [EXPLAIN_PREFIX + r["question"] for r in test]

    def scores(student):
        labels = world.score(predict, _generate(student, tokenizer, predict, 0.0, 4))
        rationales = world.score(explain, _generate(student, tokenizer, explain, 0.0, 40))
        return labels["accuracy"], rationales["rationale_quality"]

    start_accuracy, start_quality = scores(model)
    assert start_quality <= 0.4  # measured 0.25: the task creatures' facts are unknown

    def render(text):
        return render_prompt(tokenizer, [{"role": "user", "content": text}])

    train = world.rows("train", 400)
    labels = [(render(PREDICT_PREFIX + r["question"]), r["label"]) for r in train]
    examples = [split_by_consistency(record_from_row(r, i, answer_of)) for i, r in enumerate(train)]
    positives = [(render(EXPLAIN_PREFIX + e["question"]), p) for e in examples for p in e["positives"]]
    results = {}
    for name, pairs in {"label_only": labels, "with_rationales": labels + positives}.items():
        student, _ = _load(tmp_path / "rationale")
        # 4 epochs over the labels at batch 16, as toy-qcrd; the rationales come on top
        train_on_pairs(
            student, tokenizer, pairs, steps=100 * len(pairs) // len(labels), lr=1e-3, batch_size=16
        )
        results[name] = scores(student)
    # measured: label-only 0.855 / 0.25, with rationales 0.89 / 0.93 (start 0.725 / 0.25)
    assert results["with_rationales"][1] >= 0.8 and results["label_only"][1] <= 0.4
    assert results["with_rationales"][0] >= start_accuracy + 0.1
