"""The rescue_gpu exception hierarchy.

Every error the package raises on purpose derives from :class:`RescueError`, so a
caller (the CLI, the cohort runner) can tell "bad input, here is what to do" apart
from a bug. Messages name the file, sample or key at fault and say how to fix it.
"""

from __future__ import annotations

import errno as _errno
import re
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike

__all__ = [
    "RescueError",
    "FcsFormatError",
    "PanelError",
    "ConfigError",
    "ManifestError",
    "CompensationError",
    "PreprocessError",
    "BackendError",
    "RasterError",
    "ProjectionError",
    "ReferenceDataError",
    "ModelError",
    "StoreError",
    "CellDataError",
    "OutputError",
    "ClusterError",
    "writing",
    "os_errno",
]


class RescueError(Exception):
    """Base class of every deliberate rescue_gpu error."""


def _with_path(path: str | PathLike[str] | None, message: str) -> str:
    return f"{path}: {message}" if path is not None else message


class FcsFormatError(RescueError):
    """An FCS file is truncated, malformed or inconsistent and cannot be read.

    Parameters
    ----------
    path
        The file at fault (it is put at the start of the message).
    reason
        What is wrong with it.
    """

    def __init__(self, path: str | PathLike[str] | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(_with_path(path, reason))


class PanelError(RescueError):
    """A panel marker is missing from a sample or matches more than one parameter."""


class ConfigError(RescueError):
    """A configuration or pipeline file has an unknown key, a wrong type or a bad value."""


class ManifestError(RescueError):
    """A cohort manifest has missing columns, duplicate ids or unreadable rows."""


class CompensationError(RescueError):
    """A spillover matrix is malformed or does not fit the sample's channels."""


class PreprocessError(RescueError):
    """Preprocessing cannot proceed (no events left, a channel missing for QC, ...)."""


class BackendError(RescueError):
    """The requested compute backend (e.g. ``"gpu"``) is not available."""


class RasterError(RescueError):
    """Rasterisation settings or inputs are invalid (size, extent, channels)."""


class ProjectionError(RescueError):
    """Events cannot be projected into a reference UMAP (wrong width, non-finite rows, ...)."""


class ReferenceDataError(RescueError):
    """A reference (training events, embedding, UMAP parameters) is missing, inconsistent or too small."""


class ModelError(RescueError):
    """A model directory is missing, corrupt, or does not fit the reference or raster settings."""


class StoreError(RescueError):
    """A run store is unreadable, or was made with settings that do not match this run."""


class CellDataError(RescueError):
    """Single-cell images are missing, unreadable, of the wrong shape, or laid out in a way we cannot read."""


class ClusterError(RescueError):
    """The Dask cluster went away mid-run (its scheduler stopped or cannot be reached).

    Samples written before it stay complete: the same command run again resumes.
    """


# (problem, fix) of the operating-system errors a user can act on when writing outputs
_OUTPUT_FAULTS: dict[int, tuple[str, str]] = {
    _errno.EROFS: ("read-only file system", "choose an --out on a writable file system"),
    _errno.ENOSPC: ("no space left on device", "free space (or choose another --out) and run the same command "
                    "again: what was written so far is kept"),
    _errno.EDQUOT: ("disk quota exceeded", "free space (or choose another --out) and run the same command "
                    "again: what was written so far is kept"),
    _errno.EFBIG: ("file too large for this file system", "choose an --out on another file system"),
    _errno.EACCES: ("permission denied", "choose another --out or make it writable"),
    _errno.EPERM: ("operation not permitted", "choose another --out or make it writable"),
    _errno.ENAMETOOLONG: ("file name too long", "choose a shorter --out path"),
    _errno.EIO: ("input/output error", "check the disk, then run the same command again"),
}


def os_errno(exc: OSError) -> int | None:
    """The errno of ``exc``, also when a library put it only in the message (``"[errno 28] ..."``)."""
    if exc.errno:
        return int(exc.errno)
    found = re.search(r"errno\s*(\d+)", str(exc), flags=re.IGNORECASE)
    return int(found.group(1)) if found else None


class OutputError(RescueError):
    """A file or folder cannot be written: read-only file system, full disk, no permission, name too long.

    Parameters
    ----------
    path
        What could not be written (put at the start of the message; None when unknown).
    exc
        The ``OSError`` of the operating system.
    what
        What was being written, e.g. ``"sample 'S1'"`` (optional, after "cannot write").

    Attributes
    ----------
    errno
        The error number (30 read-only, 28 no space, ...), or None when unknown.
    """

    def __init__(self, path: str | PathLike[str] | None, exc: OSError, what: str = "") -> None:
        self.path = None if path is None else str(path)
        self.errno = os_errno(exc)
        problem, fix = _OUTPUT_FAULTS.get(self.errno or -1, (exc.strerror or str(exc), "check the file system, "
                                                               "then run the same command again"))
        code = f" (errno {self.errno}, {_errno.errorcode.get(self.errno, '?')})" if self.errno else ""
        super().__init__(_with_path(path, f"cannot write{' ' + what if what else ''}: {problem}{code}; {fix}"))

    @staticmethod
    def applies(exc: BaseException) -> bool:
        """Whether ``exc`` is an environment fault this error reports (read-only, full, no permission, ...)."""
        return isinstance(exc, OSError) and os_errno(exc) in _OUTPUT_FAULTS


@contextmanager
def writing(path: str | PathLike[str], what: str = "") -> Iterator[None]:
    """Turn an environment fault while writing ``path`` into an :class:`OutputError` naming it.

    Other exceptions (and an :class:`OutputError` raised inside) pass unchanged.
    """
    try:
        yield
    except OSError as exc:
        if not OutputError.applies(exc):
            raise
        raise OutputError(path, exc, what) from exc
