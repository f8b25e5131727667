"""The package's import arrows point one way: no module imports, even lazily inside a function,
a module that imports it back (kernel → session → backends → API boundary, STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sandbox_kernel"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Every module of the package → the package's modules it imports (at any depth of its code)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    imported.add(full if full in modules else target)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {m for m in imported if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                found.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "sandbox_kernel.kubernetes.session" in graph and graph["sandbox_kernel.kubernetes.session"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_the_kubernetes_modules_import_in_the_order_of_a_kernel_start() -> None:
    """The session stands above provisioning, pod status and reports; none of those imports it,
    and the early start reaches provisioning only (lazily), never the session."""
    graph = import_graph()
    k8s = "sandbox_kernel.kubernetes"
    inside = {name: deps for name, deps in graph.items() if name.startswith(f"{k8s}.")}
    assert [name for name, deps in inside.items() if f"{k8s}.session" in deps] == []
    assert graph[f"{k8s}.early"] & {f"{k8s}.session", f"{k8s}.reports"} == set()
    assert f"{k8s}.provision" in graph[f"{k8s}.early"]
    assert graph[f"{k8s}.api"] <= {"sandbox_kernel.errors", f"{k8s}.answers"}
    assert graph[f"{k8s}.answers"] <= {"sandbox_kernel.errors"}
    # The early start makes its sandbox before the kubernetes client is imported (early_client.py).
    assert graph[f"{k8s}.early_client"] <= {"sandbox_kernel.errors", f"{k8s}.answers"}
