"""Write a small Llama checkpoint as a GGUF file with the `gguf` package, the way llama.cpp lays one out.

Tests use it to check nega's GGUF import without downloading anything: a model folder of the test
suite goes in, a `.gguf` file comes out, and the converted folder must behave like the original.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# HF parameter name (per layer, after "model.layers.N.") -> GGUF tensor name (after "blk.N.").
LAYER_TENSORS = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def rope_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows: within each head, the two halves are interleaved."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_llama_gguf(model_dir: Path, out: Path) -> Path:
    """`model_dir` (a Llama saved by transformers, byte-level BPE tokenizer) as a float32 GGUF file."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))

    writer = gguf.GGUFWriter(str(out), "llama")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name("nega test llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float((config.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = tokenizer["model"]["vocab"]
    added = {t["id"]: t for t in tokenizer["added_tokens"]}
    tokens = [None] * config["vocab_size"]
    for text, i in vocab.items():
        tokens[i] = text
    for i, t in added.items():
        tokens[i] = t["content"]
    types = [
        gguf.TokenType.CONTROL if i in added and added[i]["special"] else gguf.TokenType.NORMAL
        for i in range(len(tokens))
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {t["content"]: i for i, t in added.items()}
    writer.add_bos_token_id(ids[tok_config["bos_token"]])
    writer.add_eos_token_id(ids[tok_config["eos_token"]])
    writer.add_pad_token_id(ids[tok_config["pad_token"]])
    writer.add_unk_token_id(ids[tok_config["unk_token"]])
    writer.add_add_bos_token(False)
    template = model_dir / "chat_template.jinja"
    if template.is_file():
        writer.add_chat_template(template.read_text())

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for layer in range(config["num_hidden_layers"]):
        for hf, name in LAYER_TENSORS.items():
            value = weights[f"model.layers.{layer}.{hf}"]
            if hf.startswith("self_attn.q_proj"):
                value = rope_interleave(value, heads)
            elif hf.startswith("self_attn.k_proj"):
                value = rope_interleave(value, kv_heads)
            writer.add_tensor(f"blk.{layer}.{name}", np.ascontiguousarray(value))
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    if not config.get("tie_word_embeddings"):
        writer.add_tensor("output.weight", weights["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
