"""A reward model: a causal LM with a one-output sequence-classification head (and a LoRA adapter),
scoring (prompt, answer) pairs; its calibration into a harm probability; a trained folder reopened.

The reward r(x, y) is the head's output at the answer's last token (transformers'
`*ForSequenceClassification` reads the last token that is not padding). Higher is preferred: in
nega's harm recipes, more harmless.

**Harm score.** `rm:<folder>` reports a probability-like harm score in [0, 1], 1 = harmful:

    harm(x, y) = σ(w · r(x, y) + b)

w and b are fitted after training by Platt scaling (logistic regression of "this answer is the pair's
rejected one" on its reward, with Platt's smoothed targets) over the calibration pairs, a share
`rm.calibration_fraction` of the training data held out of training. So harm ≥ 0.5 where the reward falls
on the rejected side of the threshold −b/w, and the scale says how sure the held-out pairs make it. A
model trained without calibration pairs (calibration_fraction 0) uses w = −1, b = 0: harm = σ(−r), the
Bradley–Terry probability that an answer of reward 0 is preferred to this one. The raw reward is
kept beside the score (`rm_reward` in the evaluation's samples.jsonl).

A trained folder (`adapter/` with the head inside it, or `model/` without LoRA) holds `REWARD_FILE`,
`reward_model.json`: `max_length`, `calibration` {weight, bias, pairs, accuracy}. Only this module's
functions import torch, transformers and peft.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

REWARD_FILE = "reward_model.json"


@contextmanager
def _quiet_loading():
    """transformers reports the new head as missing weights, at length (that is the point here), and
    draws a bar per load."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def reward_lora_config(lora_cfg):
    """peft's LoRA for sequence classification: the head (`score`) trains whole and is saved with the
    adapter (peft's `modules_to_save` for this task type)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        task_type=TaskType.SEQ_CLS,
    )


def _load_classifier(model_path: str | Path, model_cfg=None, dtype: str | None = None):
    from transformers import AutoModelForSequenceClassification

    from nega.models import torch_dtype

    with _quiet_loading():
        return AutoModelForSequenceClassification.from_pretrained(
            str(model_path),
            num_labels=1,
            dtype=torch_dtype(dtype or (model_cfg.dtype if model_cfg else "auto")),
            trust_remote_code=bool(model_cfg and model_cfg.trust_remote_code),
            revision=getattr(model_cfg, "revision", None),
            use_safetensors=True,
        )


def build_reward_model(model_path: str | Path, model_cfg, lora_cfg, *, seed: int):
    """(model, tokenizer) ready to train: the causal LM's body, a fresh one-output head (initialised
    from `seed`) and, with `lora.enabled`, a fresh LoRA adapter; the base weights frozen."""
    import torch
    from peft import get_peft_model

    from nega.models import load_tokenizer

    tokenizer = load_tokenizer(model_path, model_cfg)
    torch.manual_seed(seed)
    model = _load_classifier(model_path, model_cfg)
    model.config.pad_token_id = tokenizer.pad_token_id
    if lora_cfg.enabled:
        torch.manual_seed(seed)
        model = get_peft_model(model, reward_lora_config(lora_cfg))
    return model, tokenizer


def answer_rewards(
    model, tokenizer, prompts: list[str], answers: list[str], *, max_length: int, batch_size: int = 16
) -> list[float]:
    """r(x, y) of each (rendered prompt, answer), in order, without gradients."""
    import torch

    from nega.rewards.rm.data import encode_answer, pad_sequences

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[float] = []
    try:
        for start in range(0, len(answers), batch_size):
            sequences = [
                encode_answer(tokenizer, p, a, max_length)
                for p, a in zip(
                    prompts[start : start + batch_size], answers[start : start + batch_size], strict=True
                )
            ]
            ids, mask = pad_sequences(sequences, tokenizer.pad_token_id)
            with torch.no_grad():
                logits = model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
                ).logits
            out += logits[:, 0].float().tolist()
    finally:
        model.train(was_training)
    return out


def pair_rewards(model, tokenizer, pairs: list[dict], *, max_length: int, batch_size: int = 16):
    """([r_chosen], [r_rejected]) of pairs {"prompt" (rendered), "chosen", "rejected"}."""
    prompts = [p["prompt"] for p in pairs]
    kwargs = {"max_length": max_length, "batch_size": batch_size}
    chosen = answer_rewards(model, tokenizer, prompts, [p["chosen"] for p in pairs], **kwargs)
    rejected = answer_rewards(model, tokenizer, prompts, [p["rejected"] for p in pairs], **kwargs)
    return chosen, rejected


def fit_calibration(chosen: list[float], rejected: list[float], *, ridge: float = 1e-3) -> dict:
    """Platt scaling of rewards into P(harmful): {"weight", "bias", "pairs", "accuracy"} (module docstring).

    Logistic regression of y = 1 for each rejected answer, 0 for each chosen one, on its reward, with
    Platt's targets (N₁+1)/(N₁+2) and 1/(N₀+2) so that separable data keeps a finite weight, by
    Newton's method; `ridge` on the weight keeps equal rewards (an untrained head) solvable. No pairs:
    the default weight −1, bias 0.
    """
    n = len(chosen)
    if n == 0:
        return {"weight": -1.0, "bias": 0.0, "pairs": 0, "accuracy": None}
    xs = list(rejected) + list(chosen)
    ys = [(n + 1) / (n + 2)] * n + [1 / (n + 2)] * n
    w, b = 0.0, 0.0
    for _ in range(100):
        gw = gb = hww = hwb = hbb = 0.0
        for x, y in zip(xs, ys, strict=True):
            p = _sigmoid(w * x + b)
            gw += (p - y) * x
            gb += p - y
            s = p * (1 - p)
            hww, hwb, hbb = hww + s * x * x, hwb + s * x, hbb + s
        gw += ridge * w
        hww += ridge
        det = hww * hbb - hwb * hwb
        if det <= 0:
            break
        dw, db = (hbb * gw - hwb * gb) / det, (hww * gb - hwb * gw) / det
        w, b = w - dw, b - db
        if abs(dw) + abs(db) < 1e-10:
            break
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / n
    return {"weight": w, "bias": b, "pairs": n, "accuracy": accuracy}


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def harm_probability(reward: float, calibration: dict) -> float:
    """σ(w · r + b): the calibrated harm score of one reward."""
    return _sigmoid(calibration["weight"] * reward + calibration["bias"])


def write_reward_file(folder: Path, *, max_length: int, calibration: dict) -> Path:
    path = Path(folder) / REWARD_FILE
    info = {"max_length": max_length, "calibration": calibration}
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return path


class RewardModel:
    """A reward model nega trained, reopened from its folder (the `adapter/` or `model/` a `method: rm`
    run trained, or the run's folder): `rewards` and `harm_scores` of (prompt, answer) pairs.

    Opening reads only JSON, so a wrong folder fails at once; the weights load on first use."""

    def __init__(self, path: str | Path, *, device: str | None = None):
        from nega.eval.target import TargetError, resolve_target

        folder = Path(path).expanduser()
        hint = "give the folder a `method: rm` run trained (its rm-train stage's adapter/ or model/) or that run's folder"
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder; {hint}")
        try:
            target = resolve_target(folder)
        except TargetError as exc:
            raise ValueError(f"{exc}; {hint}") from None
        self.folder = Path(target.adapter) if target.adapter else Path(target.base_model)
        info_path = self.folder / REWARD_FILE
        if not info_path.is_file():
            raise ValueError(
                f"{self.folder} has no {REWARD_FILE}, so it is not a reward model nega trained; train one "
                "with a `method: rm` recipe (e.g. nega run rm-toy) and give its folder"
            )
        try:
            self.info = json.loads(info_path.read_text(encoding="utf-8"))
            self.calibration = self.info["calibration"]
            self.max_length = int(self.info["max_length"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{info_path}: unreadable ({exc}); train the reward model again") from None
        self.base_model = target.base_model
        run_dir = folder.resolve().parent.parent
        if target.kind == "adapter" and (run_dir / "recipe.yaml").is_file():
            # An adapter inside a run names its base by the path it had at training (relative to where
            # nega ran then); the run itself knows where that base is now.
            self.base_model = resolve_target(run_dir).base_model
        self.adapter = target.adapter
        self.device = device
        self._model = self._tokenizer = None

    def load(self) -> None:
        from nega.models import default_device, load_tokenizer

        self.device = self.device or default_device()
        self._tokenizer = load_tokenizer(self.folder)
        model = _load_classifier(self.base_model)
        model.config.pad_token_id = self._tokenizer.pad_token_id
        if self.adapter is not None:
            from peft import PeftModel

            with _quiet_loading():
                model = PeftModel.from_pretrained(model, str(self.adapter))
        self._model = model.to(self.device).eval()

    def rewards(
        self, prompts: list, answers: list[str], *, batch_size: int = 16, max_length: int | None = None
    ):
        """r(x, y) per pair; a prompt is chat messages (rendered through the chat template) or text."""
        from nega.sampling.base import render_prompt

        if self._model is None:
            self.load()
        rendered = [render_prompt(self._tokenizer, p) for p in prompts]
        return answer_rewards(
            self._model, self._tokenizer, rendered, list(answers),
            max_length=max_length or self.max_length, batch_size=batch_size,
        )  # fmt: skip

    def harm_scores(self, rewards: list[float]) -> list[float]:
        return [harm_probability(r, self.calibration) for r in rewards]

    def close(self) -> None:
        from nega.models import free_device_memory

        self._model = self._tokenizer = None
        free_device_memory(self.device)
