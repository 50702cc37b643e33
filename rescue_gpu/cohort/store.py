"""The run store: ``RUN_DIR/store.zarr``, one Zarr group per sample.

Layout::

    store.zarr/
      zarr.json                 format, format_version
      samples/
        <key>/                  key = the sample id, percent-encoded (see sample_key)
          image                 (C, H, W) float32, one chunk           (scored samples)
          coords                (n, 2) float32 projected events        (with --keep-coords)
          zarr.json             attributes: {"record": {...}, "done": true}

A sample's record holds p_mrd, call, QC counts, status, error and its provenance (input
sha256 and size, settings hash, reference fingerprint, model sha256, software versions).

Crash safety. Only one process writes (the client of a cohort run; workers return
results to it), and a run holds an exclusive ``flock`` on ``RUN_DIR/.lock``. A sample is
written arrays first and its attributes last; ``done: true`` is in that last write. A
reader treats a group whose attributes are missing, unreadable or lack ``done`` as not
written, and the writer deletes such a group before writing it again. Groups are keyed by
sample id, so a sample can never appear twice. Killed at any moment (``kill -9``), the
next run finds every sample either complete or absent.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import StoreError

__all__ = ["RunStore", "StoredSample", "sample_key", "FORMAT", "FORMAT_VERSION", "run_lock"]

FORMAT = "rescue-run-store"
FORMAT_VERSION = 1


def sample_key(sample_id: str) -> str:
    """Group name of a sample: its id percent-encoded (ids from folders contain ``/``)."""
    key = quote(sample_id, safe="-_.")
    return key if not key.startswith(".") else "%2E" + key[1:]


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class StoredSample:
    """One sample as read back from the store."""

    sample_id: str
    record: dict[str, Any]
    arrays: tuple[str, ...] = field(default_factory=tuple)


class run_lock:
    """An exclusive, non-blocking ``flock`` on ``RUN_DIR/.lock`` (released when the process dies).

    Raises
    ------
    StoreError
        Another process holds the lock (another ``rescue score`` writes this run).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._fh: Any = None

    def __enter__(self) -> run_lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise StoreError(f"{self.path.parent}: another 'rescue score' is writing this run; "
                             "wait for it to finish or choose another --out") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()


_CHUNK_BYTES = 8 << 20


def _chunks(a: np.ndarray) -> tuple[int, ...] | None:
    """One chunk for small arrays; row blocks of about 8 MB for large ones (per-cell tables of a big sample)."""
    if not a.size:
        return None
    row = max(1, a.nbytes // max(1, a.shape[0]))
    return (max(1, min(a.shape[0], _CHUNK_BYTES // row)), *a.shape[1:])


class RunStore:
    """The Zarr run store of one run directory (see the module docstring for the layout)."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        try:
            self.root = zarr.open_group(self.path, mode="a")
            if "format" not in self.root.attrs:
                self.root.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})
            self.samples = self.root.require_group("samples")
        except Exception as exc:  # zarr raises several kinds for a corrupt or foreign store
            raise StoreError(f"{self.path}: cannot open the run store ({exc.__class__.__name__}: {exc}); "
                             "remove it to start the run afresh") from None
        fmt = self.root.attrs.get("format")
        if fmt != FORMAT:
            raise StoreError(f"{self.path}: not a rescue run store (format {fmt!r}); choose another --out")
        if int(self.root.attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(f"{self.path}: written by a newer rescue_gpu; upgrade rescue_gpu or choose another --out")

    @property
    def _samples_dir(self) -> Path:
        return self.path / "samples"

    def read(self, sample_id: str) -> StoredSample | None:
        """The complete record of ``sample_id``, or None when absent or incompletely written."""
        return self._read_key(sample_key(sample_id))

    def _read_key(self, key: str) -> StoredSample | None:
        meta = self._samples_dir / key / "zarr.json"
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError):
            return None
        record = attrs.get("record")
        if attrs.get("done") is not True or not isinstance(record, dict) or "sample_id" not in record:
            return None
        arrays = tuple(sorted(p.name for p in (self._samples_dir / key).iterdir() if p.is_dir()))
        return StoredSample(str(record["sample_id"]), record, arrays)

    def __iter__(self) -> Iterator[StoredSample]:
        """Every complete sample, in key order."""
        if not self._samples_dir.is_dir():
            return
        for key in sorted(os.listdir(self._samples_dir)):
            got = self._read_key(key)
            if got is not None:
                yield got

    def write(self, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write one sample: delete any previous group, write ``arrays``, then the record with ``done``."""
        sid = str(record["sample_id"])
        key = sample_key(sid)
        shutil.rmtree(self._samples_dir / key, ignore_errors=True)
        group = self.samples.create_group(key, overwrite=True)
        for name, a in (arrays or {}).items():
            a = np.ascontiguousarray(a)
            group.create_array(name, data=a, chunks=_chunks(a), overwrite=True)
        group.attrs.update({"record": _jsonable(record), "done": True})

    def image(self, sample_id: str) -> np.ndarray | None:
        """The stored image of ``sample_id`` (None when it has none)."""
        return self.array(sample_id, "image")

    def array(self, sample_id: str, name: str) -> np.ndarray | None:
        """A stored array of ``sample_id`` (None when it has none)."""
        try:
            return np.asarray(self.samples[sample_key(sample_id)][name][...])
        except (KeyError, FileNotFoundError):
            return None

    def set_run(self, meta: dict[str, Any]) -> None:
        """Record the settings of the latest run in the root attributes."""
        self.root.attrs.update({"last_run": _jsonable(meta)})

    def run_meta(self) -> dict[str, Any]:
        """The settings of the latest run ({} before the first)."""
        return dict(self.root.attrs.get("last_run", {}))
