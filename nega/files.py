"""Writing and hashing files: a write that a kill never leaves half done, and a file's sha256 remembered
within the process. The run folder (`nega.pipeline`), the model store and the launcher's coordination
files all write through here; it imports nothing of nega.
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
