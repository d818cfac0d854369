"""The direction of the imports, checked from the source (no import is executed).

- The product (gateway/, storage/, centrifugo_bridge/) never imports the load suite (bench/)
  or the tests, not even lazily inside a function: the bench registers itself as a
  `sentchat` command instead (gateway/commands.py).
- No cycle among the product's modules through the imports that run when a module is
  loaded (module level, `if TYPE_CHECKING:` blocks excluded): a cycle there makes the import
  order matter and hides which layer depends on which.

The checker runs on the repository and on small synthetic trees that prove it notices a
violation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("gateway", "storage", "centrifugo_bridge")
NOT_FROM_PRODUCT = ("bench", "tests")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (a submodule when `from pkg import submodule`)
    line: int
    module_level: bool  # runs when ``source`` is loaded


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted name -> file of every module of ``packages`` under ``root``."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "node_modules" not in path.parts:
                found[module_name(root, path)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(body: list[ast.stmt], module_level: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement under ``body`` with whether it runs at load time: statements
    nested in if/try/with/loops at module level do (except `if TYPE_CHECKING:`), those inside
    a function or a class body's methods do not."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, module_level
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _walk(node.body, False)
        elif isinstance(node, ast.ClassDef):
            yield from _walk(node.body, module_level)
        elif isinstance(node, ast.If):
            yield from _walk(node.body, module_level and not _is_type_checking(node.test))
            yield from _walk(node.orelse, module_level)
        else:
            for field in ("body", "orelse", "finalbody"):
                yield from _walk(getattr(node, field, None) or [], module_level)
            for handler in getattr(node, "handlers", None) or []:
                yield from _walk(handler.body, module_level)
            for case in getattr(node, "cases", None) or []:
                yield from _walk(case.body, module_level)


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """The imports of one module; a ``from pkg import x`` names ``pkg.x`` when that is a
    module of ``known``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[Import] = []
    for node, module_level in _walk(tree.body, True):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        out += [Import(name, t, node.lineno, module_level) for t in targets]
    return out


def forbidden_imports(root: Path, product: Iterable[str] = PRODUCT,
                      forbidden: Iterable[str] = NOT_FROM_PRODUCT) -> list[str]:
    """Imports (lazy ones included) from the product into ``forbidden`` packages."""
    found = modules(root, product)
    bad = tuple(forbidden)
    return [f"{found[i.source].relative_to(root)}:{i.line}: {i.source} imports {i.target}"
            for name, path in found.items() for i in imports_of(name, path, set(found))
            if i.target.split(".")[0] in bad]


def import_cycles(root: Path, packages: Iterable[str] = PRODUCT) -> list[list[str]]:
    """Cycles among the modules of ``packages`` through their load-time imports: each as
    the list of modules around it (the first repeated at the end). Tarjan's strongly
    connected components, then one cycle shown per component."""
    found = modules(root, packages)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        for i in imports_of(name, path, set(found)):
            if i.module_level and i.target in found and i.target != name:
                graph[name].add(i.target)
    return cycles(graph)


def package_cycles(root: Path, packages: Iterable[str] = PRODUCT) -> list[list[str]]:
    """Cycles among the top-level packages through any import, lazy ones included: the
    layers (gateway above storage and centrifugo_bridge) depend one way only."""
    found = modules(root, packages)
    graph: dict[str, set[str]] = {p: set() for p in packages}
    for name, path in found.items():
        for i in imports_of(name, path, set(found)):
            top, target = name.split(".")[0], i.target.split(".")[0]
            if target in graph and target != top:
                graph[top].add(target)
    return cycles(graph)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of ``graph`` that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        # Recursion depth is bounded by the module count (a few hundred).
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_one_cycle(graph, set(c), c[0]) for c in components]


def _one_cycle(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """A shortest path from ``start`` back to itself inside one component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a component but on no cycle")


# ---- the repository --------------------------------------------------------------------


def test_the_product_never_imports_the_bench_or_the_tests() -> None:
    assert forbidden_imports(ROOT) == []


def test_no_import_cycle_among_the_product_modules() -> None:
    cycles = import_cycles(ROOT)
    assert cycles == [], "import cycles at module level:\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_no_cycle_among_the_product_packages() -> None:
    assert package_cycles(ROOT) == []


def test_every_product_module_parses_and_is_seen() -> None:
    found = modules(ROOT, PRODUCT)
    # The walk sees the packages and their modules (a wrong root would pass vacuously).
    assert {"gateway.cli", "gateway.node", "storage.embedded", "centrifugo_bridge"} <= set(found)


# ---- the checker notices what it must ---------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_synthetic_cycle_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "gateway/__init__.py": "",
        "gateway/a.py": "from gateway import b\n",
        "gateway/b.py": "import storage.c\n",
        "storage/__init__.py": "",
        "storage/c.py": "from gateway.a import something\n",
        # lazy (in a function) and type-only imports run at no load time: no cycle
        "storage/d.py": "def f():\n    import gateway.e\n",
        "gateway/e.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    import storage.d\nimport storage.d\n",
        "centrifugo_bridge/__init__.py": "",
    })
    assert import_cycles(root) == [["gateway.a", "gateway.b", "storage.c", "gateway.a"]]


def test_a_cycle_through_relative_imports_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "gateway/__init__.py": "",
        "gateway/x/__init__.py": "from . import y\n",
        "gateway/x/y.py": "try:\n    from .. import x\nexcept ImportError:\n    pass\n",
        "storage/__init__.py": "",
        "centrifugo_bridge/__init__.py": "",
    })
    assert import_cycles(root) == [["gateway.x", "gateway.x.y", "gateway.x"]]


def test_type_checking_imports_make_no_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "gateway/__init__.py": "",
        "gateway/a.py": "import gateway.b\n",
        "gateway/b.py": "import typing\nif typing.TYPE_CHECKING:\n    import gateway.a\n",
        "storage/__init__.py": "",
        "centrifugo_bridge/__init__.py": "",
    })
    assert import_cycles(root) == []


def test_a_lazy_cycle_between_packages_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "gateway/__init__.py": "import storage\n",
        "storage/__init__.py": "def f():\n    from gateway import cli\n",
        "centrifugo_bridge/__init__.py": "",
    })
    assert import_cycles(root) == []
    assert package_cycles(root) == [["gateway", "storage", "gateway"]]


@pytest.mark.parametrize("line", ["import bench.saturate", "from bench import common",
                                  "from tests.sdk import x", "def f():\n    from bench.x import y"])
def test_a_product_import_of_the_bench_or_the_tests_is_reported(tmp_path: Path, line: str) -> None:
    root = _tree(tmp_path, {
        "gateway/__init__.py": "",
        "gateway/cli.py": f"import os\n{line}\n",
        "storage/__init__.py": "",
        "centrifugo_bridge/__init__.py": "",
    })
    [found] = forbidden_imports(root)
    assert found.startswith("gateway/cli.py:") and "gateway.cli imports " in found
