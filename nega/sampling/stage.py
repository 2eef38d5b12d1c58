"""The sampling stage every method and `nega sample` use: a method says what to sample, this says how.

    request = SampleRequest(prompts, n=8, temperature=1.0, top_p=1.0, max_tokens=256, seed=0)
    stage = sample_stage(run, "sample", model_path, request, config={...}, inputs=[...])
    rows = read_jsonl(stage.dir / "samples.jsonl")   # one row per prompt

The stage is a `Run.stage`: skipped while its name, `config` and `inputs` are unchanged. The completions
come from the run's engine for the model (`nega.sampling.engine`), started on first use and shared with
every other stage, and are written one row per prompt by `row` (default `completion_row`), then the
manifest with the counts, last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nega.sampling.base import Completion, Prompt

SAMPLES = "samples.jsonl"


@dataclass(frozen=True)
class SampleRequest:
    """What to sample: `n` completions of every prompt (chat messages, or text used verbatim), from the
    model plus `adapter` (a LoRA folder; None = the model alone). `description` names the progress bar."""

    prompts: list[Prompt]
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    adapter: str | None = None
    stop: list[str] | None = None
    description: str = "sampling"

    @classmethod
    def of(cls, sampling_cfg, prompts: list[Prompt], **changes) -> SampleRequest:
        """The recipe's `sampling` section's n, temperature, top_p, max_tokens and seed, with `changes`."""
        settings = {k: getattr(sampling_cfg, k) for k in ("n", "temperature", "top_p", "max_tokens", "seed")}
        return cls(prompts=prompts, **{**settings, **changes})

    def settings(self) -> dict:
        """The generate options other than the prompts."""
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": self.stop,
            "adapter": self.adapter,
            "description": self.description,
        }


def completion_row(index: int, completions: list[Completion]) -> dict:
    """A prompt's completions as they are stored by default: text, sampled token ids (with the end
    token, when the completion ended on its own) and finish reason ("stop" or "length") of each."""
    return {
        "completions": [
            {"text": c.text, "token_ids": c.token_ids, "finish_reason": c.finish_reason} for c in completions
        ]
    }


def sample_stage(
    run,
    name: str,
    model_path: str | Path,
    request: SampleRequest,
    *,
    config: dict,
    inputs=(),
    row: Callable[[int, list[Completion]], dict] = completion_row,
    counts: Callable[[list[dict]], dict] | None = None,
    file: str = SAMPLES,
    adapters: bool | None = None,
    manifest: dict | None = None,
):
    """Stage `name`: `request` sampled from the run's engine for `model_path`, one row per prompt in
    `file` (default samples.jsonl). `config` and `inputs` make the stage's hash (a method passes what
    decides its samples: settings, prompts or their hash, adapter); `counts(rows)` joins the manifest's
    counts of prompts and completions, and `manifest` adds fields of its own. `adapters` False says the
    model is never sampled through an adapter (a teacher: `RunEngines.sampler`). Returns the finished
    stage."""
    from nega.pipeline import write_jsonl
    from nega.sampling.engine import run_sampler

    stage = run.stage(name, config=config, inputs=[i for i in inputs if i is not None])
    if stage.done:
        return stage
    groups = run_sampler(run, model_path, adapters=adapters).generate(request.prompts, **request.settings())
    rows = [row(i, group) for i, group in enumerate(groups)]
    write_jsonl(stage.dir / file, rows)
    totals = {"prompts": len(rows), "completions": sum(len(g) for g in groups)}
    return stage.finish(counts={**totals, **(counts(rows) if counts is not None else {})}, **(manifest or {}))
