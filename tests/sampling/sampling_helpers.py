"""Helpers for the sampler tests: known answers, a LoRA adapter with non-zero weights, a peft reference."""

from __future__ import annotations

import shutil
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Greedy answers the tiny model learned from CORPUS_PAIRS.
KNOWN = {
    "what is 2 plus 3?": "2 plus 3 is 5.",
    "what is 7 plus 8?": "7 plus 8 is 15.",
    "name a color.": "blue",
    "say hello.": "hello there, friend!",
    "count to five.": "one two three four five",
}


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def write_lora_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A rank-8 LoRA on every linear layer with random A *and* B (peft's default B = 0 is a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False)
    model = get_peft_model(base, config)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    shutil.copytree(tmp, out, dirs_exist_ok=True)  # overwrite in place, as an online round does
    shutil.rmtree(tmp)
    return out


def peft_greedy(model_dir: Path, adapter: Path | None, prompts: list, max_tokens: int) -> list[str]:
    """Reference greedy texts: one prompt at a time (no padding) through a freshly loaded peft model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nega.sampling.base import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    texts = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(render_prompt(tok, p), add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model.generate(input_ids=ids, do_sample=False, max_new_tokens=max_tokens)
            new = out[0, ids.shape[1] :].tolist()
            if tok.eos_token_id in new:
                new = new[: new.index(tok.eos_token_id)]
            texts.append(tok.decode(new, skip_special_tokens=True))
    return texts
