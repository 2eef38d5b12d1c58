"""Load a method's dataset with `datasets`: a hub id, a local file or folder, a builder (json, csv,
parquet) with `data.data_files`, or the toy world; and check it before any model loads.

Rows come back as plain dicts with the recipe's `data.fields` renames applied, so each method's
`data.py` converts one known shape (`FORMATS` names them, with their columns and the methods reading
each). The table stays Arrow-backed until `data.shuffle` and `data.limit` have picked the rows. Bad
rows raise one `DataError` naming the file, the row numbers and the field, unless
`data.on_bad_row: skip`, which drops and counts them. `check_data` reads only the schema and the
first rows, so `nega validate` and `nega run` name a missing column before a model is downloaded.
"""

from __future__ import annotations

import csv
import difflib
import glob
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The data folder's files are found in nega.files, below the recipe schema that checks `data:` paths;
# nega.data.find_data_file stays their name for callers.
from nega.files import data_roots, find_data_file  # noqa: F401


class DataError(Exception):
    """A dataset that cannot be used as given; the message names the source, rows and the fix."""


DATA_PREFIX = "data:"  # `data.path: data:hh-rlhf/harmless-base_test.jsonl` names a file in the data folder


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


# File suffix -> the `datasets` builder reading it. A `.json` file stays on `read_table`: it may be one
# document holding a list (or an object holding one), which the json builder would read as one row.
BUILDERS = {".jsonl": "json", ".jsonl.gz": "json", ".json.gz": "json", ".csv": "csv", ".parquet": "parquet"}
SUFFIXES = (*BUILDERS, ".json")
BUILDER_NAMES = ("json", "csv", "parquet")
PEEK_ROWS = 20  # rows `check_data` reads: enough to see a column's type, few enough to be instant


class DataUnreachable(DataError):
    """A hub dataset that cannot be reached from here (offline, no network): not a wrong recipe."""


def _suffix(path: str | Path) -> str:
    path = Path(path)
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


@dataclass(frozen=True)
class Source:
    """Where a recipe's rows come from, resolved once: what `datasets.load_dataset` is called with.

    `kind` is toy (the toy world), file (one local file), folder (a local folder, splits from its file
    names or `data_files`), builder (json/csv/parquet over `data_files`) or hub (a Hub dataset id)."""

    kind: str
    path: str
    name: str | None = None
    data_dir: str | None = None
    data_files: str | list | dict | None = None

    def describe(self, split: str) -> str:
        if self.kind == "file":
            return self.path
        where = "/".join(filter(None, [self.path, self.name, self.data_dir]))
        files = f" files {self.data_files}" if self.data_files else ""
        return f"{where}{files} ({split})"


def _patterns(data_files) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [p for v in data_files.values() for p in _patterns(v)]
    return list(data_files)


def _check_globs(data_files, root: Path) -> None:
    """A DataError naming the first pattern of `data_files` (relative to `root`) that matches no file."""
    for pattern in _patterns(data_files):
        full = os.path.expanduser(pattern)
        full = full if os.path.isabs(full) else str(root / full)
        if not glob.glob(full, recursive=True):
            raise DataError(
                f"data.data_files: {pattern!r} matches no file (looked for {full}); fix the pattern or the "
                "folder it starts from (data.dataset when that is a folder, else the current directory)"
            )


def resolve_source(data_cfg) -> Source:
    """The recipe's `data` section as a `Source`; a DataError for a folder with no data files, a glob
    matching nothing, a missing local file or a builder without files."""
    target = data_cfg.path or data_cfg.dataset
    name = data_cfg.config or data_cfg.name
    if data_cfg.path is None and target == "toy":
        return Source("toy", "toy")
    if target in BUILDER_NAMES:
        if data_cfg.data_files is None:
            raise DataError(
                f"data.dataset {target!r} is a file builder: set data.data_files to its files (globs allowed), "
                f"e.g. data.data_files='my_data/*.{'jsonl' if target == 'json' else target}'"
            )
        _check_globs(data_cfg.data_files, Path.cwd())
        return Source("builder", target, name, data_cfg.data_dir, data_cfg.data_files)
    local = Path(os.path.expanduser(os.path.expandvars(target)))
    if any(ch in target for ch in "*?["):
        _check_globs(target, Path.cwd())
        first = sorted(glob.glob(str(local), recursive=True))[0]
        builder = BUILDERS.get(_suffix(first), "json")
        return Source("builder", builder, name, None, str(local))
    if local.is_dir():
        if data_cfg.data_files is not None:
            _check_globs(data_cfg.data_files, local)
        elif not any(p.is_file() and _suffix(p) in SUFFIXES for p in local.rglob("*")):
            raise DataError(
                f"{local}: a folder with no data files ({', '.join(SUFFIXES)}); point data.dataset at a "
                "file, or at a folder holding them (train.jsonl, test.jsonl, ...)"
            )
        return Source("folder", str(local), name, data_cfg.data_dir, data_cfg.data_files)
    if local.is_file():
        if _suffix(local) not in SUFFIXES:
            raise DataError(f"{local}: unsupported file type {_suffix(local)!r}; use {', '.join(SUFFIXES)}")
        return Source("file", str(local))
    if target.startswith(("./", "../", "/", "~")) or _suffix(target) in SUFFIXES:
        raise DataError(
            f"data.dataset {target!r}: no such file or folder (relative paths start at {os.getcwd()})"
        )
    return Source("hub", target, name, data_cfg.data_dir, data_cfg.data_files)


def open_table(data_cfg, source: Source, split: str, *, streaming: bool):
    """The rows of `split` as a `datasets` Dataset (IterableDataset when `streaming`), or a list of dicts
    for a local file Arrow cannot type (a column holding text in one row and messages in another)."""
    if source.kind == "file":
        if split != "train":
            # As in `datasets`, one file is the train split; a split of another name needs its files.
            raise DataError(
                f"{source.path}: one file holds one split, train, and there is no split {split!r}; give each "
                "split its files: data.dataset=json data.data_files='{train: a.jsonl, test: b.jsonl}'"
            )
        builder = BUILDERS.get(_suffix(source.path))
        if builder is None:
            return _read_json_document(Path(source.path))
        args, kwargs = (builder,), {"data_files": source.path, "split": "train"}
    else:
        args = (source.path,)
        kwargs = {
            "name": source.name,
            "data_dir": source.data_dir,
            "data_files": source.data_files,
            "split": split,
        }
    if args[0] == "csv" or (source.kind == "file" and _suffix(source.path) == ".csv"):
        # Every cell as text, as a CSV file holds it: no number guessing, an empty cell stays "".
        kwargs.update(dtype=str, keep_default_na=False)
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(*args, streaming=streaming, **kwargs)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DataError(
                f"{source.describe(split)}: no split {split!r} ({exc}); set data.split to one of its splits"
            ) from None
        error = exc
    except ConnectionError as exc:
        raise DataUnreachable(
            f"dataset {source.path!r} could not be reached ({exc}); online, check the id; offline, point "
            "data.path at a local file (or data.dataset at a local folder)"
        ) from None
    except Exception as exc:  # datasets raises many types; all mean "not loadable as given"
        error = exc
    if source.kind == "file":
        # read_table names the bad line; or the rows are fine and only Arrow could not type a column.
        return read_table(source.path)
    cause = f" ({type(error.__cause__).__name__}: {error.__cause__})" if error.__cause__ else ""
    raise DataError(
        f"dataset {source.describe(split)} could not be loaded: {type(error).__name__}: {error}{cause}. "
        "Check data.dataset, data.config, data.data_dir and data.data_files; offline, point data.path "
        "at a local file"
    )


def _read_json_document(path: Path) -> list[dict]:
    """A `.json` file: one document (a list of rows, or an object holding one), else JSON lines."""
    try:
        return read_table(path)
    except DataError as exc:
        if "Extra data" not in str(exc):
            raise
    return _read_jsonl(path)


def _present(row: dict) -> dict:
    # Arrow gives every row every column, None where a JSON row had no such key: drop those, so a
    # converter sees a missing field as missing.
    return {k: v for k, v in row.items() if v is not None}


def _iterate(table, source: Source, limit: int | None) -> list[dict]:
    rows = []
    try:
        for row in table:
            if limit is not None and len(rows) >= limit:
                break
            rows.append(dict(row))
    except Exception as exc:  # a stream fails while read; a local file gets read_table's precise error
        if source.kind == "file":
            return read_table(source.path)[:limit]
        raise DataError(f"{source.path}: reading failed: {type(exc).__name__}: {exc}") from None
    return rows


def pick_rows(table, data_cfg, source: Source, seed: int) -> list[dict]:
    """`data.shuffle` (seeded) then `data.limit` on the table, and only then the rows as dicts."""
    limit = data_cfg.limit
    if isinstance(table, list):
        rows = list(table)
        if data_cfg.shuffle:
            import random

            random.Random(seed).shuffle(rows)
        return rows[:limit] if limit is not None else rows
    import datasets

    if data_cfg.shuffle:
        if isinstance(table, datasets.IterableDataset):
            table = table.shuffle(seed=seed, buffer_size=10_000)
        else:
            table = table.shuffle(seed=seed)
    if limit is not None and not isinstance(table, datasets.IterableDataset):
        table = table.select(range(min(limit, len(table))))
    return [_present(r) for r in _iterate(table, source, limit)]


def load_rows(data_cfg, *, toy_cfg=None, seed: int = 0, split: str | None = None) -> tuple[list[dict], str]:
    """(rows, source description) for the recipe's `data` section; `split` overrides data.split."""
    source = resolve_source(data_cfg)
    table, description = _open_source(data_cfg, source, toy_cfg, seed, split, streaming=data_cfg.streaming)
    rows = pick_rows(table, data_cfg, source, seed)
    if data_cfg.fields:
        rows = [rename_fields(r, data_cfg.fields) for r in rows]
    if not rows:
        raise DataError(f"{description}: no rows")
    return rows, description


# Sources read in file order: their rows can be read as a stream, with no Arrow copy of the whole file.
LOCAL_KINDS = ("file", "folder", "builder")


def open_rows(data_cfg, *, toy_cfg=None, seed: int = 0, split: str | None = None):
    """(an iterator over the rows, source description): `load_rows` one row at a time, renames applied.

    A local source read in its order (no `data.shuffle`) is read as a stream even without
    `data.streaming`: the same rows in the same order, never all in memory and with no Arrow copy of the
    file in the `datasets` cache. An empty source yields nothing (the caller says so)."""
    source = resolve_source(data_cfg)
    stream = data_cfg.streaming or (source.kind in LOCAL_KINDS and not data_cfg.shuffle)
    table, description = _open_source(data_cfg, source, toy_cfg, seed, split, streaming=stream)
    rows = _picked(table, data_cfg, source, seed)
    if data_cfg.fields:
        rows = (rename_fields(r, data_cfg.fields) for r in rows)
    return rows, description


def _open_source(data_cfg, source: Source, toy_cfg, seed: int, split: str | None, *, streaming: bool):
    """(table, description) of the recipe's source for `split` (default data.split): the toy world's
    rows, or the `datasets` table (a stream with `streaming`)."""
    split = split or data_cfg.split
    if source.kind == "toy":
        from nega.toy import make_world

        world = make_world(toy_cfg.world, seed=seed, **toy_cfg.options)
        n = toy_cfg.n_train if split == "train" else toy_cfg.n_test
        return world.rows(split, n), f"toy world {toy_cfg.world!r} ({split})"
    return open_table(data_cfg, source, split, streaming=streaming), source.describe(split)


def _picked(table, data_cfg, source: Source, seed: int):
    """`pick_rows` as an iterator."""
    if isinstance(table, list):
        return iter(pick_rows(table, data_cfg, source, seed))
    import datasets

    if data_cfg.shuffle:
        if isinstance(table, datasets.IterableDataset):
            table = table.shuffle(seed=seed, buffer_size=10_000)
        else:
            table = table.shuffle(seed=seed)
    limit = data_cfg.limit
    if limit is not None and not isinstance(table, datasets.IterableDataset):
        table = table.select(range(min(limit, len(table))))
    return (_present(r) for r in _iter_rows(table, source, limit))


def _iter_rows(table, source: Source, limit: int | None):
    """`_iterate` one row at a time: a local file Arrow cannot read goes on from `read_table`."""
    count, rows = 0, iter(table)
    while limit is None or count < limit:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # as in `_iterate`
            if source.kind == "file":
                yield from read_table(source.path)[count:limit]
                return
            raise DataError(f"{source.path}: reading failed: {type(exc).__name__}: {exc}") from None
        count += 1
        yield dict(row)


def source_fingerprint(data_cfg) -> object:
    """What identifies the data a recipe's `data` section reads, for cache keys: a local source's files
    by path, size and modification time (no byte is read); a Hub dataset by its name, as `datasets`
    caches it."""
    source = resolve_source(data_cfg)
    if source.kind not in LOCAL_KINDS:
        return [source.kind, source.path, source.name, source.data_dir, source.data_files]
    if source.kind == "file":
        files = [Path(source.path)]
    elif source.kind == "folder" and source.data_files is None:
        files = [p for p in Path(source.path).rglob("*") if p.is_file() and _suffix(p) in SUFFIXES]
    else:
        root = Path(source.path) if source.kind == "folder" else Path.cwd()
        patterns = _patterns(source.data_files)
        files = [
            Path(f) for p in patterns for f in glob.glob(str(root / os.path.expanduser(p)), recursive=True)
        ]
    stats = []
    for path in sorted({p.resolve() for p in files}):
        stat = path.stat()
        stats.append([str(path), stat.st_size, stat.st_mtime_ns])
    return stats


@dataclass
class Converted:
    """What `convert_to_arrow` did: rows read, rows written, rows the converter gave None for, bad rows."""

    rows: int = 0
    kept: int = 0
    none: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)  # the first 10 bad rows' problems


def convert_to_arrow(
    rows,
    convert: Callable[[dict], dict | None],
    *,
    path: Path,
    features,
    source: str,
    on_bad_row: str = "error",
    batch_size: int = 1000,
) -> Converted:
    """`convert_rows` into an Arrow file at `path`, written by `datasets`' ArrowWriter batch by batch, so
    neither the rows nor the converted rows are ever all in memory; `datasets.Dataset.from_file(path)`
    opens the result memory-mapped. A row `convert` gives None for is counted and not written; bad rows
    raise `convert_rows`' DataError (then nothing is written) or, with on_bad_row 'skip', are counted.
    The file appears whole or not at all."""
    from datasets.arrow_writer import ArrowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    done, batch = Converted(), []
    writer = ArrowWriter(features=features, path=str(tmp))
    try:
        for done.rows, row in enumerate(rows, start=1):
            problem = _conversion_problem(done.rows, row, convert)
            if isinstance(problem, str):
                done.bad += 1
                if len(done.problems) < 10:
                    done.problems.append(problem)
            elif problem is None:
                done.none += 1
            else:
                batch.append(problem)
                if len(batch) >= batch_size:
                    writer.write_batch({k: [r.get(k) for r in batch] for k in features})
                    done.kept, batch = done.kept + len(batch), []
        if batch:
            writer.write_batch({k: [r.get(k) for r in batch] for k in features})
            done.kept += len(batch)
        writer.finalize()
    finally:
        writer.close()
    if done.bad and (on_bad_row == "error" or not done.kept + done.none):
        tmp.unlink(missing_ok=True)
        raise DataError(_bad_rows_message(source, done.problems, done.bad, done.rows, on_bad_row))
    os.replace(tmp, path)
    return done


def _conversion_problem(number: int, row: dict, convert):
    """`convert(row)`, or the text naming the row and its problem (`convert_rows`' wording)."""
    try:
        return convert(row)
    except KeyError as exc:
        return f"row {number}: missing field {exc.args[0]!r} (present: {', '.join(map(str, row))})"
    except (ValueError, TypeError) as exc:
        return f"row {number}: {exc}"


def _bad_rows_message(source: str, problems: list[str], bad: int, total: int, on_bad_row: str) -> str:
    if on_bad_row != "error":
        return f"{source}: every row is bad; first problem: {problems[0]}"
    shown = "\n  ".join(problems[:10])
    more = f"\n  ... and {bad - 10} more" if bad > 10 else ""
    return (
        f"{source}: {bad} bad row(s) of {total}:\n  {shown}{more}\n"
        "Fix the data, map column names with data.fields, or set data.on_bad_row=skip to drop them."
    )


def _head_rows(path: Path, n: int) -> list[dict]:
    """The first `n` rows of a local file, reading no further than they need (a whole `.json`)."""
    suffix = _suffix(path)
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if len(rows) >= n:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: row {number} is not valid JSON ({exc.msg})") from None
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}: not UTF-8 text (byte {exc.start}); re-encode it as UTF-8"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: row {number} is a {type(row).__name__}, expected an object")
                rows.append(row)
        return rows
    if suffix == ".csv":
        import itertools

        try:
            with path.open(encoding="utf-8", newline="") as f:
                return list(itertools.islice(csv.DictReader(f), n))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-encode it as UTF-8") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n), None)
        return batch.to_pylist() if batch is not None else []
    if suffix == ".json":
        return _read_json_document(path)[:n]
    return read_table(path)[:n]  # compressed JSON lines: small enough to read whole here


def has_split(data_cfg, split: str) -> bool:
    """Whether the recipe's data has `split` (a folder's or `data.data_files`' split, a Hub split); one
    local file has only its own."""
    try:
        source = resolve_source(data_cfg)
        if source.kind in ("toy", "file"):
            return source.kind == "toy" or split == "train"
        open_table(data_cfg, source, split, streaming=True)
    except DataError:
        return False
    return True


def peek_rows(data_cfg, split: str | None = None, n: int = PEEK_ROWS) -> tuple[list[str], list[dict], str]:
    """(column names, the first `n` rows, source description) without reading the whole dataset: a
    stream, so a large file or a Hub dataset costs only its first rows."""
    split = split or data_cfg.split
    source = resolve_source(data_cfg)
    if source.kind == "file" and split == "train":
        # One local file: its first rows read directly. `load_dataset` would import torch (seconds),
        # and `nega validate` on a local file should answer at once.
        table = _head_rows(Path(source.path), n)
    else:
        table = open_table(data_cfg, source, split, streaming=True)
    raw = table[:n] if isinstance(table, list) else _iterate(table, source, n)
    columns = list(getattr(table, "column_names", None) or [])
    for row in raw:
        columns += [k for k in row if k not in columns]
    return columns, [_present(r) for r in raw], source.describe(split)


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
        converted = _conversion_problem(number, row, convert)
        (bad if isinstance(converted, str) else good).append(converted)
    if bad and on_bad_row == "error":
        raise DataError(_bad_rows_message(source, bad, len(bad), len(rows), on_bad_row))
    if not good:
        raise DataError(_bad_rows_message(source, bad, len(bad), len(rows), "skip"))
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


# ---------------------------------------------------------------- formats: columns, detection, checks


def _is_messages(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value
        )
    )


def _is_flag(value) -> bool:
    return isinstance(value, bool | int) or (
        isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0")
    )


# What a column must hold: (words for the message, test of one value).
TEXT = ("text", lambda v: isinstance(v, str))
TEXT_OR_MESSAGES = ("text or chat messages", lambda v: isinstance(v, str) or _is_messages(v))
MESSAGES = ("chat messages [{role, content}, ...]", _is_messages)
FLAG = ("a boolean", _is_flag)
FLAGS = ("a list of booleans", lambda v: isinstance(v, list) and all(_is_flag(x) for x in v))
TEXTS = ("a list of texts", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
TEXT_OR_NUMBER = ("text or a number", lambda v: isinstance(v, str | int | float) and not isinstance(v, bool))
LIST = ("a list", lambda v: isinstance(v, list))

COLUMN_KINDS = {
    "prompt": TEXT_OR_MESSAGES,
    "chosen": TEXT_OR_MESSAGES,
    "rejected": TEXT_OR_MESSAGES,
    "completion": TEXT_OR_MESSAGES,
    "messages": MESSAGES,
    "label": FLAG,
    "labels": FLAGS,
    "completions": TEXTS,
    "question": TEXT,
    "problem": TEXT,
    "answer": TEXT_OR_NUMBER,
    "solution": TEXT,
    "rationales": LIST,
    "teacher_rationales": LIST,
    "rationale": TEXT,
    "response_0": TEXT,
    "response_1": TEXT,
    "is_response_0_safe": FLAG,
    "is_response_1_safe": FLAG,
}


@dataclass(frozen=True)
class Format:
    """A row shape: its required columns (each entry: one of these names) and what a row means."""

    columns: tuple[tuple[str, ...], ...]
    about: str
    example: dict = field(default_factory=dict)


FORMATS: dict[str, Format] = {
    # TRL's dataset types, standard (text) or conversational (chat messages in the same columns).
    "preference": Format(
        (("chosen",), ("rejected",)),
        "a prompt (its own column, or the shared start of chosen and rejected chats) and two responses",
        {
            "prompt": "How do I pick a lock?",
            "chosen": "I can't help with that.",
            "rejected": "Insert a tension wrench...",
        },
    ),
    "unpaired_preference": Format(
        (("prompt",), ("completion",), ("label",)),
        "one response per row, label true for a good one and false for a bad one",
        {"prompt": "How do I pick a lock?", "completion": "Insert a tension wrench...", "label": False},
    ),
    "prompt_completion": Format(
        (("prompt",), ("completion",)),
        "a prompt and its response",
        {"prompt": "Tom has 3 apples and buys 2. How many?", "completion": "3 + 2 = 5\n#### 5"},
    ),
    "stepwise_supervision": Format(
        (("prompt",), ("completions",), ("labels",)),
        "a prompt, a solution as a list of steps, and a label per step",
        {"prompt": "2 + 3 * 4?", "completions": ["3 * 4 = 12", "2 + 12 = 14"], "labels": [True, True]},
    ),
    # nega's own shapes.
    "prompt-rejected": Format(
        (("prompt",), ("rejected",)),
        "a prompt and a dispreferred response",
        {"prompt": "How do I pick a lock?", "rejected": "Insert a tension wrench..."},
    ),
    "messages": Format(
        (("messages",),),
        "a chat whose last assistant turn is the response",
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "..."}]},
    ),
    "hh-rlhf": Format(
        (("rejected",),),
        "Anthropic HH transcripts (\\n\\nHuman: ... \\n\\nAssistant: ...); the last Assistant turn of "
        "rejected is the response",
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."},
    ),
    "pku-saferlhf": Format(
        (("prompt",), ("response_0",), ("response_1",), ("is_response_0_safe",), ("is_response_1_safe",)),
        "PKU-SafeRLHF pairs with a safety flag per response",
        {
            "prompt": "...",
            "response_0": "...",
            "response_1": "...",
            "is_response_0_safe": False,
            "is_response_1_safe": True,
            "safer_response_id": 1,
        },
    ),
    "problems": Format(
        (("question", "problem"), ("answer", "solution")),
        "a math problem with a reference answer (GSM8K's `#### n` solutions, MATH's \\boxed{})",
        {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = 5\n#### 5"},
    ),
    "rationales": Format(
        (("question",), ("rationales", "teacher_rationales", "rationale")),
        "a question, its label and teacher rationales",
        {"question": "Is 7 prime?", "label": "yes", "rationales": ["7 has no divisor but 1 and 7. So yes."]},
    ),
    "toy": Format((), "the toy world's own rows"),
}

# The formats each method reads; `auto` picks the first whose columns the data has. A method missing
# here (sft) reads rows by their column names and gets only the source checks.
METHOD_FORMATS: dict[str, tuple[str, ...]] = {
    "d2o": (
        "pku-saferlhf",
        "unpaired_preference",
        "hh-rlhf",
        "preference",
        "prompt-rejected",
        "messages",
        "toy",
    ),
    "stepneg": ("problems", "prompt_completion", "stepwise_supervision", "toy"),
    "qcrd": ("rationales", "toy"),
}


def _missing(fmt: str, columns) -> list[tuple[str, ...]]:
    return [group for group in FORMATS[fmt].columns if not any(c in columns for c in group)]


def detect_format(columns, first_row: dict, accepted) -> str | None:
    """The first format of `accepted` whose required columns the data has (None when none fits).

    hh-rlhf also needs `rejected` to be an HH transcript, so a chosen/rejected file of plain responses
    reads as preference."""
    rejected = first_row.get("rejected")
    transcript = isinstance(rejected, str) and rejected.lstrip(" ").startswith("\n\nHuman:")
    for name in accepted:
        if name == "toy" or _missing(name, columns):
            continue
        if (name == "hh-rlhf" and not transcript) or (name == "preference" and transcript):
            continue
        return name
    return None


def _rename_hint(wanted: str, columns: list[str], taken: set[str]) -> str:
    """How to map a column to `wanted` with data.fields: the closest free column names by spelling
    (difflib), else the columns no required name claims."""
    free = [c for c in columns if c not in taken]
    close = difflib.get_close_matches(wanted, free, n=3, cutoff=0.5) or free
    if not close:
        return f"map the column holding it with data.fields.{wanted}=<column>"
    others = f" (other candidates: {', '.join(close[1:4])})" if len(close) > 1 else ""
    return f"if {close[0]!r} holds it, map it: data.fields.{wanted}={close[0]}{others}"


def column_problems(fmt: str, columns: list[str], rows: list[dict], source: str) -> list[str]:
    """Every problem of `rows` (the first rows, renames applied) as format `fmt`: a missing column (with
    the closest column to map with data.fields), a column empty in every row read, a value of the
    wrong type."""
    problems = []
    taken = {c for group in FORMATS[fmt].columns for c in group}
    for group in FORMATS[fmt].columns:
        present = next((c for c in group if c in columns), None)
        if present is None:
            wanted = " or ".join(repr(c) for c in group)
            problems.append(
                f"{source}: column {wanted} (format {fmt}) is missing; its columns are "
                f"{', '.join(columns) or 'none'}; {_rename_hint(group[0], columns, taken)}"
            )
            continue
        kind, test = COLUMN_KINDS.get(present, ("", lambda v: True))
        values = [row.get(present) for row in rows]
        if all(v is None or v == "" or v == [] for v in values):
            problems.append(
                f"{source}: column {present!r} (format {fmt}) is empty in the first {len(rows)} rows"
            )
            continue
        for number, value in enumerate(values, start=1):
            if value is not None and value != "" and not test(value):
                problems.append(
                    f"{source}: column {present!r} row {number} holds {type(value).__name__} {value!r:.60}; "
                    f"format {fmt} needs {kind}"
                )
                break
    return problems


def _step_by_step_file(path: str | None) -> bool:
    # QCRD parses a distilling step-by-step split file (<cqa|svamp>_<split>.json beside llm/) itself.
    return path is not None and Path(path).suffix == ".json" and (Path(path).parent / "llm").is_dir()


@dataclass
class DataCheck:
    """What `check_data` found: the source, the format (given or detected), the columns, problems."""

    source: str
    format: str | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_data(recipe, split: str | None = None) -> DataCheck:
    """Check the recipe's data from its schema and first rows, loading no model: the source exists,
    the split is there, the format fits the method, and its columns are present, filled and typed.

    Problems are collected, not raised; a Hub dataset that cannot be reached is a note (it is checked
    where it can be read)."""
    data_cfg, method = recipe.data, recipe.method
    accepted = METHOD_FORMATS.get(method)
    check = DataCheck(source=str(data_cfg.path or data_cfg.dataset))
    if accepted is not None and data_cfg.format not in ("auto", *accepted):
        check.problems.append(
            f"data.format {data_cfg.format!r} is not read by {method}; {method} reads "
            f"{', '.join(accepted)} (or auto, from the columns)"
        )
        return check
    try:
        source = resolve_source(data_cfg)
        if source.kind == "toy" or (method == "qcrd" and _step_by_step_file(data_cfg.path)):
            return check
        columns, rows, check.source = peek_rows(data_cfg, split)
    except DataUnreachable as exc:
        check.notes.append(f"data not checked: {exc}")
        return check
    except DataError as exc:
        check.problems.append(str(exc))
        return check
    for ours, theirs in data_cfg.fields.items():
        if theirs not in columns:
            check.problems.append(
                f"data.fields.{ours}: column {theirs!r} is not in {check.source}; its columns are "
                f"{', '.join(columns)}"
            )
    rows = [rename_fields(r, data_cfg.fields) for r in rows]
    columns = columns + [
        ours for ours, theirs in data_cfg.fields.items() if theirs in columns and ours not in columns
    ]
    check.columns, check.rows = columns, rows
    if not rows:
        check.problems.append(f"{check.source}: no rows")
        return check
    if accepted is None:
        return check
    fmt = data_cfg.format
    if fmt == "auto":
        fmt = detect_format(columns, rows[0], accepted)
        if fmt is None:
            check.problems.append(_no_format_problem(method, accepted, columns, check.source))
            return check
        check.notes.append(f"data.format auto: read as {fmt}")
    check.format = fmt
    if fmt != "toy":
        check.problems += column_problems(fmt, columns, rows, check.source)
    return check


def _no_format_problem(method: str, accepted, columns: list[str], source: str) -> str:
    formats = [f for f in accepted if f != "toy"]
    # Fewest columns missing, then most present: {prompt, bad_answer} is nearest to prompt-rejected.
    nearest = min(formats, key=lambda f: (len(_missing(f, columns)), -len(FORMATS[f].columns)))
    lines = [f"  {f}: {', '.join(' or '.join(g) for g in FORMATS[f].columns)}" for f in formats]
    taken = {c for group in FORMATS[nearest].columns for c in group}
    hints = [_rename_hint(g[0], columns, taken) for g in _missing(nearest, columns)]
    return (
        f"{source}: columns {', '.join(columns)} fit none of the formats {method} reads:\n"
        + "\n".join(lines)
        + f"\nNearest is {nearest}: {'; '.join(hints)}; or set data.format"
    )


def data_problems_message(check: DataCheck) -> str:
    """One message for every problem `check_data` found, and the way to fix them."""
    noun = "problem" if len(check.problems) == 1 else "problems"
    lines = "\n".join(f"  - {p}" for p in check.problems)
    return (
        f"data {check.source} has {len(check.problems)} {noun}:\n{lines}\n"
        "Fix the data, or the recipe's data section (data.format, data.fields, data.split); "
        "`nega data RECIPE` shows the rows as the method reads them."
    )
