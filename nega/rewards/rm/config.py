"""The `rm:` recipe section: a Bradley–Terry reward model, judged on held-out preference pairs
(docs/methods.md#rm)."""

from __future__ import annotations

from pydantic import Field, field_validator

from nega.bounds import Count, MethodSection, Rows, existing_path


class RMConfig(MethodSection):
    test_split: str = Field(
        "test",
        description="split of data.dataset (a hub dataset or the toy world) holding the test pairs; "
        "ignored when test_path or hold_out is set",
    )
    test_path: str | None = Field(
        None,
        description="local jsonl/json/csv/parquet file of test pairs (same format as data); data:<dir>/<file> "
        "names a file of the data folder",
    )
    hold_out: Rows | None = Field(
        None,
        description="take this many test pairs out of data's own rows (a seeded draw, before data.limit), "
        "never trained on: for a single local file with no test split",
    )
    test_limit: Rows | None = Field(500, description="test pairs scored (the first N)")
    calibration_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of the training pairs held out of training to calibrate the harm score "
        "(Platt scaling); 0 keeps every pair for training and the score is sigmoid(-reward)",
    )
    score_batch_size: Count = Field(16, description="pairs per forward pass when scoring")

    @field_validator("test_path")
    @classmethod
    def _file_exists(cls, v: str | None) -> str | None:
        return existing_path(v)
