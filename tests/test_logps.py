"""Response-masked summed log-probs, checked against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from nega.logps import (
    LogpCache,
    batched_sequence_logps,
    block_attention_mask,
    collate_sequences,
    content_key,
    encode_pair,
    pack_shared_prompts,
    packed_sequence_logps,
    selected_logps,
    sequence_logps,
    shifted_targets,
    supports_packing,
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


# --- per-token log-probs under gradient: chunked, recomputed in the backward, no float32 [N, V] --------


def naive_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What `token_logps` replaces: the whole log-softmax in float32, then the labels' entries."""
    picked = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(labels < 0, 0.0)


def value_and_grad(fn, logits: torch.Tensor, weights: torch.Tensor):
    leaf = logits.detach().requires_grad_(True)
    values = fn(leaf)
    (values * weights).sum().backward()
    return values.detach(), leaf.grad


@pytest.mark.parametrize("chunk_bytes", [3 * 50 * 4, 1 << 26])
def test_token_logps_values_and_gradients_equal_the_naive_log_softmax(chunk_bytes):
    """Several chunks or one, a sliced (non-contiguous) input and ignored labels: values and gradients
    within 1e-5 of the float32 log-softmax, ignored positions exactly 0 with no gradient."""
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 50) * 4
    labels = torch.randint(0, 50, (3, 9))
    labels[0, :4] = -100
    labels[2, 7] = -1
    weights = torch.randn(3, 8)
    ours, our_grad = value_and_grad(
        lambda x: token_logps(x[:, :-1], labels[:, 1:], chunk_bytes=chunk_bytes), logits, weights
    )
    naive, naive_grad = value_and_grad(lambda x: naive_logps(x[:, :-1], labels[:, 1:]), logits, weights)
    assert ours.dtype == torch.float32 and ours.shape == (3, 8)
    assert (ours - naive).abs().max().item() < 1e-5
    assert (our_grad - naive_grad).abs().max().item() < 1e-5
    assert ours[0, :3].tolist() == [0.0, 0.0, 0.0] and ours[2, 6].item() == 0.0
    assert our_grad[0, :3].abs().max().item() == 0.0 and our_grad[:, -1].abs().max().item() == 0.0
    assert our_grad[1, :-1].abs().min().item() > 0  # every entry of a scored position moves


def test_selected_logps_sum_the_gradients_of_a_shared_position():
    """Packed responses share their prompt's last position: each of its targets adds its own term."""
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 40) * 3
    positions = torch.tensor([5, 0, 5, 7, 11, 5, 3])
    targets = torch.tensor([1, 2, 3, 39, 0, -1, 7])
    weights = torch.randn(7)
    ours, our_grad = value_and_grad(
        lambda x: selected_logps(x, positions, targets, chunk_bytes=4 * 40 * 4), logits, weights
    )
    naive, naive_grad = value_and_grad(
        lambda x: naive_logps(x.reshape(-1, 40)[positions], targets), logits, weights
    )
    assert (ours - naive).abs().max().item() < 1e-5
    assert (our_grad - naive_grad).abs().max().item() < 1e-5
    assert ours[5].item() == 0.0


def test_bfloat16_logits_match_the_float32_log_softmax_of_the_same_values():
    torch.manual_seed(2)
    logits = (torch.randn(2, 33, 300) * 3).bfloat16()
    labels = torch.randint(0, 300, (2, 33))
    labels[1, 5:9] = -100
    weights = torch.randn(2, 33)
    ours, our_grad = value_and_grad(
        lambda x: token_logps(x, labels, chunk_bytes=7 * 300 * 4), logits, weights
    )
    naive, naive_grad = value_and_grad(lambda x: naive_logps(x, labels), logits, weights)
    assert ours.dtype == torch.float32 and our_grad.dtype == torch.bfloat16
    # The same float32 arithmetic on the same bf16 values: equal up to float32 rounding; the gradients
    # are both float32 results rounded once to bfloat16.
    assert (ours - naive).abs().max().item() < 1e-5
    torch.testing.assert_close(our_grad, naive_grad, atol=1e-6, rtol=2**-7)


def test_gradcheck_in_float64():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 5, -100, 2], [3, 3, 1, -1]])
    assert torch.autograd.gradcheck(
        lambda x: token_logps(x[:, 1:], labels[:, 1:], chunk_bytes=2 * 6 * 8), (logits,)
    )
    positions = torch.tensor([0, 0, 3, 7, 5])
    targets = torch.tensor([1, 2, 3, -1, 0])
    assert torch.autograd.gradcheck(
        lambda x: selected_logps(x, positions, targets, chunk_bytes=3 * 6 * 8), (logits,)
    )


def saved_for_backward(fn, logits: torch.Tensor) -> list[tuple[torch.dtype, tuple[int, ...]]]:
    """(dtype, shape) of every tensor the autograd graph of `fn(logits)` keeps for its backward."""
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(logits.detach().requires_grad_(True))
    return saved


def test_no_float32_copy_of_bfloat16_logits_is_kept_for_the_backward():
    logits = torch.randn(64, 512).bfloat16()
    labels = torch.randint(0, 512, (64,))
    naive = saved_for_backward(lambda x: naive_logps(x, labels), logits)
    assert (torch.float32, (64, 512)) in naive  # the hook sees what the naive way keeps
    ours = saved_for_backward(lambda x: token_logps(x, labels), logits)
    assert (torch.bfloat16, (64, 512)) in ours
    assert [s for s in ours if s[0] != torch.bfloat16 and len(s[1]) == 2] == []
    assert all(s[1] in ((64, 512), (64,)) for s in ours)


def fresh_tensors_of_backward(values: torch.Tensor) -> list[tuple[torch.dtype, int]]:
    """(dtype, number of elements) of every tensor the backward of `values.sum()` allocates: each output
    of an operation that shares no storage with the operation's inputs."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    made = []

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {
                t.untyped_storage().data_ptr()
                for t in tree_flatten((args, kwargs))[0]
                if isinstance(t, torch.Tensor)
            }
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    made.append((t.dtype, t.untyped_storage().nbytes() // t.element_size()))
            return out

    with Allocations():
        values.sum().backward()
    return made


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_backward_allocates_the_gradient_and_one_chunk(dtype):
    """Linear in the positions: the backward makes one [N, V] gradient in the logits' dtype and, for
    half-precision logits, one float32 chunk reused for every chunk; never a float32 [N, V] tensor
    (the naive way makes several), never one full-size tensor per chunk."""
    n, vocab, rows = 96, 512, 16
    labels = torch.randint(0, vocab, (n,))
    logits = torch.randn(n, vocab).to(dtype).requires_grad_(True)
    made = fresh_tensors_of_backward(token_logps(logits, labels, chunk_bytes=rows * vocab * 4))
    big = sorted(size for _, size in made if size >= rows * vocab)
    assert big == ([rows * vocab, n * vocab] if dtype == torch.bfloat16 else [n * vocab])
    assert [d for d, size in made if size == n * vocab] == [dtype]
    naive = fresh_tensors_of_backward(naive_logps(logits, labels))
    assert sum(1 for d, size in naive if d == torch.float32 and size == n * vocab) >= 2


def test_sequence_logps_and_qcrd_ce_gradients_equal_the_naive_log_softmax():
    """The training paths score the whole logits tensor with shifted targets; their gradients are the
    naive ones, masked positions included."""
    from nega.distill.qcrd.loss import mean_token_ce

    torch.manual_seed(4)
    logits = torch.randn(2, 6, 30) * 2
    ids, attn, resp = collate_sequences([([1, 2, 3, 4, 5, 6], 2), ([7, 8, 9], 1)], pad_id=0)
    mask = (resp & attn)[:, 1:]
    assert shifted_targets(ids, resp & attn).tolist() == [[-1, 3, 4, 5, 6, -1], [8, 9, -1, -1, -1, -1]]

    model = TableModel(torch.zeros(1))
    model.forward = lambda input_ids, attention_mask=None, use_cache=False: type("O", (), {"logits": leaf})()
    leaf = logits.clone().requires_grad_(True)
    sequence_logps(model, ids, attn, resp).sum().backward()
    expected = logits.clone().requires_grad_(True)
    (naive_logps(expected[:, :-1], ids[:, 1:]) * mask).sum().backward()
    assert (leaf.grad - expected.grad).abs().max().item() < 1e-5

    leaf = logits.clone().requires_grad_(True)
    ce = mean_token_ce(leaf, ids, resp)
    ce.sum().backward()
    expected = logits.clone().requires_grad_(True)
    plain = torch.nn.functional.cross_entropy(
        expected[:, :-1].reshape(-1, 30), ids[:, 1:].reshape(-1), reduction="none"
    ).view(2, 5)
    naive_ce = (plain * resp[:, 1:]).sum(-1) / resp[:, 1:].sum(-1)
    naive_ce.sum().backward()
    assert (ce - naive_ce).abs().max().item() < 1e-5
    assert (leaf.grad - expected.grad).abs().max().item() < 1e-5


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


def test_scoring_packs_each_prompt_once_and_equals_plain_rows(tiny_model_dir, monkeypatch):
    """Reference scoring packs a prompt's responses into one row; values equal one padded row each."""
    import nega.logps as logps
    from nega.models import load_base_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = load_base_model(tiny_model_dir)
    prompts = ["<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n", "<|user|>\nname a color.\n<|assistant|>\n"]
    responses = ["2 plus 3 is 5.", "blue", "a cat", "hello there, friend!", "one two"]
    pairs = [(p, r) for p in prompts for r in responses]
    eos = [i % 2 == 0 for i in range(len(pairs))]
    forwards = []
    real = logps.packed_sequence_logps

    def counting(model, batch):
        forwards.append(batch["packed_ids"].shape[0])
        return real(model, batch)

    monkeypatch.setattr(logps, "packed_sequence_logps", counting)
    packed = batched_sequence_logps(model, tok, pairs, add_eos=eos, batch_size=8, pack=True)
    plain = batched_sequence_logps(model, tok, pairs, add_eos=eos, batch_size=8, pack=False)
    assert packed == pytest.approx(plain, abs=1e-4)
    assert sum(forwards) == len(prompts)  # one packed row per prompt, each prompt's 5 pairs kept together
    assert batched_sequence_logps(model, tok, pairs, add_eos=eos) == pytest.approx(packed, abs=1e-6)


def test_logp_cache_roundtrip_and_torn_line(tmp_path):
    cache = LogpCache(tmp_path / "c.jsonl")
    k1, k2 = content_key("m", "p", "a"), content_key("m", "p", "b")
    assert k1 != k2 and content_key("m", "p", "a", add_eos=False) != k1
    cache.add({k1: -1.5})
    with (tmp_path / "c.jsonl").open("a") as f:
        f.write('{"k": "torn", "v"')
    again = LogpCache(tmp_path / "c.jsonl")
    assert again[k1] == -1.5 and again.missing([k1, k2]) == [k2]
    # The torn line is cut away, so the next append is not glued onto it and survives a reload.
    again.add({k2: -2.5})
    assert LogpCache(tmp_path / "c.jsonl").values == {k1: -1.5, k2: -2.5}


# --- prefix sharing: each prompt computed once for all of its responses --------------------------------


def test_pack_shared_prompts_layout_by_hand():
    # Two pairs share prompt [5, 6]; a third has prompt [7].
    encoded = [([5, 6, 1, 2], 2), ([7, 3], 1), ([5, 6, 4], 2)]
    packed = pack_shared_prompts(encoded, pad_id=0)
    assert packed["packed_ids"].tolist() == [[5, 6, 1, 2, 4], [7, 3, 0, 0, 0]]
    # Both responses of row 0 continue from position 2, as in their own rows.
    assert packed["packed_positions"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 0, 0, 0]]
    assert packed["packed_segments"].tolist() == [[0, 0, 1, 1, 2], [0, 1, -1, -1, -1]]
    # Row by row: token 1 (pair 0) and token 4 (pair 2) are both predicted from the prompt's last
    # position (1), token 2 from token 1's position (2); pair 1's token 3 from row 1 position 0.
    assert packed["label_row"].tolist() == [0, 0, 0, 1]
    assert packed["label_src"].tolist() == [1, 2, 1, 0]
    assert packed["label_token"].tolist() == [1, 2, 4, 3]
    assert packed["label_seq"].tolist() == [0, 0, 2, 1]
    assert packed["packed_count"].tolist() == [3]


def test_block_attention_mask_by_hand():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    allowed = block_attention_mask(segments, torch.bool)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],  # prompt: causal
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],  # response 1 sees the prompt and itself
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],  # response 2 sees the prompt, not response 1
        [0, 0, 0, 0, 0, 1],  # padding sees only itself (no empty softmax row)
    ]
    additive = block_attention_mask(segments, torch.float32)[0, 0]
    assert torch.equal(additive == 0, torch.tensor(allowed, dtype=torch.bool))
    assert additive.min().item() == torch.finfo(torch.float32).min


def test_pack_rejects_empty_prompt():
    with pytest.raises(ValueError, match="pair 1 has an empty prompt"):
        pack_shared_prompts([([1, 2], 1), ([3], 0)], pad_id=0)


def _pairs_sharing_prompts(tokenizer):
    prompts = ["hello there", "what is two plus two", "hi"]
    responses = ["four", "I can help with that question", "no", "two plus two is four"]
    return [
        encode_pair(tokenizer, p, r, add_eos=(i % 2 == 0)) for p in prompts for i, r in enumerate(responses)
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_logps_equal_plain_logps_and_gradients(tiny_model_dir, attention, dtype):
    """Prefix sharing trades no correctness: the same values and gradients as one padded row per pair.

    Summed log-probs here reach -250, where one float32 ulp is 1.5e-5, so the 1e-5 bound is checked in
    float64 (where the two agree to ~1e-12) and float32 is held to float32 rounding (relative 1e-6).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention).to(dtype)
    assert supports_packing(model)
    # Shuffled so the pairs of one prompt are not adjacent: packing must restore the input order.
    encoded = _pairs_sharing_prompts(tokenizer)
    encoded = [encoded[i] for i in [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]]

    ids, attn, resp = collate_sequences(encoded, tokenizer.pad_token_id)
    plain = sequence_logps(model, ids, attn, resp)
    plain.sum().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    packed_batch = pack_shared_prompts(encoded, tokenizer.pad_token_id)
    assert packed_batch["packed_ids"].size(0) == 3  # one row per distinct prompt
    packed = packed_sequence_logps(model, packed_batch)
    packed.sum().backward()

    assert packed.shape == plain.shape
    if dtype == torch.float64:
        assert (packed - plain.double()).abs().max().item() < 1e-5
    else:
        assert torch.allclose(packed, plain, rtol=1e-6, atol=1e-5)
    for a, b in zip(plain_grads, (p.grad for p in model.parameters()), strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_flash_attention_models_are_not_packed():
    model = torch.nn.Linear(2, 2)
    model.config = type("Config", (), {"_attn_implementation": "flash_attention_2"})()
    assert not supports_packing(model)
    wrapped = torch.nn.Module()
    wrapped.module = model  # DDP-style wrapper without a config of its own
    assert not supports_packing(wrapped)


def test_a_cached_reference_key_does_not_depend_on_where_the_model_lies(tmp_path):
    import shutil

    from nega.logps import model_identity

    first = tmp_path / "a" / "adapter"
    first.mkdir(parents=True)
    (first / "adapter_config.json").write_text('{"r": 4}')
    (first / "adapter_model.safetensors").write_bytes(b"weights")
    moved = tmp_path / "b" / "adapter"
    shutil.copytree(first, moved)
    assert model_identity(first) == model_identity(moved) != model_identity(None)
    (moved / "adapter_model.safetensors").write_bytes(b"other weights")
    assert model_identity(first) != model_identity(moved)
    assert model_identity("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
