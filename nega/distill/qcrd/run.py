"""QCRD: quality-guided contrastive rationale distillation (Wang et al., arXiv 2405.13014).

Stages, top to bottom (docs/methods.md#qcrd):

    toy-model        the starting student (toy recipes only; else the hub id / folder)
    teacher          teacher rationales (sampled 5× at T=0.7, or read from data) -> S_pos / S_neg
    per objective, per epoch e:
      e<k>-negatives       1 rationale per input at T=1.5 from the student `qcrd.lag` epochs back
                           (the lag queue; epoch 0 = the starting student), added to S_neg
      e<k>-discriminator   (qcrd only) pre-train D on S_pos vs S_neg at e=0, re-train every
                           `disc_every` epochs, and score every rationale of the epoch with
                           the D of the other folds (cross-fitted: `disc_folds` discriminators)
      e<k>-train           one epoch of the loss below, α3 = α3·0.9^e
    eval             label accuracy (`predict:` greedy) and, on toy worlds, rationale quality
                     (`explain:` greedy, the world's oracle) for the start and every objective

Loss (mean token CE of the response; r* the easiest positive, r⁻ the hardest negative)::

    L = α1·CE(label | predict: x) + α2·D(x, r*)·min_{r∈S_pos} CE(r | explain: x)
        + α3·(1 − D(x, r⁻))·max(0, δ − CE(r⁻ | explain: x))

Baselines on the same data and optimizer steps (`qcrd.baselines`): label_only, step_by_step
(α·label + (1−α)·mean positive CE), qcrd_no_disc (D ≡ 1 on positives, ≡ 0 on negatives).

Deviations from the paper:
- The student is a causal LM with LoRA; `predict: ` / `explain: ` prefix the user turn of its chat
  template (the paper trains T5 encoder-decoders with input prefixes).
- S_neg of epoch e = the teacher's inconsistent rationales + that epoch's self-adversarial sample;
  samples of earlier epochs are not kept (the paper does not say).
- Each epoch is a separate Trainer started from the previous adapter (sampling and training never share
  a process): the LR schedule spans all epochs, the optimizer moments restart every epoch.
  `train.max_steps` caps the steps of each epoch. With `lora.enabled: false` (the toy recipe) each
  epoch's checkpoint is a full model folder, sampled and evaluated as a model of its own.
- The discriminator is the student's own base model with LoRA and a pooled head, or a tiny encoder
  trained from scratch; re-training continues from the last weights for `disc_steps` steps.
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

from nega.distill.qcrd import data
from nega.distill.qcrd.trainer import LagQueue, sampling_target, uses_negatives
from nega.eval.stage import START_LABEL, EvalTarget, PromptSet, evaluate, trained_target
from nega.pipeline import Run, read_jsonl, write_jsonl
from nega.stages import base_model, write_report
from nega.training import train_stage

# The fields each stage depends on: changing another field (e.g. eval_limit) reuses the stage.
TEACHER_FIELDS = {
    "teacher",
    "teacher_prompt",
    "answer_pattern",
    "teacher_samples",
    "teacher_temperature",
    "consistency",
}
LOSS_FIELDS = {"alpha1", "alpha2", "alpha3", "alpha3_decay", "delta", "step_by_step_alpha"}


def run(recipe, run: Run) -> dict[str, dict[str, float]]:
    epochs = whole_epochs(recipe.train.epochs)
    model_path, model_stage = base_model(run)
    upstream = [model_stage] if model_stage is not None else []
    teacher = teacher_stage(run, recipe, upstream)
    examples = read_jsonl(teacher.dir / "examples.jsonl")
    targets = [EvalTarget(START_LABEL, model_path)] if recipe.eval.before else []
    for objective in dict.fromkeys([recipe.qcrd.objective, *recipe.qcrd.baselines]):
        student = train_student(run, recipe, objective, model_path, examples, epochs, [*upstream, teacher])
        targets.append(trained_target(objective, model_path, student, recipe.lora))
        if objective == recipe.qcrd.objective:
            run.record_result(objective, model_path, student)
    held_out = student_set(recipe)
    if held_out is None:
        warnings.warn(
            f"{recipe.data.path} has no test split (a distilling step-by-step file or the toy world has one): "
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
            f"train.epochs must be a whole number for qcrd (negatives are drawn per epoch), got {epochs}"
        )
    return int(epochs)


def teacher_stage(run: Run, recipe, upstream: list):
    """Teacher rationales (records.jsonl) and their self-consistency split into S_pos / S_neg (examples.jsonl)."""
    cfg = recipe.qcrd
    config = {"data": recipe.data.model_dump(), "seed": recipe.seed, "toy": recipe.toy and recipe.toy.model_dump(),
              "qcrd": cfg.model_dump(include=TEACHER_FIELDS), "sampling": cfg.teacher and recipe.sampling.model_dump()}  # fmt: skip
    stage = run.stage("teacher", config=config, inputs=[*upstream, *filter(None, [recipe.data.path])])
    if stage.done:
        return stage
    answer_of = data.answer_by_pattern(cfg.answer_pattern)
    records, _ = data.load_teacher_records(
        recipe.data, toy_cfg=recipe.toy, seed=recipe.seed, answer_of=answer_of
    )
    if cfg.teacher is not None:
        from nega.sampling import make_sampler

        sampler = make_sampler(cfg.teacher, recipe.sampling, adapters=False)
        try:
            records = data.sample_teacher_rationales(
                sampler, records, answer_of=answer_of, n=cfg.teacher_samples, temperature=cfg.teacher_temperature,
                top_p=recipe.sampling.top_p, max_tokens=recipe.sampling.max_tokens, seed=recipe.seed,
                template=cfg.teacher_prompt,
            )  # fmt: skip
        finally:
            sampler.close()
    examples = [data.split_by_consistency(r, cfg.consistency) for r in records]
    write_jsonl(stage.dir / "records.jsonl", records)
    write_jsonl(stage.dir / "examples.jsonl", examples)
    positives, negatives = (sum(len(e[k]) for e in examples) for k in ("positives", "negatives"))
    return stage.finish(counts={"inputs": len(examples), "positives": positives, "negatives": negatives})


def train_student(
    run: Run, recipe, objective: str, model_path: str, examples: list[dict], epochs: int, upstream: list
):
    """`epochs` epochs of `objective`, each with fresh negatives and scores; returns the last adapter folder."""
    queue = LagQueue(recipe.qcrd.lag)
    queue.push(0, None)  # index 0 = the starting student
    adapter, last_train, disc = None, None, None
    for epoch in range(epochs):
        inputs = [*upstream, *filter(None, [last_train])]
        epoch_examples = examples
        if uses_negatives(objective):
            _, source = queue.for_epoch(epoch)
            negatives = negatives_stage(
                run, recipe, f"{objective}-e{epoch}-negatives", model_path, source, examples, epoch, inputs
            )
            epoch_examples = data.with_negatives(examples, read_jsonl(negatives.dir / "negatives.jsonl"))
            inputs.append(negatives)
        if objective == "qcrd":
            disc = discriminator_stage(run, recipe, epoch, model_path, epoch_examples, disc, inputs)
            epoch_examples = read_jsonl(disc.dir / "examples.jsonl")
            inputs.append(disc)
        config = {"objective": objective, "epoch": epoch, "epochs": epochs,
                  "qcrd": recipe.qcrd.model_dump(include=LOSS_FIELDS)}  # fmt: skip
        last_train, adapter = train_stage(
            run, f"{objective}-e{epoch}-train", "nega.distill.qcrd.trainer:train_epoch", model_path=model_path,
            examples=epoch_examples, config=config, inputs=inputs, counts={"epoch": epoch},
            objective=objective, epoch=epoch, epochs=epochs, adapter=adapter,
        )  # fmt: skip
        queue.push(epoch + 1, adapter)
    return adapter


def negatives_stage(
    run: Run, recipe, name: str, model_path: str, source, examples: list[dict], epoch: int, inputs: list
):
    """One self-adversarial rationale per input at `negative_temperature` from the lagged student `source`."""
    config = {
        "temperature": recipe.qcrd.negative_temperature,
        "sampling": recipe.sampling.model_dump(),
        "epoch": epoch,
    }
    stage = run.stage(name, config=config, inputs=[*inputs, source or "starting student"])
    if stage.done:
        return stage
    from nega.sampling import make_sampler

    target, adapter = sampling_target(model_path, source, recipe.lora)
    sampler = make_sampler(target, recipe.sampling, max_lora_rank=recipe.lora.r, adapters=adapter is not None)
    try:
        rows = data.sample_self_negatives(
            sampler, examples, adapter=adapter, temperature=recipe.qcrd.negative_temperature,
            top_p=recipe.sampling.top_p, max_tokens=recipe.sampling.max_tokens, seed=recipe.seed * 1000 + epoch,
            description=f"self-adversarial negatives (epoch {epoch})",
        )  # fmt: skip
    finally:
        sampler.close()
    write_jsonl(stage.dir / "negatives.jsonl", rows)
    return stage.finish(counts={"negatives": sum(len(r["texts"]) for r in rows)}, source=source or "start")


def discriminator_stage(
    run: Run, recipe, epoch: int, model_path: str, examples: list[dict], previous, inputs: list
):
    """Pre-train the discriminators (epoch 0) or re-train them (every `disc_every` epochs) on this
    epoch's S_pos vs S_neg, one per fold, then score every rationale with the discriminator that did
    not train on its input (cross-fitting): examples.jsonl gains pos_scores / neg_scores."""
    from nega.distill.qcrd.discriminator import Discriminator, cross_fitted_scores
    from nega.models import load_tokenizer

    cfg = recipe.qcrd
    due = epoch % cfg.disc_every == 0
    config = {
        "epoch": epoch,
        "trains": due,
        "weights": "safetensors",  # was a torch pickle: discriminator stages of older runs rerun
        **cfg.model_dump(include={f for f in type(cfg).model_fields if f.startswith("disc_")}),
    }
    stage = run.stage(f"qcrd-e{epoch}-discriminator", config=config, inputs=inputs)
    if stage.done:
        return stage
    tokenizer = load_tokenizer(model_path, recipe.model)
    discriminators = []
    for k in range(cfg.disc_folds):
        disc = Discriminator.build(cfg.disc_backbone, tokenizer, model_path=model_path, model_cfg=recipe.model,
                                   lora_cfg=recipe.lora, lr=cfg.disc_lr, seed=recipe.seed + k)  # fmt: skip
        if previous is not None:
            disc.load(Path(previous.dir) / f"discriminator-fold{k}.safetensors")
        discriminators.append(disc)
    scored, fits = cross_fitted_scores(discriminators, examples, train=due, steps=cfg.disc_steps,
                                       batch_size=cfg.disc_batch_size, seed=recipe.seed + epoch,
                                       fold_seed=recipe.seed, augment_rate=cfg.disc_augment_rate,
                                       description=f"discriminator (epoch {epoch})")  # fmt: skip
    for k, disc in enumerate(discriminators):
        disc.save(stage.dir / f"discriminator-fold{k}.safetensors")
    write_jsonl(stage.dir / "examples.jsonl", scored)
    return stage.finish(counts={"examples": len(examples)}, fit=fits)


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
        if not toy_data and (recipe.data.path is None or data.step_by_step_name(recipe.data.path) is None):
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
        return {"accuracy": sum(map(data.answers_match, texts, labels)) / len(labels)}

    columns = [{"label": label} for label in labels] * (len(prompts) // len(labels))
    return PromptSet(
        name, prompts, score, columns=columns, config={"split": split, "questions": len(records)}
    )
