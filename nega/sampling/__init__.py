"""Samplers: prompts in, n completions per prompt out, through vLLM or transformers.generate.

`make_sampler(model_path, cfg)` picks the backend from `sampling.backend` (`auto` = vLLM when the
`vllm` module imports, else HF). Every backend sends the same prompt token ids, so training scores
exactly what was sampled.
"""

from nega.sampling.backends import make_sampler
from nega.sampling.base import Completion, Sampler, render_prompt

__all__ = ["Completion", "Sampler", "make_sampler", "render_prompt"]
