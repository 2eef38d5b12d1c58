"""The rationale world: yes/no comparisons whose label needs two memorised facts, and a noisy teacher.

Each made-up creature has a weight from 1 to 9, fixed by the seed. A question and its gold rationale:

    is the zib heavier than the mok?
    the zib weighs 7. the mok weighs 3. 7 is more than 3. answer: yes

The label needs both weights, which no question states; they are learnt from rationales. Questions are
split by creature pair, so every test question compares a pair the student never saw compared, while
each creature's weight is stated by many training rationales. A label-only student must infer every
weight from yes/no outcomes; a student also trained to explain is told them, which is how rationale
supervision helps the label here (distilling step by step, with `predict: ` / `explain: ` prefixes).

The SFT corpus (the student's starting point) teaches both modes on a separate set of creatures, so
the starting student knows the formats and how to compare, but none of the task creatures' weights.

The noisy teacher (`teacher_rationales`) writes the gold rationale with probability
1 - `teacher_error_rate`, otherwise one of three bad kinds, each ending with a parseable answer:

    wrong fact:        a weight is wrong and the rest follows from it (the answer may flip)
    wrong comparison:  "7 is less than 3", and the answer follows from it (wrong)
    wrong conclusion:  right facts and comparison, flipped answer

`rationale_quality` is the share of four claims that hold: the first creature's weight, the second
creature's weight, the comparison (true of the two weights the rationale states), and the answer
(equals the label). A missing claim counts as wrong. Gold scores 1.

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

# Made-up creature names; the seed chooses which are task creatures and which teach the formats.
NAMES = (
    "zib mok taf dax pim rul vek sot nal gof bix wem kep lun yat hod fep jix cav tob "
    "ril sul mip dor zek wib gan hup lod nif bep kav quz rof tev yom zad gub pev wol "
    "sib fim dut jol nep rax vum hib kol tas wug fod lix mup nar zol bez pof gat"
).split()
WEIGHTS = range(1, 10)
# Relation word in the question -> is the answer "yes" when the first weight is larger?
RELATIONS = {"heavier": True, "lighter": False}
QUESTION = "is the {a} {relation} than the {b}?"
BAD_KINDS = ("wrong_fact", "wrong_comparison", "wrong_conclusion")

_QUESTION_RE = re.compile(r"is the (\w+) (heavier|lighter) than the (\w+)\?")
_FACT_RE = re.compile(r"the (\w+) weighs (\d+)")
_COMPARISON_RE = re.compile(r"(\d+) is (more|less) than (\d+)")
_ANSWER_RE = re.compile(r"answer: (yes|no)\b")


def rationale_text(a: str, wa: int, b: str, wb: int, comparison: str, answer: str) -> str:
    return f"the {a} weighs {wa}. the {b} weighs {wb}. {wa} is {comparison} than {wb}. answer: {answer}"


def answer_of(rationale: str) -> str | None:
    """The first "answer: yes|no" in a rationale, or None."""
    match = _ANSWER_RE.search(rationale)
    return match[1] if match else None


def label_of(completion: str) -> str | None:
    """A predict-mode completion's label: a bare "yes"/"no", else the rationale's stated answer."""
    bare = completion.strip().lower().rstrip(".").strip()
    return bare if bare in LABELS else answer_of(completion)


def parse_question(question) -> tuple[str, str, str] | None:
    """(first creature, relation, second creature) from a question, prompt, messages, or row."""
    text = question["question"] if isinstance(question, dict) else user_text(question)
    match = _QUESTION_RE.search(text)
    return (match[1], match[2], match[3]) if match else None


@dataclass(frozen=True)
class RationaleOptions(WorldOptions):
    entities: int = 30  # task creatures (questions and rows)
    pretrain_entities: int = 16  # other creatures, used only by the SFT corpus to teach the formats
    teacher_error_rate: float = 0.3  # chance that one teacher rationale is bad
    teacher_samples: int = 5  # teacher rationales stored per row

    def problems(self) -> list[str]:
        found = check_int(self, "entities", 4, len(NAMES)) + check_int(
            self, "pretrain_entities", 2, len(NAMES)
        )
        found += check_fraction(self, "teacher_error_rate") + check_int(self, "teacher_samples", 0, 64)
        if not found and self.entities + self.pretrain_entities > len(NAMES):
            found.append(
                f"entities + pretrain_entities: at most {len(NAMES)} creature names exist "
                f"(got {self.entities} + {self.pretrain_entities})"
            )
        return found


class RationaleWorld(World):
    """Comparisons of memorised creature weights with a noisy rationale teacher (see module docstring)."""

    name = "rationale"
    Options = RationaleOptions

    @cached_property
    def weights(self) -> dict[str, int]:
        """Every creature's weight, task and pretraining ones alike."""
        rng = stream(self.seed, "weights")
        return {name: rng.choice(WEIGHTS) for name in self._names}

    @cached_property
    def _names(self) -> list[str]:
        names = list(NAMES)
        stream(self.seed, "names").shuffle(names)
        return names[: self.options.entities + self.options.pretrain_entities]

    @property
    def task_entities(self) -> list[str]:
        return self._names[: self.options.entities]

    @property
    def pretrain_entity_names(self) -> list[str]:
        return self._names[self.options.entities :]

    def _questions(self, names: list[str]) -> list[tuple[str, str]]:
        """(question, split of its pair) for every ordered, untied pair and relation among `names`."""
        out = []
        for a in names:
            for b in names:
                if a == b or self.weights[a] == self.weights[b]:
                    continue
                split = split_of("/".join(sorted((a, b))))
                for relation in RELATIONS:
                    out.append((QUESTION.format(a=a, relation=relation, b=b), split))
        return out

    @cached_property
    def _pools(self) -> dict[str, list[str]]:
        pools: dict[str, list[str]] = {}
        for question, split in self._questions(self.task_entities):
            pools.setdefault(split, []).append(question)
        return pools

    def _parsed(self, question) -> tuple[str, str, str]:
        parsed = parse_question(question)
        if parsed is None or parsed[0] not in self.weights or parsed[2] not in self.weights:
            raise ValueError(f"not a question of this rationale world: {question!r}")
        return parsed

    def label(self, question) -> str:
        a, relation, b = self._parsed(question)
        first_heavier = self.weights[a] > self.weights[b]
        return "yes" if first_heavier == RELATIONS[relation] else "no"

    def gold_rationale(self, question) -> str:
        a, relation, b = self._parsed(question)
        wa, wb = self.weights[a], self.weights[b]
        comparison = "more" if wa > wb else "less"
        return rationale_text(a, wa, b, wb, comparison, self.label(question))

    def teacher_rationales(self, question_row, n: int, rng) -> list[str]:
        """n rationales from the noisy teacher; `rng` is a random.Random the caller seeds."""
        a, relation, b = self._parsed(question_row)
        out = []
        for _ in range(n):
            wa, wb = self.weights[a], self.weights[b]
            kind = rng.choice(BAD_KINDS) if rng.random() < self.options.teacher_error_rate else "gold"
            if kind == "wrong_fact":
                wrong = rng.choice([w for w in WEIGHTS if w not in (wa, wb)])
                wa, wb = (wrong, wb) if rng.random() < 0.5 else (wa, wrong)
            more = wa > wb
            if kind == "wrong_comparison":
                more = not more
            answer = "yes" if more == RELATIONS[relation] else "no"
            if kind == "wrong_conclusion":
                answer = "no" if answer == "yes" else "yes"
            out.append(rationale_text(a, wa, b, wb, "more" if more else "less", answer))
        return out

    def rationale_quality(self, row, rationale: str) -> float:
        """Share of the four claims (two weights, comparison, answer) that hold; see module docstring."""
        a, _, b = self._parsed(row)
        stated = {}
        for name, weight in _FACT_RE.findall(rationale):
            stated.setdefault(name, int(weight))
        fact_a = stated.get(a) == self.weights[a]
        fact_b = stated.get(b) == self.weights[b]
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
        for question, _ in self._questions(self.pretrain_entity_names):
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
        lines.append(
            " ".join(f"{w} is more than {v}. {v} is less than {w}." for w in WEIGHTS for v in WEIGHTS)
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
