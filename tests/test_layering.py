"""Imports point one way: core → checkpoint → kernels → vllm_plugin → server, offline_quant beside
the serving side on core and checkpoint only, the CLI and benchmarks on top; no import circle
between modules. A static scan of every import (function-level ones included, `if
TYPE_CHECKING:` blocks excluded), so a lazy import cannot hide an arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("duquant_serve", "offline_quant", "benchmarks", "cutlass_ext")

# layer → the layers it may import (itself always allowed).
ALLOWED = {
    "duquant_serve.core": set(),
    "duquant_serve.files": set(),
    "duquant_serve.checkpoint": {"duquant_serve.core", "duquant_serve.files"},
    "duquant_serve.kernels": {"duquant_serve.core"},
    "duquant_serve.vllm_plugin": {"duquant_serve.core", "duquant_serve.checkpoint",
                                  "duquant_serve.kernels"},
    "duquant_serve.server": {"duquant_serve.core", "duquant_serve.checkpoint",
                             "duquant_serve.kernels", "duquant_serve.vllm_plugin"},
    # Test-model builders: on core; nothing in the library imports them.
    "duquant_serve.testing": {"duquant_serve.core"},
    "offline_quant": {"duquant_serve.core", "duquant_serve.checkpoint", "duquant_serve.files"},
    "duquant_serve.cli": {"duquant_serve.core", "duquant_serve.checkpoint",
                          "duquant_serve.kernels", "duquant_serve.server", "offline_quant"},
    "duquant_serve": set(),  # the package __init__
    "cutlass_ext": {"duquant_serve.core"},
    "benchmarks": None,  # scripts on top: anything
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "duquant_serve" and len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Project modules `path` imports at run time."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import mod`: the submodule is the dependency
            found.update(f"{target}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = [f for p in PACKAGES for f in (ROOT / p).rglob("*.py")]
    modules = {_module_name(f): f for f in files}
    graph = {}
    for name, f in modules.items():
        # keep only names that are modules (drop `from mod import function`)
        graph[name] = {m for m in _imports(f) if m in modules and m != name}
    return graph


GRAPH = _graph()


def test_the_scan_sees_the_project():
    assert len(GRAPH) > 50
    assert "duquant_serve.core.reference" in GRAPH["duquant_serve.checkpoint"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module):
    allowed = ALLOWED[_layer(module)]
    if allowed is None:
        return
    bad = sorted(m for m in GRAPH[module]
                 if _layer(m) != _layer(module) and _layer(m) not in allowed)
    assert not bad, f"{module} imports {bad}: against the layering (tests/test_layering.py)"


def test_no_import_circle():
    # Package __init__ files re-export their modules: an edge from a module to its own
    # package's __init__ is part of importing it, not a circle of ours.
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(GRAPH[m]):
            if m.startswith(n + "."):
                continue
            if seen.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import circle: " + " → ".join(cycle))
            if n not in seen:
                walk(n, path + [n])
        seen[m] = 2

    for m in sorted(GRAPH):
        if m not in seen:
            walk(m, [m])
