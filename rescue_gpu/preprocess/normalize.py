"""Per-sample landmark registration: one instrument's or site's events onto a reference's scale.

Cytometers and sites differ in scatter gains, antigen-negative levels and the placement of
the normal populations on the display scale, even after compensation and a transform on
each file's own range (``top = "file"``). The field registers per-channel landmarks of the
normal populations onto those of a reference (flowStats' ``gaussNorm`` and ``warpSet``).
Two kinds of landmark (``method``):

- ``"landmarks"``: a sample's own quantiles of each channel (in a follow-up marrow, the
  normal populations' quantiles: a few blasts barely move them); the map is the monotone
  piecewise-linear function through ``(sample landmark, target landmark)`` pairs, linear
  beyond the end landmarks with the end segments' slopes. The targets are the mean of the
  reference samples' own quantiles. A quantile that falls between two populations moves
  with the sample's composition, and the map then stretches the scale.
- ``"peaks"``: the peaks of each channel's smoothed density (:func:`density_peaks`), as
  gaussNorm registers them. Sample peaks are matched in order to the reference's peaks
  within ``max_shift`` (:func:`match_peaks`); one pair shifts the channel, more pairs map it
  piecewise-linearly, shifted beyond the end pairs (:func:`register_peaks`). A population
  missing from a sample leaves its target unmatched. The targets are the peaks of the
  reference samples' pooled density, each sample weighted equally.

The targets (:func:`landmark_targets`) are written into the pipeline file's
``[preprocess.normalize]`` (:class:`~rescue_gpu.config.NormalizeSpec`), so the reference build, training and scoring all apply the same map through
:func:`~rescue_gpu.preprocess.preprocess`.

The kernels work on numpy or cupy arrays (``xp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..config import NormalizeSpec
from ..device import to_numpy
from ..errors import PreprocessError

__all__ = ["sample_landmarks", "register_channel", "density_peaks", "match_peaks", "register_peaks",
           "normalize_events", "landmark_targets", "normalize_toml"]

#: Landmarks closer than this (on the transformed scale) count as coinciding.
MIN_SPACING = 1e-6
#: Two peaks count as separate populations only when the density between them dips below
#: this fraction of the lower peak; otherwise the lower one is a shoulder of the higher.
PEAK_DIP = 0.8
#: Peak pairs whose piecewise map would stretch or squeeze a segment beyond this factor are
#: not trusted (a mismatched peak); the channel is then only shifted by its tallest peak.
MAX_STRETCH = 3.0
#: Events per reference sample pooled for the peak targets (each sample weighs the same).
POOL_EVENTS = 20000


def sample_landmarks(values: Any, quantiles: Sequence[float], *, xp: ModuleType | None = None) -> np.ndarray:
    """Each column's quantiles: a ``(n_columns, n_quantiles)`` float64 host array.

    Parameters
    ----------
    values
        ``(n_events, n_columns)`` events (numpy or cupy).
    quantiles
        Probabilities in (0, 1), increasing.
    xp
        Array module of ``values`` (numpy by default).
    """
    xp = np if xp is None else xp
    q = xp.quantile(xp.asarray(values, dtype=xp.float64), xp.asarray(np.asarray(quantiles, dtype=np.float64)), axis=0)
    return to_numpy(q).astype(np.float64).T


def register_channel(x: Any, source: np.ndarray, target: np.ndarray, *, xp: ModuleType | None = None) -> Any:
    """Map ``x`` by the piecewise-linear function through ``(source[k], target[k])``.

    Linear beyond ``source[0]`` and ``source[-1]`` with the first and last segments' slopes,
    so the map is monotone and invertible on the whole line. ``source`` and ``target`` must
    be strictly increasing and of equal length (>= 2).
    """
    xp = np if xp is None else xp
    s, t = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    lo = (t[1] - t[0]) / (s[1] - s[0])
    hi = (t[-1] - t[-2]) / (s[-1] - s[-2])
    x64 = xp.asarray(x, dtype=xp.float64)
    y = xp.interp(x64, xp.asarray(s), xp.asarray(t))
    y = xp.where(x64 < s[0], t[0] + (x64 - s[0]) * lo, y)
    return xp.where(x64 > s[-1], t[-1] + (x64 - s[-1]) * hi, y)


def density_peaks(x: Any, *, bandwidth: float, min_height: float,
                  xp: ModuleType | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The peaks of one channel's Gaussian-smoothed density: ``(positions, heights)``, by position.

    The density is a histogram in bins of ``bandwidth / 4`` (on the device for cupy), then
    smoothed on the host with a Gaussian kernel of standard deviation ``bandwidth``; peak
    positions are refined by a parabola through the top three bins. A local maximum is a
    peak when it reaches ``min_height`` of the tallest, and when the density between it and
    every taller peak dips below :data:`PEAK_DIP` of it (otherwise it is a shoulder).
    Heights are relative to the tallest peak (which is 1).
    """
    xp = np if xp is None else xp
    x64 = xp.asarray(x, dtype=xp.float64).ravel()
    x64 = x64[xp.isfinite(x64)]
    if int(x64.size) < 2:
        return np.empty(0), np.empty(0)
    ends = xp.quantile(x64, xp.asarray([0.001, 0.999]))
    lo, hi = (float(v) for v in to_numpy(ends))
    lo, hi = lo - 4 * bandwidth, hi + 4 * bandwidth
    step = bandwidth / 4
    n_bins = int(min(max(np.ceil((hi - lo) / step), 16), 1 << 16))
    step = (hi - lo) / n_bins
    counts = xp.histogram(x64, bins=n_bins, range=(lo, hi))[0]
    counts = to_numpy(counts).astype(np.float64)
    sd = bandwidth / step
    half = int(np.ceil(4 * sd))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sd) ** 2)
    dens = np.convolve(np.pad(counts, half), kernel / kernel.sum(), mode="valid")
    inner = np.arange(1, n_bins - 1)
    is_max = (dens[inner] > dens[inner - 1]) & (dens[inner] >= dens[inner + 1])
    cand = inner[is_max]
    if cand.size == 0 or dens.max() <= 0:
        return np.empty(0), np.empty(0)
    cand = cand[dens[cand] >= min_height * dens[cand].max()]
    kept: list[int] = []
    for i in cand[np.argsort(-dens[cand], kind="stable")]:
        if all(dens[min(i, k):max(i, k) + 1].min() < PEAK_DIP * dens[i] for k in kept):
            kept.append(int(i))
    idx = np.sort(np.asarray(kept, dtype=np.int64))
    a, b, c = dens[idx - 1], dens[idx], dens[idx + 1]
    curv = a - 2 * b + c
    offset = np.where(curv < 0, 0.5 * (a - c) / np.where(curv < 0, curv, -1.0), 0.0)
    return lo + (idx + 0.5 + offset) * step, b / dens[idx].max()


def match_peaks(source: Sequence[float], target: Sequence[float], *, max_shift: float) -> list[tuple[int, int]]:
    """The order-preserving pairing of ``source`` with ``target`` peaks: ``[(i, j), ...]``.

    Both are increasing positions. A pair needs ``|source[i] - target[j]| < max_shift``; each
    pair scores ``1 - distance / max_shift`` and the pairing with the highest total score wins
    (more pairs, then closer pairs), found by dynamic programming as in sequence alignment.
    """
    s, t = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    n, m = len(s), len(t)
    score = np.zeros((n + 1, m + 1))
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            gain = 1.0 - abs(s[i - 1] - t[j - 1]) / max_shift
            score[i, j] = max(score[i - 1, j], score[i, j - 1], score[i - 1, j - 1] + gain if gain > 0 else -np.inf)
    pairs: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 and j > 0:
        if score[i, j] == score[i - 1, j]:
            i -= 1
        elif score[i, j] == score[i, j - 1]:
            j -= 1
        else:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs[::-1]


def register_peaks(x: Any, source: np.ndarray, target: np.ndarray, *, xp: ModuleType | None = None) -> Any:
    """Map ``x`` so that the matched peaks ``source[k]`` land on ``target[k]``.

    One pair: a shift. Two or more (strictly increasing in both): the piecewise-linear map
    through the pairs, shifted by the end pairs' offsets beyond them, so the map is
    monotone, continuous and keeps the scale's slope outside the registered range.
    """
    xp = np if xp is None else xp
    s, t = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    x64 = xp.asarray(x, dtype=xp.float64)
    if len(s) == 1:
        return x64 + (t[0] - s[0])
    y = xp.interp(x64, xp.asarray(s), xp.asarray(t))
    y = xp.where(x64 < s[0], x64 + (t[0] - s[0]), y)
    return xp.where(x64 > s[-1], x64 + (t[-1] - s[-1]), y)


def _peak_pairs(x: Any, name: str, spec: NormalizeSpec, xp: ModuleType,
                notes: list[str] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The (sample, target) peak pairs of one channel, or ``None`` (with a note) when none match."""
    target = np.asarray(spec.targets[name], dtype=np.float64)
    pos, height = density_peaks(x, bandwidth=spec.bandwidth, min_height=spec.min_height, xp=xp)
    pairs = match_peaks(pos, target, max_shift=spec.max_shift)
    if not pairs:
        if notes is not None:
            notes.append(f"normalize: channel {name!r} left unregistered: none of its density peaks "
                         f"({', '.join(f'{v:.3g}' for v in pos) or 'none'}) lies within max_shift = {spec.max_shift} "
                         f"of the reference's ({', '.join(f'{v:.3g}' for v in target)})")
        return None
    si, ti = [i for i, _ in pairs], [j for _, j in pairs]
    src, tgt = pos[si], target[ti]
    stretch = np.diff(tgt) / np.maximum(np.diff(src), MIN_SPACING)
    if np.any(stretch > MAX_STRETCH) or np.any(stretch < 1 / MAX_STRETCH):
        k = int(np.argmax(height[si]))
        if notes is not None:
            notes.append(f"normalize: channel {name!r} only shifted: its matched peaks would stretch the scale "
                         f"by {', '.join(f'{v:.2f}' for v in stretch)} (beyond {MAX_STRETCH:g}x)")
        src, tgt = src[k:k + 1], tgt[k:k + 1]
    return src, tgt


def normalize_events(values: Any, names: Sequence[str], spec: NormalizeSpec, *, xp: ModuleType | None = None,
                     notes: list[str] | None = None) -> Any:
    """``values`` with each column named in ``spec.targets`` registered onto its targets.

    Parameters
    ----------
    values
        ``(n_events, n_columns)`` transformed events (float32, numpy or cupy).
    names
        Column names (panel markers, then scatter channels).
    spec
        The validated ``[preprocess.normalize]`` settings; ``method = "none"`` returns
        ``values`` unchanged.
    xp
        Array module of ``values``.
    notes
        With ``method = "peaks"``, a sentence is appended here for each channel left
        unregistered (no peak near the reference's) or only shifted (the sample's warnings).

    Raises
    ------
    PreprocessError
        A target channel is not among ``names``, or (``"landmarks"``) its landmarks coincide
        in this sample (no spread between two quantiles: the map is undefined).
    """
    if spec.method == "none":
        return values
    xp = np if xp is None else xp
    missing = sorted(set(spec.targets) - set(names))
    if missing:
        raise PreprocessError(f"[preprocess.normalize.targets] names {', '.join(map(repr, missing))}, not an output "
                              f"column of this sample ({', '.join(names)}); fix the pipeline's targets")
    cols = [j for j, name in enumerate(names) if name in spec.targets]
    out = values.copy()
    if spec.method == "peaks":
        for j in cols:
            pairs = _peak_pairs(values[:, j], names[j], spec, xp, notes)
            if pairs is not None:
                out[:, j] = register_peaks(values[:, j], *pairs, xp=xp).astype(values.dtype)
        return out
    marks = sample_landmarks(values[:, xp.asarray(np.asarray(cols, dtype=np.int64))], spec.quantiles, xp=xp)
    for j, src in zip(cols, marks):
        if np.any(np.diff(src) <= MIN_SPACING):
            raise PreprocessError(f"channel {names[j]!r}: its landmarks at quantiles {list(spec.quantiles)} coincide "
                                  f"({', '.join(f'{v:.4g}' for v in src)}), so it cannot be registered; drop it from "
                                  "[preprocess.normalize.targets] or use quantiles further apart")
        out[:, j] = register_channel(values[:, j], src, np.asarray(spec.targets[names[j]]), xp=xp).astype(values.dtype)
    return out


def landmark_targets(samples: Sequence[Any], names: Sequence[str], channels: Sequence[str],
                     quantiles: Sequence[float] = (0.1, 0.5, 0.9), *, method: str = "landmarks",
                     bandwidth: float = 0.02, min_height: float = 0.05) -> dict[str, tuple[float, ...]]:
    """The reference's landmarks per channel, ready for ``NormalizeSpec(targets=...)``.

    Parameters
    ----------
    samples
        Each reference sample's transformed, un-normalised events ``(n_events, n_columns)``
        (host arrays), columns named by ``names``.
    names
        Column names of every sample.
    channels
        The channels to register (each one of ``names``).
    quantiles
        ``method = "landmarks"``: the landmark probabilities; the targets are the mean over
        ``samples`` of their own quantiles.
    method
        ``"landmarks"`` or ``"peaks"``: the density peaks (:func:`density_peaks` with
        ``bandwidth`` and ``min_height``) of the samples pooled, at most
        :data:`POOL_EVENTS` evenly spaced events of each so every sample weighs the same.

    Raises
    ------
    PreprocessError
        No samples, or (``"peaks"``) a channel whose pooled density has no peak.
    """
    if not samples:
        raise PreprocessError("landmark targets need at least one reference sample")
    idx = [list(names).index(c) for c in channels]
    if method == "landmarks":
        marks = np.mean([sample_landmarks(np.asarray(v)[:, idx], quantiles) for v in samples], axis=0)
        return {c: tuple(float(v) for v in row) for c, row in zip(channels, marks)}
    if method != "peaks":
        raise PreprocessError(f"unknown landmark method {method!r}; use \"landmarks\" or \"peaks\"")
    pooled = np.concatenate([np.asarray(v)[:: max(1, len(v) // POOL_EVENTS)][:POOL_EVENTS, idx] for v in samples])
    out: dict[str, tuple[float, ...]] = {}
    for k, c in enumerate(channels):
        pos, _ = density_peaks(pooled[:, k], bandwidth=bandwidth, min_height=min_height)
        if pos.size == 0:
            raise PreprocessError(f"channel {c!r}: the reference's pooled density has no peak; leave it out of "
                                  "the registered channels")
        out[c] = tuple(float(v) for v in pos)
    return out


def normalize_toml(spec: NormalizeSpec) -> str:
    """The ``[preprocess.normalize]`` table of a pipeline file for ``spec`` (registration on)."""
    lines = ["[preprocess.normalize]", f'method = "{spec.method}"']
    if spec.method == "peaks":
        lines += [f"bandwidth = {float(spec.bandwidth)!r}", f"min_height = {float(spec.min_height)!r}",
                  f"max_shift = {float(spec.max_shift)!r}"]
    else:
        lines.append("quantiles = [" + ", ".join(repr(float(q)) for q in spec.quantiles) + "]")
    lines += ["", "[preprocess.normalize.targets]"]
    lines += [f'"{name}" = [' + ", ".join(repr(float(v)) for v in t) + "]" for name, t in spec.targets.items()]
    return "\n".join(lines) + "\n"
