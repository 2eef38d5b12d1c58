"""Per-step RL data: problem rows, positives/negatives, first-pit pairs (no EOS), outcome pairs, batches."""

from __future__ import annotations

import pytest

from nega.align.stepneg.data import (
    PairCollator,
    StepCollator,
    awr_rows,
    cut_positive_count,
    negative_texts,
    outcome_pairs,
    positive_texts,
    problem_of,
    rft_examples,
    step_pairs,
    step_token_index,
)


@pytest.fixture(scope="module")
def tokenizer():
    from nega.toy.model import build_tokenizer

    corpus = [
        f"start with {a}, add {b}.\n{a} + {b} = {a + b}\nanswer: {a + b}" for a in range(20) for b in range(9)
    ]
    return build_tokenizer(corpus, vocab_size=300)


NEGATIVE = {
    "problem": 0,
    "steps": ["7 + 5 = 12\n", "12 * 2 = 25\n", "25 - 3 = 22\n", "answer: 22"],
    "values": [0.5, 1.0, 0.0, None, None, 0.0],
    "advantages": [0.5, -1.0, None, None],
    "pit": 2,
    "finish_reason": "stop",
    "correct": False,
}
# The same negative valued at every step (AWR runs the rollouts without the skip), and a right sample.
VALUED = {**NEGATIVE, "values": [0.5, 1.0, 0.0, 0.0, 0.0, 0.0], "advantages": [0.5, -1.0, 0.0, 0.0]}
POSITIVE = {
    "problem": 0,
    "steps": ["7 + 5 = 12\n", "12 * 2 = 24\n", "24 - 3 = 21\n", "answer: 21"],
    "values": [0.5, 1.0, 1.0, 1.0, 1.0, 1.0],
    "advantages": [0.5, 0.0, 0.0, 0.0],
    "pit": 1,
    "finish_reason": "stop",
    "correct": True,
}


def test_problem_of_reads_toy_gsm8k_and_math_rows():
    toy = problem_of(
        {"question": "start with 7, add 5.", "solution": "7 + 5 = 12\nanswer: 12", "answer": "12"}
    )
    assert toy == {"question": "start with 7, add 5.", "solution": "7 + 5 = 12\nanswer: 12", "answer": "12"}
    gsm = problem_of({"question": "q", "answer": "3*4=<<3*4=12>>12\n#### 12"})
    assert gsm == {"question": "q", "solution": "3*4=12\n#### 12", "answer": "12"}
    math = problem_of({"problem": "p", "solution": r"so $\boxed{\frac12}$"})
    assert math["answer"] == r"\frac12"
    with pytest.raises(ValueError, match="no reference answer"):
        problem_of({"question": "q", "solution": "no box"})


def test_positives_and_negatives_dedupe_drop_empty_and_cut_positives():
    row = {
        "texts": ["a", "b", "a", "c", " ", "cut", "d"],
        "correct": [True, False, True, False, False, True, False],
        "finish_reasons": ["stop", "stop", "stop", "length", "stop", "length", "stop"],
    }
    assert positive_texts(row) == ["a"]  # "cut" is right but was cut at max_tokens: not a positive
    assert negative_texts(row) == ["b", "c", "d"]  # a cut wrong solution is still a negative
    assert cut_positive_count(row) == 1


# A problem whose only right sample besides "right, ended" was cut at max_tokens mid-solution.
CUT_SAMPLES = [
    {
        "texts": ["7 + 5 = 12\nanswer: 12", "7 + 5 = 12\nanswer: 12\n12 + 1", "7 + 5 = 13\nanswer: 13"],
        "token_ids": [[1, 2], [1, 2, 3], [1, 4]],
        "finish_reasons": ["stop", "length", "stop"],
        "correct": [True, True, False],
    },
    {  # problem 1: right only when cut, so it has no positive at all
        "texts": ["3 + 3 = 6\nanswer: 6\n6 +", "3 + 3 = 7\nanswer: 7"],
        "token_ids": [[5, 6], [5, 7]],
        "finish_reasons": ["length", "stop"],
        "correct": [True, False],
    },
]


def test_a_right_sample_cut_at_max_tokens_is_no_rft_target_and_no_chosen_response():
    from nega.align.stepneg.run import pool_positives, sampled_tokens

    ended, cut = CUT_SAMPLES[0]["texts"][:2]
    tokens = sampled_tokens([CUT_SAMPLES], end_ids={0})
    assert rft_examples(["P0", "P1"], CUT_SAMPLES, tokens) == [("P0", [1, 2])]
    positives = pool_positives([CUT_SAMPLES, CUT_SAMPLES])
    assert positives == {0: [ended]}  # and problem 1, solved only by a cut sample, is unsolved
    negatives = [{**NEGATIVE, "problem": p, "pit": 1} for p in (0, 0, 0, 1)]
    for rows in (
        step_pairs(negatives, ["P0", "P1"], positives, 0),
        outcome_pairs(negatives, ["P0", "P1"], positives, 0),
    ):
        assert [r["chosen"] for r in rows] == [ended] * 3


def test_step_pair_rejects_the_prefix_up_to_the_pit_without_eos():
    positives = {0: ["good one", "good two"]}
    negatives = [NEGATIVE, {**NEGATIVE, "pit": 4}, {**NEGATIVE, "problem": 1}]
    rows = step_pairs(negatives, ["P0", "P1"], positives, seed=0)
    assert len(rows) == 2  # problem 1 has no correct solution to pair with
    assert rows[0]["rejected"] == "7 + 5 = 12\n12 * 2 = 25\n"
    assert rows[0]["rejected_eos"] is False and rows[0]["prompt"] == "P0"
    assert rows[1]["rejected"] == "".join(NEGATIVE["steps"])
    assert {rows[0]["chosen"], rows[1]["chosen"]} == {"good one", "good two"}  # spread over positives


def test_outcome_pairs_reject_the_whole_solution_with_eos_when_it_ended():
    rows = outcome_pairs([NEGATIVE, {**NEGATIVE, "finish_reason": "length"}], ["P0"], {0: ["good"]}, seed=0)
    assert [r["rejected"] for r in rows] == ["".join(NEGATIVE["steps"])] * 2
    assert [r["rejected_eos"] for r in rows] == [True, False]


def test_awr_rows_take_every_step_of_right_and_wrong_samples():
    cut = {**VALUED, "finish_reason": "length"}
    rows = awr_rows([VALUED, POSITIVE, cut, {**VALUED, "problem": 1}], ["P0", "P1"], {0: ["good"]})
    assert len(rows) == 3  # problem 1 has no right sample: the DPO pairs skip it, and so does AWR
    assert [r["steps"] for r in rows] == [VALUED["steps"], POSITIVE["steps"], VALUED["steps"]]
    assert [r["advantages"] for r in rows] == [
        [0.5, -1.0, 0.0, 0.0],
        [0.5, 0.0, 0.0, 0.0],
        [0.5, -1.0, 0.0, 0.0],
    ]
    assert [(r["correct"], r["eos"]) for r in rows] == [(False, True), (True, True), (False, False)]
    assert rows[0]["prompt"] == "P0"
    with pytest.raises(ValueError, match="lacks a step advantage"):
        awr_rows([NEGATIVE], ["P0"], {0: ["good"]})  # skipped after the pit: not every step valued


def test_step_token_index_assigns_each_token_to_its_step(tokenizer):
    steps = NEGATIVE["steps"]
    index = step_token_index(tokenizer, steps)
    ids = tokenizer("".join(steps), add_special_tokens=False)["input_ids"]
    assert len(index) == len(ids) and index == sorted(index)
    for s, step in enumerate(steps):
        assert tokenizer.decode([t for t, i in zip(ids, index, strict=True) if i == s]) == step


def test_pair_collator_ends_chosen_with_eos_and_rejected_without(tokenizer):
    (row,) = step_pairs([NEGATIVE], ["<|user|>\nstart with 7\n<|assistant|>\n"], {0: ["answer: 9"]}, seed=0)
    batch = PairCollator(tokenizer)([{**row, "ref_chosen": -1.0, "ref_rejected": -2.0}])
    eos = tokenizer.eos_token_id
    chosen_len, rejected_len = batch["attention_mask"].sum(1).tolist()
    assert batch["input_ids"][0, chosen_len - 1].item() == eos
    assert batch["input_ids"][1, rejected_len - 1].item() != eos
    assert eos not in batch["input_ids"][1, :rejected_len].tolist()
    assert tokenizer.decode(batch["input_ids"][1][batch["response_mask"][1]]) == row["rejected"]
    assert batch["ref_rejected"].tolist() == [-2.0]


def test_step_collator_tags_response_tokens_with_steps(tokenizer):
    (row,) = awr_rows(
        [{**VALUED, "finish_reason": "length"}], ["<|user|>\nq\n<|assistant|>\n"], {0: ["good"]}
    )
    short = {**row, "steps": row["steps"][:1], "advantages": row["advantages"][:1]}
    batch = StepCollator(tokenizer)([row, short])
    assert batch["advantages"].tolist() == [[0.5, -1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]]
    assert batch["step_mask"].tolist() == [[True] * 4, [True, False, False, False]]
    index = batch["step_index"][0]
    prompt_len = len(tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    assert (index[:prompt_len] == -1).all() and index[prompt_len].item() == 0
    assert set(index[batch["attention_mask"][0]].tolist()) == {-1, 0, 1, 2, 3}
    # A cut sample has no EOS.
    assert tokenizer.eos_token_id not in batch["input_ids"][0][batch["attention_mask"][0]].tolist()


def test_step_collator_scores_a_finished_sample_with_eos_in_its_last_step(tokenizer):
    (row,) = awr_rows([POSITIVE], ["<|user|>\nq\n<|assistant|>\n"], {0: ["good"]})
    batch = StepCollator(tokenizer)([row])
    length = int(batch["attention_mask"][0].sum())
    assert batch["input_ids"][0, length - 1].item() == tokenizer.eos_token_id
    assert batch["step_index"][0, length - 1].item() == 3  # the EOS belongs to the last step
    assert batch["step_index"][0, length - 2].item() == 3


def test_chosen_solutions_are_scored_by_the_ids_pi_sft_sampled(tokenizer):
    from nega.align.stepneg.run import sampled_tokens

    text = "7 + 5 = 12\n"
    sampled = [tokenizer.convert_tokens_to_ids(c) for c in text if c != "\n"] + [tokenizer.eos_token_id]
    samples = [{"texts": [text, "wrong"], "token_ids": [sampled, [5, 6]], "finish_reasons": ["stop", "length"],
                "correct": [True, False]}]  # fmt: skip
    tokens = sampled_tokens([samples], {tokenizer.eos_token_id})
    assert tokens[(0, text)] == sampled[:-1] and tokens[(0, "wrong")] == [5, 6]
    row = {"prompt": "Q:", "chosen": text, "chosen_ids": tokens[(0, text)], "rejected": "7 + 5 = 13\n",
           "rejected_eos": False, "ref_chosen": -1.0, "ref_rejected": -2.0}  # fmt: skip
    batch = PairCollator(tokenizer)([row])
    prompt_len = len(tokenizer("Q:", add_special_tokens=False)["input_ids"])
    chosen = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert chosen[prompt_len:] == sampled  # the sampled ids, then the end token, not re-tokenized text


def test_the_no_positive_error_counts_the_right_samples_cut_at_max_tokens():
    from nega.align.stepneg.run import no_positives_message, pool_positives
    from nega.config import load_recipe

    only_cut = [CUT_SAMPLES[1]]
    assert pool_positives([only_cut]) == {}
    message = no_positives_message(load_recipe("stepneg-gsm8k"), [only_cut])
    assert (
        "in 2 samples (1 of them cut off at sampling.max_tokens=400, 1 of those right but unfinished"
        in message
    )
