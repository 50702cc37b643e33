"""Decoding of ``$PnE`` (log amplification) and ``$PnG`` (gain) to linear values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..device import array_module
from ..errors import PreprocessError

__all__ = ["decode_amplification"]


def _column_constants(
    decades_offsets: Sequence[tuple[float, float]], ranges: Sequence[float], gains: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-column (is_log, decades / range, offset, 1 / gain) on the host."""
    f1 = np.array([float(d) for d, _ in decades_offsets])
    f2 = np.array([float(o) for _, o in decades_offsets])
    rng = np.asarray(ranges, dtype=np.float64)
    gain = np.asarray(gains, dtype=np.float64)
    if not (len(f1) == len(rng) == len(gain)):
        raise ValueError(f"{len(f1)} $PnE, {len(rng)} $PnR and {len(gain)} $PnG values do not match")
    is_log = f1 > 0
    bad = np.flatnonzero(is_log & ~(np.isfinite(rng) & (rng > 0)))
    if bad.size:
        raise PreprocessError(
            f"parameter(s) {', '.join(str(i + 1) for i in bad)} are log-amplified ($PnE) "
            "but have no usable $PnR, so they cannot be decoded to linear values"
        )
    f2 = np.where(f2 == 0, 1.0, f2)  # FCS: an offset of 0 means 1
    gain = np.where(np.isfinite(gain) & (gain > 0), gain, 1.0)  # absent/0 gain means none
    with np.errstate(divide="ignore", invalid="ignore"):
        per_unit = np.where(is_log, f1 / rng, 0.0)
    return is_log, per_unit, f2, 1.0 / gain


def decode_amplification(
    events: Any,
    *,
    decades_offsets: Sequence[tuple[float, float]],
    ranges: Sequence[float],
    gains: Sequence[float],
) -> Any:
    """Turn stored channel values into linear values using ``$PnE`` and ``$PnG``.

    A log-amplified parameter (``$PnE = f1,f2`` with ``f1 > 0``) stores ``x`` for the
    linear value ``10 ** (f1 * x / $PnR) * f2`` (``f2 = 0`` read as 1, per the FCS
    standard). A linear parameter is divided by its gain ``$PnG`` (absent, zero or
    unreadable gains mean 1). The gain is not applied to log-amplified parameters
    (FCS 3.1: ``$PnG`` describes linear amplification only); flowio applies it to
    both, which differs only where a log parameter also has ``$PnG != 1``.

    Parameters
    ----------
    events
        ``(n_events, n_parameters)`` numpy or cupy array of stored values.
    decades_offsets
        ``(f1, f2)`` of every parameter; ``(0, 0)`` for linear ones.
    ranges
        ``$PnR`` of every parameter (needed for log-amplified ones).
    gains
        ``$PnG`` of every parameter.

    Returns
    -------
    array
        float64 array of the same module and shape.

    Raises
    ------
    PreprocessError
        A log-amplified parameter has no usable ``$PnR``.
    """
    xp = array_module(events)
    is_log, per_unit, offset, inv_gain = _column_constants(decades_offsets, ranges, gains)
    values = xp.asarray(events, dtype=xp.float64)
    out = values * xp.asarray(inv_gain)
    log_cols = np.flatnonzero(is_log)
    if log_cols.size:
        cols = xp.asarray(log_cols)
        exponent = values[:, cols] * xp.asarray(per_unit[log_cols])
        out[:, cols] = 10.0 ** exponent * xp.asarray(offset[log_cols])
    return out
