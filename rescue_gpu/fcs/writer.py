"""Write FCS 3.1 files of float32 events."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import FcsFormatError
from .types import Spillover

__all__ = ["write_fcs", "spillover_value"]

_DELIM = "/"
# Keywords the writer owns; a user value for them would corrupt the layout.
_STRUCTURAL = {
    "$BEGINANALYSIS", "$ENDANALYSIS", "$BEGINSTEXT", "$ENDSTEXT", "$BEGINDATA", "$ENDDATA",
    "$BYTEORD", "$DATATYPE", "$MODE", "$NEXTDATA", "$PAR", "$TOT",
}
_OFFSET_WIDTH = 20  # fixed width for $BEGINDATA/$ENDDATA so TEXT length does not depend on them


def _escape(value: str) -> str:
    value = str(value)
    if value == "":
        return " "  # FCS 3.1 forbids empty values
    if value.startswith(_DELIM) or value.endswith(_DELIM):
        # A doubled delimiter next to a separator cannot be split back unambiguously.
        raise FcsFormatError(None, f"keyword value {value!r} starts or ends with '{_DELIM}', which FCS cannot represent; change the name")
    return value.replace(_DELIM, _DELIM * 2)


def spillover_value(spill: Spillover) -> str:
    """Format a spillover as the FCS keyword value ``n,ch1,...,chn,v11,v12,...``."""
    n = len(spill.channels)
    numbers = ",".join(repr(float(v)) for v in np.asarray(spill.matrix, dtype=float).ravel())
    return f"{n}," + ",".join(spill.channels) + "," + numbers


def _text_segment(keywords: Mapping[str, str]) -> bytes:
    parts = [_DELIM]
    for key, value in keywords.items():
        parts.append(f"{_escape(key)}{_DELIM}{_escape(value)}{_DELIM}")
    return "".join(parts).encode("utf-8")


def _build_keywords(
    events: np.ndarray,
    channels: Sequence[str],
    markers: Sequence[str],
    keywords: Mapping[str, str] | None,
    spillover: Spillover | None,
) -> dict[str, str]:
    n, p = events.shape
    kw: dict[str, str] = {
        "$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0",
        "$BEGINDATA": "0" * _OFFSET_WIDTH, "$ENDDATA": "0" * _OFFSET_WIDTH,
        "$BYTEORD": "1,2,3,4", "$DATATYPE": "F", "$MODE": "L", "$NEXTDATA": "0",
        "$PAR": str(p), "$TOT": str(n),
    }
    for i, (name, marker) in enumerate(zip(channels, markers), start=1):
        kw[f"$P{i}N"] = name
        kw[f"$P{i}B"] = "32"
        kw[f"$P{i}E"] = "0,0"
        kw[f"$P{i}R"] = "262144"
        if marker:
            kw[f"$P{i}S"] = marker
    for key, value in (keywords or {}).items():
        k = str(key).upper()
        if k in _STRUCTURAL or (k.startswith("$P") and k[-1:] in "BNES" and k[2:-1].isdigit()):
            continue
        kw[k] = str(value)
    if spillover is not None:
        missing = [c for c in spillover.channels if c not in channels]
        if missing:
            raise FcsFormatError(None, f"spillover channels {missing} are not among the channels written")
        kw["$SPILLOVER"] = spillover_value(spillover)
    return kw


def write_fcs(
    path: str | os.PathLike[str],
    events: np.ndarray,
    *,
    channels: Sequence[str],
    markers: Sequence[str] | None = None,
    keywords: Mapping[str, str] | None = None,
    spillover: Spillover | None = None,
) -> Path:
    """Write ``events`` as an FCS 3.1 file of little-endian float32 values.

    Parameters
    ----------
    path
        Destination file (overwritten).
    events
        ``(n_events, n_parameters)`` array; converted to float32.
    channels
        ``$PnN`` names, one per column.
    markers
        ``$PnS`` names, one per column (``""`` for none).
    keywords
        Extra TEXT keywords (``$PnR`` and ``$PnG`` among them may be given here);
        the layout keywords are always the writer's own.
    spillover
        Written as ``$SPILLOVER`` when given.

    Returns
    -------
    Path
        The file written.
    """
    data = np.ascontiguousarray(events, dtype="<f4")
    if data.ndim != 2:
        raise FcsFormatError(path, f"events must be 2-D (events x parameters), got shape {data.shape}")
    markers = list(markers) if markers is not None else [""] * data.shape[1]
    if len(channels) != data.shape[1] or len(markers) != data.shape[1]:
        raise FcsFormatError(
            path, f"{data.shape[1]} columns but {len(channels)} channels and {len(markers)} markers given"
        )
    kw = _build_keywords(data, channels, markers, keywords, spillover)
    text_start = 58
    text_len = len(_text_segment(kw))
    data_start = text_start + text_len  # TEXT ends at data_start - 1
    data_end = data_start + data.nbytes - 1 if data.nbytes else data_start
    kw["$BEGINDATA"] = str(data_start).zfill(_OFFSET_WIDTH)
    kw["$ENDDATA"] = str(data_end).zfill(_OFFSET_WIDTH)
    text = _text_segment(kw)
    assert len(text) == text_len
    fits = data_end <= 99_999_999
    header = "FCS3.1    " + "".join(
        f"{v:>8d}"
        for v in (text_start, text_start + text_len - 1, data_start if fits else 0, data_end if fits else 0, 0, 0)
    )
    out = Path(path)
    with open(out, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(text)
        fh.write(data.tobytes() if data.size == 0 else memoryview(data).cast("B"))
    return out
