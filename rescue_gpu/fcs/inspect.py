"""Human-readable summaries of FCS files (backs ``rescue fcs inspect FILE...``)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import RescueError
from .reader import read_fcs
from .types import FcsData

__all__ = ["describe", "describe_data", "inspect_many"]


def _table(data: FcsData) -> list[str]:
    ranges = data.ranges()
    width = max([len("channel")] + [len(c) for c in data.channels])
    lines = [f"  {'#':>3}  {'channel':<{width}}  {'$PnR':>12}  marker"]
    for i, (chan, marker) in enumerate(zip(data.channels, data.markers), start=1):
        rng = "" if ranges[i - 1] != ranges[i - 1] else f"{ranges[i - 1]:g}"
        lines.append(f"  {i:>3}  {chan:<{width}}  {rng:>12}  {marker}")
    return lines


def _spill_line(data: FcsData) -> str:
    spill = data.spillover
    if spill is None:
        return "spillover:  none"
    return f"spillover:  {len(spill.channels)} x {len(spill.channels)} from {spill.source}"


def describe_data(data: FcsData) -> str:
    """Summarise an :class:`FcsData` already read (see :func:`describe`).

    Parameters
    ----------
    data
        The data set to summarise.

    Returns
    -------
    str
        A multi-line summary.
    """
    kw = data.keywords
    lines = [
        f"{data.path}",
        f"version:    {data.version}   data set {data.dataset + 1} of {data.n_datasets}",
        f"events:     {data.n_events}   parameters: {data.n_parameters}"
        f"   stored as {data.events.dtype} ({kw.get('$DATATYPE', '?').strip()}, $BYTEORD {kw.get('$BYTEORD', '?')})",
        f"cytometer:  {kw.get('$CYT', '').strip() or '?'}",
        _spill_line(data),
    ]
    lines += [f"warning:    {w}" for w in data.extra.get("warnings", [])]  # type: ignore[union-attr]
    return "\n".join(lines + _table(data))


def describe(path: str | os.PathLike[str], *, dataset: int = 0) -> str:
    """Summarise an FCS file (it is read in full, so a truncated DATA segment shows).

    Parameters
    ----------
    path
        The FCS file.
    dataset
        Which data set of a ``$NEXTDATA`` chain to describe.

    Returns
    -------
    str
        Version, event and parameter counts, the channel/marker table, spillover
        presence and source and the number of data sets; for a file the reader
        refuses (or a path that is not a readable file), the path and the reason
        (``REFUSED: ...``), so one bad file does not hide the others of a listing.
    """
    try:
        data = read_fcs(path, dataset=dataset)  # a full read, so truncated DATA shows up
    except RescueError as exc:
        return f"{os.fspath(path)}\nREFUSED: {getattr(exc, 'reason', exc)}"
    return describe_data(data)


def inspect_many(paths: Iterable[str | os.PathLike[str]]) -> tuple[str, int]:
    """Describe several files.

    Parameters
    ----------
    paths
        FCS files.

    Returns
    -------
    tuple of (str, int)
        The summaries separated by blank lines, and how many files were refused.
    """
    texts = [describe(p) for p in paths]
    refused = sum("\nREFUSED: " in t for t in texts)
    return "\n\n".join(texts), refused
