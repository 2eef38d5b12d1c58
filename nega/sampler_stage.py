"""`nega sample`: the sampling stage alone, over the prompts of any recipe's data."""

from __future__ import annotations

from pathlib import Path

from nega.data import DataError, load_rows
from nega.pipeline import Run
from nega.sampling.base import Prompt
from nega.stages import base_model


def prompt_of(row: dict) -> Prompt:
    """A row's prompt: `prompt` (text or chat messages), `question`, `problem`, or `messages` minus the
    last assistant turn. Other column names are mapped with `data.fields`."""
    for key in ("prompt", "question", "problem"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return [{"role": "user", "content": value}]
        if isinstance(value, list) and value:
            return _checked_messages(value, key)
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        messages = _checked_messages(messages, "messages")
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return messages
    raise KeyError("prompt")


def _checked_messages(messages: list, key: str) -> list[dict]:
    for turn in messages:
        if not (
            isinstance(turn, dict)
            and isinstance(turn.get("role"), str)
            and isinstance(turn.get("content"), str)
        ):
            raise ValueError(
                f"{key!r} must be a list of {{'role': str, 'content': str}} messages, got {turn!r:.80}"
            )
    return messages


def sample_prompts(run: Run, adapter: str | None = None) -> Path:
    from nega.data import convert_rows
    from nega.sampling.stage import SAMPLES, SampleRequest, sample_stage

    recipe = run.recipe
    model_path, _ = base_model(run)
    rows, source = load_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed)
    prompts, skipped = convert_rows(rows, prompt_of, source=source, on_bad_row=recipe.data.on_bad_row)
    if not prompts:
        raise DataError(f"{source}: no prompts")
    cfg = recipe.sampling

    def row(i: int, group) -> dict:
        return {
            "prompt": prompts[i],
            "completions": [c.text for c in group],
            "finish_reasons": [c.finish_reason for c in group],
        }

    stage = sample_stage(
        run, "sample", model_path, SampleRequest.of(cfg, prompts, adapter=adapter),
        config={"sampling": cfg.model_dump(), "prompts": prompts, "adapter": adapter},
        inputs=[model_path] + ([adapter] if adapter else []), row=row, counts=lambda _: {"bad_rows": skipped},
    )  # fmt: skip
    return stage.dir / SAMPLES
