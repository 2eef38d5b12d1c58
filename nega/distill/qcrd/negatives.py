"""Self-adversarial negatives: the student's own `explain:` rationales, sampled from its adapter of an
earlier period, added to each example's S_neg with whether each ended on its own."""

from __future__ import annotations

from nega.distill.qcrd.prompts import explain_prompt
from nega.sampling.base import Completion


def self_negative_prompts(examples: list[dict]) -> list[list[dict]]:
    """The `explain:` prompt of every example, sampled from the (lagged) student for its negatives."""
    return [explain_prompt(e["question"]) for e in examples]


def self_negative_row(example: dict, completions: list[Completion]) -> dict:
    """One example's self-adversarial sample as stored: {"id", "texts", "token_ids", "finish_reasons"}
    (all empty when the sample is blank).

    Training scores the sampled ids (`nega.chat.response_tokens`), not the text. The reason ("stop" or
    "length") decides whether the rationale is scored with EOS: one cut at max_tokens never ended, and
    teaching the student that it ends there would be a second error.
    """
    kept = [c for c in completions if c.text.strip()]
    return {
        "id": example["id"],
        "texts": [c.text.strip() for c in kept],
        "token_ids": [c.token_ids for c in kept],
        "finish_reasons": [c.finish_reason for c in kept],
    }


def merge_sampled(batches: list[list[dict]]) -> list[dict]:
    """Rows of several negatives stages (`self_negative_row`) as one row per input id: its texts (with their
    token ids and finish reasons) in call order; inputs in order of first appearance."""
    merged: dict[str, dict] = {}
    for rows in batches:
        for row in rows:
            into = merged.setdefault(
                row["id"], {"id": row["id"], "texts": [], "token_ids": [], "finish_reasons": []}
            )
            n = len(row["texts"])
            into["texts"] += row["texts"]
            into["token_ids"] += row.get("token_ids") or [None] * n
            into["finish_reasons"] += row.get("finish_reasons") or ["stop"] * n
    return list(merged.values())


def with_negatives(examples: list[dict], sampled: list[dict]) -> list[dict]:
    """Copies of `examples` whose S_neg also holds the sampled rationales (rows of `self_negative_row`),
    with `negatives_eos` saying which negatives ended on their own (a row without finish reasons:
    all of its rationales did)."""
    by_id = {row["id"]: row for row in sampled}
    out = []
    for e in examples:
        row = by_id.get(e["id"], {"texts": []})
        reasons = row.get("finish_reasons") or ["stop"] * len(row["texts"])
        eos = negatives_eos(e) + [reason == "stop" for reason in reasons]
        sampled = [
            {"text": text, "token_ids": ids, "finish_reason": reason}
            for text, ids, reason in zip(
                row["texts"], row.get("token_ids") or [None] * len(row["texts"]), reasons, strict=True
            )
        ]
        sampled_before = e.get("negatives_sampled") or [None] * len(e["negatives"])
        out.append(
            dict(e, negatives=e["negatives"] + row["texts"], negatives_eos=eos,
                 negatives_sampled=sampled_before + sampled)
        )  # fmt: skip
    return out


def negatives_eos(example: dict) -> list[bool]:
    """Per negative of `example`: is it scored with EOS (it ended on its own)? Default: all are."""
    return list(example.get("negatives_eos") or [True] * len(example["negatives"]))
