"""The reasoning world: sums of terms solved one step per line, with several valid paths and exact
per-step truth.

A problem and three of its valid solutions:

    start with 12, add 3 groups of 4, subtract 5, add 2 rows of 6.

    inline            products first          positives first
    3 * 4 = 12        3 * 4 = 12              3 * 4 = 12
    12 + 12 = 24      2 * 6 = 12              2 * 6 = 12
    24 - 5 = 19       12 + 12 = 24            12 + 12 = 24
    2 * 6 = 12        24 - 5 = 19             24 + 12 = 36
    19 + 12 = 31      19 + 12 = 31            36 - 5 = 31
    answer: 31        answer: 31              answer: 31

A problem is a start value and 2 or 3 signed terms (`min_steps`, `max_steps`): a number from 2 to 9
("add 5") or a product ("add 3 groups of 4", "subtract 2 rows of 6"). Every intermediate value of
the three paths above stays within [0, max_value] (default 60: the tiny toy model learns its
two-digit facts within a few minutes of training, and gets about half of the problems right). The
SFT corpus and the rows' gold solutions use one of the three paths, drawn per problem, so a model's
own right solutions often differ from the gold ones.

Step truth does not follow one path: it keeps the terms still to combine, each with its sign, and
judges each non-empty line on its own inputs. "A * B = C" is right when A and B are the factors of a
product term not yet computed (either order) and C = A·B; the term then holds C. "A + B = C" is right
when A and B are the values of two terms of the same sign, "A - B = C" when A's term is positive and
B's negative, and C the true result; the two terms become one holding C. "answer: X" is right when
one positive term is left and X is its value. Any other line is wrong; a wrong line still updates
the terms as written (its result C is carried on), so later lines are judged on their own inputs and
the first wrong step is the one to blame. Lines after the answer line are wrong.

The SFT corpus has systematic errors that recur across problems, each carried on by later lines:

- carry (`carry_error_rate`, per eligible line): an addition whose ones digits sum to 10 or more
  drops the carry (27 + 15 = 32), a subtraction that needs a borrow drops it (42 - 17 = 35);
- operation confusion (`confusion_rate`, per "rows of" term): "3 rows of 4" computed as 3 + 4 = 7
  (the "groups of" wording is never confused);
- slips (`slip_rate`, per line): a result off by 1 or 2.

A dropped carry and a dropped borrow cancel, and 2 rows of 2 is 4 either way, so some solutions
reach the right answer through wrong steps: spurious positives for outcome-only training to learn.
`error_type` names the kind of a solution's first wrong step (carry, operation, slip, operand: an
input that is not a term's value, format, early_answer, answer, extra, or stopped: every line right
but no answer line).

Built as `RECOMMENDED_BUILD` says (seed 0), the toy model is right on 0.56 of test problems
greedily and 0.39 at temperature 0.7; the first errors of its distinct wrong samples are slips (50%),
operation confusions (21%), dropped carries (15%) and misplaced inputs (14%); 16 of its 76 distinct
right samples are spurious, and half differ from the gold text. Rollouts from it (K = 5, R = 2) put
the first pit on the true first wrong step for 55% of its negatives (25% earlier, 20% later).

What the world can show: whether training on a model's own wrong solutions removes recurring error
types (carries, the rows-of confusion) beyond what its own right solutions teach, whether per-step
credit finds the step that broke a solution, and whether outcome-only positives carry spurious
steps. What it cannot show: anything beyond two-digit arithmetic over a fixed grammar.

Rows: `{"question", "solution" (gold, one step per line, a drawn path), "answer" (str)}`. Test
problems are plentiful (tens of thousands at the defaults).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from nega.toy.base import (
    World,
    WorldOptions,
    check_fraction,
    check_int,
    check_split,
    mean,
    split_of,
    stream,
    user_text,
)

START_RANGE = range(2, 31)
CONSTANT_RANGE = range(2, 10)
FACTOR_A_RANGE = range(2, 6)
FACTOR_B_RANGE = range(2, 10)
CUES = ("groups", "rows")  # "rows of" is the wording the noisy SFT corpus confuses with a sum
STYLES = ("inline", "products_first", "positives_first")
SLIPS = (-2, -1, 1, 2)
ERROR_TYPES = (
    "carry",
    "operation",
    "slip",
    "operand",
    "format",
    "early_answer",
    "answer",
    "extra",
    "stopped",
)

_QUESTION_RE = re.compile(r"start with (\d+)((?:, (?:add|subtract) \d+(?: (?:groups|rows) of \d+)?)+)\.")
_TERM_RE = re.compile(r", (add|subtract) (\d+)(?: (groups|rows) of (\d+))?")
_STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_ANSWER_RE = re.compile(r"^\s*answer:\s*(-?\d+)\s*\.?\s*$")
_ANSWER_ANYWHERE_RE = re.compile(r"answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Term:
    """+/- a number, or +/- a product a·b asked as "a <cue> of b"."""

    sign: int  # +1 or -1
    value: int | None = None  # the number, for a plain term
    factors: tuple[int, int] | None = None  # (a, b), for a product term
    cue: str | None = None  # "groups" or "rows", for a product term

    @property
    def amount(self) -> int:
        return self.factors[0] * self.factors[1] if self.factors else self.value

    @property
    def text(self) -> str:
        verb = "add" if self.sign > 0 else "subtract"
        if self.factors:
            return f"{verb} {self.factors[0]} {self.cue} of {self.factors[1]}"
        return f"{verb} {self.value}"


def carry_dropped(a: int, op: str, b: int) -> int | None:
    """The result of `a op b` with its carry (+) or borrow (-) dropped, or None when none is needed."""
    if a < 0 or b < 0:
        return None
    if op == "+" and a % 10 + b % 10 >= 10:
        return a + b - 10
    if op == "-" and a % 10 < b % 10 and a >= b:
        return a - b + 10
    return None


@dataclass(frozen=True)
class Problem:
    start: int
    terms: tuple[Term, ...]

    @property
    def question(self) -> str:
        return f"start with {self.start}" + "".join(f", {t.text}" for t in self.terms) + "."

    @property
    def answer(self) -> int:
        return self.start + sum(t.sign * t.amount for t in self.terms)

    def path_values(self) -> list[int]:
        """Every intermediate value of the three styles' paths (for the range check)."""
        values, v = [], self.start
        for t in self.terms:
            v += t.sign * t.amount
            values.append(v)
        positives = self.start + sum(t.amount for t in self.terms if t.sign > 0)
        return values + [positives] + [t.amount for t in self.terms]

    def solution(
        self, style: str = "inline", rng: random.Random | None = None, noise: dict | None = None, **slip
    ) -> str:
        """The solution along `style`'s path. With `noise` ({"carry", "confusion", "slip"} rates) and
        `rng`, errors are drawn as the module docstring describes. `slip_at=i, slip=d` puts the
        result of computed line i off by d instead (a single step-local error), as a fixed example.
        """
        writer = _Writer(rng or random.Random(0), noise or {}, slip.get("slip_at"), slip.get("slip", 0))
        products: dict[int, int] = {}
        if style != "inline":
            for i, t in enumerate(self.terms):
                if t.factors:
                    products[i] = writer.product(t)
        if style == "positives_first":
            order = [i for i, t in enumerate(self.terms) if t.sign > 0]
            order += [i for i, t in enumerate(self.terms) if t.sign < 0]
        elif style in STYLES:
            order = list(range(len(self.terms)))
        else:
            raise ValueError(f"unknown solution style {style!r}; choose one of {', '.join(STYLES)}")
        v = self.start
        for i in order:
            t = self.terms[i]
            if t.factors and i not in products:
                products[i] = writer.product(t)
            v = writer.combine(v, "+" if t.sign > 0 else "-", products.get(i, t.value))
        writer.lines.append(f"answer: {v}")
        return "\n".join(writer.lines)


class _Writer:
    """Writes solution lines, drawing the SFT corpus's errors (or one fixed slip) as it goes."""

    def __init__(self, rng: random.Random, noise: dict, slip_at: int | None, slip: int):
        self.rng, self.noise, self.slip_at, self.slip = rng, noise, slip_at, slip
        self.lines: list[str] = []

    def _drawn(self, kind: str) -> bool:
        rate = self.noise.get(kind, 0.0)
        return rate > 0 and self.rng.random() < rate

    def _slipped(self, c: int) -> int:
        if self.slip_at is not None:
            return c + self.slip if len(self.lines) == self.slip_at else c
        if self._drawn("slip"):
            return max(0, c + self.rng.choice(SLIPS))
        return c

    def product(self, term: Term) -> int:
        a, b = term.factors
        if term.cue == "rows" and self._drawn("confusion"):
            op, c = "+", a + b
        else:
            op, c = "*", self._slipped(a * b)
        self.lines.append(f"{a} {op} {b} = {c}")
        return c

    def combine(self, v: int, op: str, x: int) -> int:
        c = v + x if op == "+" else v - x
        dropped = carry_dropped(v, op, x)
        c = dropped if dropped is not None and self._drawn("carry") else self._slipped(c)
        self.lines.append(f"{v} {op} {x} = {c}")
        return c


def parse_question(question) -> Problem | None:
    """The problem in a question text, a rendered prompt, chat messages, or a row with "question"."""
    text = question["question"] if isinstance(question, dict) else user_text(question)
    match = _QUESTION_RE.search(text)
    if match is None:
        return None
    terms = []
    for verb, first, cue, second in _TERM_RE.findall(match[2]):
        sign = 1 if verb == "add" else -1
        if cue:
            terms.append(Term(sign, factors=(int(first), int(second)), cue=cue))
        else:
            terms.append(Term(sign, value=int(first)))
    return Problem(int(match[1]), tuple(terms))


def answer_of(completion: str) -> int | None:
    """The first stated "answer: X" in a completion, or None."""
    match = _ANSWER_ANYWHERE_RE.search(completion)
    return int(match[1]) if match else None


def solution_lines(completion: str) -> list[str]:
    """Steps are the non-empty lines (the default step split of per-step RL)."""
    return [line for line in completion.splitlines() if line.strip()]


def _problem(row_or_question) -> Problem:
    problem = parse_question(row_or_question)
    if problem is None:
        raise ValueError(f"not a reasoning-world question: {row_or_question!r}")
    return problem


def verify(row_or_question, completion: str) -> bool:
    """True when the completion's stated answer equals the problem's answer."""
    return answer_of(completion) == _problem(row_or_question).answer


# A remaining term while a solution is checked: (sign, value or None, factors or None); a product not
# computed yet has value None. A state is the sorted tuple of the remaining terms (a multiset).
_Term = tuple[int, int | None, tuple[int, int] | None]
_State = tuple[_Term, ...]


def check_lines(row_or_question, completion: str) -> list[tuple[bool, str | None]]:
    """(right, error type or None) per non-empty line, by the rules of the module docstring.

    When equal values make a line ambiguous (two terms hold 12, or "3 + 5" may join two terms or
    confuse the product 3·5), every reading is tried and the one with the most right lines wins
    (then the one whose first wrong line comes latest), so a right solution is never judged wrong by
    a bad guess and an error is blamed where the rest of the solution says it happened.
    """
    problem = _problem(row_or_question)
    items = [(1, problem.start, None)]
    items += [
        (t.sign, None, tuple(sorted(t.factors))) if t.factors else (t.sign, t.value, None)
        for t in problem.terms
    ]
    lines = solution_lines(completion)
    memo: dict[tuple[int, _State], list[tuple[bool, str | None]]] = {}

    def best(index: int, state: _State) -> list[tuple[bool, str | None]]:
        if index == len(lines):
            return []
        key = (index, state)
        if key not in memo:
            options = [[check, *best(index + 1, after)] for check, after in _readings(state, lines[index])]
            memo[key] = max(options, key=_reading_rank)
        return memo[key]

    return best(0, tuple(sorted(items, key=repr)))


def _reading_rank(checks: list[tuple[bool, str | None]]) -> tuple[int, list[bool]]:
    """Most right lines first, then the latest first wrong line."""
    rights = [right for right, _ in checks]
    return sum(rights), rights


_DONE: _State = ((0, None, None),)  # the state after an answer line: every later line is extra


def _readings(state: _State, line: str) -> list[tuple[tuple[bool, str | None], _State]]:
    """Every way to read `line` against the remaining terms: (check, the terms after it), best first.

    A line is right only as a legal step: * on a product's factors, + on two terms of one sign, - from
    a positive term to a negative one, each with the true result. The wrong readings, in order: the
    legal step with a wrong result (carry, slip), a product's factors joined by + or - or two terms
    joined by the wrong operation (operation), and an input that is no term's value (operand).
    """
    if state == _DONE:
        return [((False, "extra"), _DONE)]
    answer = _ANSWER_RE.match(line)
    if answer is not None:
        if len(state) != 1:
            return [((False, "early_answer"), _DONE)]
        sign, value, _ = state[0]
        right = value is not None and sign > 0 and int(answer[1]) == value
        return [((right, None if right else "answer"), _DONE)]
    step = _STEP_RE.match(line)
    if step is None:
        return [((False, "format"), state)]
    a, op, b, c = int(step[1]), step[2], int(step[3]), int(step[4])
    right_result = {"+": a + b, "-": a - b, "*": a * b}[op]
    readings = []

    def after(removed: list[int], added: _Term) -> _State:
        kept = [t for k, t in enumerate(state) if k not in removed]
        return tuple(sorted([*kept, added], key=repr))

    for k, (sign, value, factors) in enumerate(state):
        if value is None and factors == tuple(sorted((a, b))):
            if op == "*":
                check = (True, None) if c == right_result else (False, "slip")
            else:
                check = (False, "operation")
            readings.append((check, after([k], (sign, c, None))))
    for i, (sign_a, value_a, _) in enumerate(state):
        for j, (sign_b, value_b, _) in enumerate(state):
            if i == j or value_a != a or value_b != b or value_a is None or value_b is None:
                continue
            legal = (op == "+" and sign_a == sign_b) or (op == "-" and sign_a > 0 > sign_b)
            if legal and c == right_result:
                check = (True, None)
            elif legal:
                check = (False, "carry" if carry_dropped(a, op, b) == c else "slip")
            else:
                check = (False, "operation")
            readings.append((check, after([i, j], (sign_a if op != "-" else 1, c, None))))
    if not readings:
        for k, (sign, value, _) in enumerate(state):
            if value is not None and value in (a, b):
                readings.append(((False, "operand"), after([k], (sign, c, None))))
        readings = readings or [((False, "operand"), state)]
    order = {None: 0, "carry": 1, "slip": 2, "operation": 3, "operand": 4}
    return sorted(dict.fromkeys(readings), key=lambda r: (not r[0][0], order[r[0][1]]))


def step_truth(row_or_question, completion: str) -> list[bool]:
    """One bool per non-empty line: is that line right given its own inputs (see module docstring)."""
    return [right for right, _ in check_lines(row_or_question, completion)]


def first_wrong_step(row_or_question, completion: str) -> int | None:
    """Index of the first wrong line; len(lines) when every line is right but no answer line closes
    the solution (the missing step is the wrong one); None for a complete, right solution."""
    checks = check_lines(row_or_question, completion)
    for i, (right, _) in enumerate(checks):
        if not right:
            return i
    complete = any(_ANSWER_RE.match(line) for line in solution_lines(completion))
    return None if complete else len(checks)


def error_type(row_or_question, completion: str) -> str | None:
    """The kind of the first wrong step (one of ERROR_TYPES), or None for a complete, right solution."""
    checks = check_lines(row_or_question, completion)
    for right, kind in checks:
        if not right:
            return kind
    complete = any(_ANSWER_RE.match(line) for line in solution_lines(completion))
    return None if complete else "stopped"


@dataclass(frozen=True)
class ReasoningOptions(WorldOptions):
    min_steps: int = 2  # terms per problem after the start value, at least
    max_steps: int = 3  # and at most
    max_value: int = 60  # every intermediate value of every path stays in [0, max_value]
    product_share: float = 0.4  # chance that a term is a product
    carry_error_rate: float = 0.25  # SFT corpus: chance that a line needing a carry or borrow drops it
    confusion_rate: float = 0.3  # SFT corpus: chance that a "rows of" product is computed as a sum
    slip_rate: float = 0.02  # SFT corpus: chance that a line's result is off by 1 or 2
    sft_problems: int = 4000  # problems in the SFT corpus (train split only)

    def problems(self) -> list[str]:
        found = check_int(self, "min_steps", 1, 8) + check_int(self, "max_steps", 1, 8)
        found += check_int(self, "max_value", 20, 999)
        for name in ("product_share", "carry_error_rate", "confusion_rate", "slip_rate"):
            found += check_fraction(self, name)
        found += check_int(self, "sft_problems", 1, 1_000_000)
        if not found and self.min_steps > self.max_steps:
            found.append(f"min_steps: must not exceed max_steps (got {self.min_steps} > {self.max_steps})")
        return found

    @property
    def noise(self) -> dict[str, float]:
        return {"carry": self.carry_error_rate, "confusion": self.confusion_rate, "slip": self.slip_rate}


class ReasoningWorld(World):
    """Sums of number and product terms with per-step truth (see the module docstring)."""

    name = "reasoning"
    Options = ReasoningOptions

    def random_problem(self, rng) -> Problem:
        """Pick the kind of each term (number or product, its sign) first, then the term, among those
        that keep every path's values within [0, max_value]."""
        opts = self.options
        while True:
            start = v = rng.choice(START_RANGE)
            positives = start
            terms = []
            for _ in range(rng.randint(opts.min_steps, opts.max_steps)):
                product = rng.random() < opts.product_share
                choices: dict[int, list[Term]] = {}
                for sign in (1, -1):
                    if product:
                        options = [
                            Term(sign, factors=(a, b), cue=rng.choice(CUES))
                            for a in FACTOR_A_RANGE
                            for b in FACTOR_B_RANGE
                        ]
                    else:
                        options = [Term(sign, value=k) for k in CONSTANT_RANGE]
                    choices[sign] = [
                        t
                        for t in options
                        if 0 <= v + sign * t.amount <= opts.max_value
                        and (sign < 0 or positives + t.amount <= opts.max_value)
                    ]
                signs = [s for s, ts in choices.items() if ts]
                if not signs:
                    break
                term = rng.choice(choices[rng.choice(signs)])
                terms.append(term)
                v += term.sign * term.amount
                positives += term.amount if term.sign > 0 else 0
            if len(terms) >= opts.min_steps:
                return Problem(start, tuple(terms))

    @staticmethod
    def style_of(problem: Problem) -> str:
        """The path of a problem's gold solution, fixed by its question."""
        return random.Random(problem.question).choice(STYLES)

    def problems_of(self, split: str, n: int, purpose: str) -> list[Problem]:
        """n distinct problems of `split`, drawn from a seeded stream named `purpose`."""
        rng = stream(self.seed, purpose)
        seen: set[str] = set()
        problems = []
        misses = 0
        # Give up once 20000 draws in a row bring nothing new: the split has no more problems.
        while len(problems) < n and misses < 20_000:
            problem = self.random_problem(rng)
            question = problem.question
            if question in seen or split_of(question) != split:
                misses += 1
                continue
            misses = 0
            seen.add(question)
            problems.append(problem)
        if len(problems) == n:
            return problems
        raise ValueError(
            f"the reasoning world found only {len(problems)} distinct {split} problems of {n} asked; "
            "raise max_value or max_steps, or ask for fewer rows"
        )

    def sft_pairs(self) -> list[tuple[str, str]]:
        """Train problems, each along a drawn path, with the corpus's systematic errors drawn in."""
        rng = stream(self.seed, "sft/noise")
        return [
            (p.question, p.solution(rng.choice(STYLES), rng, self.options.noise))
            for p in self.problems_of("train", self.options.sft_problems, "sft")
        ]

    def corpus(self) -> list[str]:
        """The SFT texts, problems of every split, and all numbers in range."""
        lines = [f"{q}\n{s}" for q, s in self.sft_pairs()]
        for split in ("validation", "test"):
            lines += [
                f"{p.question}\n{p.solution(self.style_of(p))}"
                for p in self.problems_of(split, 200, f"corpus/{split}")
            ]
        lines.append(" ".join(str(i) for i in range(self.options.max_value + 11)))
        return lines

    def rows(self, split: str, n: int) -> list[dict]:
        check_split(split)
        return [
            {"question": p.question, "solution": p.solution(self.style_of(p)), "answer": str(p.answer)}
            for p in self.problems_of(split, n, f"rows/{split}")
        ]

    def score(self, prompts: list, completions: list[str], **columns) -> dict[str, float]:
        """accuracy (stated answer right), all_steps_right (no wrong or missing step), step_accuracy
        (share of right lines over all lines), answered_rate (an "answer:" line is present),
        spurious_rate (right answer through a wrong step), carry_error_rate and operation_error_rate
        (the first wrong step is a dropped carry or borrow / an operation confusion)."""
        if not completions:
            return {"n": 0.0}
        pairs = list(zip(prompts, completions, strict=True))
        checks = [check_lines(p, c) for p, c in pairs]
        all_lines = [right for check in checks for right, _ in check]
        correct = [verify(p, c) for p, c in pairs]
        first = [first_wrong_step(p, c) for p, c in pairs]
        kinds = [error_type(p, c) for p, c in pairs]
        return {
            "accuracy": mean([float(ok) for ok in correct]),
            "all_steps_right": mean([float(f is None) for f in first]),
            "step_accuracy": mean([float(t) for t in all_lines]) if all_lines else 0.0,
            "answered_rate": mean([float(answer_of(c) is not None) for c in completions]),
            "spurious_rate": mean(
                [float(ok and f is not None) for ok, f in zip(correct, first, strict=True)]
            ),
            "carry_error_rate": mean([float(k == "carry") for k in kinds]),
            "operation_error_rate": mean([float(k == "operation") for k in kinds]),
            "n": float(len(completions)),
        }

    verify = staticmethod(verify)
    step_truth = staticmethod(step_truth)
    first_wrong_step = staticmethod(first_wrong_step)
    error_type = staticmethod(error_type)
    answer_of = staticmethod(answer_of)
