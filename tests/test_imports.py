"""No import circle runs through the recipe schema: `nega/config/` may import light helpers, but nothing
it reaches may import it back (a circle makes the schema's import order, and
so `nega validate`, depend on which module happened to load first)."""

from __future__ import annotations

import ast
from pathlib import Path

import nega

ROOT = Path(nega.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """nega module -> the nega modules it imports, at the top or inside a function (a lazy import still
    runs), with the packages Python imports on the way (`nega.rewards.harm` runs `nega.rewards` first)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        # Importing nega.toy.base runs nega.toy first; from inside nega.toy that package is already
        # running, so only an explicit import of a module's own package counts as an edge to it.
        own = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 1)}
        targets = set()
        for item in found:
            parts = item.split(".")
            targets.update(
                ".".join(parts[:n]) for n in range(2, len(parts)) if ".".join(parts[:n]) not in own
            )
            targets.add(item)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A shortest path start -> ... -> start, or None."""
    previous = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # The schema imports the scorer-spec grammar inside a validator.
    assert "nega.rewards.scorer_spec" in graph["nega.config.schema"]
    # A circle built on purpose is found.
    assert circle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]


def test_no_import_circle_runs_through_config():
    graph = import_graph()
    for name in ("nega.config.schema", "nega.config.registry", "nega.config.loader"):
        assert circle_through(graph, name) is None


def test_the_method_table_imports_no_method():
    # The registry names each method's modules by dotted path: nothing below it imports a method.
    graph = import_graph()
    for name in ("nega.config", "nega.config.schema", "nega.config.registry", "nega.config.loader"):
        assert not {m for m in graph[name] if m.startswith(("nega.align", "nega.distill", "nega.rewards.rm"))}
