"""The nn/device core imports downwards only: no cycles, no assay imports, no private names across packages.

Checked over the AST of every module (imports inside functions count too), for the
core this redesign owns: ``device``, ``artifacts``, ``nn`` and ``engine``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rescue_gpu"
CORE = ("device", "artifacts", "nn", "engine")
ASSAYS = ("flow", "cells", "cohort", "runner", "cli", "report", "simulate")


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import in ``path``, made absolute."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    mods = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, names in _imports(p):
            if not target.startswith("rescue_gpu"):
                continue
            for n in names or [""]:
                full = f"{target}.{n}" if n else target
                graph[m].add(full if full in mods else target)
    return {m: {t for t in ts if t in mods and t != m} for m, ts in graph.items()}


def _top(m: str) -> str:
    parts = m.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _core_graph() -> dict[str, set[str]]:
    return {m: ts for m, ts in _graph().items() if _top(m) in CORE}


def test_core_has_no_module_or_package_cycles() -> None:
    core = _core_graph()
    assert _cycles({m: {t for t in ts if _top(t) in CORE} for m, ts in core.items()}) == []
    packages: dict[str, set[str]] = {}
    for m, ts in core.items():
        packages.setdefault(_top(m), set()).update(_top(t) for t in ts if _top(t) in CORE and _top(t) != _top(m))
    assert _cycles(packages) == []


def test_core_never_imports_an_assay_and_device_is_at_the_bottom() -> None:
    core = _core_graph()
    up = sorted((m, t) for m, ts in core.items() for t in ts if _top(t) in ASSAYS)
    assert up == []
    assert not {_top(t) for t in core["rescue_gpu.device"]} & {"nn", "engine", "artifacts"}
    assert not {_top(t) for t in core["rescue_gpu.artifacts"]} & {"nn", "engine"}
    assert not any(_top(t) == "engine" for m, ts in core.items() if _top(m) == "nn" for t in ts)


def test_no_private_name_imported_across_packages() -> None:
    bad = []
    for p in ROOT.rglob("*.py"):
        mod = _module(p)
        if _top(mod) not in CORE + ("flow",) and not mod.startswith("rescue_gpu.cells.") :
            continue
        for target, names in _imports(p):
            if target.startswith("rescue_gpu") and _top(target) != _top(mod):
                bad += [f"{mod}: {target}.{n}" for n in names if n.startswith("_")]
    assert bad == []
