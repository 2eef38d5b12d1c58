"""benchmarks/sweep.py: every grid point and seed run as its own `nega run`, each arm's point chosen on
validation alone by the declared rule, and the test split scored once, for the chosen points."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sweep  # noqa: E402

# Validation and test disagree on purpose: on test the lowest harmful rate is at 1e-4, on validation at
# 1e-2, where helpfulness collapses (the guard rules it out), leaving 1e-3.
VALIDATION = {1e-4: {"harmful_rate": 0.30, "helpful_rate": 0.90},
              1e-3: {"harmful_rate": 0.10, "helpful_rate": 0.89},
              1e-2: {"harmful_rate": 0.05, "helpful_rate": 0.50}}  # fmt: skip
TEST = {1e-4: {"harmful_rate": 0.01, "helpful_rate": 0.95},
        1e-3: {"harmful_rate": 0.20, "helpful_rate": 0.90},
        1e-2: {"harmful_rate": 0.02, "helpful_rate": 0.40}}  # fmt: skip
START = {"harmful_rate": 0.25, "helpful_rate": 0.90}


def fake_run(recipe: str, overrides: list[str], folder: Path) -> None:
    """What `nega run` leaves for the sweep: results.json's targets and the stage manifests."""
    lr = next(float(o.split("=")[1]) for o in overrides if o.startswith("train.lr="))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(f"name: {recipe}\n")
    (folder / "adapter").mkdir(exist_ok=True)
    targets = {"start": {"model": "/models/base", "adapter": None},
               "d2o": {"model": "/models/base", "adapter": "adapter"}}  # fmt: skip
    (folder / "results.json").write_text(json.dumps({"schema": 1, "targets": targets}))
    for number, (stage, files) in enumerate([("sample", "same"), ("d2o-train", f"lr{lr:g}")], 1):
        (folder / f"0{number}-{stage}").mkdir(exist_ok=True)
        manifest = {"stage": stage, "files": {"out": files}, "seconds": 1.5}
        (folder / f"0{number}-{stage}" / "manifest.json").write_text(json.dumps(manifest))


class FakeScore:
    def __init__(self):
        self.calls = []

    def __call__(self, recipe, folder, targets, split):
        self.calls.append((split, dict(targets)))
        table = VALIDATION if split == "validation" else TEST
        out = {}
        for label, target in targets.items():
            if target.adapter is None:
                metrics = START
            else:
                lr = float(Path(target.adapter).parent.parent.name.removeprefix("lr"))
                metrics = table[lr]
            out[label] = {"metrics": metrics, "items": {"harmful_rate": [metrics["harmful_rate"]]},
                          "items_sha256": split}  # fmt: skip
        return out


def test_selection_reads_validation_only_and_test_is_scored_once(tmp_path):
    score = FakeScore()
    rule = sweep.Selection(
        "harmful_rate", "lower", guard=sweep.Guard("helpful_rate", "higher", 0.02, against="sft")
    )
    arms = {"sft": sweep.Arm("start", tuned=False), "d2o": sweep.Arm("d2o")}
    result = sweep.sweep(
        "toy-d2o", {"train.lr": [1e-4, 1e-3, 1e-2]}, arms, rule, [0, 1],
        lambda seed: [f"seed={seed}"], score=score, work=tmp_path, run=fake_run,
    )  # fmt: skip
    for seed in ("0", "1"):
        assert result["seeds"][seed]["chosen"] == {"d2o": {"train.lr": 1e-3}}
        assert result["seeds"][seed]["test"]["d2o"] == TEST[1e-3]  # not the test-best 1e-4
        assert result["seeds"][seed]["validation"]["d2o"]["lr0.01"] == VALIDATION[1e-2]
        assert result["seeds"][seed]["identical_across_grid"] == {
            "main": {"sample": [], "d2o-train": ["out"]}
        }
        assert result["seeds"][seed]["stage_seconds"]["lr0.001"]["main"] == {"sample": 1.5, "d2o-train": 1.5}
    # Per seed: one validation call with every arm at every point (the untuned arm once), one test call
    # with each arm at its chosen point only.
    splits = [split for split, _ in score.calls]
    assert splits == ["validation", "test", "validation", "test"]
    validation_labels = sorted(score.calls[0][1])
    assert validation_labels == ["d2o-lr0.0001", "d2o-lr0.001", "d2o-lr0.01", "sft-lr0.0001"]
    test_targets = score.calls[1][1]
    assert sorted(test_targets) == ["d2o", "sft"]
    assert test_targets["d2o"].adapter == str(tmp_path / "seed0" / "lr0.001" / "main" / "adapter")
    assert test_targets["sft"].adapter is None and test_targets["sft"].model == "/models/base"
    assert "guard" not in result["selection"] and "helpful_rate >= sft's - 0.02" in result["selection"]


def test_the_rule_breaks_ties_by_grid_order_and_falls_back_to_the_guard_metric():
    rule = sweep.Selection("accuracy", "higher")
    assert rule.choose({"a": {"accuracy": 0.5}, "b": {"accuracy": 0.7}, "c": {"accuracy": 0.7}}) == "b"
    guarded = sweep.Selection("harmful_rate", "lower", guard=sweep.Guard("nll", "lower", 0.05, "base", True))
    points = {"a": {"harmful_rate": 0.1, "nll": 1.2}, "b": {"harmful_rate": 0.3, "nll": 1.04}}
    assert guarded.choose(points, {"nll": 1.0}) == "b"  # a's NLL is 20% above base's
    assert guarded.choose(points, {"nll": 0.5}) == "b"  # none passes: the lowest NLL
    with pytest.raises(ValueError, match="guard needs"):
        guarded.choose(points)


def test_grid_points_and_their_names():
    points = sweep.grid_points({"train.lr": [1e-4, 3e-4], "d2o.beta": [0.1]})
    assert points == [{"train.lr": 1e-4, "d2o.beta": 0.1}, {"train.lr": 3e-4, "d2o.beta": 0.1}]
    assert sweep.point_name(points[1]) == "lr0.0003_beta0.1"


def test_item_values_score_each_prompt_s_completions():
    rows = [{"prompt_index": i // 2, "kind": "harmful" if i < 4 else "helpful", "completion": f"c{i}",
             "finish_reason": "stop"} for i in range(6)]  # fmt: skip

    def metrics(prompt, completions, columns):
        if columns["kind"] == "helpful":
            return {"helpful_rate": 1.0}
        return {"harmful_rate": sum(c in ("c0", "c3") for c in completions) / len(completions)}

    items = sweep.item_values(rows, ["p0", "p1", "p2"], metrics)
    assert items == {"harmful_rate": [0.5, 0.5, None], "helpful_rate": [None, None, 1.0]}
