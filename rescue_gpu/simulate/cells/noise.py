"""Random draws and smoothed noise fields shared by the renderers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import special

from .tables import _F32
from .kernels import _blur_kernel


def _u(rng: np.random.Generator, bounds: Sequence[float], n: int | tuple[int, ...]) -> np.ndarray:
    """Draws uniform in ``bounds``, float32."""
    return rng.uniform(bounds[0], bounds[1], n).astype(_F32)


def _sign(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random signs, float32."""
    return np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(_F32)


def _bytes(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    """Uniform random bytes as an array, straight from the bit generator (fast)."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = rng.bit_generator.random_raw(-(-size // 8))
    return raw.view(np.uint8)[:size].view(dtype).reshape(shape)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, sigma: float) -> np.ndarray:
    """``n`` fields of white noise smoothed with ``sigma`` px, centred and rescaled to unit spread."""
    radius = max(1, int(3.0 * sigma + 0.5))
    w = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    w /= w.sum()
    out = np.empty((n, size, size), _F32)
    _blur_kernel(_bytes(rng, (n, size, size)), w.astype(_F32), 1.0 / (73.9 * (w**2).sum()), out)
    return out


def _draws(rng: np.random.Generator, look: NamedTuple, n: int) -> dict[str, np.ndarray]:
    """Per-cell draws of every (low, high) range of a look."""
    return {k: _u(rng, v, n) for k, v in look._asdict().items()
            if isinstance(v, tuple) and len(v) == 2 and k not in ("nucleoli", "vacuoles")}


def _threshold(density: np.ndarray) -> np.ndarray:
    """Level of unit-spread noise exceeded on a ``density`` share of the area (granules)."""
    return special.ndtri(1 - np.clip(density, 1e-4, 0.99))
