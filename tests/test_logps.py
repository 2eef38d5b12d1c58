"""Response-masked summed log-probs, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from nega.logps import (
    LogpCache,
    batched_sequence_logps,
    collate_sequences,
    content_key,
    encode_pair,
    sequence_logps,
    token_logps,
)


class TableModel(torch.nn.Module):
    """Logits depend only on the previous token, from a fixed table: log-probs are computable by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_token_logps_matches_log_softmax():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logps(logits, labels), expected, atol=1e-6)


def test_sequence_logps_by_hand():
    table = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    model = TableModel(table)
    # prompt [0, 1], response [2, 2]; second row is padded with token 0.
    ids, attn, resp = collate_sequences([([0, 1, 2, 2], 2), ([1, 0, 2], 2)], pad_id=0)
    got = sequence_logps(model, ids, attn, resp)

    def logp(prev, nxt):
        row = table[prev]
        return (row[nxt] - torch.logsumexp(row, 0)).item()

    # Row 0: p(2 | 1) + p(2 | 2); the prompt token p(1 | 0) is masked.
    assert got[0].item() == pytest.approx(logp(1, 2) + logp(2, 2), abs=1e-6)
    # Row 1: only p(2 | 0); the padding position contributes nothing.
    assert got[1].item() == pytest.approx(logp(0, 2), abs=1e-6)
    assert logp(1, 2) == pytest.approx(-math.log(math.e + 2), abs=1e-6)


def test_padding_does_not_change_logps():
    table = torch.randn(5, 5)
    model = TableModel(table)
    short = collate_sequences([([1, 2, 3], 1)], pad_id=0)
    padded = collate_sequences([([1, 2, 3], 1), ([1, 2, 3, 4, 4, 4], 1)], pad_id=0)
    assert sequence_logps(model, *short)[0].item() == pytest.approx(
        sequence_logps(model, *padded)[0].item(), abs=1e-6
    )


def test_encode_pair_boundary_and_eos(tiny_model_dir):
    from nega.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    ids, prompt_len = encode_pair(tok, "<|user|>\nhi\n<|assistant|>\n", "hello there")
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[prompt_len:-1]) == "hello there"
    no_eos, _ = encode_pair(tok, "<|user|>\nhi\n<|assistant|>\n", "hello there", add_eos=False)
    assert no_eos == ids[:-1]
    cut, cut_prompt = encode_pair(tok, "<|user|>\nhi\n<|assistant|>\n", "hello there", max_length=4)
    assert len(cut) == 4 and cut_prompt < 4


def test_reference_logps_use_frozen_weights(tiny_model_dir):
    """disable_adapter=True scores with the base weights even when the adapter is not an identity."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from nega.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = [
        ("<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n", "2 plus 3 is 5."),
        ("<|user|>\nname a color.\n", "blue"),
    ]
    plain = batched_sequence_logps(base, tok, pairs)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    live = batched_sequence_logps(peft_model, tok, pairs)
    frozen = batched_sequence_logps(peft_model, tok, pairs, disable_adapter=True)
    assert frozen == pytest.approx(plain, abs=1e-5)
    assert all(abs(a - b) > 1e-4 for a, b in zip(live, plain, strict=True))
    # The trained tiny model knows its arithmetic: the right answer is far likelier than a wrong one.
    wrong = batched_sequence_logps(base, tok, [(pairs[0][0], "2 plus 3 is 7.")])
    assert plain[0] > wrong[0] + 2.0


def test_logp_cache_roundtrip_and_torn_line(tmp_path):
    cache = LogpCache(tmp_path / "c.jsonl")
    k1, k2 = content_key("m", "p", "a"), content_key("m", "p", "b")
    assert k1 != k2 and content_key("m", "p", "a", add_eos=False) != k1
    cache.add({k1: -1.5})
    with (tmp_path / "c.jsonl").open("a") as f:
        f.write('{"k": "torn", "v"')
    again = LogpCache(tmp_path / "c.jsonl")
    assert again[k1] == -1.5 and again.missing([k1, k2]) == [k2]
