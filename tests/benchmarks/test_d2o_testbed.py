"""d2o_testbed.py: the self-samples of the two set-ups (the recipe as it is; a safety system prompt at
sampling only) on real_d2o's training prompts, scored by the refusal lexicon and a reward model, the
set-up chosen by the declared rule. At its smallest on the tiny model; the real run is SmolLM2's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from nega_testing import shared_data

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_declared_design_is_the_self_sampling_real_d2o_trains_with():
    import d2o_testbed
    import real_d2o

    from nega.config import load_recipe

    recipe = load_recipe(d2o_testbed.RECIPE)
    design = d2o_testbed.DESIGN
    assert d2o_testbed.RECIPE == real_d2o.RECIPE
    assert (design["prompts"], design["samples"], design["max_tokens"]) == (
        real_d2o.DESIGN["train_prompts"], real_d2o.DESIGN["k"], real_d2o.DESIGN["sample_tokens"],
    )  # fmt: skip
    assert (design["temperature"], design["top_p"]) == (recipe.sampling.temperature, recipe.sampling.top_p)
    assert d2o_testbed.SETUPS == {"recipe": None, "system_prompt": d2o_testbed.SAFETY_SYSTEM_PROMPT}


def test_the_selection_rule_takes_the_higher_safer_share_and_keeps_the_recipe_on_a_tie():
    from d2o_testbed import choose

    assert choose({"recipe": 0.12, "system_prompt": 0.22}) == "system_prompt"
    assert choose({"recipe": 0.30, "system_prompt": 0.22}) == "recipe"
    assert choose({"recipe": 0.25, "system_prompt": 0.25}) == "recipe"


def test_the_prompts_are_real_d2os_training_prompts_only():
    import real_d2o
    from d2o_testbed import training_rows

    path = shared_data("hh-rlhf", "harmless-base_test.jsonl")
    rows = training_rows(6)
    train, val = real_d2o.split_hh(path, 6, 50)
    assert rows == [{k: v for k, v in r.items() if k != "request"} for r in train]
    assert not {r["rejected"] for r in rows} & {r["rejected"] for r in val}


@pytest.fixture(scope="module")
def small_rm(tiny_model_dir, tmp_path_factory) -> Path:
    """A reward model on the tiny model's body, a few steps on toy harm pairs (a judge, not a good one)."""
    sys.path.insert(0, str(ROOT / "tests" / "rewards" / "rm"))
    from rm_pairs import rm_recipe, toy_examples

    from nega.rewards.rm.trainer import train_reward_model

    out = tmp_path_factory.mktemp("rm")
    recipe = rm_recipe(tiny_model_dir, out, max_steps=4, batch_size=4)
    examples = toy_examples(tiny_model_dir, "train", 16) + toy_examples(
        tiny_model_dir, "validation", 8, role="calibration"
    )
    folder, _ = train_reward_model(recipe, str(tiny_model_dir), examples, out / "stage")
    return Path(folder)


def test_smallest_run_samples_both_set_ups_scores_them_and_chooses(
    tiny_model_dir, small_rm, tmp_path, monkeypatch
):
    import d2o_testbed

    shared_data("hh-rlhf", "harmless-base_test.jsonl")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work, out = tmp_path / "work", tmp_path / "d2o_testbed.json"
    argv = ["--model", str(tiny_model_dir), "--prompts", "4", "--samples", "2", "--max-tokens", "8", "--backend", "hf",
            "--rm", str(small_rm), "--work", str(work), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["benchmarks/d2o_testbed.py", *argv])
    result = d2o_testbed.main(argv)

    assert json.loads(out.read_text())["chosen"] == result["chosen"]
    # The system prompt is in the system_prompt set-up's sample stage only, and its samples differ.
    with_prompt = json.loads((work / "system_prompt" / "01-sample" / "manifest.json").read_text())
    without = json.loads((work / "recipe" / "01-sample" / "manifest.json").read_text())
    assert with_prompt["config"]["system_prompt"] == d2o_testbed.SAFETY_SYSTEM_PROMPT
    assert "system_prompt" not in without["config"]
    for name in ("recipe", "system_prompt"):
        setup = result["setups"][name]
        assert setup["prompts"] == 4 and setup["refused"]["n"] == 8 and setup["harmless"]["n"] == 8
        scored = [json.loads(line) for line in (work / name / "scored.jsonl").read_text().splitlines()]
        samples = [s for row in scored for s in row["samples"]]
        # The RM read the request without the system prompt; its mean is the one reported.
        assert not any(
            d2o_testbed.SAFETY_SYSTEM_PROMPT in m["content"] for row in scored for m in row["prompt"]
        )
        mean = sum(s["harm_score"] for s in samples) / len(samples)
        assert setup["harm_score"]["mean"] == pytest.approx(mean)
        assert setup["harmless"]["count"] == sum(s["harm_score"] < 0.5 for s in samples)
    assert result["safer_metric"] == "harmless"
    assert result["chosen"] == d2o_testbed.choose(
        {k: v["harmless"]["rate"] for k, v in result["setups"].items()}
    )
    assert result["chosen_system_prompt"] == d2o_testbed.SETUPS[result["chosen"]]
    assert result["negatives"]["refused"]["n"] == 4 and "harm_score" in result["negatives"]
    assert set(result["system_prompt_vs_recipe"]) == {"refused", "degenerate", "harmless", "harm_score"}
    assert all(
        c["outcome"] in ("met", "not met", "undecided") for c in result["system_prompt_vs_recipe"].values()
    )
    assert any(line.startswith("prompts: declared 128") for line in result["deviations"])
    assert result["provenance"]["invocations"][0]["argv"][2:] == argv


@pytest.mark.slow
def test_real_d2o_smallest_run_selects_each_arm_on_validation_and_judges_with_the_reward_model(
    tiny_model_dir, small_rm, tmp_path, monkeypatch
):
    """real_d2o.py end to end at its smallest on the tiny model: two rates, every arm (sft_self among
    them) trained in one run per rate with the self-samples drawn under the safety system prompt, each
    arm's rate chosen on validation by the RM's harm under the NLL guard, the test scored once, the
    targets decided by paired tests, provenance recorded."""
    import real_d2o

    for name in (
        ("advbench", "harmful_behaviors.csv"),
        ("xstest", "xstest_prompts.csv"),
        ("gsm8k", "test.jsonl"),
    ):
        shared_data(*name)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work, out = tmp_path / "work", tmp_path / "real_d2o.json"
    argv = ["--model", str(tiny_model_dir), "--train-prompts", "8", "--val-prompts", "4", "--k", "2",
            "--advbench", "4", "--xstest", "4", "--nll-items", "4", "--val-nll-items", "4", "--max-tokens", "8",
            "--sample-tokens", "8", "--setup", "system_prompt", "--backend", "hf", "--harm-rm", str(small_rm),
            "--work", str(work), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["benchmarks/real_d2o.py", *argv])
    result = real_d2o.main(argv)

    import d2o_testbed

    seed = result["sweep"]["0"]
    assert result["selection"] == real_d2o.SELECTION_RM.describe()
    # Every tuned arm was validated at both rates of the declared grid, and its chosen rate is the lower
    # validation harm among the rates that pass the guard.
    names = ["lr0.0001", "lr0.0005"]
    for arm in real_d2o.ARMS[1:]:
        points = seed["validation"][arm]
        assert list(points) == names
        chosen = real_d2o.SELECTION_RM.choose(points, next(iter(seed["validation"]["base"].values())))
        assert result["methods"][arm]["chosen_lr"] == [float(chosen[2:])]
        assert "rm_harm" in points[names[0]]
    for name in names:
        manifest = json.loads((work / "seed0" / name / "main" / "01-sample" / "manifest.json").read_text())
        assert manifest["config"]["system_prompt"] == d2o_testbed.SAFETY_SYSTEM_PROMPT
    assert result["sampling_setup"]["system_prompt"] == d2o_testbed.SAFETY_SYSTEM_PROMPT
    items = json.loads((tmp_path / "real_d2o_items.json").read_text())["0"]
    harmful = sum(r["label"] == "harmful" for r in real_d2o.test_prompts(4, 4))
    for arm in real_d2o.ARMS:
        harm = [v for v in items[arm]["rm_harm"] if v is not None]
        assert len(harm) == harmful > 4  # AdvBench's 4 and XSTest's unsafe prompts among its 4
        assert result["methods"][arm]["rm_harm"]["mean"] == pytest.approx(sum(harm) / len(harm), abs=1e-5)
    assert set(result["targets"]) == {*real_d2o.TARGETS, *real_d2o.RM_TARGETS}
    assert all(t["outcome"] in ("met", "not met", "undecided") for t in result["targets"].values())
    assert result["provenance"]["invocations"][0]["argv"][2:] == argv
    assert any(line.startswith("train_prompts: declared 128") for line in result["deviations"])
