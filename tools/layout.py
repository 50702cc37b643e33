"""Import-layout checks of ``rescue_gpu``: import cycles (module and package level) and private imports.

Static (AST), no import executed. Every ``import`` counts, at module level or inside a
function, except those under ``if TYPE_CHECKING:`` (never executed). Nodes:

- module level: each module (a package is its ``__init__``);
- package level: ``rescue_gpu``'s direct children (``rescue_gpu.runner``,
  ``rescue_gpu.flow``, ..., and top-level modules such as ``rescue_gpu.config``).

A private import is one of a ``_name`` (or from a ``_module``) of another package-level
node. Run ``python tools/layout.py [ROOT]``: prints the cycles and private imports, exit 1
when there are any.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "rescue_gpu"


@dataclass
class Layout:
    """The import graph of a package: module edges and private imports found."""

    modules: set[str] = field(default_factory=set)
    edges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    private: list[str] = field(default_factory=list)


def module_name(path: Path, root: Path) -> str:
    """``rescue_gpu/runner/run.py`` -> ``rescue_gpu.runner.run``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def _base(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def top(mod: str) -> str:
    """The package-level node of a module (``rescue_gpu.runner.run`` -> ``rescue_gpu.runner``)."""
    return ".".join(mod.split(".")[:2])


def scan(root: Path) -> Layout:
    """Parse every module under ``root/rescue_gpu`` and collect edges and private imports."""
    layout = Layout()
    files = sorted((root / PACKAGE).rglob("*.py"))
    layout.modules = {module_name(f, root) for f in files}
    for f in files:
        mod, is_pkg = module_name(f, root), f.name == "__init__.py"
        for node in _imports(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            else:
                base = _base(mod, is_pkg, node)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append((sub, None) if sub in layout.modules else (base, a.name))
            for target, name in targets:
                if not target.startswith(PACKAGE):
                    continue
                while target not in layout.modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != mod:
                    layout.edges[mod].add(target)
                hidden = (name or "").startswith("_") or any(p.startswith("_") and p != "__init__"
                                                             for p in target.split(".")[2:])
                if hidden and top(target) != top(mod):
                    layout.private.append(f"{mod} imports {target}{'.' + name if name else ''}")
    return layout


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module edges collapsed to package-level nodes (self-edges dropped)."""
    out: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            if top(a) != top(b) and top(a) != PACKAGE and top(b) != PACKAGE:
                out[top(a)].add(top(b))
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    layout = scan(root)
    mod_cycles, pkg_cycles = cycles(layout.edges), cycles(package_edges(layout.edges))
    for c in mod_cycles:
        print("module cycle:", " <-> ".join(c))
    for c in pkg_cycles:
        print("package cycle:", " <-> ".join(c))
    for p in layout.private:
        print("private import:", p)
    print(f"{len(mod_cycles)} module cycles, {len(pkg_cycles)} package cycles, {len(layout.private)} private imports")
    return 1 if mod_cycles or pkg_cycles or layout.private else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
