"""Cell geometry: outlines, nuclei as unions of lobes, indents, spots, radii and crops."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .tables import _F32, _Shape, _TAU
from .noise import _sign, _u
from .kernels import _discs_kernel, _lobes_kernel, _outline_kernel


class _Lobes(NamedTuple):
    """Nucleus lobes as ellipses, ``(n, L)`` arrays relative to the cell centre (px)."""

    x: np.ndarray
    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    angle: np.ndarray
    on: np.ndarray

    def packed(self) -> np.ndarray:
        """``(n, L, 8)``: x, y, a, b, cos, sin, sqrt(a b), on, as :func:`_lobes_kernel` reads them."""
        a, b = np.maximum(self.a, 1e-3), np.maximum(self.b, 1e-3)
        return np.stack([self.x, self.y, a, b, np.cos(self.angle), np.sin(self.angle), np.sqrt(a * b), self.on],
                        axis=-1).astype(np.float64)


def _round_lobes(rng: np.random.Generator, radius: np.ndarray, shape: _Shape) -> _Lobes:
    """One elliptic nucleus per cell, semi-axis ``shape.nucleus`` times the cell radius."""
    n = radius.size
    a = radius * _u(rng, shape.nucleus, n)
    b = a * _u(rng, (0.8, 1.0), n)
    zero = np.zeros((n, 1), _F32)
    return _Lobes(zero, zero.copy(), a[:, None], b[:, None], _u(rng, (0, _TAU), n)[:, None],
                  (rng.random((n, 1)) < shape.p_nucleus).astype(_F32))


def _chain_lobes(rng: np.random.Generator, radius: np.ndarray, shape: _Shape) -> _Lobes:
    """2-7 lobes in a row (bilobed, band, segmented nuclei), centred and shrunk to fit the cell."""
    n, L = radius.size, shape.lobes[1]
    t = radius * _u(rng, shape.nucleus, n)
    step, heading, sign = 2 * t * _u(rng, shape.step, n), _u(rng, (0, _TAU), n), _sign(rng, n)
    x, y, ang = (np.zeros((n, L), _F32) for _ in range(3))
    ang[:, 0] = heading
    for k in range(1, L):
        heading = heading + (_sign(rng, n) if shape.zigzag else sign) * _u(rng, shape.turn, n)
        x[:, k], y[:, k] = x[:, k - 1] + step * np.cos(heading), y[:, k - 1] + step * np.sin(heading)
        ang[:, k] = heading
    on = (np.arange(L) < rng.integers(shape.lobes[0], L + 1, n)[:, None]).astype(_F32)
    x -= (x * on).sum(1, keepdims=True) / on.sum(1, keepdims=True)
    y -= (y * on).sum(1, keepdims=True) / on.sum(1, keepdims=True)
    a = t * _u(rng, (1.0, 1.2), n)
    reach = np.max(np.hypot(x, y) * on, axis=1)
    fit = np.clip((0.9 * radius - a) / np.maximum(reach, 1e-3), 0.3, 1.0)[:, None]
    ones = np.ones((1, L), _F32)
    return _Lobes(x * fit, y * fit, a[:, None] * ones, t[:, None] * ones, ang, on)


def _place(rng: np.random.Generator, lobes: _Lobes, radius: np.ndarray, offset: float) -> _Lobes:
    """Shift each nucleus off the cell centre by up to ``offset`` of the room it has."""
    n = radius.size
    reach = np.max((np.hypot(lobes.x, lobes.y) + lobes.a) * lobes.on, axis=1)
    room = np.maximum(0.95 * radius - reach, 0) * offset * np.sqrt(rng.random(n)).astype(_F32)
    phi = _u(rng, (0, _TAU), n)
    return lobes._replace(x=lobes.x + (room * np.cos(phi))[:, None], y=lobes.y + (room * np.sin(phi))[:, None])


def _indent(rng: np.random.Generator, lobes: _Lobes, shape: _Shape) -> np.ndarray:
    """A disc biting into the first lobe from its minor-axis side: ``(n, 3)`` x, y, radius (0: none)."""
    n = lobes.x.shape[0]
    p, lo, hi = shape.indent
    a, b, ang = lobes.a[:, 0], lobes.b[:, 0], lobes.angle[:, 0]
    rad = a * _u(rng, (0.45, 0.65), n)
    dist = b + rad - b * _u(rng, (lo, hi), n)
    side = ang + _sign(rng, n) * _F32(np.pi / 2)
    rad = np.where(rng.random(n) < p, rad, 0.0)
    return np.stack([lobes.x[:, 0] + dist * np.cos(side), lobes.y[:, 0] + dist * np.sin(side), rad], axis=1)


def _harmonics(rng: np.random.Generator, n: int, shape: _Shape) -> np.ndarray:
    """Outline coefficients ``(n, 4, 2)``: cos/sin weights of harmonics 2..5."""
    amp = np.concatenate([shape.elong * rng.random((n, 1)),
                          shape.wobble * rng.random((n, 3)) / np.sqrt([1.0, 2.0, 3.0])], axis=1)
    phase = rng.uniform(0, _TAU, (n, 4))
    return np.stack([amp * np.cos(phase), amp * np.sin(phase)], axis=-1)


class _Geometry(NamedTuple):
    """One batch of cells on a square canvas."""

    centre: np.ndarray    # (n, 2) x, y of each cell centre on the canvas
    d: np.ndarray         # (n, S, S) signed distance to the outline, px
    body: np.ndarray      # (n, S, S) soft cell mask
    nuc: np.ndarray       # (n, S, S) soft nucleus mask (within the body)
    radius: np.ndarray    # (n,)
    lobes: _Lobes


def _nucleus(rng: np.random.Generator, radius: np.ndarray, shape: _Shape) -> _Lobes:
    """Lobes of the nuclei of a batch, placed eccentrically."""
    lobes = _chain_lobes(rng, radius, shape) if shape.layout == "chain" else _round_lobes(rng, radius, shape)
    return _place(rng, lobes, radius, shape.offset)


def _geometry(rng: np.random.Generator, radius: np.ndarray, shape: _Shape, *, canvas: int, jitter: float,
              edge: float) -> _Geometry:
    """Outline, body and nucleus masks of cells of radius ``radius`` on a ``canvas`` square."""
    n = radius.size
    centre = (canvas - 1) / 2 + np.clip(rng.normal(0, jitter, (n, 2)), -2.5 * jitter, 2.5 * jitter)
    coef = _harmonics(rng, n, shape)
    lobes = _nucleus(rng, radius, shape)
    indent = _indent(rng, lobes, shape)
    d, body = np.empty((n, canvas, canvas), _F32), np.empty((n, canvas, canvas), _F32)
    _outline_kernel(centre, radius.astype(np.float64), coef, float(edge), d, body)
    if shape.layout == "body":
        return _Geometry(centre, d, body, body, radius, lobes)
    nuc = np.zeros_like(body)
    _lobes_kernel(centre, lobes.packed(), float(edge), nuc)
    carve = np.zeros((n, 1, 4))
    carve[:, 0, :2], carve[:, 0, 2] = centre + indent[:, :2], indent[:, 2]
    _discs_kernel(carve, float(edge), True, nuc)
    np.minimum(nuc, body, out=nuc)
    return _Geometry(centre, d, body, nuc, radius, lobes)


def _spots(rng: np.random.Generator, geo: _Geometry, count: tuple[int, int], *, where: str, px: float,
           edge: float) -> np.ndarray:
    """Up to ``count[1]`` small discs per cell: nucleoli (in the nucleus) or vacuoles (in the cytoplasm)."""
    out = np.zeros_like(geo.body)
    if count[1] == 0:
        return out
    n, K = geo.radius.size, count[1]
    k = rng.integers(count[0], K + 1, n)
    if where == "nucleus":
        spread, rad = 0.45 * geo.lobes.a[:, :1] * np.sqrt(rng.random((n, K))), px * rng.uniform(0.5, 0.9, (n, K))
        bx, by = geo.lobes.x[:, :1], geo.lobes.y[:, :1]
    else:
        spread, rad = geo.radius[:, None] * rng.uniform(0.55, 0.85, (n, K)), px * rng.uniform(0.4, 0.9, (n, K))
        bx = by = 0.0
    phi = rng.uniform(0, _TAU, (n, K))
    discs = np.zeros((n, K, 4))
    discs[..., 0] = geo.centre[:, :1] + bx + spread * np.cos(phi)
    discs[..., 1] = geo.centre[:, 1:] + by + spread * np.sin(phi)
    discs[..., 2] = np.where(np.arange(K) < k[:, None], rad, 0.0)
    _discs_kernel(discs, float(edge), False, out)
    return out


def _radius(rng: np.random.Generator, n: int, shape: _Shape, *, px: float) -> np.ndarray:
    """Cell radii in px: half a diameter drawn from the class range, times ``px`` per unit."""
    return _u(rng, shape.diameter, n) * _F32(px / 2)
