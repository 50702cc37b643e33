"""Per-sample landmark registration: one instrument's or site's events onto a reference's scale.

Cytometers and sites differ in scatter gains, antigen-negative levels and the placement of
the normal populations on the display scale, even after compensation and a transform on
each file's own range (``top = "file"``). The field registers per-channel landmarks of the
normal populations onto those of a reference (flowStats' ``gaussNorm`` and ``warpSet``).
Here the landmarks are a sample's own quantiles of each channel (in a follow-up marrow, the
normal populations' quantiles: a few blasts barely move them), and the map is the monotone
piecewise-linear function through ``(sample landmark, target landmark)`` pairs, linear
beyond the end landmarks with the end segments' slopes. The targets are the reference's
landmarks: the mean of the reference samples' own landmarks (:func:`landmark_targets`),
written into the pipeline file's ``[preprocess.normalize]`` (:class:`~rescue_gpu.config.NormalizeSpec`),
so the reference build, training and scoring all apply the same map through
:func:`~rescue_gpu.preprocess.preprocess`.

The kernels work on numpy or cupy arrays (``xp``).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..config import NormalizeSpec
from ..errors import PreprocessError

__all__ = ["sample_landmarks", "register_channel", "normalize_events", "landmark_targets", "normalize_toml"]

#: Landmarks closer than this (on the transformed scale) count as coinciding.
MIN_SPACING = 1e-6


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
    return np.asarray(q.get() if hasattr(q, "get") else q, dtype=np.float64).T


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


def normalize_events(values: Any, names: Sequence[str], spec: NormalizeSpec, *, xp: ModuleType | None = None) -> Any:
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

    Raises
    ------
    PreprocessError
        A target channel is not among ``names``, or its landmarks coincide in this sample
        (no spread between two quantiles: the map is undefined).
    """
    if spec.method == "none":
        return values
    xp = np if xp is None else xp
    missing = sorted(set(spec.targets) - set(names))
    if missing:
        raise PreprocessError(f"[preprocess.normalize.targets] names {', '.join(map(repr, missing))}, not an output "
                              f"column of this sample ({', '.join(names)}); fix the pipeline's targets")
    cols = [j for j, name in enumerate(names) if name in spec.targets]
    marks = sample_landmarks(values[:, xp.asarray(np.asarray(cols, dtype=np.int64))], spec.quantiles, xp=xp)
    out = values.copy()
    for j, src in zip(cols, marks):
        if np.any(np.diff(src) <= MIN_SPACING):
            raise PreprocessError(f"channel {names[j]!r}: its landmarks at quantiles {list(spec.quantiles)} coincide "
                                  f"({', '.join(f'{v:.4g}' for v in src)}), so it cannot be registered; drop it from "
                                  "[preprocess.normalize.targets] or use quantiles further apart")
        out[:, j] = register_channel(values[:, j], src, np.asarray(spec.targets[names[j]]), xp=xp).astype(values.dtype)
    return out


def landmark_targets(samples: Sequence[Any], names: Sequence[str], channels: Sequence[str],
                     quantiles: Sequence[float]) -> dict[str, tuple[float, ...]]:
    """The reference's landmarks: per channel, the mean over ``samples`` of their own quantiles.

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
        The landmark probabilities (as in :class:`~rescue_gpu.config.NormalizeSpec`).

    Returns
    -------
    dict
        ``channel -> target landmarks``, ready for ``NormalizeSpec(targets=...)``.
    """
    if not samples:
        raise PreprocessError("landmark targets need at least one reference sample")
    idx = [list(names).index(c) for c in channels]
    marks = np.mean([sample_landmarks(np.asarray(v)[:, idx], quantiles) for v in samples], axis=0)
    return {c: tuple(float(v) for v in row) for c, row in zip(channels, marks)}


def normalize_toml(quantiles: Sequence[float], targets: dict[str, Sequence[float]]) -> str:
    """The ``[preprocess.normalize]`` table of a pipeline file for ``targets`` (landmark registration on)."""
    lines = ["[preprocess.normalize]", 'method = "landmarks"',
             "quantiles = [" + ", ".join(repr(float(q)) for q in quantiles) + "]", "",
             "[preprocess.normalize.targets]"]
    lines += [f'"{name}" = [' + ", ".join(repr(float(v)) for v in t) + "]" for name, t in targets.items()]
    return "\n".join(lines) + "\n"
