"""The rationale world: yes/no comparisons whose label needs two memorised facts, and a noisy teacher.

Each made-up creature ("zib", "mok", ...) has a weight, an age and a speed from 1 to 9, fixed by the
seed. A question and its gold rationale:

    is the zib heavier than the mok?
    the zib weighs 7. the mok weighs 3. 7 is more than 3. answer: yes

("older" asks about ages, "the zib is 7 years old"; "faster" about speeds, "the zib has speed 7".)
The label needs two values that no question states; a student learns them only from rationales.
Questions are split by creature pair, so every test question compares a pair never compared in
training, while each creature's values are stated by training rationales. With the defaults (60
creatures, 3 properties) 400 training rows state each value about four times: a label-only student
must infer the values from a few yes/no outcomes, while a student also trained to explain is told
them. That is how rationale supervision helps the label here (distilling step by step, with
`predict: ` and `explain: ` prefixes in the user turn).

The SFT corpus (the student's starting point) uses a separate set of creatures: rationales for all of
their questions, but labels for the training-split pairs only, so that the starting student answers
`predict:` questions from the values it knows (it labels held-out pairs of those creatures right)
rather than from memorised labels. It knows the formats and how to compare, and none of the task
creatures' values.

The noisy teacher (`teacher_rationales`) writes the gold rationale with probability
1 - `teacher_error_rate`, otherwise one of three bad kinds, each ending with a parseable answer:

    wrong fact:        a value is wrong and the rest follows from it (the answer may flip)
    wrong comparison:  "7 is less than 3", and the answer follows from it (wrong)
    wrong conclusion:  right facts and comparison, flipped answer

`rationale_quality` is the share of four claims that hold: the first creature's value, the second
creature's value (facts of the asked property only), the comparison (true of the two values the
rationale states), and the answer (equals the label). A missing claim counts as wrong. Gold scores 1.

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

    fact: str  # "the {name} weighs {value}"
    relation: str  # the question's word asking whether the first creature's value is the larger

    @property
    def fact_re(self) -> re.Pattern:
        return re.compile(re.escape(self.fact).replace(r"\{name\}", r"(\w+)").replace(r"\{value\}", r"(\d+)"))


# The first `attributes` of these are used; more attributes = more facts to learn from the same rows.
ATTRIBUTES = (
    Attribute(fact="the {name} weighs {value}", relation="heavier"),
    Attribute(fact="the {name} is {value} years old", relation="older"),
    Attribute(fact="the {name} has speed {value}", relation="faster"),
)
VALUES = range(1, 10)
QUESTION = "is the {a} {relation} than the {b}?"
BAD_KINDS = ("wrong_fact", "wrong_comparison", "wrong_conclusion")


def _creature_names() -> list[str]:
    """Made-up consonant-vowel-consonant names, minus words the world's own texts use."""
    taken = {"has", "bus", "run", "gun", "sun", "dog", "cat", "man", "son", "ten", "not"}
    return [
        c1 + v + c2
        for c1 in "bdfgkmnprstvz"
        for v in "aeiou"
        for c2 in "bdfgkmnprstvz"
        if c1 + v + c2 not in taken
    ]


NAMES = _creature_names()
RELATIONS = {a.relation: a for a in ATTRIBUTES}

_QUESTION_RE = re.compile(r"is the (\w+) (" + "|".join(RELATIONS) + r") than the (\w+)\?")
_COMPARISON_RE = re.compile(r"(\d+) is (more|less) than (\d+)")
_ANSWER_RE = re.compile(r"answer: (yes|no)\b")


def rationale_text(
    attribute: Attribute, a: str, va: int, b: str, vb: int, comparison: str, answer: str
) -> str:
    fact_a = attribute.fact.format(name=a, value=va)
    fact_b = attribute.fact.format(name=b, value=vb)
    return f"{fact_a}. {fact_b}. {va} is {comparison} than {vb}. answer: {answer}"


def answer_of(rationale: str) -> str | None:
    """The first "answer: yes|no" in a rationale, or None."""
    match = _ANSWER_RE.search(rationale)
    return match[1] if match else None


def label_of(completion: str) -> str | None:
    """A predict-mode completion's label: a bare "yes"/"no", else the rationale's stated answer."""
    bare = completion.strip().lower().rstrip(".").strip()
    return bare if bare in LABELS else answer_of(completion)


def parse_question(question) -> tuple[str, str, str] | None:
    """(first creature, relation word, second creature) from a question, prompt, messages, or row."""
    text = question["question"] if isinstance(question, dict) else user_text(question)
    match = _QUESTION_RE.search(text)
    return (match[1], match[2], match[3]) if match else None


@dataclass(frozen=True)
class RationaleOptions(WorldOptions):
    entities: int = 60  # task creatures (questions and rows)
    attributes: int = 3  # properties per creature: weight, then age, then speed
    pretrain_entities: int = 40  # other creatures, used only by the SFT corpus to teach the formats
    teacher_error_rate: float = 0.3  # chance that one teacher rationale is bad
    teacher_samples: int = 5  # teacher rationales stored per row

    def problems(self) -> list[str]:
        # Two caps of 300 keep the question tables small (they grow with the square) and within NAMES.
        found = check_int(self, "entities", 4, 300) + check_int(self, "pretrain_entities", 2, 300)
        found += check_int(self, "attributes", 1, len(ATTRIBUTES))
        found += check_fraction(self, "teacher_error_rate") + check_int(self, "teacher_samples", 0, 64)
        return found


class RationaleWorld(World):
    """Comparisons of memorised creature properties with a noisy rationale teacher (see module docstring)."""

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
        """Every creature's value of every attribute, keyed by (name, the attribute's relation word)."""
        rng = stream(self.seed, "values")
        return {(name, a.relation): rng.choice(VALUES) for name in self._names for a in ATTRIBUTES}

    def value(self, name: str, attribute: Attribute) -> int:
        return self.values[(name, attribute.relation)]

    def _questions(self, names: list[str]) -> list[tuple[str, str]]:
        """(question, split of its pair) for every ordered pair and attribute without a tie."""
        out = []
        for a in names:
            for b in names:
                if a == b:
                    continue
                split = split_of("/".join(sorted((a, b))))
                for attribute in self.attributes:
                    if self.value(a, attribute) == self.value(b, attribute):
                        continue
                    out.append((QUESTION.format(a=a, relation=attribute.relation, b=b), split))
        return out

    @cached_property
    def _pools(self) -> dict[str, list[str]]:
        pools: dict[str, list[str]] = {}
        for question, split in self._questions(self.task_entities):
            pools.setdefault(split, []).append(question)
        return pools

    def _parsed(self, question) -> tuple[str, Attribute, str]:
        """(first creature, attribute, second creature)."""
        parsed = parse_question(question)
        if parsed is None or parsed[0] not in self._names or parsed[2] not in self._names:
            raise ValueError(f"not a question of this rationale world: {question!r}")
        return parsed[0], RELATIONS[parsed[1]], parsed[2]

    def label(self, question) -> str:
        a, attribute, b = self._parsed(question)
        return "yes" if self.value(a, attribute) > self.value(b, attribute) else "no"

    def gold_rationale(self, question) -> str:
        a, attribute, b = self._parsed(question)
        va, vb = self.value(a, attribute), self.value(b, attribute)
        return rationale_text(attribute, a, va, b, vb, "more" if va > vb else "less", self.label(question))

    def teacher_rationales(self, question_row, n: int, rng) -> list[str]:
        """n rationales from the noisy teacher; `rng` is a random.Random the caller seeds."""
        a, attribute, b = self._parsed(question_row)
        out = []
        for _ in range(n):
            va, vb = self.value(a, attribute), self.value(b, attribute)
            kind = rng.choice(BAD_KINDS) if rng.random() < self.options.teacher_error_rate else "gold"
            if kind == "wrong_fact":
                wrong = rng.choice([v for v in VALUES if v not in (va, vb)])
                va, vb = (wrong, vb) if rng.random() < 0.5 else (va, wrong)
            more = va > vb
            if kind == "wrong_comparison":
                more = not more
            answer = "yes" if more else "no"
            if kind == "wrong_conclusion":
                answer = "no" if answer == "yes" else "yes"
            out.append(rationale_text(attribute, a, va, b, vb, "more" if more else "less", answer))
        return out

    def rationale_quality(self, row, rationale: str) -> float:
        """Share of the four claims (two values, comparison, answer) that hold; see module docstring.

        Only facts of the asked attribute count: "the zib weighs 7" says nothing about its age.
        """
        a, attribute, b = self._parsed(row)
        stated: dict[str, int] = {}
        for name, value in attribute.fact_re.findall(rationale):
            stated.setdefault(name, int(value))
        fact_a = stated.get(a) == self.value(a, attribute)
        fact_b = stated.get(b) == self.value(b, attribute)
        comparison = _COMPARISON_RE.search(rationale)
        comparison_right = False
        if comparison is not None and a in stated and b in stated:
            x, word, y = int(comparison[1]), comparison[2], int(comparison[3])
            holds = x > y if word == "more" else x < y
            comparison_right = (x, y) == (stated[a], stated[b]) and holds
        answer_right = answer_of(rationale) == self.label(row)
        return (fact_a + fact_b + comparison_right + answer_right) / 4

    def sft_pairs(self) -> list[tuple[str, str]]:
        """Both modes on the pretraining creatures only, gold rationales: formats, not task facts."""
        pairs = []
        for question, split in self._questions(self.pretrain_entity_names):
            if split == "train":
                pairs.append((PREDICT_PREFIX + question, self.label(question)))
            pairs.append((EXPLAIN_PREFIX + question, self.gold_rationale(question)))
        stream(self.seed, "sft").shuffle(pairs)
        return pairs

    def corpus(self) -> list[str]:
        """Every question of every creature with its gold rationale, and the words bad rationales use."""
        lines = [
            f"{PREDICT_PREFIX}{q} {self.label(q)}\n{EXPLAIN_PREFIX}{q} {self.gold_rationale(q)}"
            for q, _ in self._questions(self._names)
        ]
        lines.append(" ".join(f"{w} is more than {v}. {v} is less than {w}." for w in VALUES for v in VALUES))
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
