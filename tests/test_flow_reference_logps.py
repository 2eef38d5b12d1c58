"""Reference log-probs against a computation that shares no code with nega's.

`hand_logp` is the definition written out: tokenize prompt and response separately (the tiny tokenizer
adds no BOS; its chat template ends a turn with plain text, so the end token is EOS), one unpadded
forward of the model with plain transformers, log_softmax, pick each response token's log-prob from the
position before it, sum. `nega.logps.reference_logps` (batched, padded or packed, cached), the values a
D²O reference stage writes to examples.jsonl, and the D²O loss of the trainer (α ≠ β, so a swap shows)
must all agree with it.
"""

from __future__ import annotations

import math

import pytest
import torch

PROMPTS = ["<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n", "<|user|>\nsay hello.\n<|assistant|>\n"]
ALPHA, BETA = 0.2, 0.9


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    """The tiny model and tokenizer loaded with plain transformers, not through nega."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    # What the hand computation takes for granted about this tokenizer.
    assert tokenizer.bos_token_id not in tokenizer("a")["input_ids"]
    assert "</s>" not in tokenizer.apply_chat_template(
        [{"role": "assistant", "content": "x"}], tokenize=False
    )
    return model, tokenizer


def response_ids(tokenizer, response: str, eos: bool) -> list[int]:
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] * eos


def hand_logp(model, tokenizer, prompt: str, response: str | list[int], eos: bool = True) -> float:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = list(response) + [tokenizer.eos_token_id] * eos if isinstance(response, list) else None
    answer = answer if answer is not None else response_ids(tokenizer, response, eos)
    ids = torch.tensor([prompt_ids + answer])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids)
    return sum(logp[start + i - 1, token].item() for i, token in enumerate(answer))


PAIRS = [
    (PROMPTS[0], "2 plus 3 is 5.", True),
    (PROMPTS[0], "5", True),
    (PROMPTS[0], "2 plus 3 is", False),  # an unfinished prefix: no end token
    (PROMPTS[1], "hello there, friend!", True),
    (PROMPTS[1], "a cat sat on the long red mat", True),
]


def test_reference_logps_equal_the_hand_computation(tiny_model_dir, plain, tmp_path):
    from nega.config import ModelConfig
    from nega.logps import LogpCache, reference_logps

    model, tokenizer = plain
    expected = [hand_logp(model, tokenizer, p, r, e) for p, r, e in PAIRS]
    cfg = ModelConfig(name=str(tiny_model_dir))
    pairs, eos = [(p, r) for p, r, _ in PAIRS], [e for *_, e in PAIRS]
    for batch_size in (16, 2):  # one packed batch, and prompts split over batches
        got = reference_logps(str(tiny_model_dir), cfg, pairs, eos, batch_size=batch_size)
        assert got == pytest.approx(expected, abs=1e-4)
    cached = reference_logps(str(tiny_model_dir), cfg, pairs, eos, cache=LogpCache(tmp_path / "c.jsonl"))
    assert cached == pytest.approx(expected, abs=1e-4)
    # Scoring sampled token ids gives the value of the text they spell.
    ids = response_ids(tokenizer, "2 plus 3 is 5.", eos=False)
    (by_ids,) = reference_logps(str(tiny_model_dir), cfg, [(PROMPTS[0], ids)], [True])
    assert by_ids == pytest.approx(expected[0], abs=1e-4)
    assert len({round(v, 3) for v in expected}) == len(expected) and all(v < 0 for v in expected)


def _d2o_recipe(model_dir, tmp_path):
    from nega.config import validate_recipe

    return validate_recipe(
        {
            "name": "flow", "method": "d2o", "output_dir": str(tmp_path),
            "model": {"name": str(model_dir), "max_length": 64}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"dataset": "unused"}, "sampling": {"n": 3}, "d2o": {"k": 2, "alpha": ALPHA, "beta": BETA},
        }
    )  # fmt: skip


SAMPLES = [  # per prompt: (text, finish_reason) as a sampler returned them
    [("2 plus 3 is 5.", "stop"), ("2 plus 3 is", "length"), ("5", "stop")],  # the third is past k = 2
    [("hello there", "stop"), ("hello there, friend!", "stop")],
]
NEGATIVES = ["2 plus 3 is 9.", "go away."]


@pytest.fixture(scope="module")
def reference_examples(tiny_model_dir, tmp_path_factory, plain):
    """examples.jsonl of a D²O reference stage over hand-made self-samples."""
    from nega.align.d2o.run import reference_stage
    from nega.pipeline import Run, read_jsonl, unlock_run_folder, write_jsonl

    _, tokenizer = plain
    tmp_path = tmp_path_factory.mktemp("d2o-ref")
    recipe = _d2o_recipe(tiny_model_dir, tmp_path)
    run = Run(recipe, tmp_path / "run")
    try:
        sampled = run.stage("sample", config={})
        groups = [
            {
                "completions": [
                    {
                        "text": t,
                        "token_ids": response_ids(tokenizer, t, eos=reason == "stop"),
                        "finish_reason": reason,
                    }
                    for t, reason in group
                ]
            }
            for group in SAMPLES
        ]
        write_jsonl(sampled.dir / "samples.jsonl", groups)
        sampled.finish()
        rows = [{"prompt": [{"role": "user", "content": "q"}], "rejected": n} for n in NEGATIVES]
        stage = reference_stage(run, "reflogps", str(tiny_model_dir), rows, PROMPTS, sampled, None)
        return recipe, read_jsonl(stage.dir / "examples.jsonl")
    finally:
        unlock_run_folder(run.dir)


def test_a_d2o_reference_stage_writes_the_hand_computed_values(plain, reference_examples):
    model, tokenizer = plain
    _, examples = reference_examples
    assert len(examples) == 2
    for prompt, group, negative, example in zip(PROMPTS, SAMPLES, NEGATIVES, examples, strict=True):
        kept = group[:2]  # d2o.k
        expected_self = [hand_logp(model, tokenizer, prompt, t, eos=reason == "stop") for t, reason in kept]
        assert example["ref_self"] == pytest.approx(expected_self, abs=1e-4)
        assert example["ref_rejected"] == pytest.approx(
            hand_logp(model, tokenizer, prompt, negative), abs=1e-4
        )
    # KTO's mismatched pair: each prompt with the other prompt's negative.
    assert examples[0]["ref_kl"] == pytest.approx(
        hand_logp(model, tokenizer, PROMPTS[0], NEGATIVES[1]), abs=1e-4
    )


def test_the_d2o_trainers_loss_is_eq7_over_hand_computed_log_probs(tiny_model_dir, plain, reference_examples):
    """α weighs the negative and β the self-samples: with α ≠ β a swap changes the loss."""
    from nega.align.d2o.data import D2OCollator
    from nega.align.d2o.trainer import D2OTrainer
    from nega.models import load_policy
    from nega.training import training_arguments

    _, tokenizer = plain
    recipe, examples = reference_examples
    assert (recipe.d2o.alpha, recipe.d2o.beta) == (ALPHA, BETA)
    policy, policy_tokenizer = load_policy(str(tiny_model_dir), recipe.model, recipe.lora, seed=0)
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy off the reference: a fresh adapter is the reference itself
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    policy.eval()

    expected_terms = []
    for prompt, group, negative, example in zip(PROMPTS, SAMPLES, NEGATIVES, examples, strict=True):
        kept = group[:2]
        self_ratio = [
            hand_logp(policy, tokenizer, prompt, t, eos=reason == "stop") - ref
            for (t, reason), ref in zip(kept, example["ref_self"], strict=True)
        ]
        neg_ratio = hand_logp(policy, tokenizer, prompt, negative) - example["ref_rejected"]
        z = BETA * sum(self_ratio) / len(self_ratio) - ALPHA * neg_ratio
        expected_terms.append(-math.log(1 / (1 + math.exp(-z))))
        assert abs(neg_ratio) > 1e-2 and abs(sum(self_ratio)) > 1e-2  # the policy moved
    expected = sum(expected_terms) / len(expected_terms)
    swapped = _swapped_loss(policy, tokenizer, examples)
    assert abs(expected - swapped) > 1e-3, "α and β give the same loss here; the test could not see a swap"

    trainer = D2OTrainer(
        model=policy,
        args=training_arguments(recipe.train, tiny_model_dir.parent / "unused", seed=0),
        train_dataset=examples,
        data_collator=D2OCollator(policy_tokenizer, "d2o", recipe.model.max_length),
        objective="d2o",
        alpha=recipe.d2o.alpha,
        beta=recipe.d2o.beta,
    )
    for pack in (False, True):
        batch = D2OCollator(policy_tokenizer, "d2o", recipe.model.max_length, pack=pack)(examples)
        with torch.no_grad():
            loss, _ = trainer.loss_and_metrics(policy, batch)
        assert loss.item() == pytest.approx(expected, abs=1e-4), f"pack={pack}"


def _swapped_loss(policy, tokenizer, examples) -> float:
    terms = []
    for prompt, group, negative, example in zip(PROMPTS, SAMPLES, NEGATIVES, examples, strict=True):
        kept = group[:2]
        self_ratio = [
            hand_logp(policy, tokenizer, prompt, t, eos=r == "stop") - ref
            for (t, r), ref in zip(kept, example["ref_self"], strict=True)
        ]
        neg_ratio = hand_logp(policy, tokenizer, prompt, negative) - example["ref_rejected"]
        z = ALPHA * sum(self_ratio) / len(self_ratio) - BETA * neg_ratio
        terms.append(-math.log(1 / (1 + math.exp(-z))))
    return sum(terms) / len(terms)
