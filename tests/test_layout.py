"""The package layout rules of DESIGN.md, checked statically (``tools/layout.py``).

No import cycles (module level and package level), no module importing a private name
(``_x``) or private module of another package, and arrows pointing down: the shared core
(``device``, ``artifacts``, ``nn``, ``engine``, ``runner``) never imports an assay or the CLI.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("layout_tool", ROOT / "tools" / "layout.py")
layout = importlib.util.module_from_spec(_spec)
sys.modules["layout_tool"] = layout  # its dataclasses look their module up
_spec.loader.exec_module(layout)

CORE = ("device", "artifacts", "nn", "engine", "runner")
UPPER = ("flow", "cells", "cli", "simulate")


def _part(mod: str) -> str:
    return mod.split(".")[1] if "." in mod else mod


def _scan():  # noqa: ANN202
    return layout.scan(ROOT)


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path: Path) -> None:
    pkg = tmp_path / "rescue_gpu"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from ..b import y\n")
    (pkg / "b.py").write_text("def f():\n    from .a.x import _g\n")
    found = layout.scan(tmp_path)
    assert layout.cycles(found.edges) == [["rescue_gpu.a.x", "rescue_gpu.b"]]
    assert layout.cycles(layout.package_edges(found.edges)) == [["rescue_gpu.a", "rescue_gpu.b"]]
    assert found.private == ["rescue_gpu.b imports rescue_gpu.a.x._g"]


def test_no_module_level_import_cycles() -> None:
    assert layout.cycles(_scan().edges) == []


def test_no_package_level_import_cycles() -> None:
    assert layout.cycles(layout.package_edges(_scan().edges)) == []


def test_no_private_imports_across_packages() -> None:
    assert _scan().private == []


def test_the_core_never_imports_an_assay_and_device_is_at_the_bottom() -> None:
    edges = _scan().edges
    up = sorted((m, t) for m, ts in edges.items() if _part(m) in CORE for t in ts if _part(t) in UPPER)
    assert up == []
    assert not {_part(t) for t in edges["rescue_gpu.device"]} & {"nn", "engine", "artifacts", "runner"}
    assert not any(_part(t) in ("engine", "runner") for m, ts in edges.items() if _part(m) == "nn" for t in ts)
