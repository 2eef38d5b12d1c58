"""The toy-model build step: a loadable model folder, its manifest, option errors, short texts."""

from __future__ import annotations

import json
import os

import pytest

from nega.config import ToyConfig
from nega.toy import WORLDS, make_world
from nega.toy.build import TOY_MANIFEST, build_toy_model, load_toy_world


def _threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def test_build_saves_a_loadable_model_and_its_world(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _threads()
    cfg = ToyConfig(world="harm", steps=3, batch_size=4, options={"harm_rate": 0.4})
    out = build_toy_model(cfg, tmp_path / "model", seed=5)
    assert out == tmp_path / "model"
    assert not (tmp_path / "model.partial").exists()
    manifest = json.loads((out / TOY_MANIFEST).read_text())
    assert manifest["world"] == "harm" and manifest["seed"] == 5 and manifest["options"] == {"harm_rate": 0.4}
    assert manifest["steps"] == 3 and manifest["sft_pairs"] == len(
        make_world("harm", 5, harm_rate=0.4).sft_pairs()
    )

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tokenizer)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is 3 plus 4?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|user|>\nwhat is 3 plus 4?\n<|assistant|>\n"

    world = load_toy_world(out)
    assert world.name == "harm" and world.seed == 5 and world.options.harm_rate == 0.4
    assert world.rows("test", 10) == make_world("harm", seed=5, harm_rate=0.4).rows("test", 10)

    # a second build replaces the first, and leaves the caller's thread count as it found it
    import torch

    torch.set_num_threads(2)
    build_toy_model(cfg.model_copy(update={"steps": 2}), out, seed=5)
    assert json.loads((out / TOY_MANIFEST).read_text())["steps"] == 2
    assert torch.get_num_threads() == 2


def test_bad_option_fails_before_training(tmp_path):
    cfg = ToyConfig(world="reasoning", options={"noise": 0.1})
    with pytest.raises(ValueError, match="allowed options: min_steps, max_steps, max_value, product_share"):
        build_toy_model(cfg, tmp_path / "model", seed=0)
    assert not any(tmp_path.iterdir())


def test_does_not_replace_a_foreign_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a toy model build"):
        build_toy_model(ToyConfig(world="harm", steps=1), tmp_path / "model", seed=0)
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", list(WORLDS))
def test_texts_are_short_in_tokens(name):
    """Prompts and responses stay short under the world's own tokenizer, so toy runs stay fast."""
    from nega.toy.model import build_tokenizer

    world = make_world(name)
    tokenizer = build_tokenizer(world.corpus(), vocab_size=512)
    length = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    pairs = world.sft_pairs()
    assert max(length(r) for _, r in pairs) <= 48
    assert max(length(p) for p, _ in pairs) <= 40
    assert tokenizer.unk_token_id not in tokenizer(" ".join(world.corpus()[:50]))["input_ids"]
