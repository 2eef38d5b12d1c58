"""Supervised fine-tuning: response-masked cross-entropy on (prompt, response) pairs, LoRA, resume.

The `sft` method (`method: sft` recipes) and the SFT and RFT stages of per-step negative RL use it.
The loss is the mean negative log-likelihood of the response tokens and the closing EOS; prompt and
padding tokens are masked. With `lora.enabled` a fresh LoRA adapter trains on the given model folder
and is saved as `<output_dir>/adapter`; without LoRA the full model is saved as `<output_dir>/model`.

Rows become pairs through `sft_pair_of`, which knows the usual column names:

    {"prompt": ..., "response" | "completion" | "chosen": ...}
    {"question" | "problem": ..., "solution" | "answer": ...}   (GSM8K's calculator markup is removed)
    {"messages": [..., {"role": "assistant", "content": ...}]}

`run(recipe, run)` runs a `method: sft` recipe: starting model (the toy model for `model.name: toy`),
SFT on `data`, then greedy evaluation of the model before and after (the toy world's oracle metrics,
or reasoning accuracy when `eval.reasoning` is set), printed as a table.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nega.logps import collate_sequences, encode_pair, shifted_targets, token_logps
from nega.trainer import MethodTrainer

RESPONSE_KEYS = ("response", "completion", "chosen")
PROMPT_KEYS = ("prompt", "question", "problem")
SOLUTION_KEYS = ("solution", "answer")


def sft_pair_of(row: dict) -> dict:
    """{"prompt": chat messages, "response": text} from one dataset row (see the module docstring)."""
    from nega.data import require_text
    from nega.rewards.math import strip_calculator_annotations

    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        if not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise ValueError("field 'messages' must end with an assistant turn (the response to learn)")
        return {"prompt": messages[:-1], "response": require_text(messages[-1], "content")}
    prompt_key = next((k for k in PROMPT_KEYS if row.get(k) is not None), None)
    if prompt_key is None:
        raise KeyError("prompt")
    prompt = row[prompt_key]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": require_text(row, prompt_key)}]
    response_key = next((k for k in (*RESPONSE_KEYS, *SOLUTION_KEYS) if row.get(k) is not None), None)
    if response_key is None:
        raise KeyError("response")
    response = require_text(row, response_key)
    if response_key == "answer":
        response = strip_calculator_annotations(response)
    return {"prompt": prompt, "response": response}


def encode_sft_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int | None) -> list[dict]:
    """(rendered prompt, response) -> {"input_ids", "prompt_len"} with EOS closing each response."""
    out = []
    for prompt, response in pairs:
        ids, prompt_len = encode_pair(tokenizer, prompt, response, add_eos=True, max_length=max_length)
        out.append({"input_ids": ids, "prompt_len": prompt_len})
    return out


class SupervisedCollator:
    """Right-pads encoded pairs into input_ids, attention_mask, response_mask [B, T]."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids, attention, response = collate_sequences(
            [(e["input_ids"], e["prompt_len"]) for e in examples], self.pad_id
        )
        return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


def response_nll(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood over the batch's response tokens (prompt and padding masked)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    mask = batch["response_mask"] & batch["attention_mask"].bool()
    # Whole logits with targets shifted (not `logits[:, :-1]`): no second full-size gradient for a slice.
    per_token = token_logps(logits, shifted_targets(batch["input_ids"], mask))
    return -per_token.sum() / mask[:, 1:].sum().clamp_min(1)


class SupervisedTrainer(MethodTrainer):
    """nega's `MethodTrainer` with the response-masked NLL of `response_nll` as its loss."""

    def loss_and_metrics(self, model, inputs):
        return response_nll(model, inputs), {}


def sft_train(
    model_path: str,
    pairs: list[tuple[str, str]],
    output_dir,
    *,
    model_cfg,
    lora_cfg,
    train_cfg,
    seed: int = 0,
    adapter: str | None = None,
    callbacks: list | None = None,
    **overrides,
) -> tuple[str, list[dict]]:
    """Fine-tune `model_path` on (rendered prompt, response) pairs; returns (saved folder, log history).

    The folder is `<output_dir>/adapter` with LoRA (continuing `adapter` when given) or
    `<output_dir>/model` without. Checkpoints go to `<output_dir>/checkpoints`, and an interrupted
    call resumes from the last one. `overrides` go to TrainingArguments (e.g. max_steps=100);
    `callbacks` to the Trainer (e.g. early stopping on a validation metric).
    """
    from nega.models import load_policy
    from nega.training import trained_folder_name, training_arguments

    if not pairs:
        raise ValueError("sft_train got no (prompt, response) pairs; check the data section of the recipe")
    output_dir = Path(output_dir)
    model, tokenizer = load_policy(model_path, model_cfg, lora_cfg, seed=seed, adapter=adapter)
    trainer = SupervisedTrainer(
        model=model,
        args=training_arguments(train_cfg, output_dir / "checkpoints", seed=seed, **overrides),
        train_dataset=encode_sft_pairs(tokenizer, pairs, model_cfg.max_length),
        data_collator=SupervisedCollator(tokenizer.pad_token_id),
        callbacks=callbacks,
    )
    return trainer.fit(tokenizer, output_dir / trained_folder_name(lora_cfg))


def train_pairs(recipe, model_path: str, examples: list[dict], output_dir, **overrides):
    """`sft_train` on {"prompt", "response"} rows with the recipe's settings: the training function of
    the SFT stages (`nega.training.train_stage`)."""
    pairs = [(e["prompt"], e["response"]) for e in examples]
    return sft_train(
        model_path,
        pairs,
        output_dir,
        model_cfg=recipe.model,
        lora_cfg=recipe.lora,
        train_cfg=recipe.train,
        seed=recipe.seed,
        **overrides,
    )


def sft_stage(run, name: str, model_path: str, pairs: list[tuple[str, str]], *, inputs=(), overrides=None):
    """A run stage that fine-tunes `model_path` on rendered pairs; returns (stage, saved folder)."""
    from nega.pipeline import hash_value
    from nega.training import train_stage

    recipe = run.recipe
    config = {
        "model": recipe.model.model_dump(),
        "overrides": overrides or {},
        "pairs": len(pairs),
        "pairs_hash": hash_value(pairs),
        "seed": recipe.seed,
    }
    return train_stage(
        run,
        name,
        "nega.sft:train_pairs",
        model_path=model_path,
        examples=[{"prompt": p, "response": r} for p, r in pairs],
        config=config,
        inputs=list(inputs),
        **(overrides or {}),
    )


def run(recipe, run) -> dict[str, dict[str, float]]:
    """`method: sft`: starting model -> SFT on `data` -> greedy evaluation before and after -> report."""
    from nega.data import convert_rows, load_rows
    from nega.eval.stage import START_LABEL, EvalTarget, evaluate, held_out_problems, trained_target
    from nega.models import load_tokenizer
    from nega.sampling.base import render_prompt
    from nega.stages import base_model, write_report

    model_path, model_stage = base_model(run)
    rows, source = load_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed, split=recipe.data.split)
    examples, bad = convert_rows(rows, sft_pair_of, source=source, on_bad_row=recipe.data.on_bad_row)
    tokenizer = load_tokenizer(model_path, recipe.model)
    pairs = [(render_prompt(tokenizer, e["prompt"]), e["response"]) for e in examples]
    stage, folder = sft_stage(run, "sft", model_path, pairs, inputs=[model_stage or model_path])
    run.record_result("sft", model_path, folder)

    problems = held_out_problems(recipe)
    if problems is None:
        table = {"sft": {"train_pairs": float(len(pairs)), "bad_rows": float(bad)}}
    else:
        targets = [EvalTarget(START_LABEL, model_path)] if recipe.eval.before else []
        targets.append(trained_target("sft", model_path, folder, recipe.lora))
        table = evaluate(run, targets, [problems], inputs=[stage])
    write_report(run, table)
    return table
