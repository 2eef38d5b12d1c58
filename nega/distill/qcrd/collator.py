"""Multi-task batches for a causal LM: the label sequences and every positive and negative rationale of
a batch of QCRD examples, padded into one tensor set."""

from __future__ import annotations

from typing import Any

import torch

from nega.chat import response_tokens
from nega.distill.qcrd.negatives import negatives_eos
from nega.distill.qcrd.prompts import explain_prompt, predict_prompt


class MultiTaskCollator:
    """Examples -> one padded batch holding every sequence the QCRD loss needs.

    Each example dict has `question`, `label`, `positives` and `negatives` (lists of rationale texts),
    optional `negatives_eos` (per negative: scored with EOS; default all), optional `negatives_sampled`
    (per negative: the sampler's completion, whose ids are scored, or None) and optional `pos_scores` /
    `neg_scores` (discriminator scores, same lengths; default 1 and 0). The
    batch stacks, in order, B label sequences, then the positives and the negatives of every row:

        input_ids, attention_mask, response_mask  [B + ΣP_b + ΣN_b, T]
        pos_index, neg_index                      [B, P] / [B, N] row into the stacked sequences (0 = pad)
        pos_mask, neg_mask                        [B, P] / [B, N] bool
        pos_scores, neg_scores                    [B, P] / [B, N] float

    `rationales=False` (label-only training) stacks only the label sequences.
    """

    def __init__(
        self, tokenizer, *, max_length: int | None = None, rationales: bool = True, negatives: bool = True
    ):
        from nega.chat import stop_ids

        self.tokenizer = tokenizer
        self.max_length = max_length
        self.rationales = rationales
        self.negatives = negatives
        self.end_ids = stop_ids(tokenizer)

    def _encode(
        self, prompt: list[dict], response: str | list[int], eos: bool = True
    ) -> tuple[list[int], int]:
        from nega.logps import encode_pair
        from nega.sampling.base import render_prompt

        return encode_pair(
            self.tokenizer,
            render_prompt(self.tokenizer, prompt),
            response,
            add_eos=eos,
            max_length=self.max_length,
        )

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        from nega.logps import collate_sequences

        encoded = [self._encode(predict_prompt(e["question"]), str(e["label"])) for e in examples]
        groups = {}
        for kind, default in (("pos", 1.0), ("neg", 0.0)):
            texts = "positives" if kind == "pos" else "negatives"
            wanted = self.rationales and (kind == "pos" or self.negatives)
            per_row = [e[texts] if wanted else [] for e in examples]
            width = max([len(t) for t in per_row] + [0])
            index = torch.zeros(len(examples), width, dtype=torch.long)
            mask = torch.zeros(len(examples), width, dtype=torch.bool)
            scores = torch.full((len(examples), width), default)
            for b, (example, items) in enumerate(zip(examples, per_row, strict=True)):
                given = example.get(f"{kind}_scores")
                # A negative cut at max_tokens is scored without EOS (it never ended).
                ends = negatives_eos(example) if kind == "neg" and items else [True] * len(items)
                sampled = example.get("negatives_sampled") if kind == "neg" else None
                for j, text in enumerate(items):
                    index[b, j] = len(encoded)
                    mask[b, j] = True
                    if given is not None:
                        scores[b, j] = float(given[j])
                    # A sampled negative is scored by the ids the student produced, not its stripped text.
                    response = response_tokens(sampled[j], self.end_ids) if sampled and sampled[j] else text
                    encoded.append(self._encode(explain_prompt(example["question"]), response, ends[j]))
            groups[kind] = (index, mask, scores)
        input_ids, attention_mask, response_mask = collate_sequences(encoded, self.tokenizer.pad_token_id)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "n_labels": torch.tensor(len(examples)),
            "pos_index": groups["pos"][0],
            "pos_mask": groups["pos"][1],
            "pos_scores": groups["pos"][2],
            "neg_index": groups["neg"][0],
            "neg_mask": groups["neg"][1],
            "neg_scores": groups["neg"][2],
        }
