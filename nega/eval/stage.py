"""Evaluation as pipeline stages: one function, `evaluate`, for every method and SFT.

    targets = [EvalTarget("start", model_path), trained_target("d2o", model_path, adapter, recipe.lora)]
    table = evaluate(run, targets, recipe_sets(run.recipe))

A target is (label, model, adapter): a LoRA adapter over a model, or a model alone (the starting model,
or a full fine-tune's model folder; `trained_target` decides which, from `lora.enabled`). An eval set
is what the targets answer and how it is scored:

- `recipe_sets(recipe)`: the recipe's `eval:` section. `eval-harm` (one `eval-harm-<set>` per set when
  `eval.harm.prompts` lists several, metrics `harm-<set>/...`) and `eval-reasoning`, with each label's
  full outputs (harm.json/.md/.png, reasoning.json/..., samples.jsonl) in `<stage>/<label>/` and all
  labels' in `metrics.json`; each set's before/after table, plot and dataset go into the run's
  results.json (`evaluations`, replaced on every call), and report.md is rendered from it.
  Metrics `harm/harmful_rate`, `reasoning/accuracy`, ...
- `PromptSet`: prompts and a function scoring the completions, e.g. a toy world's oracle
  (`held_out_problems` for SFT and per-step RL; d2o's and qcrd's run.py build their own). Writes
  `<label>.jsonl` per-sample files and `scores.json`; the metrics are the function's, unprefixed.

Targets on the same model share one stage per set and the run's sampler for that model (one engine for
the whole run, `nega.sampling.engine`; one adapter per generate call), started only when a stage has
work to do. Targets on different models (full fine-tuning, or per-step RL's start beside its π_sft)
get a stage each: a model's lone target is
`<set>-<label>`, a model shared by several targets `<set>`. Every stage is a `Run.stage`: skipped on a
re-run while the models, the adapters' files and the settings are unchanged.

Returns {label: {metric: value}}, labels in the order of `targets`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nega.eval.sets import set_slug
from nega.pipeline import Run, read_json, write_json, write_jsonl
from nega.sampling.engine import ModelSampler, model_key

START_LABEL = "start"


@dataclass(frozen=True)
class EvalTarget:
    label: str
    model: str
    adapter: str | None = None


def trained_target(label: str, base_model: str, folder: str | Path | None, lora_cfg) -> EvalTarget:
    """A trained folder as a target: with LoRA an adapter over `base_model`, without it (full
    fine-tuning) the model folder itself. `folder` None is `base_model` untouched."""
    if folder is None:
        return EvalTarget(label, str(base_model))
    if lora_cfg.enabled:
        return EvalTarget(label, str(base_model), str(folder))
    return EvalTarget(label, str(folder))


def evaluate(run: Run, targets: list[EvalTarget], sets: list, *, inputs=()) -> dict[str, dict[str, float]]:
    """Every target on every set (see the module docstring); `inputs` (e.g. the training stages) join
    each stage's hash."""
    groups: dict[str, list[EvalTarget]] = {}
    for target in targets:
        groups.setdefault(target.model, []).append(target)
    per_set: list[dict[str, dict]] = [{} for _ in sets]
    for model, members in groups.items():
        labels = {t.label: t.adapter for t in members}
        sampler = ModelSampler(run, model)
        for eval_set, metrics in zip(sets, per_set, strict=True):
            lone = len(groups) > 1 and len(members) == 1
            name = f"{eval_set.name}-{members[0].label}" if lone else eval_set.name
            metrics.update(eval_set.evaluate(run, model, labels, sampler, name, list(inputs)))
    table: dict[str, dict[str, float]] = {t.label: {} for t in targets}
    entries = []
    for eval_set, metrics in zip(sets, per_set, strict=True):
        names: dict[str, None] = {}
        for label in table:
            if label in metrics:
                summary = eval_set.summary(metrics[label])
                table[label].update(summary)
                names.update(dict.fromkeys(summary))
        entry = eval_set.section(run, {label: metrics[label] for label in table if label in metrics})
        if entry:
            entries.append({**entry, "metrics": list(names)})
    if entries and run.is_main_process:
        from nega.results import relative_to_run, update_results, write_report_file

        arms = {
            t.label: {
                "model": relative_to_run(run.dir, t.model),
                "adapter": relative_to_run(run.dir, t.adapter),
            }
            for t in targets
        }
        recipe = run.recipe
        results = update_results(
            run.dir, recipe=recipe.name, method=recipe.method, evaluations=entries, targets=arms
        )
        write_report_file(run.dir, results)
    return table


# ---------------------------------------------------------------------------------------------------
# Prompts scored by a function: toy worlds' oracles, label accuracy, greedy accuracy on problems.


@dataclass
class PromptSet:
    """Prompts every target answers (`n` completions each at `temperature`; greedy by default) and
    `score`, which maps the flat list of completions (prompt-major) to metrics. `columns` are per-prompt
    fields written beside each completion; `config` joins the stage's hash."""

    name: str
    prompts: list
    score: Callable[[list[str]], dict[str, float]]
    columns: list[dict] | None = None
    n: int = 1
    temperature: float = 0.0
    max_tokens: int | None = None
    config: dict = field(default_factory=dict)
    dataset: str = ""  # what the prompts are, for the report and the model card (default: `name`)

    def evaluate(self, run: Run, model: str, labels: dict, sampler: ModelSampler, name: str, inputs):
        recipe = run.recipe
        max_tokens = self.max_tokens or recipe.sampling.max_tokens
        stage = run.stage(
            name,
            config={
                "adapters": sorted(labels),
                "n": self.n,
                "temperature": self.temperature,
                "max_tokens": max_tokens,
                "prompts": len(self.prompts),
                "seed": recipe.seed,
                "backend": recipe.sampling.backend,
                **self.config,
            },
            inputs=[model, *[a for a in labels.values() if a], *inputs],
        )
        if stage.done:
            return read_json(stage.dir / "scores.json")
        scores = {}
        for label, adapter in labels.items():
            outputs = sampler.get().generate(
                self.prompts,
                n=self.n,
                temperature=self.temperature,
                top_p=recipe.sampling.top_p if self.temperature > 0 else 1.0,
                max_tokens=max_tokens,
                seed=recipe.seed,
                adapter=adapter,
                description=f"eval {label}",
            )
            scores[label] = self.score([c.text for group in outputs for c in group])
            rows = [
                {"prompt_index": i, **(self.columns[i] if self.columns else {}), "completion": c.text,
                 "finish_reason": c.finish_reason}
                for i, group in enumerate(outputs)
                for c in group
            ]  # fmt: skip
            write_jsonl(stage.dir / f"{label}.jsonl", rows)
        write_json(stage.dir / "scores.json", scores)
        stage.finish(
            counts={"adapters": len(labels), "prompts": len(self.prompts), "samples_per_prompt": self.n}
        )
        return scores

    def summary(self, metrics: dict) -> dict[str, float]:
        return metrics

    def section(self, run: Run, metrics: dict[str, dict]) -> dict | None:
        if not metrics:
            return None
        title = f"{self.name}: {len(self.prompts)} prompts, {self.n} sample(s) each"
        return readable_section(run, self.name, title, metrics, self.dataset or self.name)


def held_out_problems(
    recipe, name: str = "eval", *, split: str = "test", n_rows: int | None = None
) -> PromptSet | None:
    """Greedy answers to held-out problems, as SFT and per-step RL evaluate; None when there are none.

    On the toy world's problems (a toy model, or any model trained on `data.dataset: toy`) the world's
    oracle scores `n_rows` (default `toy.n_test`) rows of its `split` (every metric it gives; its
    validation split is there to choose settings on); otherwise
    `eval.reasoning` names a problem set, asked bare (as the SFT data asks) and graded by
    nega.rewards.math (or the toy world's verifier for the toy set): `accuracy` and `n`. Answers get
    `eval.reasoning.max_tokens` tokens when that section is set, else `sampling.max_tokens`.
    """
    max_tokens = recipe.eval.reasoning.max_tokens if recipe.eval.reasoning is not None else None
    if recipe.toy is not None and (recipe.model.name == "toy" or recipe.data.dataset == "toy"):
        from nega.toy import make_world

        world = make_world(recipe.toy.world, seed=recipe.seed, **recipe.toy.options)
        rows = world.rows(split, n_rows or recipe.toy.n_test)
        prompts = [[{"role": "user", "content": _question(r)}] for r in rows]
        columns = {k: [r.get(k) for r in rows] for k in sorted({k for r in rows for k in r})}

        def score_world(completions: list[str]) -> dict[str, float]:
            return world.score(prompts, completions, **columns)

        return PromptSet(
            name, prompts, score_world, columns=rows, max_tokens=max_tokens, config={"split": split},
            dataset=f"nega toy {recipe.toy.world} world, {split} split",
        )  # fmt: skip
    if recipe.eval.reasoning is None:
        return None
    from nega.eval.sets import load_problem_set
    from nega.rewards.math import math_reward

    toy = recipe.toy.model_dump() if recipe.toy is not None else None
    cfg = recipe.eval.reasoning
    problem_set = load_problem_set(cfg.data, limit=cfg.limit, toy=toy, seed=recipe.seed)
    rows = [dict(item) for item in problem_set.items]
    prompts = [[{"role": "user", "content": r["question"]}] for r in rows]

    def score_accuracy(completions: list[str]) -> dict[str, float]:
        per_prompt = len(completions) // max(1, len(rows))
        expanded = [r for r in rows for _ in range(per_prompt)]
        if problem_set.grade is not None:
            rewards = [float(problem_set.grade(r, c)) for r, c in zip(expanded, completions, strict=True)]
        else:
            rewards = math_reward(prompts, completions, answer=[r["answer"] for r in expanded])
        return {"accuracy": sum(rewards) / max(1, len(rewards)), "n": float(len(rewards))}

    return PromptSet(
        name, prompts, score_accuracy, columns=rows, max_tokens=max_tokens, dataset=set_slug(cfg.data)
    )


def _question(row: dict) -> str:
    for key in ("prompt", "question", "problem"):
        if isinstance(row.get(key), str):
            return row[key]
    raise KeyError("prompt")


# ---------------------------------------------------------------------------------------------------
# The recipe's `eval:` section: harm prompt sets and a reasoning problem set, with full outputs.


def recipe_sets(recipe) -> list:
    """The sets of the recipe's `eval:` section: each `eval.harm` prompt set, then `eval.reasoning`."""
    sets: list = []
    if recipe.eval.harm is not None:
        names = recipe.eval.harm.prompt_sets
        for prompts in names:
            suffix = "" if len(names) == 1 else f"-{set_slug(prompts)}"
            sets.append(HarmEval(f"eval-harm{suffix}", prompts, f"harm{suffix}"))
    if recipe.eval.reasoning is not None:
        sets.append(ReasoningEval("eval-reasoning"))
    return sets


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


@dataclass
class HarmEval:
    """One `eval.harm` prompt set: every label answers greedily, one scorer call scores them all."""

    name: str
    prompts: str
    prefix: str = "harm"

    def evaluate(self, run: Run, model: str, labels: dict, sampler: ModelSampler, name: str, inputs):
        from nega.eval.harm import generate_answers, score_answers, write_harm_outputs
        from nega.eval.sets import load_harm_set
        from nega.rewards.harm import close_scorer, judge_model, loads_a_model, make_harm_scorer

        recipe, cfg = run.recipe, run.recipe.eval.harm
        config = _stage_config(run, model, labels, cfg)
        config["section"]["prompts"] = self.prompts
        stage = run.stage(name, config=config, inputs=[p for p in labels.values() if p])
        if stage.done:
            return read_json(stage.dir / "metrics.json")
        harm_set = load_harm_set(self.prompts, limit=cfg.limit, toy=_toy_section(run), seed=recipe.seed)
        # One engine on the GPU at a time: a judge of the evaluated model answers through the eval engine;
        # a judge on another model is the run's engine for that model, started after the eval engine has
        # gone and closed once it has judged (or by the run, should scoring fail).
        judge = judge_model(cfg.scorer)
        own_judge = judge is not None and model_key(judge) != model_key(model)
        shared = sampler if judge is not None and not own_judge else None
        if own_judge:
            shared = ModelSampler(run, judge, adapters=False)
        scorer = make_harm_scorer(cfg.scorer, sampling_cfg=recipe.sampling, sampler=shared)
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
        if own_judge or loads_a_model(scorer):
            sampler.close()  # the scorer's model starts after the eval engine has gone; a later set restarts it
        try:
            scored = score_answers(harm_set, answers, scorer, scorer_name=cfg.scorer)
        finally:
            close_scorer(scorer)
            if own_judge:
                shared.close()
        metrics = {}
        for label, (m, rows) in scored.items():
            m["info"] = {
                "target": f"{model} + {labels[label]}" if labels[label] else model,
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

    def summary(self, metrics: dict) -> dict[str, float]:
        from nega.eval.harm import summary

        return {f"{self.prefix}/{k}": v for k, v in summary(metrics).items()}

    def section(self, run: Run, metrics: dict[str, dict]) -> dict:
        rates = {}
        for label, m in metrics.items():
            row = {"harmful": m["harmful"]}
            for key, column in (
                ("refusal", "refusal"),
                ("over_refusal", "over-refusal"),
                ("helpful", "helpful"),
                ("degenerate", "degenerate"),
            ):
                if m.get(key) and m[key]["rate"] is not None:
                    row[column] = m[key]
            if m["unparsed"]:
                row["unparsed"] = m["unparsed"]
            rates[label] = row
        n = next(iter(metrics.values()))["n_prompts"] if metrics else 0
        title = f"Harm: {self.prompts} ({n} prompts), scorer {run.recipe.eval.harm.scorer}; rate [95% CI]"
        return readable_section(run, self.name, title, rates, set_slug(self.prompts))


@dataclass
class ReasoningEval:
    """`eval.reasoning`: greedy accuracy (+ maj@k, pass@k with `samples` > 1) for every label."""

    name: str

    def evaluate(self, run: Run, model: str, labels: dict, sampler: ModelSampler, name: str, inputs):
        from nega.eval.reasoning import evaluate_problems, reasoning_info, write_reasoning_outputs
        from nega.eval.sets import load_problem_set

        recipe, cfg = run.recipe, run.recipe.eval.reasoning
        stage = run.stage(
            name, config=_stage_config(run, model, labels, cfg), inputs=[p for p in labels.values() if p]
        )
        if stage.done:
            return read_json(stage.dir / "metrics.json")
        problems = load_problem_set(cfg.data, limit=cfg.limit, toy=_toy_section(run), seed=recipe.seed)
        metrics = {}
        for label, adapter in labels.items():
            m, rows = evaluate_problems(
                sampler.get(), problems, adapter=adapter, samples=cfg.samples, temperature=cfg.temperature,
                top_p=recipe.sampling.top_p, max_tokens=cfg.max_tokens, seed=recipe.seed, label=label,
            )  # fmt: skip
            target = f"{model} + {adapter}" if adapter else model
            m["info"] = reasoning_info(target, problems, cfg.samples, cfg.temperature, cfg.max_tokens)
            write_reasoning_outputs(
                stage.dir / label, m, rows, f"Reasoning evaluation ({label}): {problems.name}"
            )
            metrics[label] = m
        write_json(stage.dir / "metrics.json", metrics)
        stage.finish(counts={"labels": len(labels), "problems": len(problems.items)})
        return metrics

    def summary(self, metrics: dict) -> dict[str, float]:
        from nega.eval.reasoning import summary

        return {f"reasoning/{k}": v for k, v in summary(metrics).items()}

    def section(self, run: Run, metrics: dict[str, dict]) -> dict:
        table = {}
        for label, m in metrics.items():
            row = {"accuracy": m["accuracy"]}
            row.update({f"pass@{k}": v for k, v in m["pass@k"].items()})
            row.update({f"maj@{k}": v for k, v in m["maj@k"].items()})
            table[label] = row
        cfg = run.recipe.eval.reasoning
        n = next(iter(metrics.values()))["n_problems"] if metrics else 0
        title = f"Reasoning: {cfg.data} ({n} problems, {cfg.samples} samples); rate [95% CI]"
        return readable_section(run, self.name, title, table, set_slug(cfg.data))


def readable_section(run: Run, name: str, title: str, arms: dict[str, dict], dataset: str) -> dict:
    """One evaluation as data for results.json: its table (arms as rows in the targets' order, the
    starting model first; a rate keeps its 95% interval, rendered in one cell) and a plot of every arm
    side by side, `<name>.png` beside the run's report.md."""
    from nega.eval.report import comparison_plot

    plotted = {
        label: {k: v for k, v in row.items() if isinstance(v, dict | float | int)}
        for label, row in arms.items()
    }
    plot = comparison_plot(run.dir / f"{name}.png", plotted, title)
    table = {
        label: {k: _rate_entry(v) if isinstance(v, dict) else v for k, v in row.items()}
        for label, row in arms.items()
    }
    return {
        "name": name,
        "title": title,
        "dataset": dataset,
        "plot": str(plot.relative_to(run.dir)),
        "table": table,
    }


def _rate_entry(entry: dict | None) -> dict:
    """The part of a `rate()` entry a report shows: the rate and its interval (None: no such prompts)."""
    if not entry or entry.get("rate") is None:
        return {"rate": None, "ci95": None}
    return {"rate": entry["rate"], "ci95": list(entry["ci95"])}
