"""Spillover compensation: ``x_comp = x_raw @ inv(S)`` on the spillover's channels.

The matrix is checked and inverted once on the host (it is small); the product
runs on the events' array module (numpy or cupy).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..device import array_module
from ..errors import CompensationError, FcsFormatError
from ..fcs.spillover import parse_spillover
from ..fcs.types import FcsData, Spillover

__all__ = ["compensate", "spillover_from_csv", "resolve_spillover", "spillover_indices", "compensation_matrix",
           "unusable_file_spillover", "NO_FILE_MATRIX"]

#: The per-sample warning of ``compensation = "file"`` on a file that carries no matrix.
NO_FILE_MATRIX = ('no spillover matrix in the file, so its events are not compensated (compensation = "file"): '
                  'set compensation = "none" if the files are compensated already, or give a matrix CSV')

_MAX_CONDITION = 1e12


def _list(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def spillover_indices(channels: Sequence[str], spillover: Spillover) -> list[int]:
    """Column index of every spillover channel among ``channels`` ($PnN).

    A name is looked up exactly, then ignoring case and surrounding spaces, then
    (for matrices keyed by parameter number, e.g. ``"3"``) as a 1-based index.

    Raises
    ------
    CompensationError
        A matrix channel is not in the sample; the message lists the missing and
        the available channels.
    """
    exact = {name: i for i, name in enumerate(channels)}
    loose = {name.strip().casefold(): i for i, name in enumerate(channels)}
    found: list[int] = []
    missing: list[str] = []
    for name in spillover.channels:
        i = exact.get(name, loose.get(name.strip().casefold()))
        if i is None and name.strip().isdigit() and 1 <= int(name) <= len(channels):
            i = int(name) - 1
        if i is None:
            missing.append(name)
        else:
            found.append(i)
    if missing:
        raise CompensationError(
            f"spillover matrix ({spillover.source}) names channel(s) not in the sample: "
            f"{_list(missing)}; the sample has: {_list(channels)}"
        )
    if len(set(found)) != len(found):
        raise CompensationError(f"spillover matrix ({spillover.source}) names a channel twice: {_list(spillover.channels)}")
    return found


def compensation_matrix(spillover: Spillover) -> np.ndarray:
    """``inv(S)`` of a spillover matrix, checked (host numpy, float64).

    Raises
    ------
    CompensationError
        The matrix has non-finite entries or is singular (or numerically so).
    """
    s = np.asarray(spillover.matrix, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise CompensationError(f"spillover matrix ({spillover.source}) has non-finite entries")
    cond = np.linalg.cond(s) if s.size else 1.0
    if not np.isfinite(cond) or cond > _MAX_CONDITION:
        raise CompensationError(
            f"spillover matrix ({spillover.source}) over {_list(spillover.channels)} is singular "
            f"(condition number {cond:.3g}); check for a duplicated or all-zero row"
        )
    return np.linalg.inv(s)


def compensate(events: Any, *, channels: Sequence[str], spillover: Spillover) -> Any:
    """Compensate events: ``x_comp = x_raw @ inv(S)`` on the spillover's channels only.

    Parameters
    ----------
    events
        ``(n_events, n_parameters)`` numpy or cupy array of linear values.
    channels
        ``$PnN`` of every column of ``events``.
    spillover
        The spillover matrix; ``matrix[i, j]`` is the share of fluorochrome ``i``
        seen in detector ``j``.

    Returns
    -------
    array
        float64 copy of ``events`` (same module) with the spillover channels compensated;
        other columns unchanged.

    Raises
    ------
    CompensationError
        A matrix channel is missing from ``channels``, or the matrix is singular.
    """
    xp = array_module(events)
    cols = spillover_indices(channels, spillover)
    inverse = compensation_matrix(spillover)
    out = xp.array(events, dtype=xp.float64, copy=True)
    idx = xp.asarray(np.asarray(cols, dtype=np.int64))
    out[:, idx] = out[:, idx] @ xp.asarray(inverse)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CompensationError(f"{path}: cannot read spillover CSV ({exc.strerror or exc})") from None
    lines = text.splitlines()
    first = lines[0] if lines else ""
    dialect = "excel-tab" if "\t" in first and "," not in first else "excel"
    rows = [[c.strip() for c in row] for row in csv.reader(lines, dialect=dialect)]
    return [r for r in rows if any(r)]


def _split_header(path: Path, rows: list[list[str]]) -> tuple[list[str], list[str] | None, list[list[str]]]:
    """Channel names, row names (or None) and the numeric cells of a CSV matrix."""
    if len(rows) < 2:
        raise CompensationError(f"{path}: a spillover CSV needs a header of channel names and one row per channel")
    header, body = rows[0], rows[1:]
    has_row_names = not _is_number(body[0][0])
    if has_row_names:
        if header and (header[0] == "" or len(header) == len(body[0])):
            header = header[1:]
        return header, [r[0] for r in body], [r[1:] for r in body]
    return header, None, body


def spillover_from_csv(path: str | PathLike[str]) -> Spillover:
    """Read a spillover matrix from a CSV (or tab-separated) file.

    The first row names the channels ($PnN); each further row holds one channel's
    spillover fractions, optionally led by its name (then the rows may come in any
    order and are put in header order).

    Returns
    -------
    Spillover
        With ``source="csv:<path>"``.

    Raises
    ------
    CompensationError
        The file is unreadable, not square, has non-numeric cells, or row names that
        do not match the header.
    """
    path = Path(path)
    header, row_names, cells = _split_header(path, _read_rows(path))
    n = len(header)
    if len(cells) != n or any(len(r) != n for r in cells):
        raise CompensationError(f"{path}: spillover matrix is not square: {n} channel names, "
                                f"{len(cells)} rows of lengths {sorted({len(r) for r in cells})}")
    try:
        matrix = np.array([[float(c) for c in r] for r in cells], dtype=np.float64)
    except ValueError as exc:
        raise CompensationError(f"{path}: non-numeric value in spillover matrix ({exc})") from None
    if row_names is not None:
        if sorted(row_names) != sorted(header) or len(set(header)) != n:
            raise CompensationError(f"{path}: row names {_list(row_names)} do not match the header {_list(header)}")
        matrix = matrix[[row_names.index(h) for h in header]]
    return Spillover(channels=tuple(header), matrix=matrix, source=f"csv:{path}")


def unusable_file_spillover(fcs: FcsData) -> str | None:
    """Why the spillover keyword a file carries cannot be used, or None when it is usable or absent.

    The reader keeps a malformed matrix out of :attr:`FcsData.spillover` (with a
    warning); this parses the keywords again to tell "no matrix" from "a matrix that
    does not fit the file" (e.g. a ``$SPILLOVER`` channel name that is no ``$PnN``).
    """
    if fcs.spillover is not None:
        return None
    try:
        parse_spillover(fcs.keywords, fcs.channels, path=None)
    except FcsFormatError as exc:
        return exc.reason
    return None


def _unusable_file_matrix(fcs: FcsData, reason: str) -> CompensationError:
    return CompensationError(
        f'compensation = "file" but the file\'s spillover matrix cannot be used: {reason} '
        f"(the file's channels are {_list(fcs.channels)}); fix the matrix in the file (export it again from the "
        'acquisition software), or set [preprocess] compensation in the pipeline to "none" (no compensation) '
        "or to a spillover CSV"
    )


def resolve_spillover(fcs: FcsData, compensation: str) -> tuple[Spillover | None, str]:
    """Choose the spillover matrix for a sample from the pipeline's ``compensation`` setting.

    Parameters
    ----------
    fcs
        The sample.
    compensation
        ``"file"`` (the sample's own matrix; a file without one is not compensated, and
        :func:`~rescue_gpu.preprocess.pipeline.preprocess` records the warning
        :data:`NO_FILE_MATRIX`), ``"none"``, or a path to a CSV matrix (see
        :func:`spillover_from_csv`).

    Returns
    -------
    (Spillover or None, str)
        The matrix to apply (None: do not compensate) and a description of the choice
        for the QC record: ``"file:<keyword>"``, ``"file:none"``, ``"none"`` or
        ``"csv:<path>"``.

    Raises
    ------
    CompensationError
        With ``"file"``: the file carries a spillover matrix that does not fit it (wrong
        count, non-numbers, a channel name that is not one of its ``$PnN``). Such a
        sample is never processed uncompensated: its events would not be comparable
        with compensated ones. With a CSV: the file cannot be read or is malformed.
    """
    choice = compensation.strip()
    if choice.lower() == "none":
        return None, "none"
    if choice.lower() == "file":
        if fcs.spillover is None:
            reason = unusable_file_spillover(fcs)
            if reason is not None:
                raise _unusable_file_matrix(fcs, reason)
            return None, "file:none"
        return fcs.spillover, f"file:{fcs.spillover.source}"
    spill = spillover_from_csv(choice)
    return spill, spill.source
