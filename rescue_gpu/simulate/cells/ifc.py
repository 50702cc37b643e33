"""Imaging flow cytometry rendering: bright-field and dark-field planes, 12-bit counts."""

from __future__ import annotations

import numpy as np

from .tables import _IFC, _IFC_CROP, _IfcLook
from .styles import PatientStyle
from .noise import _bytes, _draws, _smooth_noise, _threshold
from .kernels import _ifc_kernel, _upsample2
from .geometry import _geometry, _radius


def _ifc_crop_sizes(rng: np.random.Generator, radius: np.ndarray, size: int | None) -> np.ndarray:
    """``(n, 2)`` crop heights and widths: object-sized like IDEAS (36-64 px), or all ``size``."""
    n = radius.size
    if size is not None:
        return np.full((n, 2), size, dtype=np.int64)
    side = np.rint(2.5 * radius + rng.uniform(8, 20, n))
    hw = side[:, None] + rng.integers(-3, 4, (n, 2))
    return np.clip(hw, *_IFC_CROP).astype(np.int64)


def _ifc_constants(style: PatientStyle, edge: float) -> np.ndarray:
    """The patient constants :func:`_ifc_kernel` reads."""
    return np.array([style.offset[0], style.gain[0], *style.stain, style.offset[1], style.gain[1], 1.0 / edge,
                     4.0 * style.noise, 2.0 * style.noise, 0.25 * style.noise])


def _crop(images: np.ndarray, hw: np.ndarray) -> list[np.ndarray]:
    """Centre crops of ``(n, C, S, S)`` images to per-cell ``(h, w)``, as separate arrays."""
    S = images.shape[-1]
    out = []
    for img, (h, w) in zip(images, hw):
        top, left = (S - h) // 2, (S - w) // 2
        out.append(np.ascontiguousarray(img[:, top:top + h, left:left + w]))
    return out


def _ifc_render(rng: np.random.Generator, radius: np.ndarray, cls: str, style: PatientStyle,
                canvas: int) -> np.ndarray:
    """``(n, 2, canvas, canvas)`` uint16 images of ifc cells of one class."""
    shape, look = _IFC[cls]
    n, edge = radius.size, max(0.5, style.blur)
    geo = _geometry(rng, radius, shape, canvas=canvas, jitter=1.2, edge=edge)
    fine = _smooth_noise(rng, n, canvas, 0.7)
    coarse = _upsample2(_smooth_noise(rng, n, (canvas + 1) // 2, 0.75), canvas)
    p = _draws(rng, look, n)
    cell = np.stack([*(p[key] for key in _IfcLook._fields[:6]), _threshold(p["density"])], axis=1).astype(np.float64)
    out = np.empty((n, 2, canvas, canvas), np.uint16)
    _ifc_kernel(geo.d, geo.body, geo.nuc, fine, coarse, cell, _ifc_constants(style, edge),
                _bytes(rng, (n, 2, 2, canvas, canvas), np.int8), out)
    return out


def _ifc_batch(cls: str, n: int, rng: np.random.Generator, style: PatientStyle, size: int | None) -> list[np.ndarray]:
    """Render ``n`` ifc cells of one class, on canvases just large enough for their crops."""
    radius = _radius(rng, n, _IFC[cls][0], px=style.magnification)
    hw = _ifc_crop_sizes(rng, radius, size)
    side = hw.max(axis=1) if size is not None else -(-hw.max(axis=1) // 8) * 8
    out: list[np.ndarray] = [np.empty(0)] * n
    for canvas in np.unique(side):
        idx = np.flatnonzero(side == canvas)
        for i, image in zip(idx, _crop(_ifc_render(rng, radius[idx], cls, style, int(canvas)), hw[idx])):
            out[i] = image
    return out
