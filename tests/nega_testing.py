"""Test helpers importable from any test folder (`from nega_testing import shared_data`).

They live outside conftest.py because several folders have a conftest.py, and `import conftest`
would pick whichever was imported first.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("NEGA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)

# A small corpus with enough structure that a trained tiny model gives varied, checkable outputs.
CORPUS_PAIRS = [
    (f"what is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a in range(10) for b in range(10)
] + [
    ("name a color.", "blue"),
    ("name an animal.", "a cat"),
    ("say hello.", "hello there, friend!"),
    ("count to five.", "one two three four five"),
]


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with the reason when it is absent (a user's clone)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset {path} not present (set NEGA_SHARED_DATA to the data folder)")
    return path
