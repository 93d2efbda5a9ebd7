"""prefdyn's imports point one way: down the layers, with no cycle between sub-packages
or between the modules of one sub-package.

Every import of ``src/prefdyn`` is read with ``ast`` (including the ones inside
functions and ``if TYPE_CHECKING`` blocks: a deferred import is still a dependency)
and mapped to the sub-package it comes from and goes to. A module may import from
its own layer or a lower one, never a higher one (STYLE.md, "Layout").
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = "prefdyn"
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE

BASE = "base"
"""The package root's own modules: ``errors`` and every ``_*.py`` (``_hashing``, ``_paths``,
``_runtime``, ...). They import nothing of prefdyn but each other."""

ENTRY = "entry"
"""``prefdyn/__init__.py`` (the facade re-exporting the most used names) and ``__main__``:
above everything, so a module inside the package never imports the facade."""

LAYERS: list[set[str]] = [
    {BASE},
    {"models", "data", "losses", "theory", "rewards"},
    {"embeddings"},
    {"diagnostics"},
    {"policies"},
    {"tracking"},
    {"training"},
    {"integrations"},
    {"reports"},
    {"experiments"},
    {"cli"},
    {ENTRY},
]
"""Bottom to top. Sub-packages in one layer may import each other (without a cycle)."""

LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}

def module_name(path: Path, root: Path = ROOT) -> str:
    """``prefdyn.a.b`` of ``root/a/b.py``; a package is its ``__init__``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The sub-package (or BASE / ENTRY) a module belongs to."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return ENTRY
    if parts[1] == "errors" or (len(parts) == 2 and parts[1].startswith("_")):
        return BASE
    return parts[1]


def _is_module(module: str, root: Path) -> bool:
    rel = Path(*module.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """(prefdyn module, line) of every import in ``path``: ``from a import b`` is ``a.b``
    where that is a module, else ``a``; relative imports are resolved."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if _is_module(f"{source}.{alias.name}", root)
                       else source for alias in node.names]
        else:
            continue
        found += [(t, node.lineno) for t in targets if t.split(".")[0] == root.name]
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """{importing module: {imported module: ["file:line", ...]}} over the package."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        for target, line in imported_modules(path, root):
            if target != me:
                graph[me][target].append(f"{path.relative_to(root.parent)}:{line}")
    return graph


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[set[str]]:
    """The cycles of a directed graph: its strongly connected components of 2+ nodes (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return cycles


def layer_violations(graph) -> list[str]:
    """Imports from a higher layer, and sub-packages missing from LAYERS."""
    problems = []
    for source, targets in graph.items():
        for target, where in targets.items():
            a, b = unit_of(source), unit_of(target)
            for unit in (a, b):
                if unit not in LAYER_OF:
                    problems.append(f"{where[0]}: sub-package {unit!r} has no layer; add it to LAYERS")
            if a in LAYER_OF and b in LAYER_OF and LAYER_OF[b] > LAYER_OF[a]:
                problems += [f"{w}: {source} ({a}, layer {LAYER_OF[a]}) imports {target} "
                             f"({b}, layer {LAYER_OF[b]}), a higher layer" for w in where]
    return sorted(set(problems))


def unit_cycles(graph) -> list[str]:
    edges: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        for target in targets:
            if unit_of(source) != unit_of(target):
                edges[unit_of(source)].add(unit_of(target))
    nodes = set(edges) | {v for vs in edges.values() for v in vs}
    return [_describe(cycle, graph, unit_of) for cycle in strongly_connected(nodes, edges)]


def module_cycles(graph) -> list[set[str]]:
    """Cycles between the modules of one sub-package."""
    edges: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        edges[source] |= {t for t in targets if unit_of(t) == unit_of(source)}
    return strongly_connected(set(graph), edges)


def _describe(cycle: set[str], graph, key) -> str:
    inside = sorted(f"{source} -> {target} ({where[0]})" for source, targets in graph.items()
                    for target, where in targets.items()
                    if key(source) in cycle and key(target) in cycle and key(source) != key(target))
    return f"cycle {' / '.join(sorted(cycle))}: " + "; ".join(inside)


def test_every_import_points_down_the_layers():
    assert not (problems := layer_violations(import_graph())), "\n".join(problems)


def test_no_cycle_between_sub_packages():
    assert not (cycles := unit_cycles(import_graph())), "\n".join(cycles)


def test_no_cycle_between_the_modules_of_a_sub_package():
    graph = import_graph()
    assert not (cycles := module_cycles(graph)), "\n".join(
        _describe(c, graph, lambda m: m) for c in cycles)


def test_the_checks_catch_a_back_edge_and_cycles(tmp_path):
    """On a made-up package: a base module importing a sub-package, a low layer importing
    a high one, two modules importing each other (one inside a function, one relative)."""
    root = tmp_path / PACKAGE
    files = {
        "__init__.py": "from prefdyn.training import fit\n",
        "errors.py": "",
        "_paths.py": "from prefdyn.data import x\n",  # base -> data: up
        "data/__init__.py": "x = 1\n",
        "theory/__init__.py": "",
        "theory/a.py": "def f():\n    from prefdyn.theory.b import g\n",
        "theory/b.py": "from .a import f\n",  # a <-> b, inside one sub-package
        "training/__init__.py": "fit = 1\n",
        "tracking/__init__.py": "from prefdyn import training\n",  # tracking -> training: up
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = import_graph(root)
    problems = layer_violations(graph)
    assert problems == [
        "prefdyn/_paths.py:1: prefdyn._paths (base, layer 0) imports prefdyn.data (data, layer 1), "
        "a higher layer",
        "prefdyn/tracking/__init__.py:1: prefdyn.tracking (tracking, layer 5) imports "
        "prefdyn.training (training, layer 6), a higher layer",
    ]
    assert module_cycles(graph) == [{"prefdyn.theory.a", "prefdyn.theory.b"}]
    (root / "training" / "__init__.py").write_text("from prefdyn.tracking import y\n")
    assert [c.split(":")[0] for c in unit_cycles(import_graph(root))] == [
        "cycle tracking / training"]
