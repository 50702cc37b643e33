"""Quality-control gates with counts: non-finite, saturated, debris, doublets.

Gates run in that order and each count is the number of events that gate removes
among those the earlier gates kept, so ``n_events_in`` equals the sum of the
counts plus ``n_events_out``. A gate whose channels (or ``$PnR``) are absent from
the sample is skipped, not an error: the reason is recorded under ``qc_skipped``
(a sample without FSC-H simply gets no doublet gate). This applies to the channel
names configured in :class:`~rescue_gpu.config.QcSpec` too; the record makes the
omission visible in the run's QC table.

Thresholds tied to ``$PnR`` (saturation, debris) compare *stored* values, the
numbers the instrument digitised, where ``$PnR`` applies. The doublet ratio uses
*linear* (decoded) values, where FSC-A / FSC-H is meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..device import array_module
from ..config import QcSpec
from .panel import marker_tokens

__all__ = ["qc_mask", "find_channel", "QC_COUNTS"]

QC_COUNTS = ("non_finite", "saturated", "debris", "doublets")


def find_channel(channels: Sequence[str], name: str) -> int | None:
    """Index of ``name`` among ``$PnN``: exact, else the one equal ignoring case and separators."""
    if name in channels:
        return list(channels).index(name)
    key = "".join(marker_tokens(name))
    hits = [i for i, c in enumerate(channels) if "".join(marker_tokens(c)) == key]
    return hits[0] if len(hits) == 1 else None


def _saturated(stored: Any, ranges: np.ndarray, check: Sequence[int], skipped: list[str],
               channels: Sequence[str], xp: Any) -> Any:
    """Events at or beyond ``$PnR - 1`` on any checked channel with a usable ``$PnR``."""
    usable = [i for i in check if np.isfinite(ranges[i]) and ranges[i] > 0]
    lacking = [channels[i] for i in check if i not in usable]
    if lacking:
        skipped.append(f"saturated: no usable $PnR for {', '.join(lacking)}")
    if not usable:
        return xp.zeros(stored.shape[0], dtype=bool)
    cols = xp.asarray(np.asarray(usable, dtype=np.int64))
    limit = xp.asarray(ranges[usable] - 1.0)
    return xp.any(stored[:, cols] >= limit, axis=1)


def _below(stored: Any, channels: Sequence[str], ranges: np.ndarray, name: str, fraction: float,
           skipped: list[str]) -> Any | None:
    """Events with ``name`` below ``fraction * $PnR`` (None when the gate cannot run)."""
    i = find_channel(channels, name)
    if i is None:
        skipped.append(f"debris: channel {name!r} not in sample")
        return None
    if not (np.isfinite(ranges[i]) and ranges[i] > 0):
        skipped.append(f"debris: channel {name!r} has no usable $PnR")
        return None
    return stored[:, i] < fraction * ranges[i]


def _debris(stored: Any, channels: Sequence[str], ranges: np.ndarray, spec: QcSpec,
            skipped: list[str], xp: Any) -> Any:
    flag = xp.zeros(stored.shape[0], dtype=bool)
    for name, fraction in ((spec.fsc_area, spec.debris_fsc_min), (spec.ssc_area, spec.debris_ssc_min)):
        if fraction > 0:
            low = _below(stored, channels, ranges, name, fraction, skipped)
            flag = flag if low is None else flag | low
    return flag


def _doublets(linear: Any, channels: Sequence[str], keep: Any, spec: QcSpec,
              skipped: list[str], xp: Any) -> Any:
    """FSC-A / FSC-H above the kept events' median ratio by more than the tolerance."""
    ia, ih = find_channel(channels, spec.fsc_area), find_channel(channels, spec.fsc_height)
    if ia is None or ih is None:
        missing = [n for n, i in ((spec.fsc_area, ia), (spec.fsc_height, ih)) if i is None]
        skipped.append(f"doublets: channel(s) {', '.join(map(repr, missing))} not in sample")
        return xp.zeros(linear.shape[0], dtype=bool)
    height = linear[:, ih]
    valid = height > 0
    ratio = linear[:, ia] / xp.where(valid, height, 1.0)
    pool = ratio[keep & valid]
    if pool.shape[0] == 0:
        skipped.append("doublets: no kept event with FSC-H > 0")
        return xp.zeros(linear.shape[0], dtype=bool)
    cut = xp.median(pool) * (1.0 + spec.doublet_tolerance)
    return valid & (ratio > cut)


def _gate(name: str, flag: Any, keep: Any, counts: dict[str, Any]) -> Any:
    """Remove ``flag``-ged events from ``keep``, counting those newly removed."""
    removed = keep & flag
    counts[name] = int(removed.sum())
    return keep & ~flag


def qc_mask(
    stored: Any,
    linear: Any,
    *,
    channels: Sequence[str],
    ranges: Sequence[float],
    check: Sequence[int],
    spec: QcSpec,
) -> tuple[Any, dict[str, Any]]:
    """Keep-mask and counts of the QC gates.

    Parameters
    ----------
    stored
        ``(n_events, n_parameters)`` stored values (before ``$PnE``/``$PnG`` decoding),
        numpy or cupy.
    linear
        The same events decoded to linear values (same module and shape).
    channels
        ``$PnN`` of every parameter.
    ranges
        ``$PnR`` of every parameter (NaN where absent).
    check
        Columns checked for non-finite values and saturation (the panel's channels,
        plus any compensation inputs).
    spec
        Which gates run and their thresholds.

    Returns
    -------
    (mask, counts)
        Boolean keep-mask (same module) and a dict with ``n_events_in``,
        ``non_finite``, ``saturated``, ``debris``, ``doublets``, ``n_events_out``
        (ints) and ``qc_skipped`` (list of reasons).
    """
    xp = array_module(stored, linear)
    rng = np.asarray(ranges, dtype=np.float64)
    n = int(linear.shape[0])
    counts: dict[str, Any] = {"n_events_in": n}
    skipped: list[str] = []
    cols = xp.asarray(np.asarray(list(check), dtype=np.int64))
    keep = xp.ones(n, dtype=bool)
    keep = _gate("non_finite", ~xp.all(xp.isfinite(linear[:, cols]), axis=1), keep, counts)
    none = xp.zeros(n, dtype=bool)
    sat = _saturated(stored, rng, check, skipped, channels, xp) if spec.remove_saturated else none
    keep = _gate("saturated", sat, keep, counts)
    deb = _debris(stored, channels, rng, spec, skipped, xp) if spec.remove_debris else none
    keep = _gate("debris", deb, keep, counts)
    dbl = _doublets(linear, channels, keep, spec, skipped, xp) if spec.remove_doublets else none
    keep = _gate("doublets", dbl, keep, counts)
    counts["n_events_out"] = int(keep.sum())
    counts["qc_skipped"] = skipped
    return keep, counts
