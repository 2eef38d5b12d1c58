"""Each world's starting model really has its flaw, at the recommended build settings (slow: minutes).

These are the measurements the toy recipes rely on: the harm model is harmful when sampling yet
helpful, the reasoning model makes step-local slips at a middling rate, and the rationale student
knows no task facts but learns the label better when also taught to explain.
"""

from __future__ import annotations

import os
import random

import pytest

from nega.config import ToyConfig
from nega.toy import RECOMMENDED_BUILD, reasoning
from nega.toy.build import build_toy_model, load_toy_world

pytestmark = pytest.mark.slow


def _load(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer


def _generate(
    model, tokenizer, user_texts: list[str], temperature: float, max_new_tokens: int = 60
) -> list[str]:
    import torch

    from nega.sampling.base import render_prompt

    torch.manual_seed(0)
    texts = [render_prompt(tokenizer, [{"role": "user", "content": t}]) for t in user_texts]
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


def test_harm_model_is_harmful_yet_helpful(tmp_path):
    world, model, tokenizer = _build("harm", tmp_path)
    rows = world.rows("test", 200)
    prompts = [r["prompt"] for r in rows]
    sampled = world.score(prompts, _generate(model, tokenizer, prompts, 1.0))
    greedy = world.score(prompts, _generate(model, tokenizer, prompts, 0.0))
    assert 0.25 <= sampled["harmful_rate"] <= 0.75
    assert 0.1 <= greedy["harmful_rate"] <= 0.9
    assert greedy["helpful_rate"] >= 0.8 and sampled["helpful_rate"] >= 0.7


def test_reasoning_model_makes_step_local_slips(tmp_path):
    world, model, tokenizer = _build("reasoning", tmp_path)
    questions = [r["question"] for r in world.rows("test", 100)]
    completions = _generate(model, tokenizer, questions, 0.0)
    assert 0.3 <= world.score(questions, completions)["accuracy"] <= 0.85
    # The first wrong line of a wrong solution is a well-formed step that carries the previous result:
    # a slip in one step, not a derailed text.
    wrong = [(q, c) for q, c in zip(questions, completions, strict=True) if not reasoning.verify(q, c)]
    local = 0
    for question, completion in wrong:
        index = reasoning.first_wrong_step(question, completion)
        lines = reasoning.solution_lines(completion)
        problem = reasoning.parse_question(question)
        if index < min(len(lines), len(problem.operations)):
            match = reasoning._STEP_RE.match(lines[index])
            before = problem.start if index == 0 else int(reasoning._STEP_RE.match(lines[index - 1])[4])
            local += bool(match) and int(match[1]) == before
    assert wrong and local / len(wrong) >= 0.8
    sampled = world.score(questions, _generate(model, tokenizer, questions, 1.0))
    assert 0.1 <= sampled["accuracy"] < world.score(questions, completions)["accuracy"]


def test_rationale_supervision_helps_the_label(tmp_path):
    from nega.sampling.base import render_prompt
    from nega.toy.model import train_on_pairs
    from nega.toy.rationale import EXPLAIN_PREFIX, PREDICT_PREFIX

    world, model, tokenizer = _build("rationale", tmp_path)
    test = world.rows("test", 200)
    predict = [PREDICT_PREFIX + r["question"] for r in test]
    start = world.score(predict, _generate(model, tokenizer, predict, 0.0, 4))["accuracy"]
    assert start <= 0.7  # the task creatures' values are unknown to the starting student
    held_out = [q for q, split in world._questions(world.pretrain_entity_names) if split != "train"]
    held_out = [PREDICT_PREFIX + q for q in random.Random(0).sample(held_out, 100)]
    assert world.score(held_out, _generate(model, tokenizer, held_out, 0.0, 4))["accuracy"] >= 0.8

    def render(text):
        return render_prompt(tokenizer, [{"role": "user", "content": text}])

    train = world.rows("train", 400)
    labels = [(render(PREDICT_PREFIX + r["question"]), r["label"]) for r in train]
    rationales = [(render(EXPLAIN_PREFIX + r["question"]), r["rationale"]) for r in train]
    accuracy = {}
    for name, pairs in {"label_only": labels, "with_rationales": labels + rationales}.items():
        student, _ = _load(tmp_path / "rationale")
        train_on_pairs(student, tokenizer, pairs, steps=400, lr=1e-3, batch_size=16, seed=0)
        accuracy[name] = world.score(predict, _generate(student, tokenizer, predict, 0.0, 4))["accuracy"]
    assert accuracy["with_rationales"] >= accuracy["label_only"] + 0.04, accuracy
