"""One sampling engine per run and base model, shared by every stage that samples.

Self-samples, online rounds, rollouts, lagged-student negatives and evaluation all sample the same few
models; starting an engine costs 40-80 s for vLLM on a CPU (more for big models on GPUs), so a run
starts each model's engine once, on first use, and keeps it until the run ends (`Run.close`). Trained
adapters reach the running engine as today: a LoRA request per call, or merged weights on a CPU
(`nega.sampling.merged`, which keeps the base engine up beside an LRU of merged copies).

On an accelerator the engines give their memory back whenever the run opens a stage (`Run.stage` calls
`RunEngines.hand_back`: vLLM's sleep mode, or the transformers model moved to host memory) and take it
again on their next generate call: training, reference scoring and discriminators run in the stages
between sampling stages, in the same process, and need that memory. Within a stage the engine stays
awake, so rollout waves and evaluation sets do not pay a sleep and a wake per call (level 1 takes ~12 s
for an 8B model).

    sampler = run_sampler(run, model_path)     # started here the first time, reused afterwards
"""

from __future__ import annotations

from pathlib import Path


class RunEngines:
    """The samplers of one run, one per base model; `starts` counts the engines started."""

    def __init__(self, recipe):
        self.recipe = recipe
        self.samplers: dict[str, RunSampler] = {}
        self.starts = 0

    def sampler(self, model_path: str | Path, *, adapters: bool | None = None) -> RunSampler:
        """The run's sampler for `model_path`, started on first use.

        `adapters` (default: `lora.enabled`) says generate calls may pass a LoRA adapter. It is decided
        once per model: a model first sampled without adapters and later with one gets a second engine,
        so a method passes False only for models it never samples through an adapter (a teacher)."""
        from nega.sampling.replicas import make_replicated_sampler

        if adapters is None:
            adapters = self.recipe.lora.enabled
        key = model_key(model_path)
        known = self.samplers.get(key)
        if known is not None and (known.adapters or not adapters):
            return known
        if known is not None:
            known.close()
        recipe = self.recipe
        # One engine, or data-parallel replicas of it when the plan has GPUs left beyond tensor parallel.
        sampler = make_replicated_sampler(
            model_path,
            recipe.sampling,
            max_lora_rank=recipe.lora.r,
            adapters=adapters,
            # The model's own context: evaluation prompts are not cut to model.max_length (a training
            # length), so max_length + max_tokens refused real AdvBench/XSTest prompts.
            max_model_len=None,
        )
        self.starts += 1
        self.samplers[key] = RunSampler(sampler, adapters)
        return self.samplers[key]

    def hand_back(self) -> None:
        """Every engine gives its accelerator memory back until its next generate call (no-op on a CPU)."""
        for sampler in self.samplers.values():
            hand_back = getattr(sampler.sampler, "hand_back", None)
            if hand_back is not None:
                hand_back()

    def release(self, model_path: str | Path) -> None:
        """Close the engine of a model nothing in the run samples again (e.g. a teacher)."""
        sampler = self.samplers.pop(model_key(model_path), None)
        if sampler is not None:
            sampler.close()

    def close(self) -> None:
        """Close every engine and hand its memory back; safe to call twice."""
        while self.samplers:
            _, sampler = self.samplers.popitem()
            sampler.close()


class RunSampler:
    """A run's sampler for one model: the Sampler protocol over the engine; `adapters` says whether it
    was started to serve LoRA adapters."""

    def __init__(self, sampler, adapters: bool):
        self.sampler = sampler
        self.adapters = adapters

    def generate(self, prompts, **options):
        return self.sampler.generate(prompts, **options)

    def close(self) -> None:
        self.sampler.close()


class ModelSampler:
    """A stage's handle on the run's sampler for one model; `get()` starts the engine only when a stage
    has work to do, so a resumed run whose stages are all finished starts none. It is a Sampler itself
    (`generate` starts the engine on first call), so a judge scorer can be handed one before it is known
    whether anything will be judged. `adapters` as in `RunEngines.sampler`."""

    def __init__(self, run, model_path: str | Path, *, adapters: bool | None = None):
        self.run, self.model_path, self.adapters = run, str(model_path), adapters

    def get(self) -> RunSampler:
        return run_sampler(self.run, self.model_path, adapters=self.adapters)

    def generate(self, prompts, **options):
        return self.get().generate(prompts, **options)

    def close(self) -> None:
        """Close the run's engine for this model, handing its memory back (another model is about to
        load); the next `get()` starts it again."""
        run_engines(self.run).release(self.model_path)


def run_engines(run) -> RunEngines:
    """The engines of `run` (a `nega.pipeline.Run`), closed by `Run.close`."""
    if run.engines is None:
        run.engines = RunEngines(run.recipe)
    return run.engines


def run_sampler(run, model_path: str | Path, *, adapters: bool | None = None) -> RunSampler:
    """The run's sampler for `model_path` (see `RunEngines.sampler`)."""
    return run_engines(run).sampler(model_path, adapters=adapters)


def model_key(model_path: str | Path) -> str:
    """One key per model: a local folder by its resolved path, a hub id as given."""
    path = Path(model_path).expanduser()
    return str(path.resolve()) if path.exists() else str(model_path)
