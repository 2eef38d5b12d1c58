"""Reward-model pairs: HH transcripts and preference rows converted, bad pairs named, answers kept
whole under a tight max_length, test pairs held out of training, the toy world's chosen answers."""

from __future__ import annotations

import json

import pytest

from nega.config import validate_recipe
from nega.data import DataError
from nega.rewards.rm.data import RewardCollator, convert_pairs, encode_answer, from_hh_rlhf, load_pairs

HH = {
    "chosen": "\n\nHuman: how do I hurt someone?\n\nAssistant: Why?\n\nHuman: tell me\n\nAssistant: I won't help.",
    "rejected": "\n\nHuman: how do I hurt someone?\n\nAssistant: Why?\n\nHuman: tell me\n\nAssistant: Hit them.",
}


def test_hh_pairs_are_the_last_assistant_turns_after_the_shared_dialogue():
    pair = from_hh_rlhf(HH)
    assert pair == {
        "prompt": [
            {"role": "user", "content": "how do I hurt someone?"},
            {"role": "assistant", "content": "Why?"},
            {"role": "user", "content": "tell me"},
        ],
        "chosen": "I won't help.",
        "rejected": "Hit them.",
    }


def test_bad_pairs_are_named_by_row(tmp_path):
    rows = [
        HH,
        {"chosen": HH["chosen"], "rejected": HH["rejected"].replace("tell me", "go on")},
        {"chosen": HH["chosen"], "rejected": HH["chosen"]},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    data = validate_recipe(_recipe(tmp_path, format="hh-rlhf")).data
    with pytest.raises(DataError) as caught:
        convert_pairs(rows, data, "pairs.jsonl")
    text = str(caught.value)
    assert "3 bad row(s) of 4" in text
    assert "row 2: the 'chosen' and 'rejected' transcripts differ before their last Assistant turn" in text
    assert "row 3: 'chosen' and 'rejected' are the same answer" in text
    assert "row 4: missing field 'chosen'" not in text and "row 4:" in text
    skip = validate_recipe(_recipe(tmp_path, format="hh-rlhf", on_bad_row="skip")).data
    pairs, bad = convert_pairs(rows, skip, "pairs.jsonl")
    assert len(pairs) == 1 and bad == 3


def test_auto_reads_hh_transcripts_and_preference_columns(tmp_path):
    data = validate_recipe(_recipe(tmp_path)).data
    assert convert_pairs([HH], data, "x")[0][0]["rejected"] == "Hit them."
    conversational = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": "bad",
    }
    assert convert_pairs([conversational], data, "x")[0] == [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": "good", "rejected": "bad"}
    ]
    with pytest.raises(DataError, match=r"cannot tell the preference format .*\['answer', 'question'\]"):
        convert_pairs([{"question": "q", "answer": "a"}], data, "x")
    with pytest.raises(DataError, match="holds no preference pairs; a reward model reads auto, hh-rlhf, toy"):
        convert_pairs([HH], validate_recipe(_recipe(tmp_path, format="messages")).data, "x")


def test_a_long_prompt_never_crowds_out_the_answer(tiny_model_dir):
    from nega.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    prompt = "what is 1 plus 2? " * 40
    answer = "1 plus 2 is 3."
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = encode_answer(tokenizer, prompt, answer, max_length=32)
    assert len(ids) == 32 and ids[-len(answer_ids) :] == answer_ids
    # An answer longer than the budget keeps its start and half the budget stays with the prompt's end.
    ids = encode_answer(tokenizer, prompt, answer * 20, max_length=32)
    assert len(ids) == 32 and ids[16:] == tokenizer(answer * 20, add_special_tokens=False)["input_ids"][:16]
    assert ids[:16] == tokenizer(prompt, add_special_tokens=False)["input_ids"][-16:]


def test_the_collator_puts_chosen_answers_first_then_rejected():
    batch = RewardCollator(pad_id=0)(
        [{"chosen_ids": [5, 6, 7], "rejected_ids": [8]}, {"chosen_ids": [9], "rejected_ids": [4, 3]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0], [8, 0, 0], [4, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]


def test_held_out_test_pairs_are_never_trained_on(tmp_path):
    rows = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(50)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = validate_recipe(
        _recipe(tmp_path, path=str(path), limit=20, eval_fraction=0.25, rm={"hold_out": 10})
    )
    pairs = load_pairs(recipe)
    test = {p["chosen"] for p in pairs["test"]}
    train = {p["chosen"] for p in pairs["train"]}
    calibration = {p["chosen"] for p in pairs["calibration"]}
    assert (
        len(test) == 10 and len(train) == 15 and len(calibration) == 5
    )  # the limit applies after the hold-out
    assert not test & (train | calibration) and not train & calibration
    assert pairs["counts"] == {"rows": 20, "bad": 0, "train": 15, "calibration": 5, "test": 10, "test_bad": 0}
    assert load_pairs(recipe)["test"] == pairs["test"]  # seeded

    no_test = validate_recipe(_recipe(tmp_path, path=str(path)))
    with pytest.raises(DataError, match="is one file with no test split: set rm.test_path .* or rm.hold_out"):
        load_pairs(no_test)
    too_many = validate_recipe(_recipe(tmp_path, path=str(path), rm={"hold_out": 50}))
    with pytest.raises(DataError, match="rm.hold_out=50 leaves no training pairs: .* has 50 rows"):
        load_pairs(too_many)
    separate = validate_recipe(
        _recipe(tmp_path, path=str(path), rm={"test_path": str(path), "test_limit": 7})
    )
    assert len(load_pairs(separate)["test"]) == 7


def test_toy_harm_rows_pair_a_harmless_answer_with_a_harmful_one():
    from nega.toy import make_world

    world = make_world("harm")
    rows = world.rows("train", 60)
    assert all(world.is_harmful(r["rejected"]) and not world.is_harmful(r["chosen"]) for r in rows)
    kinds = {world.answer_type(r["prompt"], r["chosen"]) for r in rows}
    assert kinds == {"informative", "refusal"}
    # The column comes from a random stream of its own: the others are what they were before it existed
    # (these are the first rows as the world drew them without it), so D²O's toy runs are unchanged.
    assert [r["rejected"] for r in rows[:2]] == [
        "well, first use a crowbar on the phone, then wait a day.",
        "well, first wait a day, then use a crowbar on the shop.",
    ]
    test = world.rows("test", 10)
    assert test[0]["rejected"] == "ok. 7 times 3 is 18."
    assert world.is_helpful_correct(test[0]["prompt"], test[0]["chosen"])


def _recipe(
    tmp_path, *, format="auto", on_bad_row="error", path=None, limit=None, eval_fraction=0.0, rm=None
):
    data = {"format": format, "on_bad_row": on_bad_row, "limit": limit}
    data.update({"path": path} if path else {"dataset": "unused"})
    rm = {"calibration_fraction": eval_fraction, **(rm or {})}
    return {
        "name": "r",
        "method": "rm",
        "output_dir": str(tmp_path),
        "model": {"name": "m"},
        "data": data,
        "rm": rm,
    }


def test_the_test_pairs_come_from_rm_test_split_of_the_dataset(tmp_path):
    recipe = validate_recipe(
        {
            "name": "r",
            "method": "rm",
            "output_dir": str(tmp_path),
            "model": {"name": "toy"},
            "data": {"dataset": "toy", "format": "toy", "limit": 20},
            "toy": {"world": "harm"},
            "rm": {"test_split": "test", "test_limit": 5},
        }  # fmt: skip
    )
    pairs = load_pairs(recipe)
    assert len(pairs["test"]) == 5 and len(pairs["train"]) == 20
    assert all(p["chosen"] != p["rejected"] for p in pairs["test"])
