"""Split a solution into reasoning steps ŷ_1..ŷ_L by a regex (default: one non-empty line per step).

Segments cover the text exactly: `"".join(split_steps(text)) == text` for every text. Whatever lies
between two matches (blank lines, stray whitespace) stays with the step before it, and anything before
the first match with the first step, so a prefix ŷ_1..i is always a literal prefix of the solution and
continuing it reproduces the same token stream the model wrote.

Example::

    >>> split_steps("7 + 5 = 12\\n\\n12 * 2 = 24\\nanswer: 24")
    ['7 + 5 = 12\\n\\n', '12 * 2 = 24\\n', 'answer: 24']
"""

from __future__ import annotations

import re
from functools import lru_cache

DEFAULT_STEP_REGEX = r"[^\n]*\S[^\n]*\n?"


@lru_cache(maxsize=16)
def _compiled(pattern: str) -> re.Pattern:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(
            f"stepneg.step_regex {pattern!r} is not a valid regular expression ({exc})"
        ) from None
    if regex.search("") is not None and regex.fullmatch("") is not None:
        # An empty match would make zero-length steps; every step must hold text.
        raise ValueError(
            f"stepneg.step_regex {pattern!r} matches the empty string; make each step hold a character"
        )
    return regex


def split_steps(text: str, pattern: str = DEFAULT_STEP_REGEX) -> list[str]:
    """Steps of `text`: one per non-empty regex match, covering the whole text (see the module doc)."""
    regex = _compiled(pattern)
    starts = [m.start() for m in regex.finditer(text) if m.end() > m.start()]
    if not starts:
        return [text] if text else []
    starts[0] = 0
    ends = starts[1:] + [len(text)]
    return [text[a:b] for a, b in zip(starts, ends, strict=True)]


def prefixes(steps: list[str]) -> list[str]:
    """["", ŷ_1, ŷ_1ŷ_2, ..., ŷ_1..L]: the bare prompt's prefix first, then one per step."""
    out = [""]
    for step in steps:
        out.append(out[-1] + step)
    return out
