"""Reading a recipe: the YAML file (or a built-in by name), KEY=VALUE overrides, and validation against
the method table. `load_recipe` collects every problem (unknown keys, keys given twice, bad values,
missing files, unknown method, keys the method never reads) into one `RecipeError` naming the file and
each key path.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

import nega.config.registry as registry
from nega.config.registry import recipe_adapter, recipe_class
from nega.config.schema import Recipe, RecipeBase

RECIPES_DIR = Path(__file__).parent.parent / "recipes"


def validate_recipe(data: dict) -> RecipeBase:
    """A recipe from plain data (e.g. `recipe.model_dump()` sent to training ranks); raises ValidationError."""
    return recipe_adapter().validate_python(data)


class RecipeError(Exception):
    """A recipe that cannot run: every problem at once, with the file and key paths."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(
            f"recipe {source} has {len(problems)} {noun}:\n{lines}\n"
            "Fix the recipe file, or override a field with KEY=VALUE (e.g. train.lr=1e-5)."
        )


class RecipeFileError(RecipeError):
    """No recipe to read at all (missing, a folder, unreadable): one line, since no key can fix it."""

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problems = [problem]
        Exception.__init__(self, f"recipe {source}: {problem}")


def builtin_recipes() -> dict[str, Path]:
    """Built-in recipe name -> file, from every YAML under nega/recipes/."""
    return {p.stem: p for p in sorted(RECIPES_DIR.rglob("*.yaml"))}


def resolve_recipe_path(name_or_path: str) -> Path:
    """A YAML file, or a built-in recipe's file; a RecipeFileError (one line) when there is neither."""
    path = Path(name_or_path)
    builtins = builtin_recipes()
    is_file_name = path.suffix in (".yaml", ".yml")
    # A folder that happens to share a built-in's name (say, a run folder -o toy-d2o) does not hide it.
    if path.is_dir() and (is_file_name or name_or_path not in builtins):
        raise RecipeFileError(
            str(path), "is a folder, not a recipe file; give a YAML file or a built-in name (`nega recipes`)"
        )
    if is_file_name or (path.exists() and not path.is_dir()):
        if not path.exists():
            raise RecipeFileError(str(path), f"file not found (looked in {os.getcwd()})")
        return path
    if name_or_path in builtins:
        return builtins[name_or_path]
    raise RecipeFileError(
        name_or_path,
        f"no such file and no built-in recipe of that name; built-ins: {', '.join(builtins) or 'none'}",
    )


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, also noting every key given twice in one mapping: YAML keeps the last one
    silently, so a recipe that sets `lr` twice trains with whichever comes second."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_document(self, node: yaml.Node) -> Any:
        self.duplicates.extend(duplicate_keys(node))
        return super().construct_document(node)

    @classmethod
    def parse(cls, text: str) -> tuple[Any, list[str]]:
        """The document in `text` and its duplicate-key problems; raises yaml.YAMLError."""
        loader = cls(text)
        try:
            return loader.get_single_data(), loader.duplicates
        finally:
            loader.dispose()


_MERGE_TAG = "tag:yaml.org,2002:merge"


def duplicate_keys(node: yaml.Node, path: str = "", seen_nodes: set[int] | None = None) -> list[str]:
    """One problem per key repeated in a mapping of the composed YAML `node`, with its dotted key path
    and both lines."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:  # an alias met again (anchors can even make a node contain itself)
        return []
    seen_nodes.add(id(node))
    problems = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            dotted = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                ident = (key_node.tag, key_node.value)
                if ident in first_line:
                    problems.append(
                        f"{dotted}: key given twice in one section (line {first_line[ident]} and line "
                        f"{line}); YAML would keep the last silently, so remove one"
                    )
                else:
                    first_line[ident] = line
            problems += duplicate_keys(value_node, dotted, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{i}]", seen_nodes)
    return problems


def read_recipe_yaml(path: Path) -> tuple[Any, list[str]]:
    """The parsed YAML of a recipe file and a problem per duplicated key; RecipeError when unreadable."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(source, [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise RecipeFileError(source, f"cannot read it: {exc.strerror or exc}") from None
    try:
        return _RecipeLoader.parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(source, [f"YAML syntax error: {where}{getattr(exc, 'problem', exc)}"]) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-5` -> (["train", "lr"], 1e-05). Values are YAML, so 3, true, [a, b] parse."""
    key, sep, raw = text.partition("=")
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
        raise ValueError(f"override {text!r} is not KEY=VALUE with a dotted key (e.g. train.lr=1e-5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> list[str]:
    """Set each dotted key in `data` (creating sections); returns problems instead of raising."""
    problems = []
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}
            if not isinstance(node[k], dict):
                problems.append(f"{'.'.join(keys)}: {k!r} is a value, not a section")
                break
            node = node[k]
        else:
            node[keys[-1]] = value
    return problems


def _fields_of(model: type[BaseModel] | None) -> list[str]:
    return sorted(model.model_fields) if model is not None else []


def _section_model(loc: tuple, method: str | None) -> type[BaseModel] | None:
    """The pydantic model at `loc` (for listing allowed keys in unknown-key errors)."""
    model: Any = recipe_class(method) if method in registry.METHODS else RecipeBase
    for part in loc:
        field = (
            model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        )
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def format_validation_errors(exc: ValidationError, method: str | None) -> list[str]:
    problems = []
    for err in exc.errors():
        # A discriminated union puts the tag first: ("d2o", "d2o", "alpha") is the d2o.alpha key.
        loc = err["loc"][1:] if err["loc"] and err["loc"][0] == method else err["loc"]
        key = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _fields_of(_section_model(loc[:-1], method))
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            problems.append(f"{key}: unknown key{hint}")
        elif err["type"] == "missing":
            problems.append(f"{key}: required but missing")
        elif err["type"] == "union_tag_invalid":
            problems.append(
                f"method: unknown method {err['input'].get('method')!r}; choose one of {', '.join(registry.METHODS)}"
            )
        elif err["type"] == "union_tag_not_found":
            problems.append(f"method: required but missing; choose one of {', '.join(registry.METHODS)}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            problems.append(f"{key}: {msg}{shown}")
    return problems


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raises one RecipeError listing every problem."""
    path = resolve_recipe_path(name_or_path)
    source = str(path)
    data, duplicates = read_recipe_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(source, [f"top level must be a mapping of sections, got {type(data).__name__}"])
    problems = duplicates + apply_overrides(data, overrides or [])
    method = data.get("method") if isinstance(data.get("method"), str) else None
    ignored = ignored_keys(data, method)
    try:
        recipe = validate_recipe(data)
    except ValidationError as exc:
        raise RecipeError(source, problems + format_validation_errors(exc, method) + ignored) from None
    if problems or ignored:
        raise RecipeError(source, problems + ignored)
    for message in registry.METHODS[recipe.method].warnings_of(recipe):
        warnings.warn(f"{source}: {message}", UserWarning, stacklevel=2)
    return recipe


def ignored_keys(data: dict, method: str | None) -> list[str]:
    """A problem for every key of `data` that `method` never reads (its table entry's `ignores`).

    A key set to null is no setting (`eval.harm: null` asks for no harm evaluation) and passes."""
    if method not in registry.METHODS:
        return []
    problems = []
    for key, why in registry.METHODS[method].ignores.items():
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            problems.append(f"{key}: method {method} does not use this key: {why}; remove it")
    return problems
