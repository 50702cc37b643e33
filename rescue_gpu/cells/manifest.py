"""Which samples a ``rescue cells score`` run covers, and what identifies their input.

A sample is a folder of cell images (one file per cell, or one TIFF per channel per
cell) or one ``.npy``/``.npz`` stack. Inputs are given as

- a manifest CSV with ``sample_id,path`` and optionally ``patient_id``, ``timepoint``,
  ``label`` (positive/negative) and ``true_fraction`` (the known leukaemic share, 0-1,
  for simulated or annotated samples: the report then shows the readout error), or
- a folder whose sub-folders and ``.npy``/``.npz`` files are the samples.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from pathlib import Path

from ..runner.manifest import ManifestRow, read_manifest
from ..errors import ManifestError
from .io import STACK_SUFFIXES

__all__ = ["read_cell_manifest", "input_digest", "same_input"]


def _scan(folder: Path) -> list[ManifestRow]:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    rows = [ManifestRow(sample_id=p.stem if p.is_file() else p.name, path=p) for p in entries
            if p.is_dir() or p.suffix.lower() in STACK_SUFFIXES]
    if not rows:
        raise ManifestError(f"{folder}: no samples found (a sample is a sub-folder of cell images or a "
                            ".npy/.npz stack); or pass a manifest CSV with sample_id,path")
    ids = [r.sample_id for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ManifestError(f"{folder}: {dup} name both a folder and a stack; rename one")
    return rows


def _true_fractions(path: Path) -> dict[str, float]:
    """The optional ``true_fraction`` column of a manifest CSV, checked to lie in [0, 1]."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        records = list(csv.DictReader(fh))
    out, bad = {}, []
    for line, rec in enumerate(records, start=2):
        raw = (rec.get("true_fraction") or "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            bad.append(f"row {line}: true_fraction {raw!r} is not a number in [0, 1]")
        out[(rec.get("sample_id") or "").strip()] = value
    if bad:
        raise ManifestError(f"{path}: " + "; ".join(bad))
    return out


def read_cell_manifest(path: str | Path) -> tuple[list[ManifestRow], dict[str, float]]:
    """Samples of a cells run and their known leukaemic fractions (sample id -> 0..1, where given).

    Raises
    ------
    ManifestError
        Missing columns, duplicate ids, bad labels or fractions (every row listed), or no samples.
    """
    p = Path(path)
    if p.is_dir():
        return _scan(p), {}
    rows = read_manifest(p)
    return rows, _true_fractions(p)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))


def input_digest(path: str | Path) -> tuple[str, int, int]:
    """``(digest, total bytes, newest mtime in ns)`` of a sample's files.

    The digest is a sha256 over every file's relative path, size and mtime (not the
    bytes: a sample can be 100,000 small files), so it changes when a file is added,
    removed, replaced or touched.
    """
    p = Path(path)
    h, total, newest = hashlib.sha256(), 0, 0
    for f in _files(p):
        st = f.stat()
        rel = f.name if f == p else f.relative_to(p).as_posix()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        total, newest = total + st.st_size, max(newest, st.st_mtime_ns)
    return h.hexdigest(), total, newest


def same_input(path: Path, prov: dict) -> bool:
    """Whether ``path`` still holds the input recorded in ``prov`` (see :func:`input_digest`)."""
    if not os.path.exists(path):
        return False
    return input_digest(path)[0] == prov.get("input_sha256")
