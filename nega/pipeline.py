"""Run directories, stages, manifests and resume.

A run is `runs/<name>/` holding the resolved recipe and one folder per stage, numbered in the order the
method's `run.py` declares them (`01-toy-model`, `02-sample`, ...). A stage finishes by writing
`manifest.json` last: the hash of its inputs and config, the sha256 of every file it wrote, counts and
timings. Re-running a recipe skips every stage whose manifest matches and whose files are intact, and
reruns the others. A stage's folder also remembers the input hash it started with (`stage.json`), so an
interrupted stage with unchanged inputs keeps its partial work (training checkpoints, log-prob caches)
while one whose inputs changed starts clean.

A run folder can be moved or copied and resumed from anywhere: every path a stage hashes or stores is
kept relative to the run folder (a path outside it, such as a data file or a cached model, is hashed by
content alone). A finished stage that must rerun is rebuilt beside the old result, in
`.partial/<stage>`, and swapped in only when its manifest is written: a kill or crash during the rerun
leaves the old result whole. Each stage says on stderr whether it is skipped, resumed, run or rerun, and
for a rerun which config key or input changed.

Files are written to a temporary name and renamed, so a kill never leaves a half file that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nega.files import atomic_write_text, hash_file, write_json

MANIFEST = "manifest.json"
PARTIAL = ".partial"  # where a finished stage is rebuilt before it is swapped in
RUN_PREFIX = "@run/"  # a stored path inside the run folder
STAGE_INFO = "stage.json"
RESULT = "results.json"  # what the run found (nega.results); Run.record_result names its own result there
RESULTS_SCHEMA = 1  # the layout of results.json; readers refuse another


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def hash_value(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


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
    inputs: list = field(default_factory=list)
    # Where the finished result lives. While a finished stage is rebuilt, `dir` is a folder beside it
    # (`<run>/.partial/<stage>`) and `finish` swaps it in; paths taken from `dir` before then go stale.
    final: Path | None = None

    def finish(self, counts: dict | None = None, **extra: Any) -> Stage:
        manifest = {
            "stage": self.name,
            "hash": self.hash,
            "config": self.config,
            "inputs": self.inputs,
            "counts": counts or {},
            "files": file_hashes(self.dir),
            "seconds": round(time.time() - self.started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **(portable(extra, self.final.parent) if self.final is not None else extra),
        }
        write_json(self.dir / MANIFEST, manifest)
        if self.final is not None and self.dir != self.final:
            _swap_in(self.dir, self.final)
            self.dir = self.final
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

    def __init__(
        self,
        recipe,
        root: Path | None = None,
        *,
        is_main_process: bool = True,
        launcher=None,
        keep_results: bool = False,
    ):
        from nega.launch import Launcher

        self.recipe = recipe
        self.launcher = launcher if launcher is not None else Launcher()
        self.dir = Path(root) if root is not None else Path(recipe.output_dir) / recipe.name
        self.is_main_process = is_main_process
        self._count = 0
        # The run's sampling engines (`nega.sampling.engine.RunEngines`), started on first use and
        # kept until `close`, so no stage starts an engine another stage already started.
        self.engines = None
        self.dir.mkdir(parents=True, exist_ok=True)
        if is_main_process:
            lock_run_folder(self.dir)
            atomic_write_text(self.dir / "recipe.yaml", recipe.to_yaml())
            # Written again when this recipe's run ends; until then nothing stale can be pushed. A
            # command that runs one stage only (`nega sample`) keeps the finished run's results.
            if not keep_results:
                (self.dir / RESULT).unlink(missing_ok=True)

    def close(self) -> None:
        """End the run's use of its engines: every sampler is closed and its memory handed back. The run
        folder and its lock stay; a later stage starts its engine afresh."""
        engines, self.engines = self.engines, None
        if engines is not None:
            engines.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stage(self, name: str, *, config: Any = None, inputs: Iterable[Stage | str | Path] = ()) -> Stage:
        """Open stage `name` (numbered in call order); `done` tells whether it can be skipped.

        The stage hash covers its name, its `config` (anything JSON-able) and its inputs: upstream
        stages by their own hash, files and folders by their content, other values as given. A path in
        `config` that lies inside the run folder counts by its place in the run (`@run/<stage>/...`), so
        a moved or copied run keeps its hashes.
        """
        self._count += 1
        if self.engines is not None:
            # The stage may train or score on the accelerator: sampling engines sleep until next needed.
            self.engines.hand_back()
        folder = self.dir / f"{self._count:02d}-{name}"
        config = self.portable(json.loads(canonical_json(config))) if config is not None else {}
        keys = [self._input_key(i) for i in inputs]
        stage_hash = hash_value({"name": name, "config": config, "inputs": keys})
        stage = Stage(name=name, dir=folder, hash=stage_hash, config=config, inputs=keys, final=folder)
        if self.is_main_process:
            _recover_swap(folder, self._partial(folder))
        manifest_path = folder / MANIFEST
        if manifest_path.exists():
            problem = _manifest_problem(folder, stage_hash, config, keys)
            if problem is None:
                stage.done = True
                stage.manifest = read_json(manifest_path)
                say(f"stage {folder.name}: finished, skipped")
                return stage
            # The finished result stays where it is until its replacement is complete.
            stage.dir = self._partial(folder)
            say(f"stage {folder.name}: reruns, {problem}")
        work = stage.dir
        info = work / STAGE_INFO
        resumed = work.exists() and info.exists() and read_json(info).get("hash") == stage_hash
        if work.exists() and not resumed and self.is_main_process:
            shutil.rmtree(work)
        if work == folder:
            say(f"stage {folder.name}: " + ("resumes its unfinished work" if resumed else "runs"))
        elif resumed:
            say(f"stage {folder.name}: resumes the unfinished rerun in {work.relative_to(self.dir)}")
        if self.is_main_process:
            work.mkdir(parents=True, exist_ok=True)
            if not info.exists():
                write_json(info, {"hash": stage_hash, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return stage

    def _partial(self, folder: Path) -> Path:
        return self.dir / PARTIAL / folder.name

    def portable(self, value: Any) -> Any:
        """`value` (JSON-like) with every path that lies inside the run folder written `@run/<relative>`."""
        return portable(value, self.dir)

    def relative(self, path: str | Path) -> str | None:
        """`path` relative to the run folder when it lies inside it, else None."""
        return relative_to_folder(path, self.dir)

    def resolve(self, stored: str | Path) -> Path:
        """A path a stage stored: relative ones and `@run/...` are read against this run folder."""
        text = str(stored)
        if text.startswith(RUN_PREFIX):
            return self.dir / text[len(RUN_PREFIX) :]
        path = Path(text)
        return path if path.is_absolute() else self.dir / path

    def _input_key(self, item: Stage | str | Path) -> Any:
        if isinstance(item, Stage):
            # Upstream outputs, not just upstream inputs: a rerun that writes different files reruns us too.
            return {"stage": item.final.name if item.final else item.name, "hash": item.hash,
                    "files": item.manifest.get("files")}  # fmt: skip
        path = Path(item)
        inside = self.relative(path) if path.exists() else None
        # Inside the run, a path counts by its place in it; outside, by its content alone, so a run
        # moved to another folder or machine, or a model cache elsewhere, keeps its hash.
        if path.is_file():
            return {"file": inside, "sha256": hash_file(path)} if inside else {"sha256": hash_file(path)}
        if path.is_dir():
            return {"dir": inside, "files": file_hashes(path)} if inside else {"files": file_hashes(path)}
        return str(item)

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


def portable(value: Any, root: Path) -> Any:
    """`value` (JSON-like) with every path that lies inside `root` written `@run/<relative>`."""
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v, root) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and os.sep in value and _path_like(value)):
        inside = relative_to_folder(value, root)
        if inside is not None:
            return RUN_PREFIX + inside if inside != "." else RUN_PREFIX.rstrip("/")
        return str(value)
    return value


def relative_to_folder(path: str | Path, folder: Path) -> str | None:
    """`path` relative to `folder` when it lies inside it, else None."""
    try:
        target, root = Path(path).resolve(), Path(folder).resolve()
    except (OSError, ValueError):
        return None
    return target.relative_to(root).as_posix() if _inside(target, root) else None


def say(line: str) -> None:
    """One line of a run's account of itself, on stderr, on a line of its own."""
    print(f"[nega] {line}", file=sys.stderr, flush=True)


def _path_like(text: str) -> bool:
    return len(text) < 4096 and "\n" not in text


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _swap_in(new: Path, final: Path) -> None:
    """Put the finished `new` folder at `final`; the old result is moved aside first and removed last,
    so a kill at any point leaves one whole result that `_recover_swap` puts back in place."""
    old = new.with_name(new.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def _recover_swap(final: Path, partial: Path) -> None:
    """Finish a swap a kill interrupted: a complete rebuild goes in, else the old result comes back."""
    old = partial.with_name(partial.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        return
    if (partial / MANIFEST).exists():
        os.replace(partial, final)
    elif old.exists():
        os.replace(old, final)


def _manifest_problem(folder: Path, stage_hash: str, config: dict, inputs: list) -> str | None:
    """Why a finished stage cannot be reused (which key or input changed), or None when it can."""
    try:
        manifest = read_json(folder / MANIFEST)
    except (OSError, json.JSONDecodeError):
        return "its manifest is unreadable"
    if manifest.get("hash") != stage_hash:
        return _what_changed(manifest, config, inputs)
    recorded = manifest.get("files", {})
    actual = file_hashes(folder)
    for name, digest in recorded.items():
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != digest:
            return f"{name} does not match its recorded hash (truncated or edited)"
    return None


def _what_changed(manifest: dict, config: dict, inputs: list) -> str:
    """The config keys (dotted, with old and new values) and inputs that differ from a manifest's."""
    old, new = _flatten(manifest.get("config", {})), _flatten(config)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _MISSING) != new.get(k, _MISSING))
    parts = []
    if keys:
        shown = [f"{k} {_short(old.get(k, _MISSING))} -> {_short(new.get(k, _MISSING))}" for k in keys[:4]]
        parts.append(
            "config changed: " + "; ".join(shown) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        )
    old_inputs = manifest.get("inputs")
    if old_inputs is None:
        parts.append("its inputs are not recorded (a manifest from an older nega)")
    elif old_inputs != inputs:
        changed = [_input_name(n) for o, n in zip(old_inputs, inputs, strict=False) if o != n]
        if len(old_inputs) != len(inputs):
            changed.append(f"{len(old_inputs)} inputs before, {len(inputs)} now")
        parts.append("input changed: " + ", ".join(changed))
    return "; ".join(parts) or "its hash changed"


_MISSING = "<absent>"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): canonical_json(value)}


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _input_name(key: Any) -> str:
    if isinstance(key, dict):
        if "stage" in key:
            return f"stage {key['stage']}"
        if key.get("file") or key.get("dir"):
            return key.get("file") or key.get("dir")
        return "a file or folder's content"
    return str(key)
