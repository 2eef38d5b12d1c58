"""What every toy world shares: the split of its prompt space, option checking, and prompt parsing.

A world's prompt space is split once, by a hash of each item's split key, into fixed shares. The split
of an item therefore never depends on the seed or on how many rows are asked for: `rows("test", 50)`
and `rows("test", 500)` draw from the same pool, and no test item can ever appear in a training split
or in the world's SFT corpus.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, fields
from typing import Any, ClassVar

SPLITS = ("train", "validation", "test")

# Share of the prompt space in each split, in order; the SFT corpus is drawn from "train" only.
SPLIT_SHARES = {"train": 0.7, "validation": 0.1, "test": 0.2}


def split_of(key: str) -> str:
    """The split an item belongs to, from a hash of its key (stable across seeds, runs and machines)."""
    digest = hashlib.sha256(key.encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for split, share in SPLIT_SHARES.items():
        edge += share
        if position < edge:
            return split
    return SPLITS[-1]


def stream(seed: int, purpose: str) -> random.Random:
    """An independent, reproducible random stream per (seed, purpose), e.g. (0, "rows/test")."""
    return random.Random(f"{seed}/{purpose}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def user_text(prompt: Any) -> str:
    """The user's text from a prompt given as plain text, rendered chat text, or chat messages.

    Oracles search this text for their question pattern, so a prompt rendered through a chat template
    (role markers around it) scores the same as the bare user message.
    """
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return str(prompt)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass(frozen=True)
class WorldOptions:
    """Base of each world's options: a frozen dataclass whose fields are the allowed option names."""

    def problems(self) -> list[str]:
        """Every invalid value, as 'name: what is wrong (got value)'; empty when all are valid."""
        return []

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def check_fraction(options: WorldOptions, name: str) -> list[str]:
    value = getattr(options, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        return [f"{name}: must be a number between 0 and 1 (got {value!r})"]
    return []


def check_int(options: WorldOptions, name: str, low: int, high: int) -> list[str]:
    value = getattr(options, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return [f"{name}: must be an integer from {low} to {high} (got {value!r})"]
    return []


class World:
    """A synthetic task with an exact oracle. Subclasses set `name` and `Options` and implement:

    corpus() -> list[str]                      text covering everything the world can produce (tokenizer)
    sft_pairs() -> list[tuple[str, str]]       (user message, response): the starting model's corpus
    rows(split, n) -> list[dict]               the method's dataset, deterministic given the seed
    score(prompts, completions, **columns)     averaged oracle metrics
    """

    name: ClassVar[str]
    Options: ClassVar[type[WorldOptions]]

    def __init__(self, seed: int = 0, options: WorldOptions | None = None):
        self.seed = seed
        self.options = options if options is not None else self.Options()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, options={self.options})"

    def corpus(self) -> list[str]:
        raise NotImplementedError

    def sft_pairs(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def rows(self, split: str, n: int) -> list[dict]:
        raise NotImplementedError

    def score(self, prompts: list, completions: list[str], **columns) -> dict[str, float]:
        raise NotImplementedError


def take_from_pool(pool: list, n: int, rng: random.Random, *, world: str, split: str, hint: str) -> list:
    """n distinct items of `pool` in a seeded order; a clear error when the split's pool is too small."""
    if n > len(pool):
        raise ValueError(
            f"the {world} world's {split} split holds {len(pool)} distinct items, {n} were asked; {hint}"
        )
    return rng.sample(pool, n)
