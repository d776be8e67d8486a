"""Import boundaries of ``services/`` and ``shared/``, checked on the source (AST), not at runtime.

Why: each service is its own process on the bus; code shared by two of them belongs in
``shared/``, and a service importing another drags that service's state and startup into
its process (and breaks when the two are deployed apart). Import cycles make import order
matter and hide who owns what, so no module may import a module that imports it back,
directly or through others.

Every import statement counts: top-level ones, late imports inside functions and imports
under ``if TYPE_CHECKING:`` (a cycle for the type checker is still a cycle in the design).
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
Importing ``a.b.c`` is an edge to ``a.b.c`` only, not to its parent packages' ``__init__``:
a package that re-exports its submodules is not a cycle by itself.

``services/all.py`` (single-process mode) is the composition root: it sits outside every
service and is the one place allowed to import them all.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("services", "shared")


@dataclass(frozen=True)
class Edge:
    """One import statement: ``src`` imports ``dst`` at ``file:line``."""

    src: str
    dst: str
    file: str
    line: int

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    """``services/image/service.py`` -> ``services.image.service``; an ``__init__`` is its
    package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path) -> dict[str, Path]:
    """Every module under the top-level packages, by dotted name."""
    mods: dict[str, Path] = {}
    for top in TOP:
        for path in sorted((root / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                mods[module_name(path, root)] = path
    return mods


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (None for stdlib/3rd party)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _base(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    """Resolve a relative ``from`` import the way Python does."""
    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        pkg = pkg[: len(pkg) - (level - 1)]
    return ".".join([*pkg, target] if target else pkg)


def imports_of(mod: str, path: Path, modules: dict[str, Path], root: Path) -> Iterator[Edge]:
    """The edges of one module to our other modules, from every import statement in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = str(path.relative_to(root))
    is_pkg = path.name == "__init__.py"
    seen: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (_base(mod, is_pkg, node.level, node.module) if node.level
                    else node.module or "")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for t in targets:
            dst = _known(t, modules)
            if dst is not None and dst != mod and (dst, node.lineno) not in seen:
                seen.add((dst, node.lineno))
                yield Edge(mod, dst, rel, node.lineno)


def import_graph(root: Path = ROOT) -> list[Edge]:
    modules = find_modules(root)
    return [e for m, p in modules.items() for e in imports_of(m, p, modules, root)]


def _service(mod: str, modules: dict[str, Path]) -> str | None:
    """``services.image.x`` -> ``image``; None outside a service (``services.all``, ``shared``)."""
    parts = mod.split(".")
    if parts[0] != "services" or len(parts) < 2:
        return None
    if len(parts) == 2 and mod in modules and modules[mod].name != "__init__.py":
        return None  # a top-level module such as services/all.py belongs to no service
    return parts[1]


def boundary_violations(edges: list[Edge], modules: dict[str, Path]) -> list[str]:
    """``services/<a>`` importing ``services/<b>``, and ``shared/`` importing ``services/``."""
    out = []
    for e in edges:
        if e.src.split(".")[0] == "shared" and e.dst.split(".")[0] == "services":
            out.append(f"{e.where()}: shared module {e.src} imports service module {e.dst}")
            continue
        a = _service(e.src, modules)
        b = e.dst.split(".")[1] if e.dst.startswith("services.") else None
        if a is not None and b is not None and a != b:
            out.append(f"{e.where()}: services/{a} ({e.src}) imports services/{b} ({e.dst})")
    return out


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def cycle_violations(edges: list[Edge]) -> list[str]:
    """One line per import statement that closes a cycle, naming the whole cycle."""
    out = []
    for comp in cycles(edges):
        members = set(comp)
        out.append(f"import cycle between {', '.join(comp)}:")
        for e in sorted(edges, key=lambda e: (e.file, e.line)):
            if e.src in members and e.dst in members:
                out.append(f"  {e.where()}: {e.src} imports {e.dst}")
    return out


def test_no_service_imports_another_and_no_cycles() -> None:
    modules = find_modules(ROOT)
    edges = import_graph(ROOT)
    assert edges, "no imports found: the walk looks in the wrong place"
    problems = boundary_violations(edges, modules) + cycle_violations(edges)
    for p in problems:
        print(p)
    assert not problems, "import boundaries broken:\n" + "\n".join(problems)


# -- the checker itself, on a small tree written for the purpose ---------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "services/__init__.py": "",
    "services/all.py": "from .a.service import A\nfrom .b import y\n",
    "services/a/__init__.py": "",
    "services/a/service.py": "from . import logic\nfrom .sub.m import M\nA = 1\n",
    "services/a/logic.py": "import os\nfrom shared import util\n",
    "services/a/sub/__init__.py": "",
    "services/a/sub/m.py": "from ..leaf import X\nM = 1\n",
    "services/a/leaf.py": "X = 1\n",
    "services/b/__init__.py": "",
    "services/b/leaf.py": "Z = 1\n",
    "services/b/y.py": "import shared.util\n",
    "shared/__init__.py": "",
    "shared/util.py": "import json\n",
}


def _problems(root: Path) -> list[str]:
    edges = import_graph(root)
    return boundary_violations(edges, find_modules(root)) + cycle_violations(edges)


def test_checker_resolves_relative_and_package_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, CLEAN)
    edges = {(e.src, e.dst) for e in import_graph(root)}
    assert ("services.a.sub.m", "services.a.leaf") in edges  # from ..leaf import X
    assert ("services.a.service", "services.a.logic") in edges  # from . import logic
    assert ("services.a.logic", "shared.util") in edges
    assert ("services.b.y", "shared.util") in edges
    assert _problems(root) == []  # services/all.py may import every service


def test_checker_reports_cross_service_import_with_file_and_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**CLEAN, "services/a/logic.py": "import os\n\n"
                            "def f():\n    from services.b.y import z\n"})
    assert _problems(root) == [
        "services/a/logic.py:4: services/a (services.a.logic) imports services/b (services.b.y)"]


def test_checker_reports_shared_importing_a_service(tmp_path: Path) -> None:
    root = _tree(tmp_path, {**CLEAN, "shared/util.py": "from services.b import leaf\n"})
    assert _problems(root) == [
        "shared/util.py:1: shared module shared.util imports service module services.b.leaf"]


def test_checker_reports_cycles_even_under_type_checking(tmp_path: Path) -> None:
    logic = ("from typing import TYPE_CHECKING\n"
             "if TYPE_CHECKING:\n    from .service import A\n")
    root = _tree(tmp_path, {**CLEAN, "services/a/logic.py": logic})
    assert _problems(root) == [
        "import cycle between services.a.logic, services.a.service:",
        "  services/a/logic.py:3: services.a.logic imports services.a.service",
        "  services/a/service.py:1: services.a.service imports services.a.logic",
    ]
