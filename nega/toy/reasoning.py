"""The reasoning world: chained arithmetic solved one step per line, with exact per-step truth.

A problem and its gold solution:

    start with 7, add 5, multiply by 2, subtract 3.

    7 + 5 = 12
    12 * 2 = 24
    24 - 3 = 21
    answer: 21

Problems have 3 to 5 operations and values stay within [0, max_value] (default 99), so a tiny model
must know a few thousand two-digit facts ("57 + 8 = 65") and get each one right; one wrong fact
derails the final answer while every later line can still be right given the line before it. That makes errors step-local: the first wrong
step is the one to blame, which is what per-step credit assignment (METHODS.md §2) has to find.

The SFT corpus mimics noisy data: a share `noise_rate` of its solutions contains exactly one wrong step
(off by 1, 2 or 10, the usual slips) whose wrong value the following lines carry on from correctly.

Step truth (`step_truth`) judges each non-empty line on its own inputs: line i (< number of operations)
is right when it reads "A op B = C" with A the previous line's written result (the start value for
the first line), op and B the problem's i-th operation, and C = A op B. The line after the last
operation is right when it reads "answer: X" with X the previous line's result. Extra lines are wrong.
`verify` only compares the stated answer with the true one. `first_wrong_step` is the index of the
first wrong line, or len(lines) for a solution whose lines are all right but which stops early.

Measured on the tiny model built with nega.toy.RECOMMENDED_BUILD (900 steps): greedy accuracy about
0.6-0.7 and about 0.3 at temperature 1; nearly all first wrong steps are arithmetic slips on correctly
carried inputs.

Rows: `{"question", "solution" (gold, one step per line), "answer" (str)}`.
"""

from __future__ import annotations

import operator
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

# Operation words in the question -> (symbol in the solution, function).
OPERATIONS = {"add": ("+", operator.add), "subtract": ("-", operator.sub), "multiply by": ("*", operator.mul)}
SYMBOL_FUNCTIONS = {symbol: fn for symbol, fn in OPERATIONS.values()}
WORD_OF_SYMBOL = {symbol: word for word, (symbol, _) in OPERATIONS.items()}
ADD_SUBTRACT_RANGE = range(2, 10)
MULTIPLY_RANGE = range(2, 6)
START_RANGE = range(2, 21)
# Typical slips in the noisy SFT solutions: off by one, two, or a ten.
SLIPS = (-10, -2, -1, 1, 2, 10)

_QUESTION_RE = re.compile(r"start with (\d+)((?:, (?:add|subtract|multiply by) \d+)+)\.")
_OPERATION_RE = re.compile(r", (add|subtract|multiply by) (\d+)")
_STEP_RE = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_ANSWER_RE = re.compile(r"^\s*answer:\s*(-?\d+)\s*\.?\s*$")
_ANSWER_ANYWHERE_RE = re.compile(r"answer:\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    start: int
    operations: tuple[tuple[str, int], ...]  # (symbol, operand) per step

    @property
    def question(self) -> str:
        steps = "".join(f", {WORD_OF_SYMBOL[s]} {k}" for s, k in self.operations)
        return f"start with {self.start}{steps}."

    def values(self) -> list[int]:
        """The result after each operation."""
        values, v = [], self.start
        for symbol, k in self.operations:
            v = SYMBOL_FUNCTIONS[symbol](v, k)
            values.append(v)
        return values

    @property
    def answer(self) -> int:
        return self.values()[-1]

    def solution(self, slip_at: int | None = None, slip: int = 0) -> str:
        """The solution text; with `slip_at`, that step's result is off by `slip` and later steps
        carry on from the wrong value (a step-local error)."""
        lines, v = [], self.start
        for i, (symbol, k) in enumerate(self.operations):
            result = SYMBOL_FUNCTIONS[symbol](v, k) + (slip if i == slip_at else 0)
            lines.append(f"{v} {symbol} {k} = {result}")
            v = result
        lines.append(f"answer: {v}")
        return "\n".join(lines)


def parse_question(question) -> Problem | None:
    """The problem in a question text, a rendered prompt, chat messages, or a row with "question"."""
    text = question["question"] if isinstance(question, dict) else user_text(question)
    match = _QUESTION_RE.search(text)
    if match is None:
        return None
    operations = tuple((OPERATIONS[word][0], int(k)) for word, k in _OPERATION_RE.findall(match[2]))
    return Problem(int(match[1]), operations)


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


def step_truth(row_or_question, completion: str) -> list[bool]:
    """One bool per non-empty line: is that line right given its own inputs (see module docstring)."""
    problem = _problem(row_or_question)
    truth: list[bool] = []
    previous: int | None = problem.start
    for i, line in enumerate(solution_lines(completion)):
        if i < len(problem.operations):
            match = _STEP_RE.match(line)
            if match is None:
                truth.append(False)
                previous = None
                continue
            a, symbol, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
            right = (
                a == previous and (symbol, b) == problem.operations[i] and c == SYMBOL_FUNCTIONS[symbol](a, b)
            )
            truth.append(right)
            previous = c
        elif i == len(problem.operations):
            match = _ANSWER_RE.match(line)
            truth.append(match is not None and previous is not None and int(match[1]) == previous)
        else:
            truth.append(False)
    return truth


def first_wrong_step(row_or_question, completion: str) -> int | None:
    """Index of the first wrong line; len(lines) when every line is right but the solution stops
    before its answer line (the missing step is the wrong one); None for a complete, right solution."""
    truth = step_truth(row_or_question, completion)
    for i, right in enumerate(truth):
        if not right:
            return i
    complete = len(truth) == len(_problem(row_or_question).operations) + 1
    return None if complete else len(truth)


@dataclass(frozen=True)
class ReasoningOptions(WorldOptions):
    min_steps: int = 3  # operations per problem, at least
    max_steps: int = 5  # and at most
    max_value: int = 99  # every intermediate value of a problem stays in [0, max_value]
    noise_rate: float = 0.2  # share of SFT solutions with exactly one wrong step
    sft_problems: int = 4000  # problems in the SFT corpus (train split only)

    def problems(self) -> list[str]:
        found = check_int(self, "min_steps", 1, 8) + check_int(self, "max_steps", 1, 8)
        found += check_int(self, "max_value", 20, 999) + check_fraction(self, "noise_rate")
        found += check_int(self, "sft_problems", 1, 1_000_000)
        if not found and self.min_steps > self.max_steps:
            found.append(f"min_steps: must not exceed max_steps (got {self.min_steps} > {self.max_steps})")
        return found


class ReasoningWorld(World):
    """Chained arithmetic with per-step truth (see the module docstring)."""

    name = "reasoning"
    Options = ReasoningOptions

    def random_problem(self, rng) -> Problem:
        """Pick the operation kind first, then its operand, among those keeping the value in range."""
        opts = self.options
        start = v = rng.choice(START_RANGE)
        operations = []
        for _ in range(rng.randint(opts.min_steps, opts.max_steps)):
            choices = {
                "+": [k for k in ADD_SUBTRACT_RANGE if v + k <= opts.max_value],
                "-": [k for k in ADD_SUBTRACT_RANGE if v - k >= 0],
                "*": [k for k in MULTIPLY_RANGE if v * k <= opts.max_value and v >= 2],
            }
            symbol = rng.choice([s for s, ks in choices.items() if ks])
            k = rng.choice(choices[symbol])
            operations.append((symbol, k))
            v = SYMBOL_FUNCTIONS[symbol](v, k)
        return Problem(start, tuple(operations))

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
        rng = stream(self.seed, "sft/noise")
        pairs = []
        for problem in self.problems_of("train", self.options.sft_problems, "sft"):
            if rng.random() < self.options.noise_rate:
                slip_at = rng.randrange(len(problem.operations))
                value = problem.values()[slip_at]
                slip = rng.choice([s for s in SLIPS if value + s >= 0])
                pairs.append((problem.question, problem.solution(slip_at, slip)))
            else:
                pairs.append((problem.question, problem.solution()))
        return pairs

    def corpus(self) -> list[str]:
        """The SFT texts, problems of every split, and all numbers in range."""
        lines = [f"{q}\n{s}" for q, s in self.sft_pairs()]
        for split in ("validation", "test"):
            lines += [
                f"{p.question}\n{p.solution()}" for p in self.problems_of(split, 200, f"corpus/{split}")
            ]
        lines.append(" ".join(str(i) for i in range(self.options.max_value + 11)))
        return lines

    def rows(self, split: str, n: int) -> list[dict]:
        check_split(split)
        return [
            {"question": p.question, "solution": p.solution(), "answer": str(p.answer)}
            for p in self.problems_of(split, n, f"rows/{split}")
        ]

    def score(self, prompts: list, completions: list[str], **columns) -> dict[str, float]:
        """accuracy (stated answer right), all_steps_right (no wrong or missing step), step_accuracy
        (share of right lines over all lines), answered_rate (an "answer:" line is present)."""
        if not completions:
            return {"n": 0.0}
        truths = [step_truth(p, c) for p, c in zip(prompts, completions, strict=True)]
        all_lines = [t for truth in truths for t in truth]
        return {
            "accuracy": mean([float(verify(p, c)) for p, c in zip(prompts, completions, strict=True)]),
            "all_steps_right": mean(
                [float(first_wrong_step(p, c) is None) for p, c in zip(prompts, completions, strict=True)]
            ),
            "step_accuracy": mean([float(t) for t in all_lines]) if all_lines else 0.0,
            "answered_rate": mean([float(answer_of(c) is not None) for c in completions]),
            "n": float(len(completions)),
        }

    verify = staticmethod(verify)
    step_truth = staticmethod(step_truth)
    first_wrong_step = staticmethod(first_wrong_step)
    answer_of = staticmethod(answer_of)
