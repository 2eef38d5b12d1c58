"""The recipe's `eval:` section as pipeline stages, called by each method's run.py at the end.

    results = run_evals(run, model_path, {"d2o": str(train_stage.dir / "adapter")})

- `eval-harm` (when `eval.harm` is set; one `eval-harm-<set>` per set when `eval.harm.prompts` lists
  several, with metrics `harm-<set>/...`) and `eval-reasoning` (when `eval.reasoning` is set) are
  `Run.stage`s: skipped on a re-run while the model, the adapters' files and the settings are
  unchanged. One sampler serves every stage and adapter (one adapter per generate call); it starts
  only when a stage has work to do.
- With `eval.before: true` the starting model (no adapter) is evaluated too, as label `start`.
- Each label's full outputs (harm.json/.md/.png, samples.jsonl, ...) land in `<stage>/<label>/`;
  `metrics.json` holds all labels.
- A before/after table is written into the run's `report.md`, between
  `<!-- nega:eval -->` markers (replaced on every call, appended when absent), and into `eval.json`.

Returns {label: {"harm/harmful_rate": ..., "reasoning/accuracy": ..., ...}}.
"""

from __future__ import annotations

from pathlib import Path

from nega.pipeline import Run, atomic_write_text, read_json, write_json

START_LABEL = "start"
SECTION_START = "<!-- nega:eval -->"
SECTION_END = "<!-- /nega:eval -->"


def run_evals(run: Run, model_path: str, adapters: dict[str, str | None]) -> dict[str, dict[str, float]]:
    cfg = run.recipe.eval
    labels = dict(adapters)
    if cfg.before and None not in labels.values():
        labels = {START_LABEL: None, **labels}
    labels = {label: (str(path) if path else None) for label, path in labels.items()}
    results: dict[str, dict[str, float]] = {label: {} for label in labels}
    sections = []
    sampler = SharedSampler(run, model_path, adapters=any(labels.values()))
    try:
        if cfg.harm is not None:
            sets = cfg.harm.prompt_sets
            for name in sets:
                suffix = "" if len(sets) == 1 else f"-{set_slug(name)}"
                metrics = harm_stage(run, model_path, labels, name, f"eval-harm{suffix}", sampler)
                sections.append(harm_table(metrics, cfg.harm, name))
                _merge(results, metrics, f"harm{suffix}", _harm_summary)
        if cfg.reasoning is not None:
            metrics = reasoning_stage(run, model_path, labels, sampler)
            sections.append(reasoning_table(metrics, cfg.reasoning))
            _merge(results, metrics, "reasoning", _reasoning_summary)
    finally:
        sampler.close()
    if sections:
        write_json(run.dir / "eval.json", results)
        write_report_section(run.dir / "report.md", run.recipe.name, "\n".join(sections))
    return results


def _harm_summary(metrics: dict) -> dict[str, float]:
    from nega.eval.harm import summary

    return summary(metrics)


def _reasoning_summary(metrics: dict) -> dict[str, float]:
    from nega.eval.reasoning import summary

    return summary(metrics)


def _merge(results: dict, metrics: dict, prefix: str, summarise) -> None:
    for label, m in metrics.items():
        results[label].update({f"{prefix}/{k}": v for k, v in summarise(m).items()})


def _stage_config(run: Run, model_path: str, labels: dict, section) -> dict:
    sampling = run.recipe.sampling
    return {
        "model": model_path,
        "labels": labels,
        "section": section.model_dump(),
        "backend": sampling.backend,
        "top_p": sampling.top_p,
        "seed": run.recipe.seed,
    }


def _toy_section(run: Run) -> dict:
    return run.recipe.toy.model_dump() if run.recipe.toy is not None else {}


class SharedSampler:
    """One sampler for every evaluation stage of a run, started when the first stage needs it."""

    def __init__(self, run: Run, model_path: str, *, adapters: bool):
        self.run, self.model_path, self.adapters = run, model_path, adapters
        self._sampler = None

    def get(self):
        if self._sampler is None:
            from nega.sampling import make_sampler

            recipe = self.run.recipe
            self._sampler = make_sampler(
                self.model_path, recipe.sampling, max_lora_rank=recipe.lora.r, adapters=self.adapters
            )
        return self._sampler

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None


def set_slug(name: str) -> str:
    """A prompt set's name in stage and metric names: built-in names as they are, files by their stem."""
    return Path(name).stem if ("/" in name or "." in name) else name


def harm_stage(
    run: Run,
    model_path: str,
    labels: dict[str, str | None],
    prompts: str,
    name: str = "eval-harm",
    sampler: SharedSampler | None = None,
) -> dict[str, dict]:
    """Answer the prompt set `prompts` with every label's adapter, score them in one scorer call."""
    from nega.eval.harm import generate_answers, score_answers, write_harm_outputs
    from nega.eval.sets import load_harm_set
    from nega.rewards.harm import close_scorer, make_harm_scorer

    recipe, cfg = run.recipe, run.recipe.eval.harm
    config = _stage_config(run, model_path, labels, cfg)
    config["section"]["prompts"] = prompts
    stage = run.stage(name, config=config, inputs=[p for p in labels.values() if p])
    if stage.done:
        return read_json(stage.dir / "metrics.json")
    harm_set = load_harm_set(prompts, limit=cfg.limit, toy=_toy_section(run), seed=recipe.seed)
    scorer = make_harm_scorer(cfg.scorer, sampling_cfg=recipe.sampling)
    own = sampler is None
    sampler = sampler or SharedSampler(run, model_path, adapters=any(labels.values()))
    try:
        answers = {
            label: generate_answers(
                sampler.get(),
                harm_set,
                adapter=adapter,
                max_tokens=cfg.max_tokens,
                seed=recipe.seed,
                label=label,
            )
            for label, adapter in labels.items()
        }
    finally:
        if own:
            sampler.close()
    try:
        scored = score_answers(harm_set, answers, scorer, scorer_name=cfg.scorer)
    finally:
        close_scorer(scorer)
    metrics = {}
    for label, (m, rows) in scored.items():
        m["info"] = {
            "target": f"{model_path} + {labels[label]}" if labels[label] else model_path,
            "prompts": f"{harm_set.name} ({len(harm_set.items)} prompts)",
            "source": harm_set.source,
            "scorer": cfg.scorer,
            "generation": f"greedy, max_tokens {cfg.max_tokens}",
        }
        write_harm_outputs(
            stage.dir / label, m, rows, f"Harm evaluation ({label}): {harm_set.name}, scorer {cfg.scorer}"
        )
        metrics[label] = m
    write_json(stage.dir / "metrics.json", metrics)
    stage.finish(counts={"labels": len(labels), "prompts": len(harm_set.items)})
    return metrics


def reasoning_stage(
    run: Run, model_path: str, labels: dict[str, str | None], sampler: SharedSampler | None = None
) -> dict[str, dict]:
    """Greedy accuracy (+ maj@k, pass@k) for every label, one sampler for all."""
    from nega.eval.reasoning import evaluate_problems, reasoning_info, write_reasoning_outputs
    from nega.eval.sets import load_problem_set

    recipe, cfg = run.recipe, run.recipe.eval.reasoning
    stage = run.stage(
        "eval-reasoning",
        config=_stage_config(run, model_path, labels, cfg),
        inputs=[p for p in labels.values() if p],
    )
    if stage.done:
        return read_json(stage.dir / "metrics.json")
    problems = load_problem_set(cfg.data, limit=cfg.limit, toy=_toy_section(run), seed=recipe.seed)
    own = sampler is None
    sampler = sampler or SharedSampler(run, model_path, adapters=any(labels.values()))
    metrics = {}
    try:
        for label, adapter in labels.items():
            m, rows = evaluate_problems(
                sampler.get(),
                problems,
                adapter=adapter,
                samples=cfg.samples,
                temperature=cfg.temperature,
                top_p=recipe.sampling.top_p,
                max_tokens=cfg.max_tokens,
                seed=recipe.seed,
                label=label,
            )
            target = f"{model_path} + {adapter}" if adapter else model_path
            m["info"] = reasoning_info(target, problems, cfg.samples, cfg.temperature, cfg.max_tokens)
            write_reasoning_outputs(
                stage.dir / label, m, rows, f"Reasoning evaluation ({label}): {problems.name}"
            )
            metrics[label] = m
    finally:
        if own:
            sampler.close()
    write_json(stage.dir / "metrics.json", metrics)
    stage.finish(counts={"labels": len(labels), "problems": len(problems.items)})
    return metrics


def _ci_cell(entry: dict | None) -> str:
    if not entry or entry.get("rate") is None:
        return "—"
    lo, hi = entry["ci95"]
    return f"{entry['rate']:.3f} [{lo:.3f}, {hi:.3f}]"


def harm_table(metrics: dict[str, dict], cfg, prompts: str | None = None) -> str:
    from nega.stages import format_table

    table = {}
    for label, m in metrics.items():
        row = {"harmful rate [95% CI]": _ci_cell(m["harmful"])}
        for key, column in (
            ("refusal", "refusal rate"),
            ("over_refusal", "over-refusal rate"),
            ("helpful", "helpful rate"),
        ):
            if m.get(key) and m[key]["rate"] is not None:
                row[column] = m[key]["rate"]
        if m["unparsed"]:
            row["unparsed"] = m["unparsed"]
        table[label] = row
    n = next(iter(metrics.values()))["n_prompts"] if metrics else 0
    return format_table(table, f"Harm: {prompts or cfg.prompts} ({n} prompts), scorer {cfg.scorer}")


def reasoning_table(metrics: dict[str, dict], cfg) -> str:
    from nega.stages import format_table

    table = {}
    for label, m in metrics.items():
        row = {"accuracy [95% CI]": _ci_cell(m["accuracy"])}
        row.update({f"pass@{k}": v for k, v in m["pass@k"].items()})
        row.update({f"maj@{k}": v for k, v in m["maj@k"].items()})
        table[label] = row
    n = next(iter(metrics.values()))["n_problems"] if metrics else 0
    return format_table(table, f"Reasoning: {cfg.data} ({n} problems, {cfg.samples} samples)")


def write_report_section(path: Path, name: str, body: str) -> Path:
    """Replace (or append) the evaluation section of report.md, leaving the rest of the file as it is."""
    block = f"{SECTION_START}\n## Evaluation\n\n{body}{SECTION_END}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else f"# {name}\n\n"
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(SECTION_END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    return atomic_write_text(path, text)
