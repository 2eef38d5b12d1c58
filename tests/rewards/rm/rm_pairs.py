"""Helpers of the reward-model tests: a `method: rm` recipe on a model folder, toy harm pairs."""

from __future__ import annotations


def rm_recipe(model_dir, tmp_path, **train):
    from nega.config import validate_recipe

    return validate_recipe(
        {
            "name": "rm-test",
            "method": "rm",
            "output_dir": str(tmp_path),
            "model": {"name": str(model_dir), "max_length": 160},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "data": {"dataset": "unused"},
            "train": {
                "lr": 1e-2,
                "max_steps": 2,
                "batch_size": 4,
                "logging_steps": 1,
                "save_steps": 1000,
                "warmup_ratio": 0.0,
                "lr_scheduler": "constant",
                **train,
            },
        }
    )


def toy_examples(model_dir, split: str, n: int, role: str = "train") -> list[dict]:
    """Toy harm world pairs (harmless chosen, harmful rejected) rendered for the tiny model."""
    from nega.models import load_tokenizer
    from nega.sampling.base import render_prompt
    from nega.toy import make_world

    tokenizer = load_tokenizer(model_dir)
    rows = make_world("harm", eval_helpful_share=0.0).rows(split, n)
    return [
        {
            "prompt": render_prompt(tokenizer, [{"role": "user", "content": r["prompt"]}]),
            "chosen": r["chosen"],
            "rejected": r["rejected"],
            "role": role,
        }
        for r in rows
    ]
