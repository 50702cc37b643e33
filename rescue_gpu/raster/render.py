"""Render projected events (n x 2 coordinates) as a multi-channel image.

The canvas extent is fixed by the reference, so every sample of a cohort lands on the
same pixels; events outside the extent are dropped and can be counted. Every kernel is a
scatter-add (``bincount``, the one reviewed non-standard call, see :mod:`rescue_gpu.xp`)
written against the array API of its input, so the same code runs on numpy, cupy and
(in tests) ``array_api_strict``. There is no custom GPU kernel here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import to_numpy
from ..errors import RasterError
from ..xp import astype, bincount, copy, namespace

__all__ = ["CHANNEL_KINDS", "Extent", "pixel_index", "count_outside", "render", "save_png"]

Extent = tuple[float, float, float, float]
"""``(x_min, x_max, y_min, y_max)`` of the canvas in embedding units."""

CHANNEL_KINDS = ("density", "scatter", "markers")


def _shape(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if h < 1 or w < 1:
        raise RasterError(f"image size must be positive, got {size!r}")
    return int(h), int(w)


def pixel_index(coords: Any, *, extent: Extent, size: int | Sequence[int]) -> tuple[Any, Any]:
    """Flat pixel index of every event and a mask of the events inside the extent.

    Row 0 is the top of the image (largest y), as in a plot saved as a picture.
    Returns ``(flat, inside)``; ``flat`` is only meaningful where ``inside``.
    """
    xp = namespace(coords)
    h, w = _shape(size)
    x0, x1, y0, y1 = (float(v) for v in extent)
    if not (x1 > x0 and y1 > y0):
        raise RasterError(f"extent {extent!r} must have x_max > x_min and y_max > y_min")
    c = xp.asarray(coords, dtype=xp.float64)
    col = xp.floor((c[:, 0] - x0) / (x1 - x0) * w)
    row = xp.floor((y1 - c[:, 1]) / (y1 - y0) * h)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = astype(xp.where(inside, row * w + col, 0.0), xp.int64, xp)
    return flat, inside


def count_outside(coords: Any, *, extent: Extent) -> int:
    """Number of events that fall outside ``extent`` (or are not finite)."""
    _, inside = pixel_index(coords, extent=extent, size=1)
    xp = namespace(inside)
    return int(inside.shape[0]) - int(xp.sum(astype(inside, xp.int64, xp)))


def _counts(flat: Any, inside: Any, n_pix: int, weights: Any = None) -> Any:
    xp = namespace(flat)
    wts = astype(inside, xp.float64, xp) if weights is None else xp.where(inside, weights, 0.0)
    return bincount(flat, wts, n_pix, xp)


def _density(counts: Any) -> Any:
    xp = namespace(counts)
    d = xp.log1p(counts)
    top = xp.max(d) if d.shape[0] else 0.0
    return d / top if float(top) > 0 else d


def _dilate(occupied: Any, radius: int) -> Any:
    """Binary dilation by a disk of ``radius`` pixels (shifted ORs, no wrap-around)."""
    xp = namespace(occupied)
    h, w = occupied.shape
    out = copy(occupied, xp)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                src = occupied[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
                out[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] |= src
    return out


def _marker_means(flat: Any, inside: Any, counts: Any, values: Any) -> list[Any]:
    xp = namespace(values)
    safe = xp.where(counts > 1.0, counts, 1.0)
    n_pix = int(counts.shape[0])
    return [_counts(flat, inside, n_pix, astype(values[:, j], xp.float64, xp)) / safe for j in range(values.shape[1])]


def render(
    coords: Any,
    *,
    extent: Extent,
    size: int | Sequence[int] = 128,
    channels: Sequence[str] = ("density",),
    values: Any = None,
    point_radius: int = 1,
) -> Any:
    """Rasterise ``(n, 2)`` coordinates into a ``(C, H, W)`` float32 image.

    Parameters
    ----------
    coords
        Projected events, numpy or cupy; the output lives on the same device.
    extent
        ``(x_min, x_max, y_min, y_max)``, fixed by the reference.
    size
        ``H = W = size``, or ``(H, W)``.
    channels
        In output order, any of: ``"density"`` (log1p event counts, scaled to a
        maximum of 1 per image), ``"scatter"`` (1 where a point of ``point_radius``
        pixels drawn at each event covers the pixel, like a scatter plot saved as a
        picture), ``"markers"`` (one channel per column of ``values``: the mean
        value of the events in each pixel, 0 where empty).
    values
        ``(n, M)`` per-event marker values; needed for ``"markers"``.
    point_radius
        Radius in pixels of a point in ``"scatter"`` (0 is one pixel).

    Returns
    -------
    array
        ``(C, H, W)`` float32.
    """
    xp = namespace(coords)
    h, w = _shape(size)
    unknown = [c for c in channels if c not in CHANNEL_KINDS]
    if unknown or not channels:
        raise RasterError(f"unknown raster channel(s) {unknown}; choose from {', '.join(CHANNEL_KINDS)}")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise RasterError(f"coords must have shape (n, 2), got {tuple(coords.shape)}")
    if "markers" in channels and (values is None or values.shape[0] != coords.shape[0]):
        raise RasterError("the 'markers' channel needs values with one row per event")
    flat, inside = pixel_index(coords, extent=extent, size=(h, w))
    counts = _counts(flat, inside, h * w)
    planes: list[Any] = []
    for kind in channels:
        if kind == "density":
            planes.append(_density(counts))
        elif kind == "scatter":
            planes.append(astype(_dilate(xp.reshape(counts > 0, (h, w)), int(point_radius)), xp.float64, xp))
        else:
            planes.extend(_marker_means(flat, inside, counts, xp.asarray(values)))
    return astype(xp.stack([xp.reshape(p, (h, w)) for p in planes]), xp.float32, xp)


def save_png(image: Any, path: str | Path, *, channels: Sequence[int] | None = None) -> Path:
    """Write one channel (grey) or three channels (RGB) of a ``(C, H, W)`` image as PNG.

    Each channel is scaled to 0..255 by its own maximum. By default the first channel is
    written; pass ``channels=(i, j, k)`` for an RGB composite.
    """
    from PIL import Image

    img = to_numpy(image).astype(np.float64)
    pick = list(channels) if channels is not None else [0]
    if len(pick) not in (1, 3):
        raise RasterError("save_png writes 1 (grey) or 3 (RGB) channels")
    planes = []
    for i in pick:
        p = img[i]
        top = p.max()
        planes.append(np.zeros_like(p) if top <= 0 else p / top)
    arr = np.clip(np.stack(planes, axis=-1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = Path(path)
    Image.fromarray(arr[..., 0] if len(pick) == 1 else arr, mode=None).save(out)
    return out
