"""A Bradley–Terry reward model (Bradley & Terry, 1952; the reward model of Ouyang et al., 2022,
arXiv 2203.02155, §3.5), trained by nega to judge harm: `eval.harm.scorer: rm:<folder>`.

Each pair is a prompt x with a preferred answer y_c and a dispreferred one y_r (for hh-rlhf
harmless-base: the less harmful and the more harmful last Assistant turn). The model is the causal
LM's body with a one-output head read at the answer's last token, r(x, y); the loss
(`loss.bradley_terry_loss`) is

    L = −log σ( r(x, y_c) − r(x, y_r) )

Stages, top to bottom:

    toy-model     (model.name: toy) the toy world's starting SFT model
    rm-train      LoRA on the body and the whole head, on the training pairs; then the harm calibration
                  (Platt scaling, `model.fit_calibration`) on the held-out calibration pairs, written
                  into the trained folder beside the adapter
    eval-pairs    pairwise accuracy on the test pairs: the share with r(x, y_c) > r(x, y_r), with its
                  95% Wilson interval; with eval.before, also the untrained head and adapter training starts from

Decisions of nega's, where the papers leave a choice:

- LoRA on the body (lora section), the head trained whole; the head starts from transformers' random
  initialisation, seeded by the recipe's seed.
- The reward is read at the answer's last token, with no end-of-turn token appended; over-long pairs
  keep the answer and the end of the prompt (`data.encode_answer`).
- One pass over each batch scores its chosen and rejected answers together (2B sequences).
- The harm score is σ(w·r + b) with w, b fitted on held-out pairs (`nega.rewards.rm.model`), not a
  fixed transform of r: rewards have no fixed scale or offset under the BT loss.
- Test pairs: `rm.test_path`, `rm.hold_out` rows of the data file, or the dataset's `rm.test_split`;
  `rm.test_limit` caps them.
"""

from __future__ import annotations

from nega.pipeline import Run, hash_value, write_json, write_jsonl
from nega.stages import base_model, write_report
from nega.training import train_stage

START_LABEL = "start"
LABEL = "rm"


def run(recipe, run: Run) -> dict[str, dict[str, float]]:
    from nega.models import load_tokenizer
    from nega.results import update_results
    from nega.rewards.rm.data import load_pairs
    from nega.sampling.base import render_prompt

    pairs = load_pairs(recipe)  # first: a data problem stops the run before any model is built
    model_path, model_stage = base_model(run)
    tokenizer = load_tokenizer(model_path, recipe.model)

    def rendered(rows: list[dict], role: str) -> list[dict]:
        return [{**r, "prompt": render_prompt(tokenizer, r["prompt"]), "role": role} for r in rows]

    examples = rendered(pairs["train"], "train") + rendered(pairs["calibration"], "calibration")
    stage, folder = train_stage(
        run, f"{LABEL}-train", "nega.rewards.rm.trainer:train_reward_model", model_path=model_path,
        examples=examples, inputs=[model_stage or model_path],
        config={"model": recipe.model.model_dump(), "rm": recipe.rm.stage_key(), "seed": recipe.seed,
                "examples": hash_value(examples)},
        counts={"calibration_pairs": len(pairs["calibration"])},
    )  # fmt: skip
    run.record_result(LABEL, model_path, folder)

    table = pairwise_accuracy_stage(run, model_path, folder, rendered(pairs["test"], "test"), [stage])
    update_results(run.dir, rm={"source": pairs["source"], "test_source": pairs["test_source"],
                                "counts": pairs["counts"]})  # fmt: skip
    counts = pairs["counts"]
    title = f"{recipe.name} (rm; {counts['train']} training pairs, {counts['test']} test pairs)"
    write_report(run, table, title=title)
    return table


def pairwise_accuracy_stage(run: Run, model_path: str, folder: str, test: list[dict], inputs) -> dict:
    """Stage `eval-pairs`: every label's rewards of the test pairs (`<label>.jsonl`) and its metrics
    (`metrics.json`, returned as the run's table)."""
    from nega.pipeline import read_json

    recipe = run.recipe
    config = {"pairs": hash_value(test), "before": recipe.eval.before, "max_length": recipe.model.max_length}
    stage = run.stage("eval-pairs", config=config, inputs=inputs)
    if stage.done:
        return read_json(stage.final / "metrics.json")
    table = {}
    if recipe.eval.before:
        chosen, rejected = start_rewards(recipe, model_path, test)
        table[START_LABEL] = score_pairs(stage.dir / f"{START_LABEL}.jsonl", chosen, rejected, None)
    from nega.rewards.rm.model import RewardModel

    trained = RewardModel(folder)
    prompts = [p["prompt"] for p in test]
    size = {"batch_size": recipe.rm.score_batch_size}
    try:
        chosen = trained.rewards(prompts, [p["chosen"] for p in test], **size)
        rejected = trained.rewards(prompts, [p["rejected"] for p in test], **size)
    finally:
        trained.close()
    table[LABEL] = score_pairs(stage.dir / f"{LABEL}.jsonl", chosen, rejected, trained)
    write_json(stage.dir / "metrics.json", table)
    stage.finish(counts={"pairs": len(test), **{f"{k}_accuracy": v["accuracy"] for k, v in table.items()}})
    return table


def start_rewards(recipe, model_path: str, test: list[dict]) -> tuple[list[float], list[float]]:
    """The rewards of the untrained model: the head and adapter as training starts from them."""
    from nega.models import free_device_memory
    from nega.rewards.rm.model import build_reward_model, pair_rewards

    model, tokenizer = build_reward_model(model_path, recipe.model, recipe.lora, seed=recipe.seed)
    try:
        return pair_rewards(
            model, tokenizer, test, max_length=recipe.model.max_length, batch_size=recipe.rm.score_batch_size
        )
    finally:
        del model
        free_device_memory(None)


def score_pairs(path, chosen: list[float], rejected: list[float], reward_model) -> dict[str, float]:
    """Write one row per pair; return accuracy [95% Wilson interval], n, the mean margin and, for a
    calibrated model, the mean harm score of the chosen and of the rejected answers."""
    from nega.eval.report import rate

    rows = []
    for i, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
        row = {"index": i, "chosen_reward": c, "rejected_reward": r, "correct": c > r}
        if reward_model is not None:
            row["chosen_harm"], row["rejected_harm"] = reward_model.harm_scores([c, r])
        rows.append(row)
    write_jsonl(path, rows)
    accuracy = rate([row["correct"] for row in rows])
    metrics = {
        "accuracy": accuracy["rate"],
        "accuracy_ci_low": accuracy["ci95"][0],
        "accuracy_ci_high": accuracy["ci95"][1],
        "n": float(len(rows)),
        "margin": sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(rows),
    }
    if reward_model is not None:
        metrics["harm_score_chosen"] = sum(row["chosen_harm"] for row in rows) / len(rows)
        metrics["harm_score_rejected"] = sum(row["rejected_harm"] for row in rows) / len(rows)
    return metrics
