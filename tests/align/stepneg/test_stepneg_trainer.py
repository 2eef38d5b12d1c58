"""Per-step RL trainer: per-step log-probs, π_sft reference, two steps move LoRA and not the base."""

from __future__ import annotations

import math

import pytest
import torch

PROMPT = "<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n"


def _recipe(model_dir, tmp_path, loss="dpo"):
    from nega.config import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(
        f"name: t\nmethod: stepneg\nmodel: {{name: {model_dir}}}\ndata: {{dataset: x}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "train: {lr: 0.01, batch_size: 2, max_steps: 2, warmup_ratio: 0.0, logging_steps: 1, save_steps: 1}\n"
        f"stepneg: {{loss: {loss}, beta: 0.5}}\n"
    )
    return load_recipe(str(path))


def test_step_logps_sum_to_the_sequence_logp(tiny_model_dir):
    from nega.align.stepneg.data import StepCollator
    from nega.align.stepneg.trainer import step_logps
    from nega.logps import batched_sequence_logps
    from nega.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir)
    steps = ["2 plus 3\n", "is 5", "."]
    batch = StepCollator(tokenizer)([{"prompt": PROMPT, "steps": steps, "advantages": [0.0, 0.0, 0.0]}])
    with torch.no_grad():
        per_step = step_logps(model, batch["input_ids"], batch["attention_mask"], batch["step_index"], 3)
    (whole,) = batched_sequence_logps(model, tokenizer, [(PROMPT, "".join(steps))], add_eos=False)
    assert per_step.shape == (1, 3) and (per_step < 0).all()
    assert per_step.sum().item() == pytest.approx(whole, rel=1e-4)


@pytest.mark.parametrize("loss", ["dpo", "awr"])
def test_two_steps_change_lora_weights_and_keep_the_base(tiny_model_dir, tmp_path, loss):
    from nega.align.stepneg.trainer import COLLATORS, StepNegTrainer, attach_reference_logps
    from nega.models import load_policy
    from nega.training import training_arguments

    recipe = _recipe(tiny_model_dir, tmp_path, loss)
    if loss == "dpo":
        examples = [
            {
                "prompt": PROMPT,
                "chosen": "2 plus 3 is 5.",
                "rejected": "2 plus 3 is 6",
                "rejected_eos": False,
            },
            {
                "prompt": PROMPT,
                "chosen": "2 plus 3 is 5.",
                "rejected": "2 plus 3 is 4",
                "rejected_eos": False,
            },
        ]
        examples = attach_reference_logps(examples, str(tiny_model_dir), recipe.model)
    else:
        examples = [{"prompt": PROMPT, "steps": ["2 plus 3 ", "is 6"], "advantages": [0.0, -1.0]}] * 2
    model, tokenizer = load_policy(str(tiny_model_dir), recipe.model, recipe.lora, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    trainer = StepNegTrainer(
        model=model,
        args=training_arguments(recipe.train, tmp_path / "out", seed=0),
        train_dataset=examples,
        data_collator=COLLATORS[loss](tokenizer),
        loss=loss,
        beta=0.5,
    )
    if loss == "dpo":
        # A fresh adapter is π_sft itself, so the first DPO loss is exactly log 2.
        first = trainer.compute_loss(model, COLLATORS[loss](tokenizer)(examples))
        assert first.item() == pytest.approx(math.log(2), abs=1e-5)
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert any(k.startswith(f"{loss}/") for k in history[0])


def test_reference_logps_come_from_the_plain_model_and_use_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    import nega.models
    from nega.align.stepneg.trainer import reference_logps
    from nega.config import ModelConfig
    from nega.logps import LogpCache, batched_sequence_logps
    from nega.models import load_base_model, load_tokenizer

    cfg = ModelConfig(name=str(tiny_model_dir))
    pairs = [(PROMPT, "2 plus 3 is 5."), (PROMPT, "2 plus 3 is")]
    cache = LogpCache(tmp_path / "ref.jsonl")
    values = reference_logps(str(tiny_model_dir), cfg, pairs, [True, False], cache=cache)
    model, tokenizer = load_base_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    expected = batched_sequence_logps(model, tokenizer, pairs, add_eos=[True, False])
    assert values == pytest.approx(expected, rel=1e-5)
    assert len(LogpCache(tmp_path / "ref.jsonl").values) == 2

    # A second call (a resumed stage: the cache read back from its file) loads no model and returns
    # the cached values; a pair it has not seen is the only one scored.
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded although the cache held every value")

    monkeypatch.setattr(nega.models, "load_base_model", no_model)
    assert (
        reference_logps(str(tiny_model_dir), cfg, pairs, [True, False], cache=LogpCache(cache.path)) == values
    )
    loads = []
    monkeypatch.setattr(
        nega.models, "load_base_model", lambda *a, **k: loads.append(a) or load_base_model(*a, **k)
    )
    more = [*pairs, (PROMPT, "2 plus 3 is 6.")]
    again = reference_logps(str(tiny_model_dir), cfg, more, [True, False, True], cache=LogpCache(cache.path))
    assert again[:2] == values and len(loads) == 1
    assert again[2] == pytest.approx(batched_sequence_logps(model, tokenizer, more[2:])[0], rel=1e-5)
    assert len(LogpCache(cache.path).values) == 3


def test_packed_pairs_give_the_unpacked_dpo_loss(tiny_model_dir):
    """Both pairs share one prompt: packed, it is computed once, and the loss is unchanged."""
    from nega.align.stepneg.data import PairCollator
    from nega.align.stepneg.trainer import pair_objective
    from nega.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir)
    examples = [
        {"prompt": PROMPT, "chosen": "2 plus 3 is 5.", "rejected": "2 plus 3 is 6", "rejected_eos": False},
        {"prompt": PROMPT, "chosen": "5.", "rejected": "2 plus 3 is 7.", "rejected_eos": True},
    ]
    for e in examples:
        e["ref_chosen"], e["ref_rejected"] = -3.0, -4.0
    plain_batch = PairCollator(tokenizer)(examples)
    packed_batch = PairCollator(tokenizer, pack=True)(examples)
    assert packed_batch["packed_ids"].size(0) == 1
    plain, _ = pair_objective(model, plain_batch, 0.5, 20.0)
    packed, _ = pair_objective(model, packed_batch, 0.5, 20.0)
    assert packed.item() == pytest.approx(plain.item(), rel=1e-5)
