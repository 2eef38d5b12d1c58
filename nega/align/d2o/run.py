"""D²O: distributional dispreference optimization (Duan et al., EMNLP 2024 Findings, arXiv 2403.03419).

Learns to avoid harm from human negatives alone: each prompt x has one dispreferred response y_l (any
"chosen" response in the data is ignored) and K responses y_1..y_K that the starting model samples
itself. Loss (the paper's eq. 7; `loss.d2o_loss`)::

    L = -log σ( (β/K) Σ_i [log π_θ(y_i|x) - log π_r⁻(y_i|x)]  -  α [log π_θ(y_l|x) - log π_r⁺(y_l|x)] )

Stages, top to bottom:

    toy-model          (model.name: toy) the toy world's starting SFT model
    sample             K = d2o.k (default sampling.n) self-samples per prompt from the starting model
                       (under d2o.sample_system_prompt when set; no later stage sees that prompt)
    reflogps           reference log-probs of every self-sample (π_r⁻), negative (π_r⁺) and KTO's
                       mismatched pair under the frozen starting model, computed once and cached
    <label>-train      d2o.objective, then every d2o.compare entry, on the same samples and references
    <label>-rN-sample, <label>-rN-reflogps, <label>-train-rN
                       online rounds N >= 2 (d2o.rounds > 1, or compare's d2o_online): resample from the
                       last round's adapter, score references, continue training that adapter
    eval               toy world: its oracle over the test prompts (harmful_rate, helpful_rate, ...),
                       sampled at d2o.eval_temperature; other data: the recipe's `eval:` section

Deviations from the paper, and decisions where it is silent:

- LoRA, not full fine-tuning: π_r⁻ = π_r⁺ = the base weights (adapter off); log-probs are sums over
  response tokens; self-samples are scored by the token ids the sampler produced, ended by the chat
  template's end-of-turn token, and one cut at sampling.max_tokens is scored without it.
- Sampling: temperature 1.0, top_p 1.0 by default (not stated in the paper); K defaults to sampling.n
  (paper K = 11).
- Online schedule (unknown in the paper): the training budget (train.max_steps or train.epochs) is split
  evenly over the rounds, so online and offline take the same number of optimizer steps; each round
  resamples from the current adapter and continues training it (a new optimizer and LR schedule per
  round). The references stay the starting model unless d2o.refresh_reference, which moves both to the
  previous round's adapter.
- filter_self_samples (off by default) drops self-samples that a harm scorer flags: the toy world's
  oracle on toy data, else the refusal lexicon of nega.rewards.harm (which flags every compliant
  answer: crude, so prefer `classifier:<model>` on real data).
- Baselines (`d2o.compare`): GA minimises the summed log π_θ(y_l); DPO takes the first self-sample as
  chosen and y_l as rejected; KTO has y_l as its only, undesirable, example with the KL reference point
  estimated from mismatched pairs (x_b scored with the next row's negative), written here, not TRL's;
  sft_self is SFT on the same self-samples with no negative, which isolates what the negatives add.
- sample_system_prompt (a variant, off by default): the self-samples are drawn with a system prompt,
  and every later stage (references, training, evaluation) uses the prompt without it, so D²O's anchors
  carry the system prompt's behaviour into the model (context distillation; sft_self is that alone).
"""

from __future__ import annotations

import math

from nega.align.d2o.data import build_examples, negatives_table, select_self_samples
from nega.eval.stage import START_LABEL, EvalTarget, PromptSet, evaluate, recipe_sets, trained_target
from nega.pipeline import Run, hash_value, read_jsonl, write_jsonl
from nega.stages import base_model, write_report
from nega.training import train_stage


def run(recipe, run: Run) -> dict[str, dict[str, float]]:
    from nega.models import load_tokenizer
    from nega.sampling.base import render_prompt

    cfg = recipe.d2o
    model_path, model_stage = base_model(run)
    # Converted once per data key into the run folder (.negatives-<key>.arrow), Arrow-backed.
    rows, source, counts = negatives_table(recipe, cache_dir=run.dir)
    tokenizer = load_tokenizer(model_path, recipe.model)
    prompts = [render_prompt(tokenizer, r["prompt"]) for r in rows]
    asked = sample_prompts(tokenizer, rows, cfg.sample_system_prompt)
    upstream = [model_stage or model_path, *filter(None, [recipe.data.path])]

    sampled = sample_stage(run, "sample", model_path, asked, None, 1, upstream)
    references = reference_stage(run, "reflogps", model_path, rows, prompts, sampled, None)
    plan = training_plan(cfg)
    adapters = train_objectives(run, model_path, rows, prompts, references, plan, sample_prompts=asked)
    main = next(iter(plan))
    run.record_result(main, model_path, adapters[main])

    trained = [trained_target(label, model_path, folder, recipe.lora) for label, folder in adapters.items()]
    if recipe.toy is not None and recipe.model.name == "toy":
        # The toy world's starting model is its SFT model: labelled `sft` beside the methods.
        start = [EvalTarget("sft", model_path)] if recipe.eval.before else []
        table = evaluate(run, start + trained, [toy_harm_set(recipe)])
    elif recipe.eval.harm is not None or recipe.eval.reasoning is not None:
        start = [EvalTarget(START_LABEL, model_path)] if recipe.eval.before else []
        table = evaluate(run, start + trained, recipe_sets(recipe))
    else:
        table = {label: {"trained": 1.0} for label in adapters}
    write_report(run, table, title=f"{recipe.name} (d2o; {source}, {counts['kept']} prompts)")
    return table


def training_plan(cfg) -> dict[str, tuple[str, int]]:
    """label -> (objective, rounds): d2o.objective first, then every d2o.compare entry."""
    main = "d2o_online" if cfg.rounds > 1 and cfg.objective == "d2o" else cfg.objective
    plan = {main: (cfg.objective, cfg.rounds)}
    for entry in cfg.compare:
        plan.setdefault(entry, ("d2o", cfg.compare_rounds) if entry == "d2o_online" else (entry, 1))
    return plan


def sample_prompts(tokenizer, rows: list[dict], system_prompt: str | None) -> list[str]:
    """The rendered prompts the self-samples are drawn from: each row's prompt, under `system_prompt`
    (d2o.sample_system_prompt) when set. Training and evaluation render the rows without it."""
    from nega.sampling.base import render_prompt

    return [render_prompt(tokenizer, with_system_prompt(r["prompt"], system_prompt)) for r in rows]


def with_system_prompt(prompt: list[dict], system: str | None) -> list[dict]:
    """Chat messages with `system` as their system message (before the prompt's own system text, when it
    has one, in the one message); unchanged when `system` is None."""
    if system is None:
        return prompt
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": f"{system}\n\n{prompt[0]['content']}"}, *prompt[1:]]
    return [{"role": "system", "content": system}, *prompt]


def train_objectives(
    run: Run, model_path: str, rows, prompts, references, plan, prefix: str = "", sample_prompts=None
) -> dict:
    """Train every plan entry from the shared round-1 references; online entries resample each round
    (from `sample_prompts`, the prompts as the sampler is asked them; default `prompts`)."""
    sample_prompts = prompts if sample_prompts is None else sample_prompts
    adapters = {}
    for label, (objective, rounds) in plan.items():
        adapter, train = None, None
        for r in range(1, rounds + 1):
            examples = references
            if r > 1:
                tag = f"{prefix}{label}-r{r}"
                again = sample_stage(run, f"{tag}-sample", model_path, sample_prompts, adapter, r, [train])
                ref_adapter = adapter if run.recipe.d2o.refresh_reference else None
                examples = reference_stage(
                    run, f"{tag}-reflogps", model_path, rows, prompts, again, ref_adapter
                )
            name = f"{prefix}{label}-train" + (f"-r{r}" if rounds > 1 else "")
            train, adapter = train_round(run, name, model_path, examples, objective, adapter, rounds)
        adapters[label] = adapter
    return adapters


def sample_stage(run: Run, name: str, model_path: str, prompts: list[str], adapter, round_: int, inputs):
    """`sampling.n` completions per prompt from the starting model (+ `adapter`): samples.jsonl."""
    from nega.sampling.stage import SampleRequest
    from nega.sampling.stage import sample_stage as sample

    cfg = run.recipe.sampling
    config = {
        "sampling": cfg.model_dump(),
        "prompts": hash_value(prompts),
        "round": round_,
        "adapter": adapter,
    }
    if run.recipe.d2o.sample_system_prompt is not None:
        # Named as well as inside the prompts' hash; left out when unset, so runs made before the key
        # existed keep their hash and resume.
        config["system_prompt"] = run.recipe.d2o.sample_system_prompt
    # Each round its own seed, so an online round does not redraw round 1's samples.
    request = SampleRequest.of(cfg, prompts, seed=cfg.seed + 7919 * (round_ - 1), adapter=adapter,
                               description=f"self-samples ({name})")  # fmt: skip
    return sample(run, name, model_path, request, config=config, inputs=inputs)


def reference_stage(run: Run, name: str, model_path: str, rows, prompts, sampled, ref_adapter):
    """Select ≤ K self-samples per prompt (optionally filtered) and cache every reference log-prob."""
    from nega.chat import stop_ids
    from nega.logps import LogpCache, reference_logps
    from nega.models import load_tokenizer

    recipe, cfg = run.recipe, run.recipe.d2o
    k = cfg.k or recipe.sampling.n
    config = {"k": k, "filter": cfg.filter_self_samples, "scorer": cfg.filter_scorer, "ref_adapter": ref_adapter,
              "model": recipe.model.model_dump()}  # fmt: skip
    stage = run.stage(name, config=config, inputs=[sampled, *filter(None, [ref_adapter])])
    if not stage.done:
        groups = [r["completions"] for r in read_jsonl(sampled.dir / "samples.jsonl")]
        flags = harm_flags(recipe, rows, groups) if cfg.filter_self_samples else [None] * len(groups)
        end_ids = stop_ids(load_tokenizer(model_path, recipe.model))
        selected = [select_self_samples(g, k, f, end_ids) for g, f in zip(groups, flags, strict=True)]
        cache = LogpCache(stage.dir / "reference_cache.jsonl")

        def score(pairs, eos):
            return reference_logps(
                model_path, recipe.model, pairs, eos, adapter=ref_adapter, cache=cache,
                description=f"reference log-probs ({name})",
            )  # fmt: skip

        negatives = [r["rejected"] for r in rows]
        examples = build_examples(prompts, negatives, selected, score)
        write_jsonl(stage.dir / "examples.jsonl", examples)
        stage.finish(counts={"prompts": len(examples), "self_samples": sum(len(e["self"]) for e in examples),
                             "filtered": sum(s.dropped for s in selected)})  # fmt: skip
    return stage


def harm_flags(recipe, rows: list[dict], groups: list[list[dict]]) -> list[list[bool]]:
    """Per completion: does the filter's harm scorer flag it (score ≥ 0.5)?"""
    from nega.rewards.harm import close_scorer, make_harm_scorer

    spec = recipe.d2o.filter_scorer
    if spec == "auto":
        spec = "toy" if recipe.data.dataset == "toy" else "refusal"
    scorer = make_harm_scorer(spec, sampling_cfg=recipe.sampling)
    try:
        prompts = [r["prompt"] for r, g in zip(rows, groups, strict=True) for _ in g]
        scores = scorer(prompts, [c["text"] for g in groups for c in g])
    finally:
        close_scorer(scorer)
    # A NaN score (a judge's unparsed verdict) keeps the sample: no verdict is no evidence of harm.
    flagged = iter([not math.isnan(s) and s >= 0.5 for s in scores])
    return [[next(flagged) for _ in g] for g in groups]


def train_round(run: Run, name: str, model_path: str, references, objective: str, adapter, rounds: int):
    """Train (continuing `adapter`) on the reference stage's examples; returns (stage, adapter folder)."""
    recipe = run.recipe
    overrides = round_budget(recipe.train, rounds)
    config = {"objective": objective, "d2o": recipe.d2o.stage_key(),
              "overrides": overrides, "adapter": adapter, "seed": recipe.seed}  # fmt: skip
    return train_stage(
        run, name, "nega.align.d2o.trainer:train_policy", model_path=model_path,
        examples=references.dir / "examples.jsonl", config=config, inputs=[references, *filter(None, [adapter])],
        objective=objective, adapter=adapter, **overrides,
    )  # fmt: skip


def round_budget(train_cfg, rounds: int) -> dict:
    """TrainingArguments overrides giving each of `rounds` rounds an equal share of the budget."""
    if rounds == 1:
        return {}
    if train_cfg.max_steps is not None:
        return {"max_steps": math.ceil(train_cfg.max_steps / rounds)}
    return {"num_train_epochs": train_cfg.epochs / rounds}


def toy_harm_set(recipe, *, split: str = "test", n_rows: int | None = None, name: str = "eval") -> PromptSet:
    """The toy world's oracle on `n_rows` (default toy.n_test) prompts of `split`, d2o.eval_samples
    completions each at d2o.eval_temperature."""
    from nega.toy import make_world

    cfg = recipe.d2o
    world = make_world(recipe.toy.world, seed=recipe.seed, **recipe.toy.options)
    rows = world.rows(split, n_rows or recipe.toy.n_test)
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    kinds = [r["kind"] for r in rows for _ in range(cfg.eval_samples)]
    keep = ("harmful_rate", "helpful_rate", "refusal_rate", "informative_rate", "degenerate_rate",
            "over_refusal_rate")  # fmt: skip

    def score(completions: list[str]) -> dict[str, float]:
        expanded = [p for p in prompts for _ in range(cfg.eval_samples)]
        metrics = world.score(expanded, completions, kind=kinds)
        return {k: metrics[k] for k in keep if k in metrics}

    return PromptSet(
        name, prompts, score, columns=[{"kind": r["kind"]} for r in rows], n=cfg.eval_samples,
        temperature=cfg.eval_temperature, config={"split": split, "rows": len(rows)},
    )  # fmt: skip
