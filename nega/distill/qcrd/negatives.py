"""Self-adversarial negatives: the student's own `explain:` rationales, sampled from its adapter of an
earlier period, added to each example's S_neg with whether each ended on its own."""

from __future__ import annotations

from nega.distill.qcrd.prompts import explain_prompt


def sample_self_negatives(
    sampler,
    examples: list[dict],
    *,
    adapter: str | None,
    temperature: float = 1.5,
    top_p: float = 1.0,
    max_tokens: int = 256,
    seed: int = 0,
    description: str = "self-adversarial negatives",
) -> list[dict]:
    """One `explain:` rationale per example from the student (`adapter`; None = the base model).

    Returns [{"id", "texts": [rationale], "token_ids": [ids], "finish_reasons": [reason]}] (all empty
    when the sample is blank). Training scores the sampled ids (`nega.chat.response_tokens`), not the
    text. The reason ("stop" or "length") decides whether the rationale is scored with EOS: one cut at
    max_tokens never ended, and teaching the student that it ends there would be a second error.
    """
    outputs = sampler.generate(
        [explain_prompt(e["question"]) for e in examples], n=1, temperature=temperature, top_p=top_p,
        max_tokens=max_tokens, seed=seed, adapter=adapter, description=description,
    )  # fmt: skip
    rows = []
    for e, group in zip(examples, outputs, strict=True):
        kept = [c for c in group if c.text.strip()]
        rows.append(
            {
                "id": e["id"],
                "texts": [c.text.strip() for c in kept],
                "token_ids": [c.token_ids for c in kept],
                "finish_reasons": [c.finish_reason for c in kept],
            }
        )
    return rows


def merge_sampled(batches: list[list[dict]]) -> list[dict]:
    """Rows of several `sample_self_negatives` calls as one row per input id: its texts (with their
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
    """Copies of `examples` whose S_neg also holds the sampled rationales (rows of `sample_self_negatives`),
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
