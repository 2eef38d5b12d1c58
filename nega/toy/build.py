"""Build a toy world's starting model: tokenizer from the world's corpus, tiny Llama, SFT on its pairs.

The result is an ordinary model folder (safetensors + tokenizer with chat template) that transformers,
peft and vLLM load like any hub model, plus `nega_toy.json` recording the world, its options, the seed
and the training losses, so the run that uses the model can rebuild the same world for its oracle.
The folder appears whole or not at all: it is built under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TOY_MANIFEST = "nega_toy.json"


def build_toy_model(toy_cfg, out_dir: Path, seed: int) -> Path:
    """Train `toy_cfg.size` on the world's SFT pairs for `toy_cfg.steps` steps and save it to `out_dir`.

    toy_cfg is a `nega.config.ToyConfig`; its `options` go to `make_world`, so a misspelled option
    fails here with a ValueError naming the allowed ones, before any training. An existing `out_dir`
    is replaced only when it holds an earlier toy build (its `nega_toy.json`).
    """
    import torch

    from nega.sampling.base import render_prompt
    from nega.toy.model import VOCAB_SIZE, build_model, build_tokenizer, save_model, train_on_pairs
    from nega.toy.worlds import make_world

    out_dir = Path(out_dir)
    world = make_world(toy_cfg.world, seed=seed, **toy_cfg.options)
    if out_dir.exists() and not (out_dir / TOY_MANIFEST).exists() and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} exists and is not a toy model build; choose another folder or remove it"
        )

    tokenizer = build_tokenizer(world.corpus(), vocab_size=VOCAB_SIZE)
    model = build_model(tokenizer, size=toy_cfg.size, seed=seed)
    pairs = [(render_prompt(tokenizer, [{"role": "user", "content": p}]), r) for p, r in world.sft_pairs()]
    # The two smallest sizes gain nothing from a second CPU thread, and on a busy 2-core machine two
    # OpenMP threads made their training up to 10x slower.
    before = torch.get_num_threads()
    if toy_cfg.size in ("tiny", "small") and not torch.cuda.is_available():
        torch.set_num_threads(1)
    try:
        losses = train_on_pairs(
            model,
            tokenizer,
            pairs,
            steps=toy_cfg.steps,
            lr=toy_cfg.lr,
            batch_size=toy_cfg.batch_size,
            seed=seed,
            progress=f"training the {toy_cfg.world} toy model",
        )
    finally:
        torch.set_num_threads(before)

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_model(model, tokenizer, partial)
    tail = losses[-20:]
    manifest = {
        "world": toy_cfg.world,
        "options": dict(toy_cfg.options),
        "seed": seed,
        "size": toy_cfg.size,
        "steps": toy_cfg.steps,
        "lr": toy_cfg.lr,
        "batch_size": toy_cfg.batch_size,
        "vocab_size": len(tokenizer),
        "sft_pairs": len(pairs),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
    }
    (partial / TOY_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return out_dir


def load_toy_world(model_dir: Path):
    """The world a toy model folder was built for (same name, options and seed), from its nega_toy.json."""
    from nega.toy.worlds import make_world

    manifest = json.loads((Path(model_dir) / TOY_MANIFEST).read_text())
    return make_world(manifest["world"], seed=manifest["seed"], **manifest["options"])
