"""The negatives stage's rounds (N distinct wrong solutions per problem within a sampling budget), its
counts and resume, and the pairs stage's rerun when the positives it draws from change.

The sampler here plays back scripted completions: what is under test is which problems are sampled
in which round, with which seed and how many, not sampling itself."""

from __future__ import annotations

import pytest

from nega.align.stepneg.negatives import sample_negatives
from nega.pipeline import read_json, read_jsonl
from nega.sampling.base import Completion

PROMPTS = ["P0", "P1", "P2", "P3"]
SEED = 10
# Per prompt, the completions of round r (sampled with seed SEED + r): (text, finish_reason).
W, R = "stop", "length"
ROUNDS = {
    # duplicates do not count; reaches 3 distinct wrong ones in round 3 (with one more to spare)
    "P0": [
        [("wrong a", W), ("wrong a", W)],
        [("wrong b", W), ("right x", W)],
        [("wrong c", R), ("wrong d", W)],
    ],
    # always right (one in two cut at max_tokens): no negative, sampled until the budget is spent
    "P1": [[("right y", W), ("right y", R)]] * 3,
    # done after two rounds: not sampled in the third
    "P2": [[("wrong 1", W), ("wrong 2", W)], [("wrong 3", W), ("wrong 4", W)], [("never", W), ("never", W)]],
    # empty texts are no negatives: two distinct ones only, so it falls short
    "P3": [[("  ", W), ("wrong e", W)], [("wrong e", W), ("\n", W)], [("wrong f", W), ("wrong f", W)]],
}


class ScriptedSampler:
    """`generate` of the sampler interface, answering prompt P with seed s by ROUNDS[P][s - SEED]."""

    def __init__(self, rounds: dict, base_seed: int = SEED):
        self.rounds, self.base_seed = rounds, base_seed
        self.calls: list[tuple[list[str], int, int]] = []

    def generate(self, prompts, *, n=1, seed=0, **settings):
        self.calls.append((list(prompts), n, seed))
        out = []
        for prompt in prompts:
            scripted = self.rounds[prompt][seed - self.base_seed][:n]
            assert len(scripted) == n, (prompt, seed, n)
            out.append([Completion(text=t, token_ids=[len(t)], finish_reason=f) for t, f in scripted])
        return out


class FailingSampler:
    def generate(self, prompts, **kwargs):
        raise AssertionError(f"sampled again: {prompts}")


def _right(problem: int, text: str) -> bool:
    return text.startswith("right")


def _sample(sampler, folder=None, *, per_round=2, target=3, budget=6, prompts=PROMPTS):
    return sample_negatives(
        sampler,
        prompts,
        _right,
        per_round=per_round,
        target=target,
        budget=budget,
        seed=SEED,
        temperature=1.0,
        top_p=1.0,
        max_tokens=8,
        folder=folder,
    )


def test_rounds_sample_the_short_problems_until_each_has_n_distinct_negatives():
    sampler = ScriptedSampler(ROUNDS)
    rows, counts = _sample(sampler)
    # Each round a new seed, and only the problems still short of 3 distinct wrong solutions.
    assert sampler.calls == [
        (["P0", "P1", "P2", "P3"], 2, 10),
        (["P0", "P1", "P2", "P3"], 2, 11),
        (["P0", "P1", "P3"], 2, 12),
    ]
    assert [row["negatives"] for row in rows] == [
        ["wrong a", "wrong b", "wrong c"],  # exactly N: "wrong d" of the same round is not kept
        [],
        ["wrong 1", "wrong 2", "wrong 3"],
        ["wrong e", "wrong f"],
    ]
    assert [row["samples"] for row in rows] == [6, 6, 4, 6]
    # Every sample stays in the row: right ones are positives, whatever round they came from.
    assert rows[0]["texts"][3] == "right x" and rows[0]["correct"][3] is True
    assert rows[0]["finish_reasons"][4] == "length"
    assert counts == {
        "problems": 4,
        "samples": 22,
        "rounds": 3,
        "correct_rate": pytest.approx(7 / 22),
        "solved_problems": 2,  # P0 (right x) and P1 (right y, the ended one)
        "correct_cut": 3,  # P1's cut right samples: dropped from the positives
        "negatives": 8,
        "short_problems": 2,  # P1 and P3
    }


def test_the_budget_caps_the_last_round():
    rounds = {
        "P0": [[("wrong z", W)] * 4] * 2,
        "P1": [[("wrong 9", W), ("wrong 8", W), ("wrong 7", W), ("x", W)]],
    }
    sampler = ScriptedSampler(rounds)
    rows, counts = _sample(sampler, per_round=4, target=3, budget=6, prompts=["P0", "P1"])
    assert sampler.calls == [(["P0", "P1"], 4, 10), (["P0"], 2, 11)]  # 4 + 2 = the budget of 6
    assert [row["samples"] for row in rows] == [6, 4]
    assert rows[0]["negatives"] == ["wrong z"] and len(rows[1]["negatives"]) == 3
    assert (counts["short_problems"], counts["rounds"], counts["samples"]) == (1, 2, 10)


def test_a_resumed_stage_reads_its_finished_rounds_and_samples_only_the_rest(tmp_path):
    first, counts = _sample(ScriptedSampler(ROUNDS), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round-00.jsonl",
        "round-01.jsonl",
        "round-02.jsonl",
    ]
    assert _sample(FailingSampler(), tmp_path) == (first, counts)
    (tmp_path / "round-02.jsonl").unlink()  # killed during the third round
    sampler = ScriptedSampler(ROUNDS)
    assert _sample(sampler, tmp_path) == (first, counts)
    assert sampler.calls == [(["P0", "P1", "P3"], 2, 12)]


def test_a_budget_below_the_negatives_wanted_is_a_recipe_error():
    from typer.testing import CliRunner

    from nega.cli import app

    args = ["validate", "toy-stepneg", "stepneg.negatives_per_problem=8", "stepneg.max_samples_per_problem=4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "stepneg.max_samples_per_problem=4 is below stepneg.negatives_per_problem=8" in result.output


# ---------------------------------------------------------------------------------------------------
# The stages, on a run folder, with the same scripted sampler.


def _run(tmp_path, monkeypatch, overrides=()):
    from nega.config import load_recipe
    from nega.pipeline import Run

    monkeypatch.chdir(tmp_path)
    base = ["output_dir=runs", "sampling.seed=9", "stepneg.negatives=2"]
    base += ["stepneg.negatives_per_problem=3", "stepneg.max_samples_per_problem=6"]
    recipe = load_recipe("toy-stepneg", [*base, *overrides])
    return Run(recipe)


def _lazy(run, sampler):
    """The run's handle on π_sft, whose engine is `sampler` from here on."""
    from nega.sampling.engine import ModelSampler, RunSampler, model_key, run_engines

    run_engines(run).samplers[model_key("π_sft")] = RunSampler(sampler, adapters=True)
    return ModelSampler(run, "π_sft")


def test_the_negatives_stage_counts_and_reports_the_short_problems(tmp_path, monkeypatch, capsys):
    from nega.align.stepneg.run import negatives_stage

    run = _run(tmp_path, monkeypatch)
    stage, rows = negatives_stage(run, _lazy(run, ScriptedSampler(ROUNDS)), PROMPTS, _right, [])
    assert [len(row["negatives"]) for row in rows] == [3, 0, 3, 2]
    counts = read_json(stage.dir / "manifest.json")["counts"]
    assert (counts["short_problems"], counts["correct_cut"], counts["rounds"]) == (2, 3, 3)
    assert "negatives: 2 of 4 problems have fewer than 3 distinct wrong solutions after 6 samples" in (
        capsys.readouterr().err
    )


# Problem 0's negatives, valued by hand-made rollouts; only the pool of right solutions changes.
RFT_ROUNDS = {
    "before": {p: [[("right old", W), ("right old, cut", R)]] for p in PROMPTS},
    "after": {p: [[("right new", W), ("right new", W)]] for p in PROMPTS},
}


def _pairs(tmp_path, monkeypatch, rft: str, overrides=()):
    """The sampling stages, a fixed advantages stage and the pairs stage, as `run` chains them."""
    from nega.align.stepneg.run import negatives_stage, pairs_stage, pool_positives, sample_and_verify
    from nega.pipeline import write_jsonl

    run = _run(tmp_path, monkeypatch, [*overrides, "stepneg.rft_samples=2"])
    rft_sampler = ScriptedSampler(RFT_ROUNDS[rft], base_seed=9)
    # The RFT samples come from another π_sft when the positives' source changes.
    rft_stage, rft_rows = sample_and_verify(
        run, "rft-sample", _lazy(run, rft_sampler), PROMPTS, _right, 2, 0, [rft]
    )
    negatives, rows = negatives_stage(run, _lazy(run, ScriptedSampler(ROUNDS)), PROMPTS, _right, [])
    positives = pool_positives([rft_rows, rows])
    advantages = run.stage("advantages", config={"negatives": [row["negatives"] for row in rows]})
    if not advantages.done:
        valued = [
            {
                "problem": 0,
                "text": t,
                "steps": [t],
                "values": [0.5, 0.0],
                "advantages": [-0.5],
                "pit": 1,
                "correct": False,
            }
            for t in rows[0]["negatives"]
        ]
        write_jsonl(advantages.dir / "advantages.jsonl", valued)
        advantages.finish()
    valued = read_jsonl(advantages.dir / "advantages.jsonl")
    # `run` also passes the sampling stages as inputs; without them the pairs must still see the change.
    pairs = pairs_stage(run, PROMPTS, valued, positives, {}, inputs=[advantages])
    return run, advantages, pairs


def test_the_pairs_stage_reruns_when_its_positives_change(tmp_path, monkeypatch, capsys):
    _, advantages, pairs = _pairs(tmp_path, monkeypatch, "before")
    chosen = {row["chosen"] for row in read_jsonl(pairs.dir / "dpo.jsonl")}
    assert chosen == {"right old", "right x"}  # "right old, cut" ended at max_tokens: not a positive
    assert pairs.manifest["counts"]["positives"] == 6  # P0: 2, P1: right old and right y, P2, P3: 1
    rft_counts = read_json(tmp_path / "runs" / "toy-stepneg" / "01-rft-sample" / "manifest.json")["counts"]
    assert rft_counts["correct_cut"] == 4 and rft_counts["solved_problems"] == 4

    # The same run again reuses every stage.
    capsys.readouterr()
    _, _, again = _pairs(tmp_path, monkeypatch, "before")
    assert again.hash == pairs.hash and "stage 04-pairs: finished, skipped" in capsys.readouterr().err

    # New right solutions, same negatives and values: the advantages stage is reused, the pairs are not.
    _, advantages_after, pairs_after = _pairs(tmp_path, monkeypatch, "after")
    log = capsys.readouterr().err
    assert advantages_after.hash == advantages.hash and "stage 03-advantages: finished, skipped" in log
    assert pairs_after.hash != pairs.hash and "stage 04-pairs: reruns" in log
    chosen = {row["chosen"] for row in read_jsonl(pairs_after.dir / "dpo.jsonl")}
    assert chosen == {"right new", "right x"}


def test_the_pairs_stage_hashes_the_whole_stepneg_section(tmp_path, monkeypatch):
    run, _, pairs = _pairs(tmp_path, monkeypatch, "before")
    assert pairs.config["stepneg"] == run.recipe.stepneg.model_dump()
    _, _, changed = _pairs(tmp_path, monkeypatch, "before", ["stepneg.awr_clip=5"])
    assert changed.hash != pairs.hash and changed.config["stepneg"]["awr_clip"] == 5


class WrongSampler:
    """Every continuation fails: what matters below is which samples get valued, not their values."""

    def generate(self, prompts, *, n=1, **kwargs):
        return [[Completion(text=" no", token_ids=[1]) for _ in range(n)] for _ in prompts]


def test_a_right_sample_cut_at_max_tokens_is_not_valued_for_awr(tmp_path, monkeypatch):
    from nega.align.stepneg.run import advantages_stage

    run = _run(tmp_path, monkeypatch)
    assert "awr" in run.recipe.stepneg.compare  # AWR values the right samples beside the wrong ones
    rows = [
        {
            "texts": ["right a", "right b, cut", "wrong c", "wrong d"],
            "finish_reasons": ["stop", "length", "stop", "stop"],
            "correct": [True, True, False, False],
            "negatives": ["wrong c"],  # "wrong d" came after the problem had its N negatives
        }
    ]
    _, valued = advantages_stage(run, _lazy(run, WrongSampler()), ["P0"], _right, rows, {0: ["right a"]})
    assert [(s["text"], s["correct"]) for s in valued] == [("right a", True), ("wrong c", False)]
