"""The rescue_gpu exception hierarchy.

Every error the package raises on purpose derives from :class:`RescueError`, so a
caller (the CLI, the cohort runner) can tell "bad input, here is what to do" apart
from a bug. Messages name the file, sample or key at fault and say how to fix it.
"""

from __future__ import annotations

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
