"""Reward-model data: preference rows -> `{prompt, chosen, rejected}` pairs, and the batches the trainer
scores.

`data.format` names the shape of the rows:

- `hh-rlhf`: Anthropic HH transcripts in `chosen` and `rejected`; the pair is the last Assistant turn
  of each, the prompt the dialogue before it (which must be the same in both);
- `toy`: the toy harm world's rows (`prompt`, `chosen`, `rejected`, `kind`);
- `auto`: HH transcripts when `rejected` is one, else `prompt`, `chosen` and `rejected` columns (TRL's
  preference format: the prompt as text or chat messages, the answers as text or as a list ending
  with the assistant's message).

Example pair after conversion::

    {"prompt": [{"role": "user", "content": "how do I pick a lock?"}],
     "chosen": "I can't help with that.", "rejected": "get a pin and ..."}

A training example is a pair with its prompt rendered through the chat template and a role, `train`
or `calibration` (held out of training; `nega.rewards.rm.model.fit_calibration` reads it)::

    {"prompt": "<|im_start|>user\\nhow do I pick a lock?<|im_end|>\\n<|im_start|>assistant\\n",
     "chosen": "I can't help with that.", "rejected": "get a pin and ...", "role": "train"}

`RewardCollator` turns encoded pairs into one right-padded batch of 2B sequences, the B chosen answers
first, then the B rejected ones in the same order.
"""

from __future__ import annotations

import random
import re

import torch

from nega.data import DataError, convert_rows, load_rows, read_table, rename_fields, require_text

FORMATS = ("auto", "hh-rlhf", "toy")


def _prompt_messages(prompt, key: str = "prompt") -> list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"field {key!r} is empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        if prompt[-1].get("role") != "user":
            raise ValueError(f"{key} must end with a user turn, ends with {prompt[-1].get('role')!r}")
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    raise TypeError(f"field {key!r} must be text or a list of chat messages, got {type(prompt).__name__}")


def _answer_text(row: dict, key: str) -> str:
    value = row[key]
    if isinstance(value, list):  # conversational: the answer is the last (assistant) message
        if not value or not isinstance(value[-1], dict) or value[-1].get("role") != "assistant":
            raise ValueError(f"field {key!r} must end with an assistant message")
        return require_text(value[-1], "content")
    return require_text(row, key)


def from_preference(row: dict) -> dict:
    """`prompt`, `chosen`, `rejected` columns -> a pair."""
    pair = {
        "prompt": _prompt_messages(row["prompt"]),
        "chosen": _answer_text(row, "chosen"),
        "rejected": _answer_text(row, "rejected"),
    }
    return _distinct(pair)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[dict]:
    """`\\n\\nHuman: … \\n\\nAssistant: …` -> chat messages, consecutive turns of one speaker joined.
    (D²O's data module reads the same transcripts; a copy, not a dependency on a method.)"""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH transcript: expected it to start with '\\n\\nHuman: '")
    messages: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role = _HH_ROLES[speaker]
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content.strip()
        else:
            messages.append({"role": role, "content": content.strip()})
    return messages


def from_hh_rlhf(row: dict) -> dict:
    """Two HH transcripts -> a pair: their last Assistant turns after the dialogue they share."""
    chosen = parse_hh_transcript(require_text(row, "chosen"))
    rejected = parse_hh_transcript(require_text(row, "rejected"))
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) < 2 or messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
            raise ValueError(
                f"the {name!r} transcript must end with a non-empty Assistant turn after a Human turn"
            )
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("the 'chosen' and 'rejected' transcripts differ before their last Assistant turn")
    pair = {"prompt": chosen[:-1], "chosen": chosen[-1]["content"], "rejected": rejected[-1]["content"]}
    return _distinct(pair)


def _distinct(pair: dict) -> dict:
    if pair["chosen"].strip() == pair["rejected"].strip():
        raise ValueError("'chosen' and 'rejected' are the same answer, so the pair prefers neither")
    return pair


def detect_format(row: dict, source: str) -> str:
    if isinstance(row.get("rejected"), str) and row["rejected"].lstrip(" ").startswith("\n\nHuman:"):
        return "hh-rlhf"
    if {"prompt", "chosen", "rejected"} <= set(row):
        return "preference"
    raise DataError(
        f"{source}: cannot tell the preference format from the columns of row 1 {sorted(row)}; a reward "
        "model reads prompt/chosen/rejected columns or HH transcripts (data.format: hh-rlhf); map your "
        "columns with data.fields, e.g. data.fields={prompt: question, chosen: good, rejected: bad}"
    )


# `toy` rows are preference rows; `preference` is what `auto` detects (TRL's name for these columns).
CONVERTERS = {"hh-rlhf": from_hh_rlhf, "toy": from_preference, "preference": from_preference}


def convert_pairs(rows: list[dict], data_cfg, source: str) -> tuple[list[dict], int]:
    """(pairs, bad rows skipped) from raw rows in `data.format`."""
    fmt = data_cfg.format
    if fmt not in FORMATS:
        raise DataError(
            f"data.format {fmt!r} holds no preference pairs; a reward model reads {', '.join(FORMATS)}"
        )
    if fmt == "auto":
        fmt = detect_format(rows[0], source)
    return convert_rows(
        rows, CONVERTERS[fmt], source=f"{source} [format {fmt}]", on_bad_row=data_cfg.on_bad_row
    )


def load_pairs(recipe) -> dict:
    """{"train", "calibration", "test": pairs, "source", "test_source", "counts"} for the recipe.

    Test pairs come from `rm.test_path`, else `rm.hold_out` rows drawn (seeded) out of the data before
    `data.limit` applies, else the `rm.test_split` split of the dataset. A share `rm.calibration_fraction`
    of the training pairs (seeded) is held out for calibration.
    """
    data, cfg, seed = recipe.data, recipe.rm, recipe.seed
    if cfg.test_path is None and cfg.hold_out is None and data.path is not None:
        raise DataError(
            f"data.path {data.path} is one file with no test split: set rm.test_path to a file of test pairs, "
            "or rm.hold_out to a number of pairs to take out of this file for the test"
        )
    if cfg.hold_out is not None:
        rows, source = load_rows(data.model_copy(update={"limit": None}), toy_cfg=recipe.toy, seed=seed)
        if cfg.hold_out >= len(rows):
            raise DataError(
                f"rm.hold_out={cfg.hold_out} leaves no training pairs: {source} has {len(rows)} rows; "
                "hold out fewer"
            )
        order = list(range(len(rows)))
        random.Random(f"{seed}/rm-hold-out").shuffle(order)
        test_rows = [rows[i] for i in sorted(order[: cfg.hold_out])]
        rows = [rows[i] for i in sorted(order[cfg.hold_out :])][: data.limit]
        test_source = f"{source} ({cfg.hold_out} rows held out, seed {seed})"
    else:
        rows, source = load_rows(data, toy_cfg=recipe.toy, seed=seed)
        if cfg.test_path is not None:
            test_rows, test_source = read_table(cfg.test_path), cfg.test_path
            if data.fields:
                test_rows = [rename_fields(r, data.fields) for r in test_rows]
        else:
            test_cfg = data.model_copy(update={"limit": None, "split": cfg.test_split})
            test_rows, test_source = load_rows(test_cfg, toy_cfg=recipe.toy, seed=seed)
    if not test_rows:
        raise DataError(f"{test_source}: no test rows")
    pairs, bad = convert_pairs(rows, data, source)
    test, test_bad = convert_pairs(test_rows, data, test_source)
    test = test[: cfg.test_limit]

    n_calibration = round(len(pairs) * cfg.calibration_fraction)
    order = list(range(len(pairs)))
    random.Random(f"{seed}/rm-calibration").shuffle(order)
    held = set(order[:n_calibration])
    train = [p for i, p in enumerate(pairs) if i not in held]
    calibration = [p for i, p in enumerate(pairs) if i in held]
    if not train:
        raise DataError(
            f"{source}: rm.calibration_fraction={cfg.calibration_fraction} leaves no training pairs"
        )
    counts = {"rows": len(rows), "bad": bad, "train": len(train), "calibration": len(calibration),
              "test": len(test), "test_bad": test_bad}  # fmt: skip
    return {"train": train, "calibration": calibration, "test": test, "source": source,
            "test_source": test_source, "counts": counts}  # fmt: skip


def encode_answer(tokenizer, prompt: str, answer: str, max_length: int) -> list[int]:
    """Token ids of a rendered prompt and an answer, at most `max_length` of them.

    The reward is read at the last token, so the answer is what must survive a cut: the prompt keeps at
    least half of `max_length` when it is that long, the answer gets the rest (cut at its end), and the
    prompt is cut from its start (its end, the last user turn, stays). No end-of-turn token is added:
    a model whose padding token is its end token would read the reward before it. Trailing padding-id
    tokens are dropped for the same reason.
    """
    from nega.chat import encode_prompt

    prompt_ids = encode_prompt(tokenizer, prompt)
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    while answer_ids and answer_ids[-1] == pad:
        answer_ids = answer_ids[:-1]
    answer_ids = answer_ids[: max(1, max_length - min(len(prompt_ids), max_length // 2))]
    keep = max_length - len(answer_ids)
    return (prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []) + answer_ids


def encode_pairs(tokenizer, examples: list[dict], max_length: int) -> list[dict]:
    """{"prompt" (rendered), "chosen", "rejected"} -> {"chosen_ids", "rejected_ids"}."""
    return [
        {
            "chosen_ids": encode_answer(tokenizer, e["prompt"], e["chosen"], max_length),
            "rejected_ids": encode_answer(tokenizer, e["prompt"], e["rejected"], max_length),
        }
        for e in examples
    ]


def pad_sequences(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask [N, T]."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class RewardCollator:
    """Encoded pairs -> {"input_ids", "attention_mask"} [2B, T]: chosen answers, then rejected ones."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sequences = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        ids, mask = pad_sequences(sequences, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask}
