"""The number types of the recipe schema, shared by the common sections and every method's section.

Every float is finite (`SECTION_CONFIG` sets `allow_inf_nan=False`), and every count is a positive
integer under a ceiling far above any real run. YAML reads `1e400` as text and pydantic turns that text
into inf, so without these a typo in a learning rate or a count passes `nega validate` and fails minutes
into a run, or never ends. Only pydantic is imported here: the schema stays instant to load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

# Every section model uses this (plus validate_assignment for the common sections): unknown keys are
# errors, and inf/nan are rejected in every float field, including `float | None` ones.
SECTION_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


class MethodSection(BaseModel):
    """A method's recipe section (`d2o:`, `stepneg:`, ...). Its training stages hash `stage_key()`: the
    whole section less `BOOKKEEPING_FIELDS`, the fields declared to change none of the weights those
    stages train (as `TrainConfig.stage_key` does for the train section). A new field is hashed unless
    it is declared here, so it can never reuse a stage trained under another value."""

    model_config = SECTION_CONFIG
    BOOKKEEPING_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def stage_key(self) -> dict:
        return self.model_dump(exclude=self.BOOKKEEPING_FIELDS)


# Ceilings: generous, so no real recipe meets them, but finite, so a slip of the exponent is caught.
MAX_COUNT = 65_536  # batch sizes, samples per prompt, K, rounds, folds, ranks
MAX_ROWS = 1_000_000_000  # rows or questions read from a data set
MAX_STEPS = 10_000_000  # optimizer steps and step intervals
MAX_TOKENS = 1_000_000  # tokens per answer or per sequence
MAX_EPOCHS = 10_000
MAX_SEED = 2**32 - 1  # numpy's seeds stop here

# A constraint given again in `Field(...)` replaces the one of the same kind here (ge replaces ge), so
# a field with another floor spells out both bounds, e.g. `Field(2, ge=2, le=MAX_COUNT)`.
LearningRate = Annotated[float, Field(gt=0, le=1)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Rows = Annotated[int, Field(ge=1, le=MAX_ROWS)]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
Epochs = Annotated[float, Field(gt=0, le=MAX_EPOCHS)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def existing_path(value: str | None) -> str | None:
    """Expand `$VARS` and `~`; the file must exist. Kept as text so the resolved recipe stays readable.

    `data:<folder>/<file>` names a file of nega's data folder (`$NEGA_DATA`, else `../shared/data`;
    `nega.files.data_roots`) and resolves to its path."""
    if value is None:
        return None
    if value.startswith("data:"):
        from nega.files import find_data_file

        try:
            return str(find_data_file(*Path(value.removeprefix("data:")).parts))
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise ValueError(f"unset environment variable in path {value!r}")
    if not Path(expanded).exists():
        raise ValueError(
            f"file not found: {expanded!r} (from {value!r}; relative paths start at {os.getcwd()})"
        )
    return expanded
