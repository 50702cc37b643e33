"""Checksummed record directories shared by every artifact (reference, weights records, run store).

JSON records with a ``format`` and ``format_version`` (:func:`read_record_json`), new
record directories (:func:`new_record_dir`), atomic JSON writes (:func:`write_json_atomic`,
:func:`update_record_json`), sha256 of files and of a record's settings
(:func:`file_sha256`, :func:`settings_checksum`, :func:`check_settings_checksum`, with the
version-1 migration warning :class:`RecordFormatWarning`) and installed software versions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .config import RasterSpec
from .errors import RescueError

__all__ = ["write_csv", "software_versions", "read_record_json", "raster_from_dict", "new_record_dir", "RecordFormatWarning",
           "settings_checksum", "check_settings_checksum", "update_record_json", "write_json_atomic", "file_sha256"]


class RecordFormatWarning(UserWarning):
    """An artifact in an older format was read: it loads, but lacks a protection of the current format."""


def software_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out)."""
    from importlib import metadata

    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def read_record_json(path: Path, *, fmt: str, version: int, error: type[RescueError], what: str,
                     missing_hint: str) -> dict[str, Any]:
    """Read an artifact's JSON record and check its ``format`` and ``format_version``.

    ``what`` names the artifact ("reference", "model") in messages. Raises ``error``
    naming the file: absent (with ``missing_hint``), unreadable, another
    format, or a format version newer than this rescue_gpu reads.
    """
    if not path.is_file():
        raise error(f"{path.parent}: not a {what} directory (no {path.name}); {missing_hint}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise error(f"{path}: format {got!r} is not {fmt!r}")
    if meta.get("format_version", 0) > version:
        raise error(f"{path}: format version {meta['format_version']} is newer than this rescue_gpu reads; upgrade rescue_gpu")
    return meta


def raster_from_dict(d: dict[str, Any]) -> RasterSpec:
    """Rebuild a :class:`RasterSpec` from its JSON form (lists back to tuples)."""
    return RasterSpec(**{**d, "channels": tuple(d["channels"])})


def new_record_dir(path: str | Path, *, overwrite: bool, error: type[RescueError]) -> Path:
    """Create an empty artifact directory; an existing one is replaced only with ``overwrite``."""
    out = Path(path)
    if out.exists():
        if not overwrite:
            raise error(f"{out}: already exists; choose another --out or remove it first (or overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def settings_checksum(weights_sha256: str, fields: Mapping[str, Any]) -> str:
    """sha256 of a model: its weights' sha256 and the canonical JSON of every setting that changes a call.

    ``fields`` is the record's own view (rebuilt from ``model.json`` on load), so an edit
    of any of them in ``model.json`` changes the checksum.
    """
    text = json.dumps({"weights_sha256": weights_sha256, "settings": dict(fields)}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_settings_checksum(path: Path, meta: Mapping[str, Any], computed: str, *, since: int,
                            error: type[RescueError], covers: str, fix: str, upgrade: str) -> None:
    """Compare ``model.json``'s ``checksum`` with the one ``computed`` from the loaded record.

    Parameters
    ----------
    path
        The JSON record (named in messages).
    meta
        Its content.
    computed
        :func:`settings_checksum` of the record rebuilt from ``meta`` and the weights.
    since
        The first format version that stores a checksum. An older record without one
        loads with a :class:`RecordFormatWarning` (its settings cannot be verified).
    error
        The error to raise.
    covers
        What the checksum protects, for messages (e.g. ``"threshold 0.5, temperature 1.0, ..."``).
    fix
        What to do about an edited record.
    upgrade
        How to protect an older record (e.g. the ``rescue model upgrade`` command).

    Raises
    ------
    RescueError
        ``error``: the checksum differs (the record was edited), or a record of format
        ``since`` or newer has none.
    """
    stored = meta.get("checksum")
    version = meta.get("format_version", 0)
    if stored is None and isinstance(version, int) and version < since:
        warnings.warn(f"{path}: format version {version} predates checksummed settings, so edits of {covers} "
                      f"cannot be detected; check them, then {upgrade}", RecordFormatWarning, stacklevel=3)
        return
    if stored is None:
        raise error(f"{path}: no 'checksum' (format version {version} has one), so {covers} cannot be verified; {fix}")
    if stored != computed:
        raise error(f"{path}: {covers} do not match the record's checksum ({str(stored)[:12]}... stored, "
                    f"{computed[:12]}... now): the file was edited after it was written; {fix}")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` via a temporary file renamed over it.

    Raises
    ------
    OSError
        The folder is not writable or the disk is full (the old file, if any, is left as it was).
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def update_record_json(path: Path, changes: Mapping[str, Any], *, error: type[RescueError]) -> None:
    """Set keys of a JSON record in place (written to a temporary file, then renamed over it)."""
    try:
        meta = json.loads(path.read_text())
        meta.update(changes)
        write_json_atomic(path, meta)
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"{path}: cannot update ({exc.__class__.__name__}: {exc})") from None


def write_csv(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, str]]) -> None:
    """Write ``rows`` under the header ``columns`` as UTF-8 CSV with ``\n`` line ends (same bytes everywhere)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    Path(path).write_text(buf.getvalue(), encoding="utf-8")
