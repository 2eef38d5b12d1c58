"""What `nega eval` and `nega push` act on: a run directory, an adapter, a model folder or a hub id.

- **run directory** (has `recipe.yaml`): what its method trained, as the run's `results.json` names it
  (written when training ends): the method's adapter over the model it was trained on (per-step RL's
  adapters sit on the merged π_sft folder, not on the recipe's model), or the trained model folder of
  a full fine-tune. Baselines trained beside the method (`d2o.compare`, `stepneg.compare`,
  `qcrd.baselines`) are never picked: give their adapter folder itself as TARGET (or `nega push
  --adapter`). A run whose results.json names no result yet (training not finished) falls back to
  its newest `adapter/` folder over the recipe's `model.name` (for `model.name: toy`, its
  `NN-toy-model` stage's folder).
- **adapter folder** (has `adapter_config.json`): the base model is its `base_model_name_or_path`.
- **model folder** (has `config.json`) or **hub id**: evaluated as is, without an adapter.
- **`.gguf` file** or a **known model name** (`nega models`): its converted folder, without an adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class TargetError(Exception):
    """A target that cannot be evaluated or pushed; the message says what was found and the fix."""


@dataclass
class Target:
    base_model: str
    adapter: str | None = None
    run_dir: Path | None = None
    recipe: dict = field(default_factory=dict)  # the run's resolved recipe as plain data
    kind: str = "model"  # run | adapter | model | hub

    @property
    def lora_rank(self) -> int:
        if self.adapter:
            return int(read_adapter_config(Path(self.adapter)).get("r", 16))
        return int((self.recipe.get("lora") or {}).get("r", 16))

    @property
    def toy(self) -> dict:
        """The toy world settings for the toy sets: the run's `toy:` section, else the `nega_toy.json`
        a toy model folder records (world, options, seed)."""
        if self.recipe.get("toy"):
            return dict(self.recipe["toy"])
        manifest = Path(self.base_model) / "nega_toy.json"
        if manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8"))
        return {}

    @property
    def seed(self) -> int:
        if "seed" in self.recipe:
            return int(self.recipe["seed"])
        return int(self.toy.get("seed", 0))

    def describe(self) -> str:
        return f"{self.base_model} + adapter {self.adapter}" if self.adapter else self.base_model


def read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TargetError(f"{path}: cannot be read as JSON ({exc})") from None


def run_result(run_dir: Path) -> dict | None:
    """The run's own result (`result` in its results.json, see `nega.pipeline.Run.record_result`),
    paths made absolute; None before training has ended."""
    from nega.pipeline import RESULT, RESULTS_SCHEMA

    path = run_dir / RESULT
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(results, dict) or results.get("schema") != RESULTS_SCHEMA:
            return None  # another layout names no result nega can trust; the run rewrites it
        result = results.get("result")
        if result is None:
            return None
        base, adapter = str(result["base_model"]), result.get("adapter")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TargetError(
            f"{path}: cannot be read ({exc}); delete it to fall back to the newest adapter"
        ) from None

    def local(value: str) -> str:
        inside = run_dir / value
        return str(inside.resolve()) if not Path(value).is_absolute() and inside.exists() else value

    result["base_model"] = local(base)
    result["adapter"] = local(str(adapter)) if adapter else None
    if result["adapter"] and not (Path(result["adapter"]) / "adapter_config.json").is_file():
        raise TargetError(f"{path} names the adapter {adapter}, which has no adapter_config.json there")
    return result


def final_adapter(run_dir: Path) -> Path | None:
    """The run's own adapter (results.json's `result`), else the newest `adapter/` folder under its
    stage folders."""
    result = run_result(run_dir)
    if result is not None:
        return Path(result["adapter"]) if result["adapter"] else None
    # Stage folders only: `.partial/` holds unfinished rebuilds.
    found = [p.parent for p in run_dir.glob("[0-9]*/**/adapter/adapter_config.json")]
    if not found:
        return None
    return max(found, key=lambda p: ((p / "adapter_config.json").stat().st_mtime, str(p)))


def run_base_model(run_dir: Path, recipe: dict) -> str:
    name = str((recipe.get("model") or {}).get("name", ""))
    if not name:
        raise TargetError(f"{run_dir / 'recipe.yaml'} has no model.name")
    if name != "toy":
        return converted(name)
    stages = sorted(p for p in run_dir.glob("*-toy-model/model") if (p / "config.json").exists())
    if not stages:
        raise TargetError(
            f"{run_dir} uses model.name: toy but has no finished toy-model stage "
            "(expected NN-toy-model/model/); run the recipe first with `nega run`"
        )
    return str(stages[-1])


def known_model_names() -> tuple[str, ...]:
    from nega.models import KNOWN_MODELS

    return tuple(KNOWN_MODELS)


def converted(name: str) -> str:
    """`name` as a local model folder when it is a known packaged model or a `.gguf` file (converted
    once, see `nega.models.resolve_model`); other names unchanged."""
    from nega.models import ModelError, resolve_model

    try:
        return resolve_model(name)
    except ModelError as exc:
        raise TargetError(str(exc)) from None


def load_run_recipe(run_dir: Path) -> dict:
    import yaml

    path = run_dir / "recipe.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TargetError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(data, dict):
        raise TargetError(f"{path}: expected a mapping of recipe sections")
    return data


def resolve_target(target: str | Path) -> Target:
    """Classify TARGET (see the module docstring)."""
    path = Path(target).expanduser()
    if path.is_dir():
        if (path / "recipe.yaml").exists():
            recipe = load_run_recipe(path)
            adapter = final_adapter(path)
            result = run_result(path)
            return Target(
                base_model=result["base_model"] if result else run_base_model(path, recipe),
                adapter=str(adapter) if adapter else None,
                run_dir=path,
                recipe=recipe,
                kind="run",
            )
        if (path / "adapter_config.json").exists():
            base = read_adapter_config(path).get("base_model_name_or_path")
            if not base:
                raise TargetError(
                    f"{path / 'adapter_config.json'} has no base_model_name_or_path; "
                    "set it to the base model's hub id or folder"
                )
            return Target(base_model=str(base), adapter=str(path), kind="adapter")
        if (path / "config.json").exists():
            return Target(base_model=str(path), kind="model")
        raise TargetError(
            f"{path} is a folder but not a run directory (recipe.yaml), an adapter (adapter_config.json) "
            "or a model (config.json)"
        )
    text = str(target)
    if text.endswith(".gguf") or text in known_model_names():
        return Target(base_model=converted(text), kind="model")
    if path.exists():
        raise TargetError(
            f"{path} is a file; give a run directory, an adapter or model folder, a .gguf file or a hub id"
        )
    if text.startswith(("./", "../", "/", "~")) or text.count("/") > 1:
        raise TargetError(f"{text}: no such folder (looked from {Path.cwd()})")
    return Target(base_model=text, kind="hub")
