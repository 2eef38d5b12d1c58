"""D²O data: negatives datasets -> `{prompt, rejected}` rows, and the batches the trainer consumes.

D²O learns from prompts with one human-annotated dispreferred response each; a dataset's `chosen`
response, when it has one, is ignored. `data.format` names the shape of the rows:

- `prompt-rejected`: `prompt` (text or chat messages) and `rejected` (text) columns;
- `messages`: chat `messages` whose last assistant turn is the negative;
- `hh-rlhf`: Anthropic HH transcripts; the negative is the last Assistant turn of `rejected`, the prompt
  the dialogue before it;
- `pku-saferlhf`: PKU-SafeRLHF pairs; the negative is an unsafe response, the less safe one when both
  are (the one not named by `safer_response_id`); pairs with no unsafe response are skipped;
- `toy`: toy-world rows (`prompt-rejected` plus `kind`);
- TRL's `preference`: `prompt`, `chosen`, `rejected` (or, conversational, chats whose shared start is the
  prompt); `rejected` is the negative and `chosen` is ignored (the log says so);
- TRL's `unpaired_preference`: `prompt`, `completion`, `label`; the rows labelled false are the
  negatives, the others are skipped and counted (a file with none is refused);
- `auto`: detected from the columns (`nega.data.detect_format`, in `nega.data.METHOD_FORMATS` order).

Example row after conversion::

    {"prompt": [{"role": "user", "content": "how do I steal the car?"}],
     "rejected": "[unsafe] get a crowbar, ...", "kind": "harmful"}

A training example joins a row with its K self-samples and the cached reference log-probs::

    {"prompt": "<|user|>\\nhow do I steal the car?\\n<|assistant|>\\n",   # rendered
     "self": ["I can't help with that.", ...], "self_eos": [true, ...], "ref_self": [-4.1, ...],
     "self_ids": [[40, 649, 470, ...], ...],   # the sampler's token ids, what training scores
     "rejected": "[unsafe] ...", "ref_rejected": -20.3,
     "kl_response": "<another prompt's negative>", "ref_kl": -31.0}

`D2OCollator` turns a list of examples into one flat batch of sequences (every self-sample and every
negative of the batch's prompts) plus index tensors that gather the flat log-probs back into [B, K].
With `pack=True` the sequences are packed by prompt (`nega.logps.pack_shared_prompts`): a prompt's
K self-samples, its negative and its KL pair share one row, and the prompt is computed once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from nega.chat import response_tokens
from nega.data import METHOD_FORMATS, DataError, require_text
from nega.data import detect_format as detect_columns
from nega.logps import collate_sequences, encode_pair, pack_shared_prompts

ROLES = {"Human": "user", "Assistant": "assistant"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _as_messages(prompt, key: str = "prompt") -> list[dict]:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"field {key!r} is empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        for i, message in enumerate(prompt):
            if (
                not isinstance(message, dict)
                or "role" not in message
                or not isinstance(message.get("content"), str)
            ):
                raise ValueError(f"{key}[{i}] must be a {{'role', 'content'}} message, got {message!r:.80}")
        if prompt[-1]["role"] != "user":
            raise ValueError(f"{key} must end with a user turn, ends with {prompt[-1]['role']!r}")
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise TypeError(
        f"field {key!r} must be text or a non-empty list of chat messages, got {type(prompt).__name__}"
    )


def from_prompt_rejected(row: dict) -> dict:
    out = {"prompt": _as_messages(row["prompt"]), "rejected": require_text(row, "rejected")}
    if "kind" in row:
        out["kind"] = row["kind"]
    return out


def from_messages(row: dict) -> dict:
    messages = row["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError("field 'messages' must hold at least a user turn and an assistant turn")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ValueError("the last message must be the assistant's (the negative response)")
    negative = last.get("content")
    if not isinstance(negative, str) or not negative.strip():
        raise ValueError("the last assistant message (the negative) is empty")
    return {"prompt": _as_messages(messages[:-1], "messages"), "rejected": negative}


def parse_hh_transcript(text: str) -> list[dict]:
    """`\\n\\nHuman: … \\n\\nAssistant: …` -> chat messages; consecutive turns of one speaker are joined
    (a few HH transcripts repeat the `Assistant:` marker inside one answer)."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ValueError("not an HH transcript: expected it to start with '\\n\\nHuman: '")
    messages: list[dict] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role, content = ROLES[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def from_hh_rlhf(row: dict) -> dict:
    messages = parse_hh_transcript(require_text(row, "rejected"))
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise ValueError("the 'rejected' transcript must end with an Assistant turn after a Human turn")
    if not messages[-1]["content"]:
        raise ValueError("the last Assistant turn of 'rejected' (the negative) is empty")
    return {"prompt": _as_messages(messages[:-1], "rejected transcript"), "rejected": messages[-1]["content"]}


def _flag(row: dict, key: str) -> bool:
    value = row[key]
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, bool | int):
        return bool(value)
    raise TypeError(f"field {key!r} must be a boolean, got {value!r}")


def from_pku_saferlhf(row: dict) -> dict | None:
    """The unsafe response (the less safe one of two unsafe); None (skipped) when both are safe."""
    unsafe = [i for i in (0, 1) if not _flag(row, f"is_response_{i}_safe")]
    if not unsafe:
        return None
    if len(unsafe) == 2:
        # safer_response_id names the safer of the pair; better_response_id (helpfulness) only as a fallback.
        key = "safer_response_id" if row.get("safer_response_id") is not None else "better_response_id"
        if row[key] not in (0, 1, "0", "1"):
            raise ValueError(f"field {key!r} must be 0 or 1, got {row[key]!r}")
        unsafe = [1 - int(row[key])]
    return {"prompt": _as_messages(row["prompt"]), "rejected": require_text(row, f"response_{unsafe[0]}")}


def _response_text(value, key: str) -> str:
    """A response column's text: plain text, or a conversational response's (last) assistant turn."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        if value[-1].get("role") != "assistant":
            raise ValueError(f"field {key!r} must end with an assistant turn (the response)")
        value = value[-1].get("content")
    if not isinstance(value, str):
        raise TypeError(f"field {key!r} must be text or chat messages, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field {key!r} is empty")
    return value


def from_preference(row: dict) -> dict:
    """TRL preference row -> the negative; an implicit prompt (chats sharing their start) is split off
    with TRL's own `maybe_extract_prompt`."""
    if "prompt" not in row and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
        from trl.data_utils import maybe_extract_prompt

        row = maybe_extract_prompt({"chosen": row["chosen"], "rejected": row["rejected"]})
    return {"prompt": _as_messages(row["prompt"]), "rejected": _response_text(row["rejected"], "rejected")}


def from_unpaired_preference(row: dict) -> dict | None:
    """TRL unpaired preference row -> the negative when labelled false; None (skipped) otherwise."""
    if _flag(row, "label"):
        return None
    return {
        "prompt": _as_messages(row["prompt"]),
        "rejected": _response_text(row["completion"], "completion"),
    }


CONVERTERS: dict[str, Callable[[dict], dict | None]] = {
    "prompt-rejected": from_prompt_rejected,
    "messages": from_messages,
    "hh-rlhf": from_hh_rlhf,
    "pku-saferlhf": from_pku_saferlhf,
    "toy": from_prompt_rejected,
    "preference": from_preference,
    "unpaired_preference": from_unpaired_preference,
}


def detect_format(row: dict, source: str = "data") -> str:
    """The format of a row, from its columns; a DataError lists the columns when none fits."""
    found = detect_columns(list(row), row, METHOD_FORMATS["d2o"])
    if found is None:
        raise DataError(
            f"{source}: cannot tell the data format from the columns of row 1 {sorted(row)}; set data.format to "
            f"one of {', '.join(CONVERTERS)}, or map your columns to prompt/rejected with data.fields"
        )
    return found


def negative_features():
    """The Arrow schema of converted rows: chat messages, the negative, and the toy world's `kind`."""
    from datasets import Features, Value

    text = Value("string")
    return Features({"prompt": [{"role": text, "content": text}], "rejected": text, "kind": text})


def negatives_table(recipe, split: str | None = None, *, cache_dir: Path) -> tuple[object, str, dict]:
    """(rows {prompt: messages, rejected, kind}, source, counts) as an Arrow-backed `datasets.Dataset`.

    The conversion from the recipe's rows to these runs once per data key: the `data` section, the
    split, the seed and toy world, and the source's files by path, size and modification time
    (`nega.data.source_fingerprint`). Its result is `cache_dir/.negatives-<key>.arrow`, reopened
    memory-mapped when the key is unchanged, so a rerun reads no data row and holds none in memory.
    `kind` is None for rows without one."""
    from datasets import Dataset

    from nega.data import source_fingerprint
    from nega.pipeline import hash_value, read_json, say, write_json

    split = split or recipe.data.split
    toy = recipe.toy.model_dump() if recipe.data.dataset == "toy" and recipe.toy is not None else None
    key = hash_value(
        {
            "data": recipe.data.model_dump(),
            "split": split,
            "seed": recipe.seed,
            "toy": toy,
            "files": source_fingerprint(recipe.data),
            "schema": NEGATIVES_SCHEMA,
        }
    )
    path = Path(cache_dir) / f".negatives-{key[:20]}.arrow"
    info = path.with_suffix(".json")
    if not (path.is_file() and info.is_file()):
        # One conversion per folder: the one for data that has since changed is no use any more.
        for stale in Path(cache_dir).glob(".negatives-*"):
            stale.unlink()
        source, counts, fmt = _convert_negatives(recipe, split, path)
        write_json(info, {"source": source, "counts": counts, "format": fmt})
    meta = read_json(info)
    source, counts, fmt = meta["source"], meta["counts"], meta["format"]
    if fmt in ("preference", "unpaired_preference"):
        ignored = (
            "the chosen responses" if fmt == "preference" else f"{counts['no_negative']} rows labelled true"
        )
        say(f"data {source}: format {fmt}; D²O learns from the negatives only, {ignored} are not used")
    return Dataset.from_file(str(path)), source, counts


# The layout of the converted rows; a change of the converters' output bumps it, so no old file is reused.
NEGATIVES_SCHEMA = 1


def _convert_negatives(recipe, split, path: Path) -> tuple[str, dict, str]:
    import itertools

    from nega.data import convert_to_arrow, open_rows

    rows, source = open_rows(recipe.data, toy_cfg=recipe.toy, seed=recipe.seed, split=split)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{source}: no rows")
    fmt = recipe.data.format
    if fmt == "auto":
        fmt = detect_format(first, source)
    if fmt not in CONVERTERS:
        raise DataError(f"data.format {fmt!r} is not a negatives format; D²O reads {', '.join(CONVERTERS)}")
    done = convert_to_arrow(
        itertools.chain([first], rows),
        _with_kind_text(CONVERTERS[fmt]),
        path=path,
        features=negative_features(),
        source=f"{source} [format {fmt}]",
        on_bad_row=recipe.data.on_bad_row,
    )
    if not done.kept:
        path.unlink(missing_ok=True)
        why = (
            "no row is labelled false (the negatives)"
            if fmt == "unpaired_preference"
            else "no row has a negative response"
        )
        raise DataError(f"{source}: {why} (format {fmt}; {done.kept + done.none} rows all skipped)")
    counts = {"rows": done.rows, "kept": done.kept, "bad": done.bad, "no_negative": done.none}
    if fmt in ("preference", "unpaired_preference"):
        counts["ignored"] = "chosen" if fmt == "preference" else "label true"
    return source, counts, fmt


def _with_kind_text(convert: Callable[[dict], dict | None]) -> Callable[[dict], dict | None]:
    # `kind` is a label (the toy world's row kinds): kept as text, whatever type a file gave it.
    def converted(row: dict) -> dict | None:
        out = convert(row)
        if out is not None and out.get("kind") is not None:
            out["kind"] = str(out["kind"])
        return out

    return converted


def load_negatives(recipe, split: str | None = None) -> tuple[list[dict], str, dict]:
    """`negatives_table` as a list of dicts (no `kind` key where a row has none), converted afresh."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nega-negatives-") as folder:
        table, source, counts = negatives_table(recipe, split, cache_dir=Path(folder))
        rows = [{k: v for k, v in row.items() if not (k == "kind" and v is None)} for row in table]
    return rows, source, counts


def kl_partners(n: int) -> list[int]:
    """Row i's mismatched partner for KTO's KL estimate: the next row's negative (a derangement for n > 1)."""
    return [(i + 1) % n for i in range(n)]


# Self-samples each objective's loss reads per prompt (None = all K); whether it reads the negatives and
# KTO's KL pairs. sft_self never forwards a negative: it is the baseline without them.
SELF_SAMPLES_USED = {"d2o": None, "dpo_self": 1, "ga": 0, "kto_neg": 0, "sft_self": None}
USES_NEGATIVES = {"d2o": True, "dpo_self": True, "ga": True, "kto_neg": True, "sft_self": False}
USES_KL_PAIRS = {"d2o": False, "dpo_self": False, "ga": False, "kto_neg": True, "sft_self": False}


@dataclass
class D2OCollator:
    """Examples -> one flat batch of sequences + index tensors; see the module docstring.

    Output: `input_ids`, `attention_mask`, `response_mask` [N, T] over the flat sequences (with `pack`,
    the `pack_shared_prompts` tensors instead);
    `self_index`, `self_mask`, `ref_self_logps`, `self_tokens` (response tokens scored) [B, K_max];
    `neg_index` (empty for sft_self, which forwards no negative), `ref_neg_logps` [B];
    with KL pairs also `kl_index`, `ref_kl_logps` [B]. Padding slots of `self_index` point at row 0
    and are masked.
    """

    tokenizer: object
    objective: str = "d2o"
    max_length: int | None = None
    pack: bool = False

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        used = SELF_SAMPLES_USED[self.objective]
        encoded, self_slots, neg_index, kl_index = [], [], [], []
        for ex in examples:
            texts = ex["self"] if used is None else ex["self"][:used]
            ids = ex.get("self_ids") or [None] * len(texts)
            slots = []
            for text, tokens, eos in zip(texts, ids, ex["self_eos"][: len(texts)], strict=False):
                slots.append(len(encoded))
                response = text if tokens is None else tokens
                encoded.append(
                    encode_pair(
                        self.tokenizer, ex["prompt"], response, add_eos=eos, max_length=self.max_length
                    )
                )
            self_slots.append(slots)
        # A batch whose self-samples were all filtered away still forwards something (its negatives,
        # which sft_self's loss does not read): an empty forward has no graph to step.
        for ex in examples if USES_NEGATIVES[self.objective] or not encoded else []:
            neg_index.append(len(encoded))
            encoded.append(
                encode_pair(self.tokenizer, ex["prompt"], ex["rejected"], max_length=self.max_length)
            )
        if USES_KL_PAIRS[self.objective]:
            for ex in examples:
                kl_index.append(len(encoded))
                encoded.append(
                    encode_pair(self.tokenizer, ex["prompt"], ex["kl_response"], max_length=self.max_length)
                )
        if self.pack:
            sequences = pack_shared_prompts(encoded, self.tokenizer.pad_token_id)
        else:
            input_ids, attention_mask, response_mask = collate_sequences(encoded, self.tokenizer.pad_token_id)
            sequences = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "response_mask": response_mask,
            }
        width = max(1, max(len(s) for s in self_slots))
        self_index = torch.zeros(len(examples), width, dtype=torch.long)
        self_mask = torch.zeros(len(examples), width, dtype=torch.bool)
        ref_self = torch.zeros(len(examples), width, dtype=torch.float32)
        self_tokens = torch.zeros(len(examples), width, dtype=torch.long)
        for b, (ex, slots) in enumerate(zip(examples, self_slots, strict=True)):
            self_index[b, : len(slots)] = torch.tensor(slots, dtype=torch.long)
            self_mask[b, : len(slots)] = True
            ref_self[b, : len(slots)] = torch.tensor(ex["ref_self"][: len(slots)], dtype=torch.float32)
            self_tokens[b, : len(slots)] = torch.tensor([len(encoded[s][0]) - encoded[s][1] for s in slots],
                                                        dtype=torch.long)  # fmt: skip
        batch = {
            **sequences,
            "self_index": self_index,
            "self_mask": self_mask,
            "ref_self_logps": ref_self,
            "self_tokens": self_tokens,
            "neg_index": torch.tensor(neg_index, dtype=torch.long),
            "ref_neg_logps": torch.tensor([ex["ref_rejected"] for ex in examples], dtype=torch.float32),
        }
        if all("row" in ex for ex in examples):
            batch["row_index"] = torch.tensor([ex["row"] for ex in examples], dtype=torch.long)
        if kl_index:
            batch["kl_index"] = torch.tensor(kl_index, dtype=torch.long)
            batch["ref_kl_logps"] = torch.tensor([ex["ref_kl"] for ex in examples], dtype=torch.float32)
        return batch


class SelfSamples(NamedTuple):
    """The self-samples of one prompt kept for training."""

    texts: list[str]
    eos: list[bool]  # False for a sample cut at max_tokens: scored without the end token
    dropped: int  # flagged by the harm scorer
    tokens: list[list[int] | str]  # what training scores: the sampler's ids, else the text


def select_self_samples(
    completions: list[dict], k: int, flagged: list[bool] | None = None, end_ids: set[int] = frozenset()
) -> SelfSamples:
    """Up to k self-samples of one prompt.

    `completions` are `{"text", "token_ids"?, "finish_reason"}`; a sample cut at max_tokens is scored
    without EOS, so the loss never claims the model chose to stop there. `flagged[i]` (a harm scorer's
    verdict) drops completion i. `tokens` holds the sampler's own ids less a final id in `end_ids`
    (`nega.chat.response_tokens`), or the text when the sampler gave no ids.
    """
    texts, eos, tokens, dropped = [], [], [], 0
    for i, c in enumerate(completions):
        if flagged is not None and flagged[i]:
            dropped += 1
            continue
        if len(texts) < k:
            texts.append(c["text"])
            eos.append(c.get("finish_reason", "stop") != "length")
            tokens.append(response_tokens(c, set(end_ids)))
    return SelfSamples(texts, eos, dropped, tokens)


def build_examples(
    prompts: list[str],
    negatives: list[str],
    self_samples: list[SelfSamples | tuple[list[str], list[bool]]],
    reference_logps: Callable[[list[tuple[str, str | list[int]]], list[bool]], list[float]],
) -> list[dict]:
    """Training examples (module docstring) from rendered prompts, negatives and selected self-samples.

    A self-sample is scored by its `tokens` (the sampler's ids) when `self_samples` carries them, and the
    example keeps them as `self_ids`; plain `(texts, eos)` pairs are scored by text.
    `reference_logps(pairs, eos_flags)` scores (prompt, response) pairs under the frozen reference; it is
    called once over every sequence so it can batch and cache.
    """
    partners = kl_partners(len(prompts))
    responses = [s.tokens if isinstance(s, SelfSamples) else s[0] for s in self_samples]
    pairs, eos = [], []
    for prompt, negative, sample, tokens, j in zip(
        prompts, negatives, self_samples, responses, partners, strict=True
    ):
        pairs += [(prompt, t) for t in tokens] + [(prompt, negative), (prompt, negatives[j])]
        eos += list(sample[1]) + [True, True]
    values = iter(reference_logps(pairs, eos))
    examples = []
    for prompt, negative, sample, tokens, j in zip(
        prompts, negatives, self_samples, responses, partners, strict=True
    ):
        texts, flags = sample[0], sample[1]
        example = {
            "row": len(examples),
            "prompt": prompt,
            "self": list(texts),
            "self_eos": list(flags),
            "ref_self": [next(values) for _ in texts],
            "rejected": negative,
            "ref_rejected": next(values),
            "kl_response": negatives[j],
            "ref_kl": next(values),
        }
        if isinstance(sample, SelfSamples):
            example["self_ids"] = [t if isinstance(t, list) else None for t in tokens]
        examples.append(example)
    return examples
