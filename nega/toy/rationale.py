"""The rationale world: one-hop yes/no questions about memorised facts, and a noisy teacher.

Each made-up creature ("zib", "mok", ...) has a weight and an age from 1 to 9, fixed by the seed. A
question compares one of them with a number the question states, and its gold rationale says the
one fact needed, the comparison, and the answer:

    is the zib lighter than 5?
    the zib weighs 7. 7 is not less than 5. answer: no

("heavier" and "lighter" ask about weights, "older" and "younger" about ages: "the zib is 7 years
old".) The comparison is phrased in the question's direction ("is [not] more than" for heavier,
"is [not] less than" for lighter), so the answer reads off it: the tiny student learns to write
right answers after right facts quickly, where "7 is more than 5. answer: no" (the answer flipping
with the direction) stayed at chance. No question states the fact; a student learns it from rationales, where it is told in plain
words, or from labels, where it must infer it from a few yes/no outcomes. Questions are split one by
one, so a test question asks about a creature the training rows also ask about, with another number
or the other direction. With the defaults (40 creatures, 2 properties, 80 facts) 400 training rows
state each fact about five times, and five times as often in the teacher's samples: within a toy
run's budget a student taught to explain learns most facts, and its label follows (distilling step
by step, with `predict: ` and `explain: ` prefixes in the user turn).

The SFT corpus (the student's starting point) uses a separate set of creatures: rationales for all of
their questions, labels for the training-split ones only (each `predict_repeats` times: a one-token
label gets little of the gradient beside a rationale), so that the starting student answers
`predict:` questions from the facts it knows rather than from memorised labels. Built as
`RECOMMENDED_BUILD` says it answers held-out questions about those creatures right (0.92 label, 1.0
rationale quality, seed 0). It knows the formats and how to compare, and none of the task creatures'
facts: its own rationales about them state wrong facts, the negatives QCRD's lagged student supplies.
It still labels about 0.7 of task questions right from the number alone ("heavier than 8?" is
mostly no), the floor every objective starts from.

The noisy teacher (`teacher_rationales`) writes the gold rationale with probability
1 - `teacher_error_rate` (default 0.35), otherwise one of six bad kinds, so that bad rationales are
not all one-word edits of good ones:

    wrong fact:        "the zib weighs 3. 3 is less than 5. answer: yes"  (the rest follows from it)
    wrong property:    "the zib is 4 years old. 4 is less than 5. answer: yes"
    wrong creature:    "the mok weighs 2. 2 is less than 5. answer: yes"
    wrong comparison:  "the zib weighs 7. 7 is less than 5. answer: yes"
    wrong conclusion:  "the zib weighs 7. 7 is not less than 5. answer: yes"
    no reasoning:      "answer: yes" (either answer)

A bad rationale's answer is wrong only some of the time, so the majority answer of five samples is
usually right (self-consistency has something to vote on) and still wrong now and then, and the
rationales that agree with it (S_pos) include some with wrong facts: the discriminator's cue.
Measured over 400 training rows (seed 0): the majority is wrong on 30 rows, 376 of the 1643
rationales in S_pos are bad, and 46 of the 357 in S_neg are gold.

`rationale_quality` is the share of three claims that hold: the fact (the asked creature's value of
the asked property, as the first such fact the rationale states), the comparison (its first "X is
[not] more/less than Y" compares the stated value with the question's number, and is true, in
either direction), and the answer (equals the label). A missing claim counts as wrong. Gold
scores 1.

What the world can show: whether rationale supervision helps a tiny student's label, and whether
quality weighting and self-adversarial negatives help beyond positives alone. What it cannot show:
multi-hop reasoning (one fact per question by design, so a student learns it within minutes).

Rows: `{"question", "label" ("yes"|"no"), "rationale" (gold), "teacher_rationales" (list of
`teacher_samples` noisy rationales)}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from nega.toy.base import (
    World,
    WorldOptions,
    check_fraction,
    check_int,
    check_split,
    mean,
    split_of,
    stream,
    take_from_pool,
    user_text,
)

PREDICT_PREFIX = "predict: "
EXPLAIN_PREFIX = "explain: "
LABELS = ("yes", "no")


@dataclass(frozen=True)
class Attribute:
    """One numeric property of every creature: how a rationale states it and how a question asks it."""

    name: str  # "weight"
    fact: str  # "the {name} weighs {value}"
    more: str  # the question's word asking whether the value is larger: "heavier"
    less: str  # and smaller: "lighter"

    @property
    def fact_re(self) -> re.Pattern:
        return re.compile(re.escape(self.fact).replace(r"\{name\}", r"(\w+)").replace(r"\{value\}", r"(\d+)"))


# The first `attributes` of these are used.
ATTRIBUTES = (
    Attribute(name="weight", fact="the {name} weighs {value}", more="heavier", less="lighter"),
    Attribute(name="age", fact="the {name} is {value} years old", more="older", less="younger"),
)
VALUES = range(1, 10)
QUESTION = "is the {name} {relation} than {number}?"
BAD_KINDS = (
    "wrong_fact",
    "wrong_property",
    "wrong_creature",
    "wrong_comparison",
    "wrong_conclusion",
    "no_reasoning",
)


def _creature_names() -> list[str]:
    """Made-up consonant-vowel-consonant names, minus words the world's own texts use."""
    taken = {"has", "bus", "run", "gun", "sun", "dog", "cat", "man", "son", "ten", "not", "old", "yes"}
    return [
        c1 + v + c2
        for c1 in "bdfgkmnprstvz"
        for v in "aeiou"
        for c2 in "bdfgkmnprstvz"
        if c1 + v + c2 not in taken
    ]


NAMES = _creature_names()
# relation word -> (attribute, True when it asks "larger")
RELATIONS = {a.more: (a, True) for a in ATTRIBUTES} | {a.less: (a, False) for a in ATTRIBUTES}

_QUESTION_RE = re.compile(r"is the (\w+) (" + "|".join(RELATIONS) + r") than (\d+)\?")
_COMPARISON_RE = re.compile(r"(\d+) is (not )?(more|less) than (\d+)")
_ANSWER_RE = re.compile(r"answer: (yes|no)\b")


def rationale_text(
    attribute: Attribute, name: str, value: int, number: int, larger: bool, holds: bool, answer: str
) -> str:
    """The rationale's three claims; its comparison is phrased in the question's direction ("7 is
    not less than 5" for "lighter than 5"), so the answer reads off the comparison."""
    fact = attribute.fact.format(name=name, value=value)
    comparison = ("is " if holds else "is not ") + ("more" if larger else "less")
    return f"{fact}. {value} {comparison} than {number}. answer: {answer}"


def answer_of(rationale: str) -> str | None:
    """The first "answer: yes|no" in a rationale, or None."""
    match = _ANSWER_RE.search(rationale)
    return match[1] if match else None


def label_of(completion: str) -> str | None:
    """A predict-mode completion's label: a bare "yes"/"no", else the rationale's stated answer."""
    bare = completion.strip().lower().rstrip(".").strip()
    return bare if bare in LABELS else answer_of(completion)


def parse_question(question) -> tuple[str, str, int] | None:
    """(creature, relation word, number) from a question, prompt, messages, or row."""
    text = question["question"] if isinstance(question, dict) else user_text(question)
    match = _QUESTION_RE.search(text)
    return (match[1], match[2], int(match[3])) if match else None


@dataclass(frozen=True)
class RationaleOptions(WorldOptions):
    entities: int = 40  # task creatures (questions and rows)
    attributes: int = 2  # properties per creature: weight, then age
    pretrain_entities: int = 20  # other creatures, used only by the SFT corpus to teach the formats
    teacher_error_rate: float = 0.35  # chance that one teacher rationale is bad
    teacher_samples: int = 5  # teacher rationales stored per row
    predict_repeats: int = 3  # times each SFT label pair appears: a one-token answer gets little gradient

    def problems(self) -> list[str]:
        # The caps keep the question tables small and within NAMES.
        found = check_int(self, "entities", 4, 400) + check_int(self, "pretrain_entities", 2, 400)
        found += check_int(self, "attributes", 1, len(ATTRIBUTES))
        found += check_fraction(self, "teacher_error_rate") + check_int(self, "teacher_samples", 0, 64)
        found += check_int(self, "predict_repeats", 1, 100)
        return found


class RationaleWorld(World):
    """One-hop questions about memorised creature facts with a noisy rationale teacher (see module docstring)."""

    name = "rationale"
    Options = RationaleOptions

    @cached_property
    def _names(self) -> list[str]:
        names = list(NAMES)
        stream(self.seed, "names").shuffle(names)
        return names[: self.options.entities + self.options.pretrain_entities]

    @property
    def attributes(self) -> tuple[Attribute, ...]:
        return ATTRIBUTES[: self.options.attributes]

    @property
    def task_entities(self) -> list[str]:
        return self._names[: self.options.entities]

    @property
    def pretrain_entity_names(self) -> list[str]:
        return self._names[self.options.entities :]

    @cached_property
    def values(self) -> dict[tuple[str, str], int]:
        """Every creature's value of every attribute, keyed by (name, attribute name)."""
        rng = stream(self.seed, "values")
        return {(name, a.name): rng.choice(VALUES) for name in self._names for a in ATTRIBUTES}

    def value(self, name: str, attribute: Attribute) -> int:
        return self.values[(name, attribute.name)]

    def _questions(self, names: list[str]) -> list[tuple[str, str]]:
        """(question, its split) for every creature, attribute, direction and number but its value."""
        out = []
        for name in names:
            for attribute in self.attributes:
                for relation in (attribute.more, attribute.less):
                    for number in VALUES:
                        if number == self.value(name, attribute):
                            continue
                        question = QUESTION.format(name=name, relation=relation, number=number)
                        out.append((question, split_of(question)))
        return out

    @cached_property
    def _pools(self) -> dict[str, list[str]]:
        pools: dict[str, list[str]] = {}
        for question, split in self._questions(self.task_entities):
            pools.setdefault(split, []).append(question)
        return pools

    def _parsed(self, question) -> tuple[str, Attribute, bool, int]:
        """(creature, attribute, asks "larger", number)."""
        parsed = parse_question(question)
        if parsed is None or parsed[0] not in self._names:
            raise ValueError(f"not a question of this rationale world: {question!r}")
        attribute, larger = RELATIONS[parsed[1]]
        if attribute not in self.attributes:
            raise ValueError(
                f"not a question of this rationale world (property {attribute.name}): {question!r}"
            )
        return parsed[0], attribute, larger, parsed[2]

    @staticmethod
    def _answer(value: int, number: int, larger: bool) -> str:
        return "yes" if (value > number) == larger else "no"

    def label(self, question) -> str:
        name, attribute, larger, number = self._parsed(question)
        return self._answer(self.value(name, attribute), number, larger)

    def gold_rationale(self, question) -> str:
        name, attribute, larger, number = self._parsed(question)
        value = self.value(name, attribute)
        holds = (value > number) == larger
        return rationale_text(
            attribute, name, value, number, larger, holds, self._answer(value, number, larger)
        )

    def teacher_rationales(self, question_row, n: int, rng) -> list[str]:
        """n rationales from the noisy teacher; `rng` is a random.Random the caller seeds."""
        name, attribute, larger, number = self._parsed(question_row)
        out = []
        for _ in range(n):
            kind = rng.choice(BAD_KINDS) if rng.random() < self.options.teacher_error_rate else "gold"
            if kind == "no_reasoning":
                out.append(f"answer: {rng.choice(LABELS)}")
                continue
            stated_attribute, stated_name = attribute, name
            value = self.value(name, attribute)
            if kind == "wrong_property" and len(self.attributes) > 1:
                stated_attribute = rng.choice([a for a in self.attributes if a != attribute])
                value = self.value(name, stated_attribute)
            elif kind == "wrong_creature":
                stated_name = rng.choice([n for n in self.task_entities if n != name])
                value = self.value(stated_name, attribute)
            elif kind in ("wrong_fact", "wrong_property"):
                value = rng.choice([v for v in VALUES if v != value])
            if value == number:  # a stated value equal to the number: no comparison to write
                value = rng.choice([v for v in VALUES if v != number])
            holds = (value > number) == larger
            if kind == "wrong_comparison":
                holds = not holds
            answer = "yes" if holds else "no"
            if kind == "wrong_conclusion":
                answer = "no" if holds else "yes"
            out.append(rationale_text(stated_attribute, stated_name, value, number, larger, holds, answer))
        return out

    def rationale_quality(self, row, rationale: str) -> float:
        """Share of the three claims (fact, comparison, answer) that hold; see the module docstring.

        Only facts of the asked creature and property count: "the zib is 7 years old" says nothing
        about its weight.
        """
        name, attribute, _, number = self._parsed(row)
        stated = next((int(v) for n, v in attribute.fact_re.findall(rationale) if n == name), None)
        fact_right = stated == self.value(name, attribute)
        comparison = _COMPARISON_RE.search(rationale)
        comparison_right = False
        if comparison is not None and stated is not None:
            x, negated, word, y = int(comparison[1]), comparison[2], comparison[3], int(comparison[4])
            holds = (x > y if word == "more" else x < y) != bool(negated)
            comparison_right = (x, y) == (stated, number) and holds
        answer_right = answer_of(rationale) == self.label(row)
        return (fact_right + comparison_right + answer_right) / 3

    def sft_pairs(self) -> list[tuple[str, str]]:
        """Both modes on the pretraining creatures only, gold rationales: formats, not task facts."""
        pairs = []
        for question, split in self._questions(self.pretrain_entity_names):
            if split == "train":
                pairs += [(PREDICT_PREFIX + question, self.label(question))] * self.options.predict_repeats
            pairs.append((EXPLAIN_PREFIX + question, self.gold_rationale(question)))
        stream(self.seed, "sft").shuffle(pairs)
        return pairs

    def corpus(self) -> list[str]:
        """Every question of every creature with its gold rationale, and the words bad rationales use."""
        lines = [
            f"{PREDICT_PREFIX}{q} {self.label(q)}\n{EXPLAIN_PREFIX}{q} {self.gold_rationale(q)}"
            for q, _ in self._questions(self._names)
        ]
        for name in self._names:
            lines.append(". ".join(a.fact.format(name=name, value=self.value(name, a)) for a in ATTRIBUTES))
        lines.append(
            " ".join(f"{w} is more than {v}. {v} is not more than {w}." for w in VALUES for v in VALUES)
        )
        lines.append(
            " ".join(f"{v} is less than {w}. {w} is not less than {v}." for w in VALUES for v in VALUES)
        )
        return lines

    def rows(self, split: str, n: int) -> list[dict]:
        check_split(split)
        rng = stream(self.seed, f"rows/{split}")
        questions = take_from_pool(
            sorted(self._pools.get(split, [])),
            n,
            rng,
            world=self.name,
            split=split,
            hint="raise the `entities` option or ask for fewer rows",
        )
        return [
            {
                "question": q,
                "label": self.label(q),
                "rationale": self.gold_rationale(q),
                "teacher_rationales": self.teacher_rationales(q, self.options.teacher_samples, rng),
            }
            for q in questions
        ]

    def score(self, prompts: list, completions: list[str], **columns) -> dict[str, float]:
        """accuracy over predict-mode prompts (a bare label, or a stated answer); rationale_quality and
        rationale_accuracy (stated answer right) over explain-mode prompts, those containing "explain: ".
        A mode with no prompts leaves its metrics out; n_predict and n_explain are always there.
        """
        labels = columns.get("label") or [self.label(p) for p in prompts]
        predict, explain = [], []
        for prompt, completion, label in zip(prompts, completions, labels, strict=True):
            if EXPLAIN_PREFIX.strip() in user_text(prompt):
                explain.append((prompt, completion, label))
            else:
                predict.append((completion, label))
        metrics = {"n_predict": float(len(predict)), "n_explain": float(len(explain))}
        if predict:
            metrics["accuracy"] = mean([float(label_of(c) == label) for c, label in predict])
        if explain:
            metrics["rationale_quality"] = mean([self.rationale_quality(p, c) for p, c, _ in explain])
            metrics["rationale_accuracy"] = mean([float(answer_of(c) == label) for _, c, label in explain])
        return metrics

    answer_of = staticmethod(answer_of)
    label_of = staticmethod(label_of)
