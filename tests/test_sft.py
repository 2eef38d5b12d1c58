"""Supervised fine-tuning: row conversion, the masked loss, two LoRA steps, and a toy `method: sft` run."""

from __future__ import annotations

import math

import pytest
import torch
from nega_testing import response_loss

from nega.sft import SupervisedCollator, encode_sft_pairs, response_nll, sft_pair_of


def test_sft_pair_of_reads_the_usual_columns():
    assert sft_pair_of({"prompt": "hi", "response": "hello"}) == {
        "prompt": [{"role": "user", "content": "hi"}],
        "response": "hello",
    }
    gsm = sft_pair_of({"question": "q?", "answer": "2*3=<<2*3=6>>6\n#### 6"})
    assert gsm["response"] == "2*3=6\n#### 6"
    assert sft_pair_of({"problem": "p", "solution": "s", "answer": "a"})["response"] == "s"
    chat = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert sft_pair_of({"messages": chat}) == {"prompt": chat[:1], "response": "a"}
    with pytest.raises(KeyError):
        sft_pair_of({"text": "x"})
    with pytest.raises(ValueError, match="assistant"):
        sft_pair_of({"messages": chat[:1]})
    with pytest.raises(ValueError, match="empty"):
        sft_pair_of({"prompt": "p", "response": "  "})


def test_response_nll_counts_only_response_tokens(tiny_model_dir):
    from nega.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir)
    pairs = [
        ("<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n", "2 plus 3 is 5."),
        ("<|user|>\nsay hello.\n<|assistant|>\n", "hi"),
    ]
    encoded = encode_sft_pairs(tokenizer, pairs, max_length=None)
    assert encoded[0]["input_ids"][-1] == tokenizer.eos_token_id
    batch = SupervisedCollator(tokenizer.pad_token_id)(encoded)
    with torch.no_grad():
        loss = response_nll(model, batch).item()
        total, count = 0.0, 0
        for e in encoded:
            ids = torch.tensor([e["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
            for t in range(e["prompt_len"], len(e["input_ids"])):
                total -= logp[t - 1, e["input_ids"][t]].item()
                count += 1
    assert loss == pytest.approx(total / count, rel=1e-4)


def test_two_sft_steps_change_lora_weights_and_not_the_base(tiny_model_dir, tmp_path, monkeypatch):
    import json

    from safetensors.torch import load_file

    import nega.models
    from nega.config import LoraConfig, ModelConfig, TrainConfig
    from nega.sft import sft_train

    # Keep the model sft_train trains, and its weights as they were loaded.
    loaded = []
    load_policy = nega.models.load_policy

    def keep(*args, **kwargs):
        model, tokenizer = load_policy(*args, **kwargs)
        loaded.append((model, {n: p.detach().clone() for n, p in model.named_parameters()}))
        return model, tokenizer

    monkeypatch.setattr(nega.models, "load_policy", keep)
    pairs = [("<|user|>\nname a color.\n<|assistant|>\n", "green")] * 4

    def train():
        return sft_train(
            str(tiny_model_dir),
            pairs,
            tmp_path / "sft",
            model_cfg=ModelConfig(name=str(tiny_model_dir)),
            lora_cfg=LoraConfig(r=4, alpha=8, dropout=0.0),
            train_cfg=TrainConfig(
                lr=1e-2, batch_size=2, max_steps=2, warmup_ratio=0.0, logging_steps=1, save_steps=1
            ),
            max_steps=2,
        )

    folder, history = train()
    weights = load_file(f"{folder}/adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero; two steps moved it
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    # In memory: every LoRA B moved, and no frozen (base) parameter did.
    ((model, before),) = loaded
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and frozen == {n for n in before if "lora_" not in n}  # only the adapter trains
    assert [n for n in frozen if not torch.equal(before[n], model.get_parameter(n))] == []
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert {n for n in before if "lora_B" in n} <= moved

    # A second call finds the finished run in its checkpoints and trains no further step.
    folder_again, history_again = train()
    assert folder_again == folder and [h["loss"] for h in history_again if "loss" in h] == losses
    assert max(h.get("step", 0) for h in history_again) == 2
    starts = [json.loads(line) for line in (tmp_path / "sft" / "checkpoints" / "starts.jsonl").open()]
    assert len(starts) == 2 and starts[0]["resumed_from"] is None
    assert starts[1]["resumed_from"].endswith("checkpoint-2")
    again = load_file(f"{folder}/adapter_model.safetensors")
    assert all(torch.equal(again[k], weights[k]) for k in weights)


def test_checkpoint_and_logging_frequency_leave_a_finished_training_stage_reused(tiny_model_dir, tmp_path):
    """A training stage's hash covers what changes the weights (here the rate), not how often it saves
    checkpoints or logs: a user who only changes those gets the finished stage back, not a retrain."""
    from nega.config import load_recipe
    from nega.pipeline import Run
    from nega.sft import sft_stage

    path = tmp_path / "r.yaml"
    path.write_text(f"name: demo\nmethod: sft\nmodel: {{name: {tiny_model_dir}}}\ndata: {{dataset: d}}\n")
    pairs = [("<|user|>\nname a color.\n<|assistant|>\n", "green")] * 2
    launches = []

    def train(*overrides):
        recipe = load_recipe(str(path), ["train.max_steps=1", "train.batch_size=2", *overrides])
        run = Run(recipe, tmp_path / "out")
        launch = run.launcher.run
        run.launcher.run = lambda *a, **k: (launches.append(overrides), launch(*a, **k))
        return sft_stage(run, "sft", str(tiny_model_dir), pairs)[0]

    first = train("train.save_steps=1", "train.logging_steps=1")
    again = train("train.save_steps=7", "train.logging_steps=3")
    assert launches == [("train.save_steps=1", "train.logging_steps=1")]
    assert again.hash == first.hash and again.done
    changed = train("train.save_steps=7", "train.lr=1e-3")
    assert changed.hash != first.hash and len(launches) == 2


@pytest.mark.slow
def test_toy_sft_recipe_runs_and_reports_oracle_metrics(tmp_path, monkeypatch):
    from nega.config import load_recipe
    from nega.pipeline import Run, read_json, read_jsonl
    from nega.sft import run

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(
        "toy-sft",
        [
            "toy.steps=60",
            "toy.n_train=16",
            "toy.n_test=16",
            "toy.options.sft_problems=200",
            "train.max_steps=3",
            "train.lr=3e-3",  # the recipe's 3e-4 moves the loss by under 0.01 in three steps
        ],
    )
    table = run(recipe, Run(recipe))
    assert set(table) == {"start", "sft"}
    assert 0.0 <= table["sft"]["accuracy"] <= 1.0 and table["sft"]["n"] == 16
    run_dir = tmp_path / "runs" / recipe.name
    assert (run_dir / "report.md").exists()
    # The SFT adapter lowers the loss on the pairs it trained on below the starting model's.
    result = read_json(run_dir / "results.json")["result"]
    (stage,) = run_dir.glob("*-sft")
    pairs = read_jsonl(stage / "examples.jsonl")
    start = response_loss(run_dir / result["base_model"], None, pairs)
    trained = response_loss(run_dir / result["base_model"], run_dir / result["adapter"], pairs)
    assert trained < start - 0.01, (start, trained)  # an adapter that did not train gives equal losses
