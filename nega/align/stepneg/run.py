"""Per-step negative RL: learn from π_sft's own wrong solutions, blaming the first step that ruins them.

Paper: Setlur, Garg, Geng, Garg, Smith, Kumar, "RL on Incorrect Synthetic Data Scales the Efficiency
of LLM Math Reasoning by Eight-Fold", NeurIPS 2024, arXiv 2406.14532.
Specification: docs/methods.md#per-step-negative-rl.

Stages, top to bottom:

    sft          NLL on the problems' reference solutions                     -> π_sft (LoRA, merged)
    rft          N samples per problem from π_sft, keep verified-correct ones that ended (dedupe), fine-tune
    negatives    rounds of M samples per problem from π_sft until each has N distinct incorrect ones
                 (within a budget of samples per problem; problems left short are reported)
    advantages   Q_i of every prefix ŷ_1..i by R groups of K continuations of π_sft (BoK, K = 5),
                 A_i = Q_i − Q_{i−1}, first pit c = first step where Q reaches its minimum
                 (for AWR: of every distinct π_sft sample, right ones that ended included)
    pairs        chosen = a correct π_sft solution of the problem that ended on its own,
                 rejected = ŷ_1..c without EOS
    reflogps     log π_sft of every chosen and rejected response, once, from the frozen model
    train        per-step DPO (or AWR / outcome DPO) on a LoRA adapter over π_sft:
                 −log σ(β[log π_θ(y⁺|x) − log π_sft(y⁺|x)] − β[log π_θ(ŷ_1..c|x) − log π_sft(ŷ_1..c|x)])
    eval         greedy accuracy of π_sft, RFT and each trained objective on held-out problems

Deviations and choices where the paper is silent (each a config field):

- π_sft is the SFT LoRA adapter merged into its base, saved as a plain model folder: the sampler
  samples it directly and the DPO adapter trains on top of it, so "adapter disabled" is π_sft.
- RFT and per-step DPO both start from π_sft with a fresh adapter; RFT trains on the kept positives
  only, with the train section (train.lr and train.max_steps or train.epochs) like every objective, so
  it is compared with them at the same learning rate and number of optimizer steps. Chosen responses
  come from π_sft's verified-correct samples (RFT and negatives stages); a problem that π_sft never
  solved gives no pairs and its negatives are not rolled out.
- A positive is a right solution that ended on its own: one cut at sampling.max_tokens is neither an
  RFT target, nor a chosen response, nor an AWR sample (trained as one, it would end in an end token
  π_sft never produced there). The sampling stages count them (`correct_cut`).
- The negatives stage samples `stepneg.negatives` (M) per problem per round, only for the problems
  with fewer than `negatives_per_problem` distinct wrong solutions, within `max_samples_per_problem`
  samples per problem (negatives.py); each problem keeps its first N distinct wrong ones.
- A negative that ended on its own (EOS) is terminal and wrong, so Q_L = 0 without rollouts; one cut
  at sampling.max_tokens is not an outcome, and its last prefix is rolled out like the others. With
  `skip_after_pit` no prefix after the first zero estimate is rolled out (it cannot move the first
  pit; rollouts.py).
- AWR is the paper's expectation over π_sft's samples: every step of every distinct sample from the
  negatives stage of a problem with a right sample, right samples included (Q_L = 1), each weighted
  by exp(A_i/β) normalised over the batch and clipped at `awr_clip`; finished samples keep their EOS.
  It needs every step's value, so with AWR among the objectives the advantages stage rolls out every
  prefix (no skip) and values the right samples too.
- `stepneg.compare` trains more objectives on the same pairs for a side-by-side table.
"""

from __future__ import annotations

from nega.pipeline import Run
from nega.sampling.engine import ModelSampler

LABELS = {"dpo": "stepneg_dpo", "awr": "stepneg_awr", "outcome_dpo": "outcome_dpo"}


def run(recipe, run: Run) -> dict[str, dict[str, float]]:
    from nega.align.stepneg.data import rft_examples
    from nega.chat import stop_ids
    from nega.data import DataError
    from nega.eval.stage import START_LABEL, EvalTarget, evaluate, held_out_problems, trained_target
    from nega.models import load_tokenizer
    from nega.sft import sft_stage
    from nega.stages import base_model, write_report

    cfg = recipe.stepneg
    model_path, model_stage = base_model(run)
    problems, prompts, verify = load_problems(recipe, model_path)

    # sft: NLL on reference solutions, merged into a plain π_sft folder.
    sft_pairs = [(prompts[i], p["solution"]) for i, p in enumerate(problems) if p["solution"]]
    sft, sft_folder = sft_stage(
        run, "sft", model_path, sft_pairs, inputs=[model_stage or model_path], overrides=sft_overrides(recipe)
    )
    pi_sft, merge = merged_model(run, model_path, sft_folder, sft)

    # Every sampling stage below and the evaluation share the run's engine for π_sft.
    sampler = ModelSampler(run, pi_sft)
    # rft: N samples, verified-correct ones that ended kept and deduplicated.
    rft_sampled, rft_samples = None, []
    if cfg.rft:
        rft_sampled, rft_samples = sample_and_verify(
            run, "rft-sample", sampler, prompts, verify, cfg.rft_samples, 0, [merge]
        )
    # negatives: rounds of M samples until each problem has N distinct incorrect ones, in a budget.
    negatives, samples = negatives_stage(run, sampler, prompts, verify, [merge])
    positives = pool_positives([rft_samples, samples])
    if not positives:
        raise DataError(no_positives_message(recipe, [rft_samples, samples]))
    # Sampled solutions are trained on as the ids π_sft produced, not their re-tokenized text.
    tokens = sampled_tokens([rft_samples, samples], stop_ids(load_tokenizer(pi_sft, recipe.model)))
    # advantages: per-step values by rollouts from π_sft, and the first pit.
    advantages, valued = advantages_stage(run, sampler, prompts, verify, samples, positives)

    folders: dict[str, str | None] = {"sft": None}
    if cfg.rft:
        rft_pairs = rft_examples(prompts, rft_samples, tokens)
        if rft_pairs:
            # RFT is compared with the objectives trained on π_sft: the same train section, so the same steps.
            _, folders["rft"] = sft_stage(run, "rft", pi_sft, rft_pairs, inputs=[merge])
        else:
            import warnings

            warnings.warn(
                f"rft: none of π_sft's {cfg.rft_samples} samples per problem was right and finished before "
                "sampling.max_tokens, so the RFT arm has nothing to train on and is left out (raise "
                "stepneg.rft_samples, or sampling.max_tokens if right samples were cut, to include it)",
                stacklevel=1,
            )

    # pairs -> reflogps -> train, for the main objective and each one compared with it.
    # The pairs draw their chosen side from the positives: the sampling stages are inputs too.
    sources = [advantages, negatives, *filter(None, [rft_sampled])]
    pairs = pairs_stage(run, prompts, valued, positives, tokens, inputs=sources)
    for loss in dict.fromkeys([cfg.loss, *cfg.compare]):
        examples = reflogps_stage(run, loss, pi_sft, pairs, inputs=[merge])
        folders[LABELS[loss]] = train_objective(run, loss, pi_sft, examples, inputs=[merge, pairs])
    run.record_result(LABELS[cfg.loss], pi_sft, folders[LABELS[cfg.loss]])

    problems_set = held_out_problems(recipe)
    if problems_set is None:
        raise DataError(
            "stepneg evaluates held-out problems: set eval.reasoning (e.g. {data: gsm8k, limit: 200})"
        )
    # π_sft and every adapter trained on it (with full fine-tuning: each trained model folder).
    targets = [EvalTarget(START_LABEL, model_path)] if recipe.eval.before else []
    targets += [trained_target(label, pi_sft, folder, recipe.lora) for label, folder in folders.items()]
    table = evaluate(run, targets, [problems_set], inputs=[merge])
    title = f"{recipe.name}: greedy accuracy on {len(problems_set.prompts)} held-out problems"
    write_report(run, table, title=title)
    return table


# ---------------------------------------------------------------------------------------------------
# The stages above, each a `Run.stage` that is skipped when its inputs are unchanged.


def load_problems(recipe, model_path: str):
    """(problems, rendered prompts, verify(problem index, solution text) -> bool) for the train split."""
    from nega.align.stepneg.data import problem_reader
    from nega.data import DataError, convert_rows, load_rows
    from nega.models import load_tokenizer
    from nega.rewards.math import is_correct
    from nega.sampling.base import render_prompt

    cfg = recipe.stepneg
    rows, source = load_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed, split=recipe.data.split)
    read = problem_reader(recipe.data.format, rows[0], source)
    problems, _ = convert_rows(rows, read, source=source, on_bad_row=recipe.data.on_bad_row)
    tokenizer = load_tokenizer(model_path, recipe.model)
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": p["question"]}]) for p in problems]
    toy = recipe.data.dataset == "toy" and recipe.toy is not None and recipe.toy.world == "reasoning"
    if cfg.answer_format == "toy" or (cfg.answer_format == "auto" and toy):
        if not toy:
            raise DataError("stepneg.answer_format 'toy' needs data.dataset: toy with toy.world: reasoning")
        from nega.toy import make_world

        world = make_world("reasoning", seed=recipe.seed, **recipe.toy.options)
        return problems, prompts, lambda i, text: bool(world.verify(problems[i]["question"], text))
    fmt = cfg.answer_format
    return problems, prompts, lambda i, text: is_correct(text, problems[i]["answer"], fmt)


def sft_overrides(recipe) -> dict:
    """SFT runs `stepneg.sft_epochs` epochs at `stepneg.sft_lr`; train.max_steps is the train stages'."""
    return {
        "num_train_epochs": recipe.stepneg.sft_epochs,
        "max_steps": -1,
        "learning_rate": recipe.stepneg.sft_lr or recipe.train.lr,
    }


def merged_model(run: Run, model_path: str, sft_folder: str, sft):
    """π_sft as a plain model folder: the SFT adapter merged into its base (full fine-tuning: as is)."""
    if not run.recipe.lora.enabled:
        return sft_folder, sft
    from nega.models import merge_adapter

    stage = run.stage("sft-merge", config={"model": run.recipe.model.model_dump()}, inputs=[sft])
    if not stage.done:
        merge_adapter(model_path, sft_folder, stage.dir / "model", run.recipe.model)
        stage.finish()
    return str(stage.dir / "model"), stage


def sample_and_verify(
    run: Run, name: str, sampler: ModelSampler, prompts, verify, n: int, seed_offset: int, inputs
):
    """(stage, one row per problem): n samples per problem from π_sft, each marked correct or not."""
    from nega.align.stepneg.data import cut_positive_count, positive_texts
    from nega.pipeline import hash_value, read_jsonl
    from nega.sampling.stage import SAMPLES, SampleRequest, sample_stage

    cfg = run.recipe.sampling
    request = SampleRequest.of(
        cfg, prompts, n=n, seed=cfg.seed + seed_offset, description=f"{name} ({len(prompts)} problems x {n})"
    )
    settings = {k: getattr(request, k) for k in ("n", "temperature", "top_p", "max_tokens", "seed")}

    def row(i: int, group) -> dict:
        return {
            "texts": [c.text for c in group],
            "token_ids": [c.token_ids for c in group],
            "finish_reasons": [c.finish_reason for c in group],
            "correct": [verify(i, c.text) for c in group],
        }

    def counts(rows: list[dict]) -> dict:
        flat = [ok for r in rows for ok in r["correct"]]
        return {
            "samples": len(flat),
            "correct_rate": sum(flat) / len(flat),
            # Problems with a positive; right samples cut at max_tokens are not positives.
            "solved_problems": sum(bool(positive_texts(r)) for r in rows),
            "correct_cut": sum(cut_positive_count(r) for r in rows),
        }

    stage = sample_stage(
        run, name, sampler.model_path, request, inputs=inputs, row=row, counts=counts,
        config={**settings, "backend": cfg.backend, "prompts": hash_value(prompts)},
    )  # fmt: skip
    return stage, read_jsonl(stage.dir / SAMPLES)


def negatives_stage(run: Run, sampler: ModelSampler, prompts, verify, inputs):
    """(stage, one row per problem): π_sft's samples in rounds until each problem has
    `negatives_per_problem` distinct wrong solutions or has spent `max_samples_per_problem` (negatives.py)."""
    from nega.align.stepneg.negatives import sample_negatives
    from nega.pipeline import hash_value, read_jsonl, say, write_jsonl

    cfg, sampling = run.recipe.stepneg, run.recipe.sampling
    settings = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    rounds = {
        "per_round": cfg.negatives,
        "target": cfg.negatives_per_problem,
        "budget": cfg.max_samples_per_problem,
        "seed": sampling.seed + 1,
    }
    config = {**settings, **rounds, "backend": sampling.backend, "prompts": hash_value(prompts)}
    stage = run.stage("negatives", config=config, inputs=inputs)
    if not stage.done:
        rows, counts = sample_negatives(
            sampler.get(), prompts, verify, **rounds, **settings, folder=stage.dir
        )
        write_jsonl(stage.dir / "samples.jsonl", rows)
        stage.finish(counts=counts)
    counts = stage.manifest["counts"]
    if counts["short_problems"]:
        say(
            f"negatives: {counts['short_problems']} of {counts['problems']} problems have fewer than "
            f"{cfg.negatives_per_problem} distinct wrong solutions after {cfg.max_samples_per_problem} "
            "samples (stepneg.max_samples_per_problem); they keep the ones found"
        )
    return stage, read_jsonl(stage.dir / "samples.jsonl")


def positives_of(samples: list[dict]) -> list[list[str]]:
    """Per problem, its distinct right solutions that ended on their own (`data.positive_texts`)."""
    from nega.align.stepneg.data import positive_texts

    return [positive_texts(row) for row in samples]


def sampled_tokens(sample_sets: list[list[dict]], end_ids: set[int]) -> dict[tuple[int, str], list[int]]:
    """(problem, solution text) -> the token ids π_sft sampled for it (first seen), without the end
    token: what training scores for a sampled solution (`nega.chat.response_tokens`)."""
    from nega.chat import response_tokens

    tokens: dict[tuple[int, str], list[int]] = {}
    for samples in sample_sets:
        for i, row in enumerate(samples):
            ids_of = row.get("token_ids") or [None] * len(row["texts"])
            for text, ids, reason in zip(row["texts"], ids_of, row["finish_reasons"], strict=True):
                if ids and (i, text) not in tokens:
                    completion = {"text": text, "token_ids": ids, "finish_reason": reason}
                    tokens[(i, text)] = response_tokens(completion, end_ids)
    return tokens


def no_positives_message(recipe, sample_sets: list[list[dict]]) -> str:
    """Why per-step RL cannot go on when π_sft solved no training problem, and what to change."""
    from nega.align.stepneg.data import cut_positive_count

    reasons = [r for samples in sample_sets for row in samples for r in row["finish_reasons"]]
    cut = sum(r == "length" for r in reasons)
    cut_right = sum(cut_positive_count(row) for samples in sample_sets for row in samples)
    right = f", {cut_right} of those right but unfinished, which are no positives" if cut_right else ""
    problems = len(sample_sets[-1])
    return (
        f"π_sft solved none of the {problems} training problems in {len(reasons)} samples ({cut} of them "
        f"cut off at sampling.max_tokens={recipe.sampling.max_tokens}{right}): per-step RL pairs a "
        "problem's wrong solutions with a right one, and values steps by rollouts that must sometimes "
        "succeed. Raise "
        "sampling.max_tokens if most were cut off, else stepneg.rft_samples (the negatives stage stops "
        "sampling a problem once it has stepneg.negatives_per_problem wrong solutions), train the SFT stage "
        "longer (stepneg.sft_epochs), use easier problems, or start from a stronger model."
    )


def pool_positives(sample_sets: list[list[dict]]) -> dict[int, list[str]]:
    """Every problem's distinct correct π_sft solutions that ended, over the given sampling stages."""
    pools: dict[int, list[str]] = {}
    for samples in sample_sets:
        for i, texts in enumerate(positives_of(samples)):
            pools[i] = list(dict.fromkeys(pools.get(i, []) + texts))
    return {i: pool for i, pool in pools.items() if pool}


def advantages_stage(run: Run, sampler: ModelSampler, prompts, verify, samples: list[dict], positives: dict):
    """Rollout values, advantages and first pit of each distinct sample of a problem with a positive:
    its negatives (the negatives stage's first `negatives_per_problem` distinct wrong ones), and its
    positives too when AWR is trained (its expectation is over π_sft's samples). A wrong sample cut at
    max_tokens has its last prefix rolled out (no outcome); a right one cut there is not valued at all."""
    from nega.align.stepneg.rollouts import estimate_step_values
    from nega.align.stepneg.steps import split_steps
    from nega.pipeline import hash_value, read_jsonl, write_json, write_jsonl

    recipe, cfg = run.recipe, run.recipe.stepneg
    awr = "awr" in (cfg.loss, *cfg.compare)
    solutions = []
    for i, row in enumerate(samples):
        if i not in positives:
            continue
        seen, wrong = set(), set(row["negatives"])
        for text, reason, ok in zip(row["texts"], row["finish_reasons"], row["correct"], strict=True):
            if (ok and (not awr or reason == "length")) or (not ok and text not in wrong) or text in seen:
                continue
            seen.add(text)
            solutions.append(
                {
                    "problem": i,
                    "text": text,
                    "finish_reason": reason,
                    "correct": bool(ok),
                    "steps": split_steps(text, cfg.step_regex),
                }
            )
    # A right sample (it ended: cut ones are left out above) has outcome 1. A cut wrong one has none.
    outcomes = [1.0 if s["correct"] else 0.0 if s["finish_reason"] == "stop" else None for s in solutions]
    skip = cfg.skip_after_pit and not awr
    keys = ("best_of", "rollout_groups", "step_regex")
    sampling = recipe.sampling
    config = {k: getattr(cfg, k) for k in keys} | {
        "skip_after_pit": skip,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sampling.seed + 1000,
        "solutions": hash_value(
            [(s["problem"], s["text"], o) for s, o in zip(solutions, outcomes, strict=True)]
        ),
    }
    stage = run.stage("advantages", config=config)
    if not stage.done:
        results, stats = estimate_step_values(
            sampler.get(),
            prompts,
            [(s["problem"], s["steps"]) for s in solutions],
            verify,
            outcomes=outcomes,
            best_of=cfg.best_of,
            groups=cfg.rollout_groups,
            skip_after_pit=skip,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed + 1000,
        )
        rows = [
            {**s, "values": r.values, "advantages": r.advantages, "pit": r.pit}
            for s, r in zip(solutions, results, strict=True)
        ]
        write_jsonl(stage.dir / "advantages.jsonl", rows)
        write_json(stage.dir / "rollouts.json", {**stats.as_dict(), "calls": stats.per_call})
        negatives = sum(not s["correct"] for s in solutions)
        stage.finish(
            counts={"negatives": negatives, "positives": len(solutions) - negatives, **stats.as_dict()}
        )
    return stage, read_jsonl(stage.dir / "advantages.jsonl")


def pairs_stage(run: Run, prompts, valued: list[dict], positives: dict, tokens: dict, inputs):
    """Per-step pairs and outcome pairs over the same negatives; AWR rows over every valued sample.

    A pair's chosen solution carries the ids π_sft sampled for it (`chosen_ids`). Rejected prefixes stay
    text cut at step boundaries: the rollouts that valued them continued that same text, tokenized the
    same way, so the values and the trained tokens agree."""
    from nega.align.stepneg.data import awr_rows, outcome_pairs, step_pairs
    from nega.pipeline import hash_value, write_jsonl

    cfg = run.recipe.stepneg
    # The chosen side is drawn from `positives` (with π_sft's ids): a new pool must make new pairs.
    # In pool order: the pairs' picker shuffles each pool as it stands.
    chosen = [(i, y, tokens.get((i, y))) for i, pool in sorted(positives.items()) for y in pool]
    config = {"stepneg": cfg.stage_key(), "seed": run.recipe.seed, "positives": hash_value(chosen)}
    stage = run.stage("pairs", config=config, inputs=inputs)
    if not stage.done:
        negatives = [s for s in valued if not s.get("correct", False)]
        files = {
            "dpo": step_pairs(negatives, prompts, positives, run.recipe.seed),
            "outcome_dpo": outcome_pairs(negatives, prompts, positives, run.recipe.seed),
            "awr": awr_rows(valued, prompts, positives) if "awr" in (cfg.loss, *cfg.compare) else [],
        }
        for loss in ("dpo", "outcome_dpo"):
            for row in files[loss]:
                row["chosen_ids"] = tokens.get((row["problem"], row["chosen"]))
        for loss, rows in files.items():
            write_jsonl(stage.dir / f"{loss}.jsonl", rows)
        pits = [r["pit"] for r in files["dpo"]]
        counts = {"pairs": len(pits), "mean_pit": sum(pits) / max(1, len(pits)), "positives": len(chosen)}
        stage.finish(counts=counts)
    return stage


def reflogps_stage(run: Run, loss: str, pi_sft: str, pairs, inputs) -> list[dict]:
    """The loss's examples, with π_sft reference log-probs for the DPO objectives."""
    from nega.align.stepneg.trainer import attach_reference_logps
    from nega.logps import LogpCache
    from nega.pipeline import read_jsonl, write_jsonl

    examples = read_jsonl(pairs.dir / f"{loss}.jsonl")
    if loss == "awr":
        return examples
    stage = run.stage(
        f"reflogps-{loss}", config={"model": run.recipe.model.model_dump()}, inputs=[pairs, *inputs]
    )
    if not stage.done:
        examples = attach_reference_logps(
            examples, pi_sft, run.recipe.model, cache=LogpCache(stage.dir / "cache.jsonl"),
            description=f"pi_sft, {stage.name}",
        )  # fmt: skip
        write_jsonl(stage.dir / "examples.jsonl", examples)
        stage.finish(counts={"examples": len(examples)})
    return read_jsonl(stage.dir / "examples.jsonl")


def train_objective(run: Run, loss: str, pi_sft: str, examples: list[dict], inputs) -> str:
    """A LoRA adapter over π_sft trained with `loss`; returns its folder."""
    from nega.pipeline import hash_value
    from nega.training import train_stage

    recipe = run.recipe
    config = {
        "loss": loss,
        "stepneg": recipe.stepneg.stage_key(),
        "examples": hash_value(examples),
        "seed": recipe.seed,
    }
    _, folder = train_stage(
        run,
        f"train-{loss}",
        "nega.align.stepneg.trainer:train_policy",
        model_path=pi_sft,
        examples=examples,
        config=config,
        inputs=inputs,
        loss=loss,
    )
    return folder
