"""Run directories, stages, manifests and resume.

A run is `runs/<name>/` holding the resolved recipe and one folder per stage, numbered in the order the
method's `run.py` declares them (`01-toy-model`, `02-sample`, ...). A stage finishes by writing
`manifest.json` last: the hash of its inputs and config, the sha256 of every file it wrote, counts and
timings. Re-running a recipe skips every stage whose manifest matches and whose files are intact, and
reruns the others. A stage's folder also remembers the input hash it started with (`stage.json`), so an
interrupted stage with unchanged inputs keeps its partial work (training checkpoints, log-prob caches)
while one whose inputs changed starts clean.

Files are written to a temporary name and renamed, so a kill never leaves a half file that looks whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
STAGE_INFO = "stage.json"
RESULT = "results.json"  # what the run found (nega.results); Run.record_result names its own result there
RESULTS_SCHEMA = 1  # the layout of results.json; readers refuse another


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def hash_value(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


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


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    return rows


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` except the stage's own bookkeeping."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.name not in (MANIFEST, STAGE_INFO) and ".tmp-" not in path.name:
            out[str(path.relative_to(folder))] = hash_file(path)
    return out


@dataclass
class Stage:
    """One step of a run. `done` is True when a matching, intact manifest was found (skip the work).

    Typical use in a method's run.py::

        stage = run.stage("sample", config={...}, inputs=[model_stage])
        if not stage.done:
            write_jsonl(stage.dir / "samples.jsonl", rows)
            stage.finish(counts={"samples": len(rows)})
        rows = read_jsonl(stage.dir / "samples.jsonl")
    """

    name: str
    dir: Path
    hash: str
    config: dict
    done: bool = False
    manifest: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def finish(self, counts: dict | None = None, **extra: Any) -> Stage:
        manifest = {
            "stage": self.name,
            "hash": self.hash,
            "config": self.config,
            "counts": counts or {},
            "files": file_hashes(self.dir),
            "seconds": round(time.time() - self.started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }
        write_json(self.dir / MANIFEST, manifest)
        self.manifest = manifest
        self.done = True
        return self

    def path(self, name: str) -> Path:
        return self.dir / name


class RunLockedError(Exception):
    """Another live process holds the run folder; the message names its pid."""


LOCK = ".lock"
_HELD_LOCKS: dict[str, int] = {}  # resolved run folder -> open file descriptor holding its lock


def lock_run_folder(folder: Path) -> None:
    """Hold `folder/.lock` for the rest of this process, or raise RunLockedError naming the holder.

    The lock is the kernel's (`flock`), so it dies with its process: a folder left by a killed run is
    simply taken over. Taking it again in the process that holds it is a no-op.
    """
    import fcntl

    key = str(Path(folder).resolve())
    if key in _HELD_LOCKS:
        return
    path = Path(folder) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"run folder {folder} is in use by another nega process (pid {holder}). Wait for it to end, "
            f"stop it (kill {holder}), or give this run another folder with --output-dir."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD_LOCKS[key] = fd


def unlock_run_folder(folder: Path) -> None:
    """Let go of a folder this process locked (the lock also ends with the process)."""
    fd = _HELD_LOCKS.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)


class Run:
    """The run directory of one recipe: `<output_dir>/<name>/`, with its stages in declaration order.

    The main process holds the folder's lock (`lock_run_folder`) from here until it exits, so a second
    `nega run` on the same folder stops at once instead of racing on the same files. `launcher`
    (`nega.launch.Launcher`) says where training stages run: `nega run --gpus/--nodes` passes one; by
    default they run in this process.
    """

    def __init__(self, recipe, root: Path | None = None, *, is_main_process: bool = True, launcher=None):
        from nega.launch import Launcher

        self.recipe = recipe
        self.launcher = launcher if launcher is not None else Launcher()
        self.dir = Path(root) if root is not None else Path(recipe.output_dir) / recipe.name
        self.is_main_process = is_main_process
        self._count = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        if is_main_process:
            lock_run_folder(self.dir)
            atomic_write_text(self.dir / "recipe.yaml", recipe.to_yaml())
            # Named again when this recipe's training ends; until then nothing stale can be pushed.
            (self.dir / RESULT).unlink(missing_ok=True)

    def stage(self, name: str, *, config: Any = None, inputs: Iterable[Stage | str | Path] = ()) -> Stage:
        """Open stage `name` (numbered in call order); `done` tells whether it can be skipped.

        The stage hash covers its name, its `config` (anything JSON-able) and its inputs: upstream
        stages by their own hash, files by their content hash, other values as given.
        """
        self._count += 1
        folder = self.dir / f"{self._count:02d}-{name}"
        config = json.loads(canonical_json(config)) if config is not None else {}
        stage_hash = hash_value({"name": name, "config": config, "inputs": [_input_key(i) for i in inputs]})
        stage = Stage(name=name, dir=folder, hash=stage_hash, config=config)
        manifest_path = folder / MANIFEST
        if manifest_path.exists():
            problem = _manifest_problem(folder, stage_hash)
            if problem is None:
                stage.done = True
                stage.manifest = read_json(manifest_path)
                return stage
            warnings.warn(f"stage {folder.name} reruns: {problem}", stacklevel=2)
            if self.is_main_process:
                manifest_path.unlink()
        info = folder / STAGE_INFO
        if folder.exists() and (not info.exists() or read_json(info).get("hash") != stage_hash):
            if self.is_main_process:
                shutil.rmtree(folder)
        if self.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            if not info.exists():
                write_json(info, {"hash": stage_hash, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return stage

    def record_result(self, label: str, base_model: str | Path, trained: str | Path | None) -> None:
        """Name the run's own result in results.json (`result`): the folder its method trained (`label`)
        and the model that folder applies to. `nega eval RUN` and `nega push RUN` act on it, not on
        baselines trained beside the method. A LoRA folder (adapter_config.json) is recorded as an
        adapter over `base_model`; a full fine-tune's model folder is recorded as the model itself.
        Paths inside the run directory are kept relative to it, so a copied run still resolves. The
        other keys of results.json (nega.results) are kept as they are."""
        if not self.is_main_process or trained is None:
            return
        trained = Path(trained)
        adapter = trained if (trained / "adapter_config.json").is_file() else None
        model = base_model if adapter is not None else trained
        path = self.dir / RESULT
        try:
            results = read_json(path)
        except (OSError, json.JSONDecodeError):
            results = None
        if not isinstance(results, dict) or results.get("schema") != RESULTS_SCHEMA:
            results = {"schema": RESULTS_SCHEMA}
        results["result"] = {
            "label": label,
            "base_model": self._portable(model),
            "adapter": adapter and self._portable(adapter),
        }
        write_json(path, results)

    def _portable(self, path: str | Path) -> str:
        """`path` relative to the run directory when it lies inside it; else as given (e.g. a hub id)."""
        if not Path(path).exists():
            return str(path)
        resolved = Path(path).resolve()
        try:
            return str(resolved.relative_to(self.dir.resolve()))
        except ValueError:
            return str(resolved)

    def stages(self) -> Iterator[tuple[str, dict]]:
        for manifest in sorted(self.dir.glob(f"*/{MANIFEST}")):
            yield manifest.parent.name, read_json(manifest)


def _input_key(item: Stage | str | Path) -> Any:
    if isinstance(item, Stage):
        # Upstream outputs, not just upstream inputs: a rerun that writes different files reruns us too.
        return {"stage": item.name, "hash": item.hash, "files": item.manifest.get("files")}
    path = Path(item)
    if path.is_file():
        return {"file": str(path), "sha256": hash_file(path)}
    if path.is_dir():
        return {"dir": str(path), "files": file_hashes(path)}
    return str(item)


def _manifest_problem(folder: Path, stage_hash: str) -> str | None:
    """Why a finished stage cannot be reused, or None when it can."""
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, json.JSONDecodeError):
        return "its manifest is unreadable"
    if manifest.get("hash") != stage_hash:
        return "its inputs or config changed"
    recorded = manifest.get("files", {})
    actual = file_hashes(folder)
    for name, digest in recorded.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != digest:
            return f"{name} does not match its recorded hash (truncated or edited)"
    return None
