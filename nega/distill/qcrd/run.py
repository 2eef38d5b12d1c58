"""QCRD: quality-guided contrastive rationale distillation (Wang et al., arXiv 2405.13014).

Stages, top to bottom (docs/methods.md#qcrd):

    toy-model        the starting student (toy recipes only; else the hub id / folder)
    teacher          teacher rationales (sampled 5× at T=0.7, or read from data) -> S_pos / S_neg
    per objective, per period p (`qcrd.negatives_every_steps` optimizer steps; `schedule.py`):
      p<k>-negatives       1 rationale per input the period trains on, at T=1.5, from the student
                           `qcrd.lag` periods back (clipped to the starting student), added to S_neg
      p<k>-discriminator   (qcrd only) pre-train D at p=0 and re-train it at the first period of every
                           `disc_every`-th epoch, on every input's S_pos vs S_neg plus the negatives
                           sampled since the last fit; score the period's rationales with the D of the
                           other folds (cross-fitted: `disc_folds` discriminators)
      p<k>-train           the period's optimizer steps of the loss below, α3 = α3·0.9^p, continuing
                           the previous period's adapter and optimizer
    eval             label accuracy (`predict:` greedy) and, on toy worlds, rationale quality
                     (`explain:` greedy, the world's oracle) for the start and every objective

Loss (mean token CE of the response; r* the easiest positive, r⁻ the hardest negative)::

    L = α1·CE(label | predict: x) + α2·D(x, r*)·min_{r∈S_pos} CE(r | explain: x)
        + α3·(1 − D(x, r⁻))·max(0, δ − CE(r⁻ | explain: x))

Baselines on the same data and optimizer steps (`qcrd.baselines`): label_only, step_by_step
(α·label + (1−α)·mean positive CE), qcrd_no_disc (D ≡ 1 on positives, ≡ 0 on negatives).

Each training stage records in its manifest counts and its training log the share of rows whose hinge
was active (δ − CE(r⁻) > 0), the hardest negative's mean CE, and the step of the lagged checkpoint.

Deviations from the paper:
- The student is a causal LM with LoRA; `predict: ` / `explain: ` prefix the user turn of its chat
  template (the paper trains T5 encoder-decoders with input prefixes).
- S_neg of a period = the teacher's inconsistent rationales + that period's self-adversarial sample;
  samples of earlier periods are not kept for the student's loss (the paper does not say).
- Each period is a separate Trainer started from the previous adapter and optimizer state (sampling
  and training never share a process); the LR schedule spans all periods. `train.max_steps` caps the
  steps of each epoch. Under DeepSpeed the optimizer's moments restart every period. With
  `lora.enabled: false` (the toy recipe) each period's checkpoint is a full model folder, sampled and
  evaluated as a model of its own.
- The discriminator is the student's own base model with LoRA and a pooled head, or a tiny encoder
  trained from scratch; re-training continues from the last weights for `disc_steps` steps. Its classes
  are balanced by class weights; corrupted (word-masked or word-replaced) positives are negatives.
- Scores are cross-fitted (the paper does not say): the inputs are split into `qcrd.disc_folds`
  folds (default 2), and each rationale is scored by a discriminator trained on the other folds, so
  D's score is its judgement of an unseen rationale, not a memory of its self-consistency label.
  Each fold's discriminator trains `disc_steps` steps (default 500, docs/methods.md#qcrd).
- Self-adversarial negatives (and teacher rationales) cut at `sampling.max_tokens` are scored without
  EOS; the others with it.
- With rationale files holding one teacher rationale per input (the PaLM files), self-consistency has
  nothing to vote on: use `consistency: gold`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from nega.data import has_split
from nega.distill.qcrd import data
from nega.distill.qcrd.schedule import PeriodSchedule, lag_warning
from nega.distill.qcrd.trainer import OPTIMIZER_STATE, sampling_target, uses_negatives
from nega.eval.stage import START_LABEL, EvalTarget, PromptSet, evaluate, trained_target
from nega.pipeline import Run, read_jsonl, write_jsonl
from nega.rewards.math import label_matches
from nega.sampling.engine import model_key
from nega.stages import base_model, write_report
from nega.training import train_stage

# The teacher stage samples rationales before any training: it hashes the fields it reads, so a changed
# loss weight reuses its (costly) samples. Training stages hash the whole section (`stage_key`).
TEACHER_FIELDS = {
    "teacher",
    "teacher_prompt",
    "answer_pattern",
    "teacher_samples",
    "teacher_temperature",
    "consistency",
}


def run(recipe, run: Run) -> dict[str, dict[str, float]]:
    epochs = whole_epochs(recipe.train.epochs)
    model_path, model_stage = base_model(run)
    upstream = [model_stage] if model_stage is not None else []
    teacher = teacher_stage(run, recipe, upstream)
    examples = read_jsonl(teacher.dir / "examples.jsonl")
    schedule = PeriodSchedule.of(recipe, len(examples), epochs, run.launcher.topology.world_size)
    warning = lag_warning(recipe.qcrd.lag, recipe.qcrd.negatives_every_steps, schedule.total_steps)
    if warning:
        warnings.warn(warning, stacklevel=2)
    targets = [EvalTarget(START_LABEL, model_path)] if recipe.eval.before else []
    for objective in dict.fromkeys([recipe.qcrd.objective, *recipe.qcrd.baselines]):
        student = train_student(run, recipe, objective, model_path, examples, schedule, [*upstream, teacher])
        targets.append(trained_target(objective, model_path, student, recipe.lora))
        if objective == recipe.qcrd.objective:
            run.record_result(objective, model_path, student)
    held_out = student_set(recipe)
    if held_out is None:
        warnings.warn(
            f"{recipe.data.path or recipe.data.dataset} has no test split (a distilling step-by-step file, "
            "the toy world, or data.data_files: {train: ..., test: ...} has one): "
            "the trained students are not evaluated; evaluate them with `nega eval` on questions they did "
            "not train on",
            stacklevel=2,
        )
        table = {t.label: {"trained": 1.0} for t in targets if t.label != START_LABEL}
    else:
        table = evaluate(run, targets, [held_out])
    write_report(run, table, title=f"{recipe.name} (qcrd, {epochs} epochs)")
    return table


def whole_epochs(epochs: float) -> int:
    if epochs != int(epochs):
        raise ValueError(
            f"train.epochs must be a whole number for qcrd (each epoch trains on every input), got {epochs}"
        )
    return int(epochs)


def teacher_stage(run: Run, recipe, upstream: list):
    """Teacher rationales (records.jsonl) and their self-consistency split into S_pos / S_neg (examples.jsonl).

    With `qcrd.teacher` the rationales are sampled first, by the `teacher-sample` stage."""
    cfg = recipe.qcrd
    config = {"data": recipe.data.model_dump(), "seed": recipe.seed, "toy": recipe.toy and recipe.toy.model_dump(),
              "qcrd": cfg.model_dump(include=TEACHER_FIELDS), "sampling": cfg.teacher and recipe.sampling.stage_key()}  # fmt: skip
    inputs = [*upstream, *filter(None, [recipe.data.path])]
    answer_of = data.answer_by_pattern(cfg.answer_pattern)
    records = None
    if cfg.teacher is not None:
        records, _ = data.load_teacher_records(
            recipe.data, toy_cfg=recipe.toy, seed=recipe.seed, answer_of=answer_of
        )
        sampled = teacher_sample_stage(run, recipe, records, config, inputs)
        inputs.append(sampled)
    stage = run.stage("teacher", config=config, inputs=inputs)
    if stage.done:
        return stage
    if cfg.teacher is None:
        records, _ = data.load_teacher_records(
            recipe.data, toy_cfg=recipe.toy, seed=recipe.seed, answer_of=answer_of
        )
    else:
        records = read_jsonl(sampled.dir / "samples.jsonl")
    examples = [data.split_by_consistency(r, cfg.consistency) for r in records]
    write_jsonl(stage.dir / "records.jsonl", records)
    write_jsonl(stage.dir / "examples.jsonl", examples)
    positives, negatives = (sum(len(e[k]) for e in examples) for k in ("positives", "negatives"))
    return stage.finish(counts={"inputs": len(examples), "positives": positives, "negatives": negatives})


def teacher_sample_stage(run: Run, recipe, rows: list[dict], config: dict, inputs: list):
    """`qcrd.teacher_samples` rationales per input from the teacher at `teacher_temperature`, stored as
    teacher-rationale records (`data.teacher_record`)."""
    from nega.models import resolve_model
    from nega.sampling.engine import run_engines
    from nega.sampling.stage import SampleRequest, sample_stage

    cfg = recipe.qcrd
    # A model nega knows by name (e.g. the packaged SmolLM2) is its converted folder, as for the student.
    teacher = resolve_model(cfg.teacher)
    answer_of = data.answer_by_pattern(cfg.answer_pattern)
    request = SampleRequest(
        data.teacher_prompts([r["question"] for r in rows], cfg.teacher_prompt), n=cfg.teacher_samples,
        temperature=cfg.teacher_temperature, top_p=recipe.sampling.top_p, max_tokens=recipe.sampling.max_tokens,
        seed=recipe.seed, description="teacher rationales",
    )  # fmt: skip
    stage = sample_stage(
        run, "teacher-sample", teacher, request, config=config, inputs=inputs, adapters=False,
        row=lambda i, completions: data.teacher_record(rows[i], completions, answer_of),
    )  # fmt: skip
    if model_key(teacher) != model_key(resolve_model(run.recipe.model.name)):
        # The teacher is sampled here only: its engine, without LoRA layers, closes when this stage ends.
        run_engines(run).release(teacher)
    return stage


def train_student(
    run: Run, recipe, objective: str, model_path: str, examples: list[dict], schedule: PeriodSchedule,
    upstream: list,
):  # fmt: skip
    """`objective` trained period by period, each with fresh negatives from the lagged student and fresh
    scores; returns the last adapter (or model) folder."""
    checkpoints: list[str | None] = [None]  # checkpoint p: the student at the start of period p
    last_train, disc_weights, unfitted = None, None, []
    for period in range(schedule.periods):
        steps = schedule.steps(period)
        rows = [examples[i] for i in schedule.rows(period)]
        period_examples = list({e["id"]: e for e in rows}.values())
        inputs = [*upstream, *filter(None, [last_train])]
        source = schedule.source(period)
        if uses_negatives(objective):
            negatives = negatives_stage(run, recipe, f"{objective}-p{period}-negatives", model_path,
                                        checkpoints[source], schedule, period, period_examples, inputs)  # fmt: skip
            period_examples = data.with_negatives(
                period_examples, read_jsonl(negatives.dir / "negatives.jsonl")
            )
            inputs.append(negatives)
            unfitted.append(negatives)
        if objective == "qcrd":
            refit = schedule.refits_discriminator(period, recipe.qcrd.disc_every)
            disc = discriminator_stage(run, recipe, period, model_path, period_examples, examples,
                                       unfitted if refit else None, disc_weights, inputs)  # fmt: skip
            if refit:
                disc_weights, unfitted = disc, []
            period_examples = read_jsonl(disc.dir / "examples.jsonl")
            inputs.append(disc)
        by_id = {e["id"]: e for e in period_examples}
        config = {"objective": objective, "seed": recipe.seed, "schedule": schedule_key(schedule, period),
                  "qcrd": recipe.qcrd.stage_key()}  # fmt: skip
        previous = checkpoints[-1]
        optimizer = Path(last_train.dir) / OPTIMIZER_STATE if last_train is not None else None
        last_train, adapter = train_stage(
            run, f"{objective}-p{period}-train", "nega.distill.qcrd.trainer:train_period", model_path=model_path,
            examples=[by_id[e["id"]] for e in rows], config=config, inputs=inputs, objective=objective,
            period=period, steps=len(steps), first_step=steps.start, total_steps=schedule.total_steps,
            source_step=schedule.checkpoint_step(source) if uses_negatives(objective) else None,
            adapter=previous, optimizer_state=str(optimizer) if optimizer and optimizer.exists() else None,
        )  # fmt: skip
        checkpoints.append(adapter)
    return checkpoints[-1]


def schedule_key(schedule: PeriodSchedule, period: int) -> dict:
    """What fixes a period's rows and steps, for the hashes of its stages."""
    steps = schedule.steps(period)
    return {"period": period, "steps": [steps.start, steps.stop], "total_steps": schedule.total_steps,
            "per_step": schedule.per_step, "steps_per_epoch": schedule.steps_per_epoch}  # fmt: skip


def negatives_stage(
    run: Run, recipe, name: str, model_path: str, checkpoint: str | None, schedule: PeriodSchedule,
    period: int, examples: list[dict], inputs: list,
):  # fmt: skip
    """One self-adversarial rationale per input of `period` at `negative_temperature` from the lagged
    student `checkpoint` (None = the starting student); the manifest records which and its step."""
    source = schedule.source(period)
    config = {
        "temperature": recipe.qcrd.negative_temperature,
        "sampling": recipe.sampling.stage_key(),
        "seed": recipe.seed,
        "schedule": schedule_key(schedule, period),
        "source_checkpoint": source,
    }
    from nega.sampling.engine import run_engines
    from nega.sampling.stage import SampleRequest, sample_stage

    # With LoRA the lagged student is an adapter on the run's engine for the base model. A full
    # fine-tune's checkpoint is a model folder of its own, sampled for this period only: its engine
    # closes with the stage, so the run does not hold one engine per period.
    target, adapter = sampling_target(model_path, checkpoint, recipe.lora)
    lagged = f"period {period}, the student of step {schedule.checkpoint_step(source)}"
    request = SampleRequest(
        data.self_negative_prompts(examples), n=1, temperature=recipe.qcrd.negative_temperature,
        top_p=recipe.sampling.top_p, max_tokens=recipe.sampling.max_tokens, seed=recipe.seed * 1000 + period,
        adapter=adapter, description=f"self-adversarial negatives ({lagged})",
    )  # fmt: skip
    counts = {"period": period, "source_checkpoint": source, "source_step": schedule.checkpoint_step(source)}
    stage = sample_stage(
        run, name, target, request, config=config, inputs=[*inputs, checkpoint or "starting student"],
        row=lambda i, completions: data.self_negative_row(examples[i], completions), file="negatives.jsonl",
        counts=lambda rows: {"negatives": sum(len(r["texts"]) for r in rows), **counts},
        manifest={"source": checkpoint or "start"},
    )  # fmt: skip
    if checkpoint is not None and adapter is None:
        run_engines(run).release(target)
    return stage


def discriminator_stage(
    run: Run, recipe, period: int, model_path: str, examples: list[dict], all_examples: list[dict],
    fresh: list | None, previous, inputs: list,
):  # fmt: skip
    """Score the rationales of `period`'s inputs (`examples`), each with the discriminator of the other
    folds (cross-fitting): examples.jsonl gains pos_scores / neg_scores. With `fresh` (the negatives
    stages since the last fit) the discriminators are first pre-trained (period 0) or re-trained on every
    input's S_pos vs S_neg (`all_examples`) plus those self-adversarial negatives, and saved here;
    without, they are the ones `previous` saved."""
    from nega.distill.qcrd.discriminator import Discriminator, cross_fitted_scores
    from nega.models import load_tokenizer

    cfg = recipe.qcrd
    trains = fresh is not None
    config = {
        "period": period,
        "trains": trains,
        "weights": "safetensors",  # was a torch pickle: discriminator stages of older runs rerun
        "balance": "class weights, corrupted positives negative",
        **cfg.model_dump(include={f for f in type(cfg).model_fields if f.startswith("disc_")}),
    }
    stage = run.stage(f"qcrd-p{period}-discriminator", config=config,
                      inputs=[*inputs, *(fresh or []), *filter(None, [previous])])  # fmt: skip
    if stage.done:
        return stage
    fit_examples = None
    if trains:
        sampled = data.merge_sampled([read_jsonl(s.dir / "negatives.jsonl") for s in fresh])
        fit_examples = data.with_negatives(all_examples, sampled)
    tokenizer = load_tokenizer(model_path, recipe.model)
    discriminators = []
    for k in range(cfg.disc_folds):
        disc = Discriminator.build(cfg.disc_backbone, tokenizer, model_path=model_path, model_cfg=recipe.model,
                                   lora_cfg=recipe.lora, lr=cfg.disc_lr, seed=recipe.seed + k)  # fmt: skip
        if previous is not None:
            disc.load(Path(previous.dir) / f"discriminator-fold{k}.safetensors")
        discriminators.append(disc)
    scored, fits = cross_fitted_scores(discriminators, examples, train=trains, fit_examples=fit_examples,
                                       steps=cfg.disc_steps, batch_size=cfg.disc_batch_size,
                                       seed=recipe.seed + period, fold_seed=recipe.seed,
                                       augment_rate=cfg.disc_augment_rate,
                                       description=f"discriminator (period {period})")  # fmt: skip
    if trains:
        for k, disc in enumerate(discriminators):
            disc.save(stage.dir / f"discriminator-fold{k}.safetensors")
    write_jsonl(stage.dir / "examples.jsonl", scored)
    return stage.finish(counts={"examples": len(examples), "trained": int(trains)}, fit=fits)


def student_set(
    recipe, *, split: str = "test", name: str = "eval", records: list[dict] | None = None
) -> PromptSet | None:
    """accuracy of greedy `predict:` answers on `qcrd.eval_limit` questions of `split` (or on every one
    of `records`, teacher-rationale records from elsewhere, e.g. a validation set); on a toy world also
    the oracle's rationale_quality (and rationale_accuracy: the stated answer is right) of greedy
    `explain:` rationales. None when the data has no such split: a rationale file other than a distilling
    step-by-step one is all training data."""
    toy_data = recipe.toy is not None and recipe.data.dataset == "toy"
    if records is None:
        step_by_step = recipe.data.path is not None and data.step_by_step_name(recipe.data.path) is not None
        if not (toy_data or step_by_step or (split != recipe.data.split and has_split(recipe.data, split))):
            return None
        # data.limit counts training rows; the test split's size is qcrd.eval_limit.
        data_cfg = recipe.data if toy_data else recipe.data.model_copy(update={"limit": None})
        records, _ = data.load_teacher_records(data_cfg, toy_cfg=recipe.toy, seed=recipe.seed, split=split)
        records = records[: recipe.qcrd.eval_limit]
    questions, labels = [r["question"] for r in records], [r["label"] for r in records]
    world = None
    if toy_data:
        from nega.toy import make_world

        world = make_world(recipe.toy.world, seed=recipe.seed, **recipe.toy.options)
    prompts = [data.predict_prompt(q) for q in questions]
    if world is not None:
        prompts += [data.explain_prompt(q) for q in questions]

    def score(texts: list[str]) -> dict[str, float]:
        if world is not None:
            metrics = world.score(prompts, texts, label=labels * 2)
            return {k: metrics[k] for k in ("accuracy", "rationale_quality", "rationale_accuracy")}
        return {"accuracy": sum(map(label_matches, texts, labels)) / len(labels)}

    columns = [{"label": label} for label in labels] * (len(prompts) // len(labels))
    return PromptSet(
        name, prompts, score, columns=columns, config={"split": split, "questions": len(records)}
    )
