"""QCRD data: answer comparison, self-consistency split, step-by-step files, multi-task batches."""

from __future__ import annotations

import pytest
import torch
from nega_testing import shared_data

from nega.distill.qcrd.data import (
    MultiTaskCollator,
    answer_by_pattern,
    majority_answer,
    parse_palm_output,
    parse_step_by_step,
    record_from_row,
    split_by_consistency,
)
from nega.rewards.math import answer_key, label_matches


def test_answer_key_compares_equations_by_value_and_text_without_choice_letter():
    assert label_matches("(84 / 2)", "( 84.0 / 2.0 )")
    assert not label_matches("(7 * 36)", "( 7.0 * 30.0 )")
    assert label_matches("(c) Train Station.", "train station")
    assert answer_key("(10 / 0)") == "10 0"  # not a valid number: compared as text, never crashes
    assert answer_key(None) is None and not label_matches(None, None)


def test_majority_answer_and_ties_take_the_first_seen():
    assert majority_answer(["4", "5", "4.0", None, "5"]) == "4"
    assert majority_answer(["b", "a", "a"]) == "a"
    assert majority_answer([None, None]) is None


def test_split_by_consistency_majority_and_gold():
    record = {
        "id": "q1", "question": "2+2?", "label": "5",
        "rationales": [{"text": f"r{i}", "answer": a} for i, a in enumerate(["4", "4", "5", None, "4"])],
    }  # fmt: skip
    majority = split_by_consistency(record, "majority")
    assert majority["positives"] == ["r0", "r1", "r4"]
    assert majority["negatives"] == ["r2", "r3"]
    gold = split_by_consistency(record, "gold")
    assert gold["positives"] == ["r2"]
    assert gold["negatives"] == ["r0", "r1", "r3", "r4"]
    no_label = split_by_consistency(dict(record, label=None), "gold")  # falls back to the majority
    assert no_label["positives"] == ["r0", "r1", "r4"]


def test_parse_palm_output_rule():
    out = parse_palm_output(
        "Beavers live in woods. So the answer is (c).\n\nQ: next?", "So the answer is", ["x", "y", "wood"]
    )
    assert out == {"text": "Beavers live in woods.", "answer": "wood"}
    cut = parse_palm_output("He has 3 apples and then", "The answer is")
    assert cut == {"text": "He has 3 apples and then", "answer": None}


def test_record_from_row_accepts_lists_and_single_rationales():
    record = record_from_row(
        {"question": "q", "label": 3, "rationales": ["a", {"text": "b", "answer": "3"}]}, 7
    )
    assert record["id"] == "7" and record["label"] == "3"
    assert record["rationales"] == [{"text": "a", "answer": None}, {"text": "b", "answer": "3"}]
    single = record_from_row({"id": "x", "question": "q", "label": "yes", "rationale": "because"}, 0)
    assert single["rationales"] == [{"text": "because", "answer": "yes"}]
    with pytest.raises(ValueError):
        record_from_row({"question": " ", "rationale": "r"}, 0)


def test_answer_by_pattern_takes_the_last_match():
    extract = answer_by_pattern(r"answer is\s*(.+?)\.?\s*$")
    assert extract("so the answer is 12.") == "12"
    assert extract("no conclusion") is None


def test_cqa_files_parse_into_teacher_records():
    path = shared_data("distill_step_by_step", "cqa", "cqa_train.json")
    train = parse_step_by_step(path)
    test = parse_step_by_step(path, "test")
    assert (len(train), len(test)) == (9741, 1221)
    first = train[0]
    assert first["id"] == "cqa-train-0"
    assert first["label"] == "math problem"
    assert first["question"].endswith(
        "Answer Choices:\n(a) park\n(b) coloring book\n(c) garden center\n(d) math problem\n(e) gravity"
    )
    assert first["rationales"] == [
        {
            "text": "The answer must be something that has to do with the above problem. Of the above "
            "choices, only math problem has to do with the above problem.",
            "answer": "math problem",
        }
    ]
    assert all(len(r["rationales"]) == 1 and r["rationales"][0]["answer"] for r in train)
    split = [split_by_consistency(r, "gold") for r in train]
    negatives = sum(len(e["negatives"]) for e in split)
    assert negatives == 2407  # PaLM disagrees with the CQA gold label on 24.7% of train rows
    assert split[1]["negatives"] and split[1]["label"] == "bridge"  # PaLM said "train station"


def test_svamp_files_parse_into_teacher_records():
    path = shared_data("distill_step_by_step", "svamp", "svamp_train.json")
    train = parse_step_by_step(path)
    test = parse_step_by_step(path, "test")
    assert (len(train), len(test)) == (800, 200)
    assert train[0]["rationales"][0] == {
        "text": "Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. 84 / 2 = 42.",
        "answer": "(84 / 2)",
    }
    assert train[0]["label"] == "( 84.0 / 2.0 )"
    assert sum(r["rationales"][0]["answer"] is None for r in train) == 11  # cut-off continuations
    agree = sum(label_matches(r["rationales"][0]["answer"], r["label"]) for r in train)
    assert agree == 593


def test_collator_stacks_label_positive_and_negative_sequences():
    from nega.toy.model import build_tokenizer

    lines = ["predict: what is 1 plus 2? 3", "explain: 1 plus 2 is 3. name a color. blue 4."]
    tokenizer = build_tokenizer(lines * 5, vocab_size=300)
    examples = [
        {"question": "what is 1 plus 2?", "label": "3", "positives": ["1 plus 2 is 3.", "3."], "negatives": ["4."],
         "pos_scores": [0.9, 0.4], "neg_scores": [0.2]},
        {"question": "name a color.", "label": "blue", "positives": [], "negatives": []},
    ]  # fmt: skip
    batch = MultiTaskCollator(tokenizer)(examples)
    assert batch["input_ids"].shape[0] == 2 + 2 + 1
    assert batch["pos_index"].tolist() == [[2, 3], [0, 0]]
    assert batch["pos_mask"].tolist() == [[True, True], [False, False]]
    assert batch["neg_index"].tolist() == [[4], [0]]
    torch.testing.assert_close(batch["pos_scores"], torch.tensor([[0.9, 0.4], [1.0, 1.0]]))
    torch.testing.assert_close(batch["neg_scores"], torch.tensor([[0.2], [0.0]]))
    prompt = tokenizer.decode(batch["input_ids"][2][~batch["response_mask"][2] & batch["attention_mask"][2]])
    assert "explain: what is 1 plus 2?" in prompt
    label_prompt = tokenizer.decode(
        batch["input_ids"][0][~batch["response_mask"][0] & batch["attention_mask"][0]]
    )
    assert "predict: what is 1 plus 2?" in label_prompt
    response = tokenizer.decode(batch["input_ids"][0][batch["response_mask"][0]], skip_special_tokens=True)
    assert response.strip() == "3"
    label_only = MultiTaskCollator(tokenizer, rationales=False)(examples)
    assert label_only["input_ids"].shape[0] == 2 and label_only["pos_mask"].shape == (2, 0)


def test_a_cut_teacher_rationale_is_a_negative_without_eos():
    record = {
        "id": "q1", "question": "2+2?", "label": "4",
        "rationales": [
            {"text": "2 and 2 make 4. answer: 4", "answer": "4", "finish_reason": "stop"},
            {"text": "2 and 2 make", "answer": None, "finish_reason": "length"},
            {"text": "2 and 2 make 5. answer: 5", "answer": "5"},  # a file's rationale: it ended
        ],
    }  # fmt: skip
    example = split_by_consistency(record, "gold")
    assert example["negatives"] == ["2 and 2 make", "2 and 2 make 5. answer: 5"]
    assert example["negatives_eos"] == [False, True]


def test_self_negatives_keep_their_finish_reason_and_a_cut_one_is_scored_without_eos():
    from nega.distill.qcrd.data import negatives_eos, self_negative_row, with_negatives
    from nega.sampling.base import Completion
    from nega.toy.model import build_tokenizer

    examples = [
        {"id": "a", "question": "what is 1 plus 2?", "label": "3", "positives": ["3."], "negatives": ["4."],
         "negatives_eos": [True]},
        {"id": "b", "question": "name a color.", "label": "blue", "positives": ["blue."], "negatives": []},
    ]  # fmt: skip
    # The first sample ended on EOS, the second was cut at max_tokens.
    sampled = [
        self_negative_row(e, [Completion(text=f" rationale {i} ", finish_reason=reason)])
        for i, (e, reason) in enumerate(zip(examples, ["stop", "length"], strict=True))
    ]
    assert sampled == [
        {"id": "a", "texts": ["rationale 0"], "token_ids": [[]], "finish_reasons": ["stop"]},
        {"id": "b", "texts": ["rationale 1"], "token_ids": [[]], "finish_reasons": ["length"]},
    ]
    merged = with_negatives(examples, sampled)
    assert [e["negatives"] for e in merged] == [["4.", "rationale 0"], ["rationale 1"]]
    assert [negatives_eos(e) for e in merged] == [[True, True], [False]]
    # rows written before finish reasons were kept: every rationale counts as ended
    assert negatives_eos(with_negatives(examples, [{"id": "b", "texts": ["x"]}])[1]) == [True]

    lines = ["predict: what is 1 plus 2? 3", "explain: 1 plus 2 is 3. name a color. blue 4. rationale 0 1"]
    tokenizer = build_tokenizer(lines * 5, vocab_size=300)
    batch = MultiTaskCollator(tokenizer)(merged)
    eos = tokenizer.eos_token_id

    def last_token(row: int) -> int:
        return batch["input_ids"][row][batch["attention_mask"][row]][-1].item()

    neg_rows = [batch["neg_index"][0, 0], batch["neg_index"][0, 1], batch["neg_index"][1, 0]]
    assert [last_token(r) == eos for r in neg_rows] == [True, True, False]
    assert last_token(batch["pos_index"][1, 0]) == eos  # positives always end


def test_self_negatives_are_scored_by_the_ids_the_student_sampled():
    from nega.distill.qcrd.data import with_negatives
    from nega.toy.model import build_tokenizer

    lines = ["predict: what is 1 plus 2? 3", "explain: 1 plus 2 is 3. rationale"]
    tokenizer = build_tokenizer(lines * 5, vocab_size=300)
    # " rationale" letter by letter (the tokenizer would merge it), then the end token the student chose.
    ids = [tokenizer.convert_tokens_to_ids(c) for c in "rational"] + [tokenizer.eos_token_id]
    example = {"id": "a", "question": "what is 1 plus 2?", "label": "3", "positives": ["3."], "negatives": []}
    merged = with_negatives([example], [{"id": "a", "texts": ["rational"], "token_ids": [ids],
                                         "finish_reasons": ["stop"]}])  # fmt: skip
    batch = MultiTaskCollator(tokenizer)(merged)
    row = batch["neg_index"][0, 0]
    scored = batch["input_ids"][row][batch["response_mask"][row]].tolist()
    assert scored == ids
    assert tokenizer("rational", add_special_tokens=False)["input_ids"] != ids[:-1]  # text would differ
