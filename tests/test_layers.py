"""The layers point one way: no import cycle among racebench's modules nor among its
layers (sub-packages), the layers stack in the documented order, and the output layer
(reports, plots, compare) never loads the engine.

Module-level imports are what make a cycle (a `TYPE_CHECKING` import is not executed; an
import inside a function is a deliberate lazy edge, e.g. a driver loaded on first use).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "racebench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _top_level_imports(path: Path) -> set[str]:
    module = _module_name(path)
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, path.name == "__init__.py")
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If | ast.Try):
                for block in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, block, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _top_level_imports(path) if m in modules and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_racebench_has_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_output_layer_does_not_load_the_engine() -> None:
    code = (
        "import sys, racebench.output.report, racebench.output.compare\n"
        "loaded = [m for m in sys.modules if m.startswith('racebench.')]\n"
        "print(','.join(sorted(loaded)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.strip()
    engine = [m for m in loaded.split(",") if m.startswith("racebench.engine")]
    assert engine == [], loaded


# The layers from the bottom up (docs/ARCHITECTURE.md): a layer imports only layers below it
# (or its own modules). Top-level modules count as layers of their own; `workloads.custom`
# (users' workloads, which drive their own stores) sits above the stores and the guards.
LAYERS: list[set[str]] = [
    # `racebench` is the package's __init__: its version, and the API behind a lazy getattr.
    {"racebench", "errors", "history", "util", "protocol", "result_model"},
    {"workloads"},
    {"stores"},
    {"locks"},
    {"faults"},
    {"guards"},
    {"workloads.custom"},
    {"config", "plugins", "isolation", "doctor"},
    {"analysis", "leftovers"},
    {"output"},
    {"engine"},
    {"api", "plugin", "pytest_plugin"},
    {"cli", "__main__"},
]


def _layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[1:3] == ["workloads", "custom"]:
        return "workloads.custom"
    return parts[1] if len(parts) > 1 else "racebench"


def test_layers_point_one_way() -> None:
    rank = {name: level for level, names in enumerate(LAYERS) for name in names}
    graph = _graph()
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            source_layer, target_layer = _layer_of(module), _layer_of(target)
            assert source_layer in rank, f"{module}: add its layer {source_layer!r} to LAYERS"
            if rank[target_layer] > rank[source_layer]:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "an import points up the layers"
