"""nega's modules stand in floors: each imports only its own floor or those below, and no import circle
joins two modules. Every `import` counts, at the top of a module or inside a function (a lazy import
still runs, and still ties the two modules together).

The floors, bottom to top (a module belongs to the longest prefix that names it; `nega` alone is the
package's `__init__`):
- foundation: number bounds, console and progress output, files, the shared losses, chat tokens;
- core: the recipe (schema, method table, loader), data, models, run folders and stages, launching,
  plans, log-probs, sampling, training, results and the report's rendering, the toy world's source;
- scoring: evaluation sets and scorers, rewards (the reward model among them);
- methods: one folder each, and sft;
- top: the command line, the Python API, the Hub, the data preview, the export of a run's datasets.
A new module outside these prefixes fails `test_every_module_stands_on_a_floor` until it is placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nega

ROOT = Path(nega.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        ("nega.bounds", "nega.console", "nega.progress", "nega.files", "nega.losses", "nega.chat"),
    ),
    (
        "core",
        (
            "nega.config",
            "nega.data",
            "nega.models",
            "nega.pipeline",
            "nega.launch",
            "nega.plan",
            "nega.logps",
            "nega.sampling",
            "nega.stages",
            "nega.sampler_stage",
            "nega.training",
            "nega.trainer",
            "nega.results",
            "nega.toy",
            # The results' tables and their headings, read by results.json's writer and the stages.
            "nega.eval.report",
            # The grammar of `eval.harm.scorer`, checked by the recipe schema.
            "nega.rewards.scorer_spec",
        ),
    ),
    ("scoring", ("nega.eval", "nega.rewards")),
    ("methods", ("nega.align", "nega.distill", "nega.sft")),
    (
        "top",
        ("nega", "nega.__main__", "nega.api", "nega.cli", "nega.hub", "nega.data_preview", "nega.export"),
    ),
]


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module) for every import of a module in `modules`, at any depth of the file: `from a.b
    import c` names a.b.c when that is a module, else a.b."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.append((node.lineno, name))
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules it imports, with the packages Python runs on the way (importing
    nega.rewards.harm runs nega.rewards first). From inside a package that package is already running,
    so a module's own packages count only when it names them."""
    modules = modules_of(root)
    graph = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 1)}
        targets = set()
        for _, target in imports_of(path, modules):
            parts = target.split(".")
            targets.add(target)
            # Every module runs the root package first; that edge is implied by all and counts when named.
            targets.update(p for p in (".".join(parts[:n]) for n in range(2, len(parts))) if p not in own)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def floor_of(module: str, layers=LAYERS) -> int | None:
    """The index in `layers` of the longest prefix naming `module`, or None. The root package's name
    (no dot) stands for its `__init__` alone."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            below = "." in prefix and module.startswith(prefix + ".")
            if (module == prefix or below) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def upward_imports(root: Path = ROOT, layers=LAYERS) -> list[str]:
    """One line per import of a module on a higher floor than the importing one."""
    modules = modules_of(root)
    problems = []
    for name, path in modules.items():
        floor = floor_of(name, layers)
        for line, target in imports_of(path, modules):
            above = floor_of(target, layers)
            if floor is not None and above is not None and above > floor:
                problems.append(
                    f"{path.relative_to(root.parent)}:{line} ({layers[floor][0]}) imports {target} "
                    f"({layers[above][0]}), a floor above it"
                )
    return problems


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A shortest circle a -> ... -> a through the first module that has one, or None."""
    for start in sorted(graph):
        previous: dict[str, str | None] = {start: None}
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


def test_every_module_stands_on_a_floor():
    unplaced = [name for name in modules_of(ROOT) if floor_of(name) is None]
    assert not unplaced, f"add these modules to a floor in tests/test_layers.py LAYERS: {unplaced}"


def test_no_module_imports_a_floor_above_its_own():
    problems = upward_imports()
    assert not problems, "imports against the floors (tests/test_layers.py):\n  " + "\n  ".join(problems)


def test_no_import_circle():
    circle = import_circle(import_graph())
    assert circle is None, f"import circle: {' -> '.join(circle)}"


def test_the_method_table_imports_no_method():
    # The table names each method's modules by dotted path, imported when first needed.
    graph = import_graph()
    for name in ("nega.config", "nega.config.schema", "nega.config.registry", "nega.config.loader"):
        methods = [n for n, _ in LAYERS].index("methods")
        reached = {m for m in graph[name] if floor_of(m) == methods or m.startswith("nega.rewards.rm")}
        assert not reached, f"{name} imports {reached}"


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # The schema imports the scorer-spec grammar inside a validator; training imports the loader inside
    # the function a launched rank runs.
    assert "nega.rewards.scorer_spec" in graph["nega.config.schema"]
    assert "nega.config.loader" in graph["nega.training"]


@pytest.fixture
def tree(tmp_path):
    """A package `pkg` with a low and a high module; each test adds the import it checks."""
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "low.py").write_text("import os\n")
    (root / "high.py").write_text("from pkg.low import thing\n")
    layers = [("low", ("pkg.low",)), ("high", ("pkg", "pkg.high"))]
    return root, layers


def test_an_upward_import_inside_a_function_is_named(tree):
    root, layers = tree
    (root / "low.py").write_text("def f():\n    from pkg.high import g\n    return g\n")
    assert upward_imports(root, layers) == ["pkg/low.py:2 (low) imports pkg.high (high), a floor above it"]


def test_an_import_circle_is_reported_with_its_path(tree):
    root, layers = tree
    assert import_circle(import_graph(root)) is None
    (root / "low.py").write_text("def f():\n    import pkg.high\n")
    assert import_circle(import_graph(root)) == ["pkg.high", "pkg.low", "pkg.high"]
    # A package whose __init__ imports its module, and the module importing that package back by name.
    (root / "low.py").write_text("import os\n")
    (root / "__init__.py").write_text("from pkg.high import thing\n")
    assert import_circle(import_graph(root)) is None
    (root / "low.py").write_text("from pkg import thing\n")
    assert import_circle(import_graph(root)) == ["pkg", "pkg.high", "pkg.low", "pkg"]
