"""QCRD discriminator: augmentation, class balance without false positives, learning a separable toy set."""

from __future__ import annotations

import random

import pytest
import torch

from nega.distill.qcrd.discriminator import Discriminator, training_set, word_mask, word_replace

GOOD = "the weights are stated and the comparison holds so the answer follows".split()
BAD = "banana purple sideways jumps over nothing while clocks melt quietly".split()


def separable_pairs(n_pos: int, n_neg: int, seed: int = 0):
    rng = random.Random(seed)
    questions = [f"is item {i} heavier than item {i + 1}?" for i in range(50)]

    def sentence(words):
        return " ".join(rng.choice(words) for _ in range(rng.randint(6, 10)))

    pos = [(rng.choice(questions), sentence(GOOD)) for _ in range(n_pos)]
    neg = [(rng.choice(questions), sentence(BAD)) for _ in range(n_neg)]
    return pos, neg


@pytest.fixture(scope="module")
def tokenizer():
    from nega.toy.model import build_tokenizer

    # One thread: a 64-wide encoder gains nothing from two, and on a busy 2-core machine two OpenMP
    # threads made its steps 30x slower (measured: 20 steps 23 s vs 0.8 s).
    torch.set_num_threads(1)
    pos, neg = separable_pairs(30, 30, seed=9)
    lines = [f"question: {q}\nrationale: {r}" for q, r in pos + neg]
    return build_tokenizer(lines * 3, vocab_size=300)


def test_word_mask_and_replace_change_words_but_keep_length():
    rng = random.Random(0)
    text = "one two three four five six seven eight"
    masked = word_mask(text, rng, 0.5, "<unk>")
    assert masked != text and len(masked.split()) == 8 and "<unk>" in masked.split()
    replaced = word_replace(text, rng, 0.5, ["zzz"])
    assert replaced != text and len(replaced.split()) == 8 and "zzz" in replaced.split()
    # rate 0 still changes one word: an augmented copy is never an exact duplicate
    assert sum(a != b for a, b in zip(word_mask(text, rng, 0.0, "M").split(), text.split(), strict=True)) == 1


def test_corrupted_positives_are_negatives_and_the_classes_weigh_alike():
    # One rationale per input with 3 in 4 agreeing with gold (the PaLM files): positives are the majority.
    pos, neg = separable_pairs(40, 10)
    data, weights = training_set(pos, neg, random.Random(0), rate=0.2)
    labelled = {1.0: [p for p, y in data if y == 1.0], 0.0: [p for p, y in data if y == 0.0]}
    assert labelled[1.0] == pos  # every positive is a real one, none made up
    assert labelled[0.0][:10] == neg
    corrupted = labelled[0.0][10:]
    assert len(corrupted) == 30 and all(p not in pos for p in corrupted)
    assert {q for q, _ in corrupted} <= {q for q, _ in pos}  # copies of positives, labelled 0
    assert weights == {"positive": 1.0, "negative": 1.0}  # 40 vs 40 after augmentation

    # Positives the minority: nothing is made up for them; the loss weighs them up instead.
    pos, neg = separable_pairs(10, 30)
    data, weights = training_set(pos, neg, random.Random(0))
    assert [p for p, y in data if y == 1.0] == pos and [p for p, y in data if y == 0.0] == neg
    assert weights == {"positive": pytest.approx(2.0), "negative": pytest.approx(40 / 60)}
    # Effective class mass equal: count × weight is the same for both classes.
    assert 10 * weights["positive"] == pytest.approx(30 * weights["negative"])


def test_fit_never_trains_a_corrupted_rationale_as_good(tokenizer, monkeypatch):
    """Record every (pair, label, weight) the fit's loss sees under class imbalance."""
    from nega.distill.qcrd import discriminator as module

    pos, neg = separable_pairs(30, 6, seed=3)
    seen = []
    real_bce = torch.nn.functional.binary_cross_entropy_with_logits

    def recording_bce(logits, targets, weight=None):
        seen.append((targets.tolist(), weight.tolist()))
        return real_bce(logits, targets, weight=weight)

    disc = Discriminator.build("encoder", tokenizer, seed=0)
    batches = []
    real_batch = disc._batch
    monkeypatch.setattr(disc, "_batch", lambda pairs: batches.append(list(pairs)) or real_batch(pairs))
    monkeypatch.setattr(module.nn.functional, "binary_cross_entropy_with_logits", recording_bce)
    metrics = disc.fit(pos, neg, steps=6, batch_size=16, seed=0)
    originals, corrupted_seen = set(pos), 0
    for pairs, (targets, weights) in zip(batches, seen, strict=True):
        for pair, y, w in zip(pairs, targets, weights, strict=True):
            assert y == 0.0 or pair in originals  # label 1 only for a real positive
            assert w == pytest.approx(1.0)  # 30 positives vs 6 negatives + 24 corrupted copies
            corrupted_seen += y == 0.0 and pair not in set(neg)
    assert corrupted_seen > 0  # the corrupted copies were trained on, as negatives
    assert metrics["augmented"] == 24
    assert metrics["weight_positive"] == metrics["weight_negative"] == pytest.approx(1.0)


def test_encoder_discriminator_learns_a_separable_set(tokenizer):
    torch.manual_seed(0)
    pos, neg = separable_pairs(60, 15, seed=1)  # imbalanced: negatives topped up with corrupted positives
    disc = Discriminator.build("encoder", tokenizer, lr=3e-3, seed=0)
    metrics = disc.fit(pos, neg, steps=60, batch_size=16, seed=0)
    held_pos, held_neg = separable_pairs(40, 40, seed=2)
    accuracy = disc.accuracy(held_pos, held_neg)
    assert accuracy > 0.8, (accuracy, metrics)
    assert metrics["augmented"] == 45
    scores = disc.scores(held_pos[:3] + held_neg[:3])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert min(scores[:3]) > max(scores[3:])


def test_fit_needs_both_classes(tokenizer):
    disc = Discriminator.build("encoder", tokenizer)
    pos, _ = separable_pairs(5, 0)
    with pytest.raises(ValueError, match="both classes"):
        disc.fit(pos, [], steps=1)


def test_student_backbone_discriminator_trains_and_round_trips(tokenizer, tmp_path):
    from nega.config import LoraConfig
    from nega.toy.model import build_model, save_model

    model_dir = save_model(build_model(tokenizer, size="tiny", seed=0), tokenizer, tmp_path / "student")
    pos, neg = separable_pairs(40, 40, seed=3)
    disc = Discriminator.build(
        "student", tokenizer, model_path=model_dir, lora_cfg=LoraConfig(r=8, alpha=16), lr=3e-3
    )
    frozen = {n: p.detach().clone() for n, p in disc.module.named_parameters() if not p.requires_grad}
    assert frozen, "the base weights of the student backbone stay frozen"
    disc.fit(pos, neg, steps=40, batch_size=16, seed=0)
    held_pos, held_neg = separable_pairs(30, 30, seed=4)
    assert disc.accuracy(held_pos, held_neg) > 0.8
    for name, param in disc.module.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    before = disc.scores(held_pos[:4])
    path = disc.save(tmp_path / "disc.safetensors")
    fresh = Discriminator.build(
        "student", tokenizer, model_path=model_dir, lora_cfg=LoraConfig(r=8, alpha=16), seed=5
    )
    assert fresh.scores(held_pos[:4]) != pytest.approx(before)
    fresh.load(path)
    assert fresh.scores(held_pos[:4]) == pytest.approx(before, abs=1e-5)


class RecordingDiscriminator:
    """Scores 1.0 a pair it was trained on and 0.25 any other: shows which discriminator saw what."""

    def __init__(self):
        self.trained: set = set()

    def fit(self, positives, negatives, **kwargs):
        self.trained |= set(positives) | set(negatives)
        return {"loss": 0.0}

    def scores(self, pairs, **kwargs):
        return [1.0 if pair in self.trained else 0.25 for pair in pairs]


def qcrd_examples(n: int) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "question": f"question {i}",
            "positives": [f"good {i}", f"fine {i}"],
            "negatives": [f"bad {i}"],
        }
        for i in range(n)
    ]


def test_cross_fitted_scores_come_from_a_discriminator_that_never_saw_the_input():
    from nega.distill.qcrd.discriminator import cross_fitted_scores, fold_of

    examples = qcrd_examples(40)
    discs = [RecordingDiscriminator() for _ in range(3)]
    scored, stats = cross_fitted_scores(discs, examples, train=True, steps=1, fold_seed=7)
    assert [e["id"] for e in scored] == [e["id"] for e in examples]
    assert all(s == 0.25 for e in scored for s in e["pos_scores"] + e["neg_scores"])
    assert sum(s["held_out"] for s in stats) == 40 and all(s["held_out"] > 0 for s in stats)
    # each discriminator trained on every input outside its own fold
    for k, disc in enumerate(discs):
        outside = {e["question"] for e in examples if fold_of(e, 3, 7) != k}
        assert {q for q, _ in disc.trained} == outside
    # folds depend on the id and the seed only: the same in every epoch of a run
    assert [fold_of(e, 3, 7) for e in examples] == [fold_of(dict(e, positives=[]), 3, 7) for e in examples]
    # one fold: trained on everything and scored in-sample
    (single,) = [RecordingDiscriminator()]
    in_sample, _ = cross_fitted_scores([single], examples, train=True, steps=1)
    assert all(s == 1.0 for e in in_sample for s in e["pos_scores"] + e["neg_scores"])


def test_a_fold_with_one_class_stops_with_what_to_change():
    """Few inputs can leave a fold's training part without a positive: one clear error naming the fold
    and the fix, before any discriminator trains."""
    import pytest

    from nega.data import DataError
    from nega.distill.qcrd.discriminator import cross_fitted_scores, fold_of

    examples = qcrd_examples(8)
    for e in examples:  # positives only in fold 1: fold 1's discriminator trains on fold 0 alone
        if fold_of(e, 2, 0) == 0:
            e["positives"] = []
    discs = [RecordingDiscriminator() for _ in range(2)]
    with pytest.raises(DataError, match=r"fold 2/2: .* 0 positive .* qcrd.disc_folds: 1"):
        cross_fitted_scores(discs, examples, train=True, steps=1)
    assert not discs[1].trained


def test_cross_fitting_removes_what_the_discriminator_memorised(tokenizer):
    """Labels at random on distinct rationales: nothing to learn, everything to memorise. Scored in
    sample, the discriminator looks accurate; cross-fitted, it is at chance, as it should be."""
    from nega.distill.qcrd.discriminator import cross_fitted_scores

    rng = random.Random(3)
    words = GOOD + BAD
    examples = []
    for i in range(24):
        texts = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(2)]
        examples.append({"id": f"q{i}", "question": f"is item {i} heavier than item {i + 1}?",
                         "positives": texts[:1], "negatives": texts[1:]})  # fmt: skip

    def accuracy(folds: int) -> float:
        discs = [Discriminator.build("encoder", tokenizer, seed=k, lr=3e-3) for k in range(folds)]
        _, stats = cross_fitted_scores(discs, examples, train=True, steps=150, batch_size=16)
        return sum(s["held_out_accuracy"] * s["held_out"] for s in stats) / len(examples)

    assert accuracy(1) >= 0.85
    assert accuracy(2) <= 0.7
