"""Helpers shared by the self-describing artifacts (reference, model, run store)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import RasterSpec
from .errors import RescueError

__all__ = ["software_versions", "read_record_json", "raster_from_dict", "new_record_dir"]


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
