"""Load the policy and tokenizer, attach LoRA, and save adapters.

With LoRA the reference policy is the same model with the adapter disabled (`model.disable_adapter()`),
so no second copy of the weights sits in memory. Weights load and save as safetensors only.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str):
    """'auto' keeps the checkpoint's dtype on GPU but uses float32 on CPU, where bf16 matmuls are slow."""
    if name == "auto":
        return "auto" if torch.cuda.is_available() else torch.float32
    return DTYPES[name]


def load_tokenizer(model_path: str | Path, model_cfg=None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        str(model_path),
        trust_remote_code=bool(model_cfg and model_cfg.trust_remote_code),
        revision=getattr(model_cfg, "revision", None),
    )
    if tokenizer.pad_token is None:
        # Padding is always masked; reusing EOS keeps the vocabulary (and vLLM's) unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_path: str | Path, model_cfg=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(model_path),
        dtype=torch_dtype(model_cfg.dtype if model_cfg else "auto"),
        trust_remote_code=bool(model_cfg and model_cfg.trust_remote_code),
        revision=getattr(model_cfg, "revision", None),
        use_safetensors=True,
    )
    return model


def lora_peft_config(lora_cfg):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        task_type=TaskType.CAUSAL_LM,
    )


def load_policy(
    model_path: str | Path, model_cfg, lora_cfg, *, adapter: str | Path | None = None, seed: int = 0
):
    """(model, tokenizer) ready to train: a peft model with a fresh (or given) trainable adapter.

    With `lora.enabled: false` the full model trains and a reference needs its own frozen copy
    (the method keeps a frozen copy of the starting weights). The adapter's random init is seeded, so every rank of a distributed run
    (and every re-run) starts from the same weights.
    """
    from peft import PeftModel, get_peft_model

    tokenizer = load_tokenizer(model_path, model_cfg)
    model = load_base_model(model_path, model_cfg)
    if lora_cfg.enabled:
        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            torch.manual_seed(seed)
            model = get_peft_model(model, lora_peft_config(lora_cfg))
    return model, tokenizer


def save_adapter(model, tokenizer, path: Path) -> Path:
    """Save the adapter (or full model) + tokenizer; loadable by peft and by vLLM's LoRARequest."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    return path


def merge_adapter(base_path: str | Path, adapter: str | Path, out: Path, model_cfg=None) -> Path:
    """Merge a LoRA adapter into its base weights and save the full model (for `nega push --merge`)."""
    from peft import PeftModel

    base = load_base_model(base_path, model_cfg)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    load_tokenizer(base_path, model_cfg).save_pretrained(str(out))
    return Path(out)


def trainable_parameter_count(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
