"""Load a method's dataset: hub id, local file (jsonl/json/csv/parquet) or the toy world.

Rows come back as plain dicts with the recipe's `data.fields` renames applied, so each method's
`data.py` converts one known shape. Bad rows raise one `DataError` naming the file, the row numbers
and the field, unless `data.on_bad_row: skip`, which drops and counts them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path


class DataError(Exception):
    """A dataset that cannot be used as given; the message names the source, rows and the fix."""


DATA_PREFIX = "data:"  # `data.path: data:hh-rlhf/harmless-base_test.jsonl` names a file in the data folder


def data_roots() -> list[Path]:
    """Folders holding nega's public datasets (advbench/, xstest/, gsm8k/, hh-rlhf/, ...), in search order:
    `$NEGA_DATA` when set; else `shared/data` beside the repository holding the nega package. Never the
    current directory: a recipe reads the same files wherever it is started from."""
    import os

    if os.environ.get("NEGA_DATA"):
        return [Path(os.path.expanduser(os.environ["NEGA_DATA"]))]
    return [(Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()]


def find_data_file(*parts: str) -> Path:
    """A file under the data folder; FileNotFoundError listing every folder tried and the fix."""
    tried = []
    for root in data_roots():
        path = root.joinpath(*parts)
        if path.exists():
            return path
        tried.append(str(path))
    raise FileNotFoundError(
        f"data file {'/'.join(parts)} not found; looked at:\n  "
        + "\n  ".join(tried)
        + "\nSet NEGA_DATA to the folder holding the data sets (e.g. export NEGA_DATA=/data/nega), "
        "or give the file's path."
    )


def read_table(path: str | Path) -> list[dict]:
    """Rows of a jsonl / json / csv / parquet file; a malformed row is reported by its line number."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix in (".jsonl", ".jsonl.gz"):
            return _read_jsonl(path)
        if suffix == ".json":
            value = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(value, dict):
                value = next((v for v in value.values() if isinstance(v, list)), None)
            if not isinstance(value, list):
                raise DataError(f"{path}: expected a JSON list of rows (or an object holding one)")
            for number, row in enumerate(value, start=1):
                if not isinstance(row, dict):
                    raise DataError(f"{path}: row {number} is a {type(row).__name__}, expected an object")
            return value
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from None
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv or .parquet")


def _read_jsonl(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: row {number} is not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {number} is a {type(row).__name__}, expected an object")
            rows.append(row)
    return rows


def load_hub_dataset(
    name: str, split: str, data_dir: str | None = None, config: str | None = None
) -> list[dict]:
    try:
        from datasets import load_dataset

        return [dict(r) for r in load_dataset(name, config, split=split, data_dir=data_dir)]
    except Exception as exc:  # datasets raises many types; all mean "not loadable here"
        raise DataError(
            f"dataset {name!r} (split {split!r}) could not be loaded: {type(exc).__name__}: {exc}. "
            "Offline, point data.path at a local jsonl/json/csv/parquet file instead."
        ) from None


def load_rows(data_cfg, *, toy_cfg=None, seed: int = 0, split: str | None = None) -> tuple[list[dict], str]:
    """(rows, source description) for the recipe's `data` section; `split` overrides data.split."""
    split = split or data_cfg.split
    if data_cfg.path is not None:
        rows, source = read_table(data_cfg.path), str(data_cfg.path)
    elif data_cfg.dataset == "toy":
        from nega.toy import make_world

        world = make_world(toy_cfg.world, seed=seed, **toy_cfg.options)
        n = toy_cfg.n_train if split == "train" else toy_cfg.n_test
        rows, source = world.rows(split, n), f"toy world {toy_cfg.world!r} ({split})"
    else:
        where = "/".join(filter(None, [data_cfg.dataset, data_cfg.config, data_cfg.data_dir]))
        rows = load_hub_dataset(data_cfg.dataset, split, data_cfg.data_dir, data_cfg.config)
        source = f"{where} ({split})"
    if data_cfg.fields:
        rows = [rename_fields(r, data_cfg.fields) for r in rows]
    if data_cfg.limit is not None:
        rows = rows[: data_cfg.limit]
    if not rows:
        raise DataError(f"{source}: no rows")
    return rows, source


def rename_fields(row: dict, fields: dict[str, str]) -> dict:
    """`fields` maps nega's name -> the dataset's column name."""
    out = dict(row)
    for ours, theirs in fields.items():
        if theirs in row:
            out[ours] = row[theirs]
    return out


def convert_rows(
    rows: list[dict],
    convert: Callable[[dict], dict],
    *,
    source: str,
    on_bad_row: str = "error",
) -> tuple[list[dict], int]:
    """Apply `convert` to every row; a row whose conversion raises ValueError/KeyError/TypeError is bad.

    With on_bad_row 'error' all bad rows are reported at once (up to 10 shown); with 'skip' they are
    dropped and counted.
    """
    good, bad = [], []
    for number, row in enumerate(rows, start=1):
        try:
            good.append(convert(row))
        except KeyError as exc:
            bad.append(f"row {number}: missing field {exc.args[0]!r} (present: {', '.join(map(str, row))})")
        except (ValueError, TypeError) as exc:
            bad.append(f"row {number}: {exc}")
    if bad and on_bad_row == "error":
        shown = "\n  ".join(bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(
            f"{source}: {len(bad)} bad row(s) of {len(rows)}:\n  {shown}{more}\n"
            "Fix the data, map column names with data.fields, or set data.on_bad_row=skip to drop them."
        )
    if not good:
        raise DataError(f"{source}: every row is bad; first problem: {bad[0]}")
    return good, len(bad)


def require_text(row: dict, key: str, *, max_chars: int = 200_000) -> str:
    """A non-empty string field, or ValueError saying what is wrong with it."""
    value = row[key]
    if not isinstance(value, str):
        raise TypeError(f"field {key!r} must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"field {key!r} is empty")
    if len(value) > max_chars:
        raise ValueError(f"field {key!r} has {len(value)} characters (limit {max_chars})")
    return value
