"""Files: a write that a kill never leaves half done, a file's sha256 remembered within the process, and
the data folder (`data:<dir>/<file>` in a recipe). The run folder (`nega.pipeline`), the model store,
the launcher's coordination files and the recipe's path checks (`nega.bounds`) use it; it imports
nothing of nega.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) within the process.

    Every stage that lists a model folder as input hashes it, and a finished stage re-hashes its own
    files when checked; for multi-GB weights that would be the same read many times over a run.
    """
    stat = Path(path).stat()
    return _hash_file(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _hash_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> Path:
    """Write through a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json(path: Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def data_roots() -> list[Path]:
    """Folders holding nega's public datasets (advbench/, xstest/, gsm8k/, hh-rlhf/, ...), in search order:
    `$NEGA_DATA` when set; else `shared/data` beside the repository holding the nega package. Never the
    current directory: a recipe reads the same files wherever it is started from."""
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
