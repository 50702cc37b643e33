"""The run store: ``RUN_DIR/store.zarr``, one Zarr group per sample.

Layout::

    store.zarr/
      zarr.json                 format, format_version
      samples/
        <key>/                  key = the sample id, percent-encoded; prefix + hash when long (see sample_key)
          <array>               the assay's arrays: flow ``image`` (C, H, W) and ``coords`` (n, 2);
                                cells ``probs``, ``embeddings``, cell ids, gallery
          zarr.json             attributes: {"record": {...}, "files": {...}, "done": true}

A sample's record is the assay's (flow: p_mrd, call, QC counts; cells: the readout) plus
status, error and its provenance (input digest and size, settings hash, model sha256 and
the assay's other identity fields, software versions). The format is the same for both
assays and unchanged since format_version 1 (``rescue_gpu.runner.store`` before the
runner/flow/cells split): old stores load.

Crash safety. Only one process writes (the client of a cohort run; workers return
results to it), and a run holds an exclusive ``flock`` on ``RUN_DIR/.lock``. A sample is
written arrays first and its attributes last; ``done: true`` is in that last write. A
reader treats a group whose attributes are missing, unreadable or lack ``done`` as not
written, and the writer deletes such a group before writing it again. Groups are keyed by
sample id, so a sample can never appear twice. Killed at any moment (``kill -9``), the
next run finds every sample either complete or absent.

Damage. ``files`` holds the size and CRC-32 of every file of the sample's arrays (chunks
and array metadata) as written. A sample whose files no longer match (a chunk deleted:
Zarr would silently read its fill value, zeros; a chunk overwritten or truncated) is
damaged: :meth:`RunStore.read` and iteration treat it as not done, so a re-run scores it
again; :meth:`RunStore.record` gives score tables a failed record naming the damage; and
:meth:`RunStore.array` raises :class:`StoreError` instead of returning zeros. Groups written
before ``files`` existed are read as before (a chunk that cannot be decoded is still a
``StoreError`` naming the sample). Verified files are remembered by inode and mtime, so a
store is read in full once per process, not once per reader.

Environment faults. A read-only file system, a full disk or a missing permission while
writing is an :class:`OutputError` naming the path and the fix; a sample whose write fails
is removed (it is incomplete), and every sample written before it stays intact.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import OutputError, StoreError, writing

__all__ = ["RunStore", "StoredSample", "encode_strings", "decode_strings", "sample_key", "legacy_key", "FORMAT", "FORMAT_VERSION", "MAX_KEY_BYTES",
           "run_lock"]

FORMAT = "rescue-run-store"
FORMAT_VERSION = 1
MAX_KEY_BYTES = 200  # file systems allow 255 bytes a name; flagged files add ".fcs"
_NAME_MAX = 255
_HASH_MARK = "+"  # percent-encoding never produces it: a hashed key cannot equal another id's plain key
_FILES = "files"  # group attribute: {path under the group: [size, crc32]} of the array files


def legacy_key(sample_id: str) -> str:
    """The key of ``sample_id`` in stores of earlier versions: its id percent-encoded, whatever its length."""
    key = quote(sample_id, safe="-_.")
    return key if not key.startswith(".") else "%2E" + key[1:]


def sample_key(sample_id: str) -> str:
    """Group name of a sample: its id percent-encoded (ids from folders contain ``/``), bounded in length.

    A key of at most :data:`MAX_KEY_BYTES` bytes is the percent-encoded id, exactly as in
    earlier versions. A longer one (300 ASCII characters, or 34 CJK ones at 9 bytes each
    once encoded) becomes a readable prefix of the encoded id (never half an escape),
    ``+`` and the id's sha256: unique, and short enough for any file system.
    """
    key = legacy_key(sample_id)
    if len(key) <= MAX_KEY_BYTES:
        return key
    digest = hashlib.sha256(sample_id.encode("utf-8")).hexdigest()
    prefix = key[:MAX_KEY_BYTES - len(digest) - len(_HASH_MARK)]
    cut = prefix.rfind("%", len(prefix) - 2)  # an escape cut short at the end
    return f"{prefix[:cut] if cut >= 0 else prefix}{_HASH_MARK}{digest}"


def _file_table(group_dir: Path) -> dict[str, list[int]]:
    """``{path under group_dir: [size, crc32]}`` of every file of a sample group's arrays."""
    table: dict[str, list[int]] = {}
    for p in sorted(group_dir.rglob("*")):
        if p.is_file() and p.parent != group_dir:  # the group's own zarr.json is written after this
            data = p.read_bytes()
            table[p.relative_to(group_dir).as_posix()] = [len(data), zlib.crc32(data)]
    return table


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
        with writing(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise StoreError(f"{self.path.parent}: another 'rescue score' is writing this run; "
                             "wait for it to finish or choose another --out") from None
        try:
            with writing(self.path):
                self._fh.seek(0)
                self._fh.truncate()
                self._fh.write(str(os.getpid()))
                self._fh.flush()
        except BaseException:
            self.__exit__()
            raise
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
            if OutputError.applies(exc):  # read-only, full, no permission: not a damaged store
                raise OutputError(self.path, exc) from None
            raise StoreError(f"{self.path}: cannot open the run store ({exc.__class__.__name__}: {exc}); "
                             "remove it to start the run afresh") from None
        fmt = self.root.attrs.get("format")
        if fmt != FORMAT:
            raise StoreError(f"{self.path}: not a rescue run store (format {fmt!r}); choose another --out")
        if int(self.root.attrs.get("format_version", 0)) > FORMAT_VERSION:
            raise StoreError(f"{self.path}: written by a newer rescue_gpu; upgrade rescue_gpu or choose another --out")
        self._checked: dict[Path, tuple[int, int]] = {}  # files whose CRC matched, with their (inode, mtime)

    @property
    def _samples_dir(self) -> Path:
        return self.path / "samples"

    def read(self, sample_id: str) -> StoredSample | None:
        """The complete record of ``sample_id``, or None when absent, incompletely written or damaged."""
        return self._read_key(self._key_of(sample_id))

    def record(self, sample_id: str) -> dict[str, Any] | None:
        """The record of ``sample_id`` for a score table (None when absent or incompletely written).

        A damaged sample (see the module docstring) gives a failed record whose error names
        the damage and the fix, never its old scores.
        """
        got, problems = self._inspect(self._key_of(sample_id))
        if got is None or not problems:
            return got.record if got is not None else None
        return {"sample_id": sample_id, "status": "failed", "error": self._damage_text(sample_id, problems)}

    def damage(self, sample_id: str) -> str:
        """What is wrong with the stored arrays of ``sample_id`` ("" when intact, absent or from an old store)."""
        got, problems = self._inspect(self._key_of(sample_id))
        return self._damage_text(sample_id, problems) if got is not None and problems else ""

    def _key_of(self, sample_id: str) -> str:
        """The key of the group holding ``sample_id``: :func:`sample_key`, or the key an earlier version used."""
        key, old = sample_key(sample_id), legacy_key(sample_id)
        if old != key and len(old) <= _NAME_MAX and not (self._samples_dir / key).is_dir() \
                and (self._samples_dir / old).is_dir():
            return old
        return key

    def _read_key(self, key: str) -> StoredSample | None:
        got, problems = self._inspect(key)
        return None if problems else got

    def _inspect(self, key: str, only: str | None = None) -> tuple[StoredSample | None, list[str]]:
        """A complete group and what is wrong with its array files (of array ``only``, when given).

        Returns ``(None, [])`` for an absent or incomplete group; ``[]`` problems when intact
        or written before file checksums existed.
        """
        meta = self._samples_dir / key / "zarr.json"
        try:
            attrs = json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError, AttributeError):
            return None, []
        record = attrs.get("record")
        if attrs.get("done") is not True or not isinstance(record, dict) or "sample_id" not in record:
            return None, []
        arrays = tuple(sorted(p.name for p in (self._samples_dir / key).iterdir() if p.is_dir()))
        files = attrs.get(_FILES)
        problems = [] if files is None else self._file_problems(self._samples_dir / key, files, only)
        return StoredSample(sample_id=str(record["sample_id"]), record=record, arrays=arrays), problems

    def _file_problems(self, group_dir: Path, files: Any, only: str | None) -> list[str]:
        """Recorded files of a group that are missing or changed (``only``: those of one array)."""
        if not isinstance(files, dict):
            return ["its file checksums are unreadable"]
        problems = []
        for rel, expected in files.items():
            if only is not None and not rel.startswith(f"{only}/"):
                continue
            problem = self._file_problem(group_dir / rel, expected)
            if problem:
                problems.append(f"{rel} {problem}")
        return problems

    def _file_problem(self, path: Path, expected: Any) -> str:
        """Why ``path`` is not the file written (``expected = [size, crc32]``); "" when it is."""
        try:
            size, crc = (int(v) for v in expected)
        except (TypeError, ValueError):
            return "has an unreadable checksum"
        try:
            st = path.stat()
        except OSError:
            return "is missing"
        if st.st_size != size:
            return f"has {st.st_size} bytes instead of {size}"
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._checked.get(path) != stamp:
            try:
                data = path.read_bytes()
            except OSError as exc:
                return f"cannot be read ({exc.strerror})"
            if zlib.crc32(data) != crc:
                return "does not match its checksum"
            self._checked[path] = stamp
        return ""

    @staticmethod
    def _damage_text(sample_id: str, problems: list[str]) -> str:
        """One line: the sample, its first damaged files and the fix."""
        more = f"; {len(problems) - 3} more" if len(problems) > 3 else ""
        return (f"sample {sample_id!r}: its stored arrays are damaged ({'; '.join(problems[:3])}{more}); "
                "run the scoring command again with the same --out to re-score it")

    def __iter__(self) -> Iterator[StoredSample]:
        """Every complete sample, in key order."""
        if not self._samples_dir.is_dir():
            return
        for key in sorted(os.listdir(self._samples_dir)):
            got = self._read_key(key)
            if got is not None:
                yield got

    def write(self, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write one sample: delete any previous group, write ``arrays``, then the record, file checksums and ``done``.

        Raises
        ------
        OutputError
            The file system is read-only or full (or similar); the partly written group is
            removed and every other sample is left as it was.
        """
        sid = str(record["sample_id"])
        key, old = sample_key(sid), legacy_key(sid)
        group_dir = self._samples_dir / key
        with writing(self.path, f"sample {sid!r}"):
            try:
                for stale in {key, old} if len(old) <= _NAME_MAX else {key}:
                    shutil.rmtree(self._samples_dir / stale, ignore_errors=True)
                group = self.samples.create_group(key, overwrite=True)
                for name, a in (arrays or {}).items():
                    a = np.ascontiguousarray(a)
                    group.create_array(name, data=a, chunks=_chunks(a) or "auto", overwrite=True)
                files = _file_table(group_dir)
                group.attrs.update({"record": _jsonable(record), _FILES: files, "done": True})
            except BaseException:
                shutil.rmtree(group_dir, ignore_errors=True)  # incomplete anyway; frees its space on a full disk
                raise
        for rel in files:  # just checksummed: no need to read them again in this process
            st = (group_dir / rel).stat()
            self._checked[group_dir / rel] = (st.st_ino, st.st_mtime_ns)

    def image(self, sample_id: str) -> np.ndarray | None:
        """The stored image of ``sample_id`` (None when it has none)."""
        return self.array(sample_id, "image")

    def array(self, sample_id: str, name: str) -> np.ndarray | None:
        """A stored array of ``sample_id`` (None when it has none).

        Raises
        ------
        StoreError
            The array's files are damaged or cannot be decoded (never zeros in their place).
        """
        key = self._key_of(sample_id)
        _, problems = self._inspect(key, only=name)
        if problems:
            raise StoreError(f"{self.path}: {self._damage_text(sample_id, problems)}")
        try:
            stored = self.samples[key][name]
        except (KeyError, FileNotFoundError):
            return None
        try:
            return np.asarray(stored[...])
        except Exception as exc:  # numcodecs / zarr raise several kinds for a corrupt chunk
            raise StoreError(f"{self.path}: sample {sample_id!r}: stored array {name!r} cannot be read "
                             f"({exc.__class__.__name__}: {exc}); remove the folder {self._samples_dir / key} and "
                             "run the scoring command again with the same --out to re-score it") from None

    def set_run(self, meta: dict[str, Any]) -> None:
        """Record the settings of the latest run in the root attributes."""
        with writing(self.path):
            self.root.attrs.update({"last_run": _jsonable(meta)})

    def run_meta(self) -> dict[str, Any]:
        """The settings of the latest run ({} before the first)."""
        return dict(self.root.attrs.get("last_run", {}))


def encode_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as UTF-8 bytes (uint8) and offsets (int64, ``n + 1``): a portable Zarr layout."""
    raw = [str(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in raw])
    return np.frombuffer(b"".join(raw), dtype=np.uint8).copy(), offsets


def decode_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_strings`."""
    buf = np.asarray(data, dtype=np.uint8).tobytes()
    return [buf[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
