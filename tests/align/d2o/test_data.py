"""D²O data: every negatives format, the real hh-rlhf harmless file, self-sample selection and collation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from nega_testing import shared_data

from nega.align.d2o.data import (
    D2OCollator,
    build_examples,
    detect_format,
    kl_partners,
    load_negatives,
    parse_hh_transcript,
    select_self_samples,
)
from nega.config import DataConfig
from nega.data import DataError


def _recipe(path, fmt="auto", **data):
    return SimpleNamespace(data=DataConfig(path=str(path), format=fmt, **data), toy=None, seed=0)


def _write(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hh_rlhf_harmless_file():
    path = shared_data("hh-rlhf", "harmless-base_test.jsonl")
    rows, source, counts = load_negatives(_recipe(path))
    assert counts == {"rows": 2312, "kept": 2312, "bad": 0, "no_negative": 0}
    assert len(rows) == 2312
    raw = json.loads(path.read_text().splitlines()[0])
    # The negative is the last Assistant turn of `rejected`; the chosen transcript is never read.
    assert rows[0]["rejected"] == raw["rejected"].rsplit("\n\nAssistant:", 1)[1].strip()
    assert rows[0]["rejected"] != raw["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()
    assert rows[0]["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    for row in rows:
        roles = [m["role"] for m in row["prompt"]]
        assert roles[-1] == "user" and roles[::2] == ["user"] * len(roles[::2])
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
        assert row["rejected"].strip() and "\n\nHuman:" not in row["rejected"]


def test_hh_transcript_joins_repeated_speaker_turns():
    messages = parse_hh_transcript(
        "\n\nHuman: hi\n\nAssistant: one\n\nAssistant: two\n\nHuman: ok?\n\nAssistant: bad"
    )
    assert messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "one\n\ntwo"},
        {"role": "user", "content": "ok?"},
        {"role": "assistant", "content": "bad"},
    ]


def test_each_format_from_hand_made_rows(tmp_path):
    cases = {
        "prompt-rejected": (
            {"prompt": "how do I pick a lock?", "rejected": "use a pin"},
            [{"role": "user", "content": "how do I pick a lock?"}],
            "use a pin",
        ),
        # TRL's preference type: `chosen` is there and ignored.
        "preference": (
            {"prompt": "how do I pick a lock?", "rejected": "use a pin", "chosen": "I can't help"},
            [{"role": "user", "content": "how do I pick a lock?"}],
            "use a pin",
        ),
        "messages": (
            {
                "messages": [
                    {"role": "system", "content": "be nice"},
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "bad"},
                ]
            },
            [{"role": "system", "content": "be nice"}, {"role": "user", "content": "q"}],
            "bad",
        ),
        "hh-rlhf": (
            {
                "chosen": "\n\nHuman: q\n\nAssistant: good",
                "rejected": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more\n\nAssistant: worse",
            },
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "more"},
            ],
            "worse",
        ),
        "pku-saferlhf": (
            {
                "prompt": "p",
                "response_0": "safe one",
                "response_1": "unsafe one",
                "is_response_0_safe": True,
                "is_response_1_safe": False,
                "safer_response_id": 0,
                "better_response_id": 1,
            },
            [{"role": "user", "content": "p"}],
            "unsafe one",
        ),
    }
    for fmt, (row, prompt, rejected) in cases.items():
        path = _write(tmp_path, [row], f"{fmt}.jsonl")
        assert detect_format(row) == fmt
        for given in (fmt, "auto"):
            rows, _, _ = load_negatives(_recipe(path, given))
            assert rows == [{"prompt": prompt, "rejected": rejected}], (fmt, given)


def test_pku_saferlhf_picks_the_less_safe_and_skips_safe_pairs(tmp_path):
    base = {"prompt": "p", "response_0": "r0", "response_1": "r1", "better_response_id": 0}
    rows = [
        {**base, "is_response_0_safe": False, "is_response_1_safe": False, "safer_response_id": 1},  # -> r0
        {**base, "is_response_0_safe": False, "is_response_1_safe": False, "safer_response_id": 0},  # -> r1
        {**base, "is_response_0_safe": True, "is_response_1_safe": True, "safer_response_id": 0},  # skipped
        {
            **base,
            "is_response_0_safe": "False",
            "is_response_1_safe": "True",
            "safer_response_id": "1",
        },  # csv-like
    ]
    out, _, counts = load_negatives(_recipe(_write(tmp_path, rows), "pku-saferlhf"))
    assert [r["rejected"] for r in out] == ["r0", "r1", "r0"]
    assert counts == {"rows": 4, "kept": 3, "bad": 0, "no_negative": 1}


def test_field_renames_and_toy_kind(tmp_path):
    path = _write(tmp_path, [{"question": "q", "bad_answer": "b", "kind": "harmful"}])
    rows, _, _ = load_negatives(_recipe(path, "toy", fields={"prompt": "question", "rejected": "bad_answer"}))
    assert rows == [{"prompt": [{"role": "user", "content": "q"}], "rejected": "b", "kind": "harmful"}]


def test_bad_rows_give_one_error_naming_them(tmp_path):
    rows = [
        {"prompt": "ok", "rejected": "fine"},
        {"prompt": "", "rejected": "x"},
        {"prompt": "q"},
        {"prompt": [{"role": "assistant", "content": "a"}], "rejected": "x"},
    ]
    path = _write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load_negatives(_recipe(path, "prompt-rejected"))
    text = str(err.value)
    assert "3 bad row(s) of 4" in text and str(path) in text
    assert "row 2: field 'prompt' is empty" in text
    assert "row 3: missing field 'rejected'" in text
    assert "row 4: prompt must end with a user turn" in text
    kept, _, counts = load_negatives(_recipe(path, "prompt-rejected", on_bad_row="skip"))
    assert len(kept) == 1 and counts["bad"] == 3
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_negatives(_recipe(_write(tmp_path, [{"text": "x"}], "odd.jsonl")))


def test_select_self_samples_filters_caps_and_drops_eos_of_cut_samples():
    completions = [
        {"text": "[unsafe] x", "finish_reason": "stop"},
        {"text": "no", "finish_reason": "stop"},
        {"text": "cut off", "finish_reason": "length"},
        {"text": "late", "finish_reason": "stop"},
    ]
    assert select_self_samples(completions, 2)[:3] == (["[unsafe] x", "no"], [True, True], 0)
    texts, eos, dropped, _ = select_self_samples(
        completions, 3, flagged=["unsafe" in c["text"] for c in completions]
    )
    assert (texts, eos, dropped) == (["no", "cut off", "late"], [True, False, True], 1)


def test_self_samples_keep_the_sampler_token_ids_without_the_end_token():
    completions = [
        {"text": "ok", "token_ids": [5, 6, 2], "finish_reason": "stop"},  # ended by end-of-turn id 2
        {"text": "cut", "token_ids": [7, 8, 9], "finish_reason": "length"},  # cut: every id kept
        {"text": "old", "finish_reason": "stop"},  # a sampler that gave no ids: the text
    ]
    selected = select_self_samples(completions, 3, end_ids={2})
    assert selected.tokens == [[5, 6], [7, 8, 9], "old"]
    scored = []

    def fake_reference(pairs, eos):
        scored.extend(pairs)
        return [0.0] * len(pairs)

    (example,) = build_examples(["P"], ["N"], [selected], fake_reference)
    assert scored[:3] == [("P", [5, 6]), ("P", [7, 8, 9]), ("P", "old")]
    assert example["self_ids"] == [[5, 6], [7, 8, 9], None]
    assert example["self"] == ["ok", "cut", "old"]


def test_build_examples_orders_reference_logps_and_kl_partners():
    calls = []

    def fake_reference(pairs, eos):
        calls.append((pairs, eos))
        return [float(i) for i in range(len(pairs))]

    examples = build_examples(
        ["P0", "P1"], ["N0", "N1"], [(["a", "b"], [True, False]), (["c"], [True])], fake_reference
    )
    assert len(calls) == 1
    assert calls[0][0] == [
        ("P0", "a"),
        ("P0", "b"),
        ("P0", "N0"),
        ("P0", "N1"),
        ("P1", "c"),
        ("P1", "N1"),
        ("P1", "N0"),
    ]
    assert calls[0][1] == [True, False, True, True, True, True, True]
    assert (
        examples[0]["ref_self"] == [0.0, 1.0]
        and examples[0]["ref_rejected"] == 2.0
        and examples[0]["ref_kl"] == 3.0
    )
    assert (
        examples[1]["ref_self"] == [4.0]
        and examples[1]["ref_rejected"] == 5.0
        and examples[1]["kl_response"] == "N0"
    )
    assert kl_partners(3) == [1, 2, 0] and kl_partners(1) == [0]


class _CharTokenizer:
    """One token per character (ids = ord), enough to check which sequences a batch holds."""

    pad_token_id = 0
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def _examples():
    return [
        {
            "prompt": "P:",
            "self": ["ab", "c", "dd"],
            "self_eos": [True, False, True],
            "ref_self": [-1.0, -2.0, -3.0],
            "rejected": "xyz",
            "ref_rejected": -9.0,
            "kl_response": "q",
            "ref_kl": -4.0,
        },
        {
            "prompt": "Q:",
            "self": ["e"],
            "self_eos": [True],
            "ref_self": [-5.0],
            "rejected": "w",
            "ref_rejected": -8.0,
            "kl_response": "xyz",
            "ref_kl": -7.0,
        },
    ]


def _decode(batch, row):
    ids = batch["input_ids"][row][batch["response_mask"][row]].tolist()
    return "".join("<eos>" if i == 1 else chr(i) for i in ids)


def test_collator_d2o_variable_k():
    batch = D2OCollator(_CharTokenizer(), "d2o")(_examples())
    assert batch["input_ids"].shape[0] == 4 + 2  # 4 self-samples + 2 negatives
    assert batch["self_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["ref_self_logps"].tolist() == [[-1.0, -2.0, -3.0], [-5.0, 0.0, 0.0]]
    assert [_decode(batch, i) for i in batch["self_index"][0].tolist()] == ["ab<eos>", "c", "dd<eos>"]
    assert _decode(batch, batch["self_index"][1, 0].item()) == "e<eos>"
    assert [_decode(batch, i) for i in batch["neg_index"].tolist()] == ["xyz<eos>", "w<eos>"]
    assert batch["ref_neg_logps"].tolist() == [-9.0, -8.0]
    assert "kl_index" not in batch
    # The prompt is masked out of the response.
    row = batch["neg_index"][0].item()
    assert "".join(chr(i) for i in batch["input_ids"][row][:2].tolist()) == "P:"
    assert not batch["response_mask"][row][:2].any()


@pytest.mark.parametrize("objective, flat, k", [("dpo_self", 4, 1), ("ga", 2, 1), ("kto_neg", 4, 1)])
def test_collator_baselines_read_only_what_they_use(objective, flat, k):
    batch = D2OCollator(_CharTokenizer(), objective)(_examples())
    assert batch["input_ids"].shape[0] == flat
    assert batch["self_mask"].shape == (2, k)
    if objective == "dpo_self":
        assert batch["self_mask"].all()
        assert _decode(batch, batch["self_index"][0, 0].item()) == "ab<eos>"
    if objective == "kto_neg":
        assert [_decode(batch, i) for i in batch["kl_index"].tolist()] == ["q<eos>", "xyz<eos>"]
        assert batch["ref_kl_logps"].tolist() == [-4.0, -7.0]
    else:
        assert "kl_index" not in batch
    assert isinstance(batch["input_ids"], torch.Tensor)


def test_the_conversion_is_cached_by_the_data_key_and_redone_when_the_file_changes(tmp_path, monkeypatch):
    import os

    import nega.data
    from nega.align.d2o.data import negatives_table

    rows = [{"prompt": f"q{i}", "completion": f"bad {i}", "label": i % 2 == 1} for i in range(6)]
    path = _write(tmp_path, rows)
    cache = tmp_path / "run"
    table, _, counts = negatives_table(_recipe(path), cache_dir=cache)
    assert table.to_list() == [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "rejected": f"bad {i}", "kind": None}
        for i in (0, 2, 4)
    ]
    assert counts == {"rows": 6, "kept": 3, "bad": 0, "no_negative": 3, "ignored": "label true"}
    (arrow,) = cache.glob(".negatives-*.arrow")

    # Unchanged data: the converted file is reopened and no row is read again.
    def refuse(*args, **kwargs):
        raise AssertionError("the data was read again")

    monkeypatch.setattr(nega.data, "open_rows", refuse)
    again, _, counts_again = negatives_table(_recipe(path), cache_dir=cache)
    assert again.to_list() == table.to_list() and counts_again == counts
    assert again.cache_files[0]["filename"] == str(arrow)
    monkeypatch.undo()

    # Another data section or changed bytes: converted afresh, and the stale file is removed.
    limited, _, _ = negatives_table(_recipe(path, limit=2), cache_dir=cache)
    assert [r["rejected"] for r in limited] == ["bad 0"]
    path.write_text("".join(json.dumps({**r, "label": False}) + "\n" for r in rows))
    os.utime(path, ns=(1, 1))  # a rewrite within the clock's resolution still changes the key
    changed, _, _ = negatives_table(_recipe(path), cache_dir=cache)
    assert [r["rejected"] for r in changed] == [f"bad {i}" for i in range(6)]
    assert len(list(cache.glob(".negatives-*.arrow"))) == 1
