"""TARGET resolution: run directory, adapter folder, model folder, hub id."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nega.eval.target import TargetError, final_adapter, resolve_target


def _adapter(folder, base="org/base", r=8):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": r}))
    return folder


def test_run_directory_uses_newest_adapter_and_toy_model(tmp_path):
    run = tmp_path / "run"
    (run / "01-toy-model" / "model").mkdir(parents=True)
    (run / "01-toy-model" / "model" / "config.json").write_text("{}")
    (run / "recipe.yaml").write_text(
        "name: r\nseed: 3\nmodel: {name: toy}\ntoy: {world: harm}\nlora: {r: 4}\n"
    )
    old = _adapter(run / "02-train" / "round-1" / "adapter", r=4)
    new = _adapter(run / "03-train" / "adapter", r=4)
    (run / "04-other" / "adapter").mkdir(parents=True)  # no adapter_config.json: not an adapter
    stamp = time.time()
    os.utime(old / "adapter_config.json", (stamp, stamp))
    os.utime(new / "adapter_config.json", (stamp + 10, stamp + 10))
    target = resolve_target(run)
    assert target.kind == "run" and target.adapter == str(new)
    assert target.base_model == str(run / "01-toy-model" / "model")
    assert target.seed == 3 and target.toy == {"world": "harm"} and target.lora_rank == 4
    os.utime(old / "adapter_config.json", (stamp + 20, stamp + 20))
    assert final_adapter(run) == old


def test_run_result_names_the_method_not_the_newest_baseline(tmp_path):
    from nega.config import load_recipe
    from nega.pipeline import Run

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        f"name: r\nmethod: d2o\nmodel: {{name: {base}}}\ndata: {{dataset: PKU-Alignment/PKU-SafeRLHF}}\n"
    )
    run = Run(load_recipe(str(recipe_file)), tmp_path / "run")
    pi_sft = run.dir / "03-sft-merge" / "model"
    pi_sft.mkdir(parents=True)
    (pi_sft / "config.json").write_text("{}")
    main = _adapter(run.dir / "05-dpo-train" / "adapter", base=str(pi_sft), r=4)
    baseline = _adapter(run.dir / "06-awr-train" / "adapter", base=str(pi_sft), r=4)
    stamp = time.time()
    os.utime(baseline / "adapter_config.json", (stamp + 10, stamp + 10))
    assert final_adapter(run.dir) == baseline  # no result yet: the newest

    run.record_result("stepneg_dpo", pi_sft, main)
    recorded = json.loads((run.dir / "results.json").read_text())
    assert recorded["result"] == {
        "label": "stepneg_dpo",
        "base_model": "03-sft-merge/model",
        "adapter": "05-dpo-train/adapter",
    }
    target = resolve_target(run.dir)
    # The adapter applies to π_sft, not to the recipe's model.
    assert (target.adapter, target.base_model) == (str(main.resolve()), str(pi_sft.resolve()))
    assert final_adapter(run.dir) == main.resolve()

    # A copied run folder still resolves inside itself.
    import shutil

    copy = Path(shutil.copytree(run.dir, tmp_path / "copy"))
    assert resolve_target(copy).adapter == str((copy / "05-dpo-train" / "adapter").resolve())

    # A full fine-tune's result is a model folder, evaluated as the model itself.
    full = run.dir / "05-dpo-train" / "model"
    full.mkdir()
    (full / "config.json").write_text("{}")
    run.record_result("stepneg_dpo", pi_sft, full)
    target = resolve_target(run.dir)
    assert (target.adapter, target.base_model) == (None, str(full.resolve()))

    # Reopening the run (a rerun, maybe of a changed recipe) forgets the result until training ends.
    Run(load_recipe(str(recipe_file)), run.dir)
    assert not (run.dir / "results.json").exists()

    (run.dir / "results.json").write_text("{not json")
    with pytest.raises(TargetError, match="results.json: cannot be read"):
        resolve_target(run.dir)
    result = {"label": "x", "base_model": "org/m", "adapter": "gone"}
    (run.dir / "results.json").write_text(json.dumps({"schema": 1, "result": result}))
    with pytest.raises(TargetError, match="no adapter_config.json"):
        resolve_target(run.dir)


def test_run_without_adapter_or_toy_stage(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: r\nmodel: {name: org/m}\n")
    target = resolve_target(tmp_path)
    assert target.base_model == "org/m" and target.adapter is None
    (tmp_path / "recipe.yaml").write_text("name: r\nmodel: {name: toy}\n")
    with pytest.raises(TargetError, match="no finished toy-model stage"):
        resolve_target(tmp_path)


def test_adapter_model_and_hub_targets(tmp_path):
    adapter = _adapter(tmp_path / "a", base="org/base", r=8)
    target = resolve_target(adapter)
    assert (target.kind, target.base_model, target.adapter, target.lora_rank) == (
        "adapter",
        "org/base",
        str(adapter),
        8,
    )
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_target(tmp_path / "m").kind == "model"
    assert resolve_target("Qwen/Qwen2.5-0.5B").kind == "hub"
    with pytest.raises(TargetError, match="no such folder"):
        resolve_target(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetError, match="not a run directory"):
        resolve_target(tmp_path / "empty")
