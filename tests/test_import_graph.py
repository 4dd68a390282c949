"""No import cycle among finecaption_plugin's modules, patches/ and tasks/ included: every import, at module level
or in a function, points one way.

Blocks under ``if __name__ == "__main__":`` are left out: they run only when the module is a script.
"""

from __future__ import annotations

import ast
from pathlib import Path

import finecaption_plugin

PACKAGE = Path(finecaption_plugin.__file__).parent
# Folders shipped inside the package (pyproject's package-dir), by the import name they ship under.
SHIPPED = {
    "finecaption_plugin.patches": PACKAGE.parent / "patches",
    "finecaption_plugin.tasks": PACKAGE.parent / "tasks",
}


def _module_name(path: Path, root: Path = PACKAGE, name: str = "finecaption_plugin") -> str:
    parts = [name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    stack = [node for node in ast.parse(path.read_text()).body if not _is_main_guard(node)]
    while stack:
        node = stack.pop()
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_main_guard(child))
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a parent package is not an edge
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    for name, root in SHIPPED.items():
        paths |= {_module_name(path, root, name): path for path in root.rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target] if target in trail else [node, target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_graph_sees_the_package():
    graph = _graph()
    assert "finecaption_plugin.compositioncap_data" in graph["finecaption_plugin.compositioncap_hooks"]
    # patches/ and tasks/, under the names they ship as
    assert "finecaption_plugin.patches.lmms_eval.task_index" in graph["finecaption_plugin.patches.lmms_eval"]
    assert "finecaption_plugin.compositioncap_hooks" in graph["finecaption_plugin.tasks.compositioncap.utils"]


def test_no_import_cycle():
    assert _cycles(_graph()) == []
