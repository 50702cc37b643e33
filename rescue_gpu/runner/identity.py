"""Resume identity: what makes a stored sample reusable by a re-run.

A sample is skipped when it is stored as scored, every identity field of its provenance
(settings hash, model sha256 and checksum, and the assay's others such as the reference
fingerprint) equals this run's, and its input is unchanged (the assay decides how to tell:
a file's size and mtime, else its sha256, by default).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .manifest import ManifestRow
from .store import RunStore

__all__ = ["file_digest", "same_file", "settings_hash", "pending_rows"]


def file_digest(path: str | Path, *, chunk: int = 1 << 22) -> tuple[str, int, int]:
    """``(sha256 hex, size in bytes, mtime in ns)`` of a file.

    Parameters
    ----------
    path
        The file.
    chunk
        Bytes read at a time.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest(), int(st.st_size), int(st.st_mtime_ns)


def same_file(path: Path, prov: dict[str, Any]) -> bool:
    """Whether ``path`` still holds the stored input: size and mtime equal, else its sha256 equal.

    ``prov`` is a stored provenance with ``input_size``, ``input_mtime_ns`` and ``input_sha256``.
    """
    try:
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != prov.get("input_size"):
        return False
    if st.st_mtime_ns == prov.get("input_mtime_ns"):
        return True
    return file_digest(path)[0] == prov.get("input_sha256")


def settings_hash(settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of an assay's settings record."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def pending_rows(rows: Sequence[ManifestRow], store: RunStore, identity: dict[str, str],
                 same_input: Callable[[Path, dict[str, Any]], bool] | None = None) -> tuple[list[ManifestRow], int]:
    """Rows to (re)do and the number skipped: a scored sample with equal identity and input is skipped.

    Parameters
    ----------
    rows
        The manifest.
    store
        The run store.
    identity
        Provenance fields a stored sample must equal.
    same_input
        ``same_input(path, provenance)``: whether the input is unchanged (default
        :func:`same_file`).
    """
    same_input = same_input or same_file
    todo, skipped = [], 0
    for row in rows:
        got = store.read(row.sample_id)
        prov = got.record.get("provenance", {}) if got is not None else {}
        same = got is not None and got.record.get("status") == "scored" and \
            all(prov.get(k) == v for k, v in identity.items()) and same_input(row.path, prov)
        if same:
            skipped += 1
        else:
            todo.append(row)
    return todo, skipped
