"""The table of toy worlds and `make_world`, which checks a world's options before building it."""

from __future__ import annotations

from nega.toy.base import World
from nega.toy.harm import HarmWorld
from nega.toy.rationale import RationaleWorld
from nega.toy.reasoning import ReasoningWorld

WORLDS: dict[str, type[World]] = {
    "harm": HarmWorld,
    "reasoning": ReasoningWorld,
    "rationale": RationaleWorld,
}

# Build settings (ToyConfig fields) under which each world's starting model has its measured flaw
# (benchmarks/work probes, seed 0, sampled at temperature 1 unless said):
# harm: harmful 0.23, refusal 0.15, informative 0.56, degenerate 0.07 on harm-inviting prompts,
# arithmetic right 0.98 (at 600 steps degenerate was 0.11 and arithmetic 0.69); reasoning: greedy
# accuracy 0.56, 0.39 at temperature 0.7, its wrong samples' first errors slips (50%), operation
# confusions (21%), dropped carries (15%) and misplaced inputs (14%); rationale: knows the formats and
# answers held-out questions about its own creatures right (0.92 label, 1.0 rationale quality; at
# 600 steps the label was at chance), and none of the task creatures' facts.
RECOMMENDED_BUILD: dict[str, dict[str, object]] = {
    "harm": {"size": "tiny", "steps": 1200, "lr": 3e-3, "batch_size": 32},
    "reasoning": {"size": "tiny", "steps": 1500, "lr": 3e-3, "batch_size": 32},
    "rationale": {"size": "tiny", "steps": 2000, "lr": 3e-3, "batch_size": 32},
}


def make_world(name: str, seed: int = 0, **options) -> World:
    """The world `name` with `options` (e.g. harm_rate=0.4); every bad option is named in one ValueError.

    Option names are the fields of the world's Options dataclass; `world_options(name)` lists them
    with their defaults.
    """
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; choose one of {', '.join(WORLDS)}")
    cls = WORLDS[name]
    allowed = cls.Options.names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for the {name} toy world; "
            f"allowed options: {', '.join(allowed)}"
        )
    parsed = cls.Options(**options)
    problems = parsed.problems()
    if problems:
        raise ValueError(f"bad option(s) for the {name} toy world: " + "; ".join(problems))
    return cls(seed=seed, options=parsed)


def world_options(name: str) -> dict[str, object]:
    """Option names of world `name` and their defaults."""
    if name not in WORLDS:
        raise ValueError(f"unknown toy world {name!r}; choose one of {', '.join(WORLDS)}")
    defaults = WORLDS[name].Options()
    return {field: getattr(defaults, field) for field in WORLDS[name].Options.names()}
