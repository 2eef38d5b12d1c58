"""No import circle runs through the recipe schema: `nega/config.py` may import the method sections and
light helpers, but nothing it reaches may import it back (a circle makes the schema's import order, and
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
        targets = set()
        for item in found:
            parts = item.split(".")
            targets.update(".".join(parts[:n]) for n in range(2, len(parts) + 1))
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
    # config.py imports the scorer-spec grammar inside a validator, and the method sections at the top.
    assert "nega.rewards.scorer_spec" in graph["nega.config"]
    assert "nega.align.d2o.config" in graph["nega.config"]
    # A circle built on purpose is found.
    assert circle_through({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]


def test_no_import_circle_runs_through_config():
    assert circle_through(import_graph(), "nega.config") is None
