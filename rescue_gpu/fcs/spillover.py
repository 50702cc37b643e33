"""Find and parse a spillover matrix among FCS keywords.

Sources, in order of preference:

``$SPILLOVER`` (FCS 3.1), ``SPILL`` (BD FACSDiva), ``SPILLOVER``
    ``n,name_1,...,name_n,m_11,m_12,...,m_nn`` with ``m_ij`` the fraction of
    fluorochrome ``i`` seen in detector ``j``. Names are ``$PnN`` values, or (Accuri C6)
    1-based parameter indices, mapped here to ``$PnN``. A value that lists the names
    but no numbers (some FCS 3.1 writers) carries no matrix: None.
``$COMP`` (FCS 2.0/3.0)
    ``n,m_11,...,m_nn`` without names. The FCS 3.0 standard defines its elements like
    ``$SPILLOVER``'s (the fraction of one fluorochrome's signal in another detector), so
    it is read as a spillover matrix, not as its inverse. Having no names, it is applied
    to the fluorescence parameters in file order (every parameter except scatter and
    time) when there are exactly ``n`` of them, otherwise to the first ``n`` parameters.
``$DFCiTOj`` (Beckman Coulter)
    The percentage of fluorescence ``FLi`` subtracted from detector ``FLj``, i.e.
    ``matrix[i, j] = value / 100`` with a unit diagonal. ``FLi`` is the first parameter
    whose ``$PnN`` starts with ``FLi`` (``"FL1 Log"``, ``"FL1 INT LIN"``); indices with no
    such parameter are left out; the matrix covers the fluorescence channels named in
    the keywords that exist in the file.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import FcsFormatError
from .numbers import ascii_float, ascii_int_or_none
from .types import Spillover

__all__ = ["parse_spillover", "SPILLOVER_KEYWORDS"]

SPILLOVER_KEYWORDS = ("$SPILLOVER", "SPILL", "SPILLOVER")
_DFC = re.compile(r"^\$DFC([0-9]+)TO([0-9]+)$", re.ASCII)
_FL = re.compile(r"^FL([0-9]+)(?![0-9])", re.IGNORECASE | re.ASCII)
_NOT_FLUORESCENCE = re.compile(r"^(FSC|SSC|FS|SS|TIME)\b", re.IGNORECASE)


PathLike = str | os.PathLike[str] | None


def _numbers(parts: Sequence[str], key: str, path: PathLike) -> np.ndarray:
    """Matrix entries as float64; each must be a finite number in plain ASCII."""
    return np.array([ascii_float(p, key, path) for p in parts], dtype=np.float64)


def _resolve(name: str, channels: Sequence[str], folded: Sequence[str]) -> str | None:
    """Map a spillover name (or 1-based ASCII index) to a ``$PnN``; None when it matches none.

    ``folded`` is ``channels`` stripped and lower-cased, computed once by the caller.
    """
    name = name.strip()
    if name in channels:
        return name
    index = ascii_int_or_none(name) if name.isascii() and name.isdigit() else None
    if index is not None and 1 <= index <= len(channels):
        return channels[index - 1]
    if name.lower() in folded:
        return channels[folded.index(name.lower())]
    return None


def _count(key: str, first: str, value: str, path: PathLike) -> int:
    """The leading channel count ``n`` of a spillover value, as a plain ASCII integer."""
    n = ascii_int_or_none(first) if first.strip() else None
    if n is None:
        raise FcsFormatError(path, f"{key} does not start with a channel count: {value[:40]!r}")
    return n


def _parse_named(key: str, value: str, channels: Sequence[str], path) -> Spillover | None:
    """``$SPILLOVER``-style ``n,names...,values...``."""
    parts = [p.strip() for p in value.split(",")]
    n = _count(key, parts[0], value, path)
    if n <= 0:
        return None
    if len(parts) == 1 + n:
        return None  # names only, no matrix
    if len(parts) != 1 + n + n * n:
        raise FcsFormatError(path, f"{key} lists {len(parts) - 1} items; {n} names + {n * n} values expected")
    folded = [c.strip().lower() for c in channels]
    names = [_resolve(p, channels, folded) for p in parts[1 : 1 + n]]
    missing = [p for p, r in zip(parts[1 : 1 + n], names) if r is None]
    if missing:
        raise FcsFormatError(path, f"{key} names channels absent from $PnN: {missing[:10]}")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)  # type: ignore[type-var]
    if repeated:
        raise FcsFormatError(path, f"{key} names channel(s) {repeated[:10]} more than once: the matrix is ambiguous")
    matrix = _numbers(parts[1 + n :], key, path).reshape(n, n)
    return Spillover(tuple(names), matrix, source=key)  # type: ignore[arg-type]


def _fluorescence(channels: Sequence[str]) -> list[str]:
    return [c for c in channels if not _NOT_FLUORESCENCE.match(c.strip())]


def _parse_comp(value: str, channels: Sequence[str], path) -> Spillover | None:
    """FCS 2.0/3.0 ``$COMP``: ``n,values...`` without names."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    n = _count("$COMP", parts[0] if parts else "", value, path)
    if n <= 0:
        return None
    if len(parts) != 1 + n * n or n > len(channels):
        raise FcsFormatError(path, f"$COMP has {len(parts) - 1} values for n={n} and {len(channels)} parameters")
    fluo = _fluorescence(channels)
    names = fluo if len(fluo) == n else list(channels[:n])
    return Spillover(tuple(names), _numbers(parts[1:], "$COMP", path).reshape(n, n), source="$COMP")


def _fl_channels(channels: Sequence[str]) -> dict[int, str]:
    """``i -> `` the first channel whose ``$PnN`` starts with ``FLi`` (``"FL1 Log"``, ``"FL01"``)."""
    found: dict[int, str] = {}
    for c in channels:
        m = _FL.match(c.strip())
        index = ascii_int_or_none(m.group(1)) if m else None
        if index is not None:
            found.setdefault(index, c)
    return found


def _parse_dfc(keywords: Mapping[str, str], channels: Sequence[str], path) -> Spillover | None:
    """Beckman ``$DFCiTOj`` percentages over the ``FLi`` channels present."""
    entries = {}
    for key, value in keywords.items():
        m = _DFC.match(key)
        pair = (ascii_int_or_none(m.group(1)), ascii_int_or_none(m.group(2))) if m else (None, None)
        if pair[0] is not None and pair[1] is not None:
            entries[pair] = value
    indices = sorted({i for pair in entries for i in pair})
    fl = _fl_channels(channels)
    present = [(i, fl[i]) for i in indices if i in fl]
    if not present:
        return None
    pos = {i: k for k, (i, _) in enumerate(present)}
    matrix = np.eye(len(present))
    for (i, j), raw in entries.items():
        if i != j and i in pos and j in pos:
            matrix[pos[i], pos[j]] = _numbers([raw], f"$DFC{i}TO{j}", path)[0] / 100.0
    return Spillover(tuple(c for _, c in present), matrix, source="$DFC")


def parse_spillover(
    keywords: Mapping[str, str],
    channels: Sequence[str],
    *,
    path: str | os.PathLike[str] | None = None,
) -> Spillover | None:
    """The spillover matrix an FCS file carries, if any.

    Parameters
    ----------
    keywords
        TEXT keywords with upper-cased keys.
    channels
        ``$PnN`` of every parameter, in order.
    path
        The file, for error messages.

    Returns
    -------
    Spillover or None
        The matrix and the ``$PnN`` channels it applies to (``source`` names the keyword);
        None when the file carries no matrix (or only channel names).

    Raises
    ------
    FcsFormatError
        When a spillover keyword is malformed (wrong count, not numbers, or names that are
        not channels of the file).
    """
    for key in SPILLOVER_KEYWORDS:
        value = keywords.get(key, "").strip()
        if value:
            return _parse_named(key, value, channels, path)
    comp = keywords.get("$COMP", "").strip()
    if comp:
        return _parse_comp(comp, channels, path)
    if any(_DFC.match(k) for k in keywords):
        return _parse_dfc(keywords, channels, path)
    return None
