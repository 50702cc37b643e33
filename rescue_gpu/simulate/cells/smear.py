"""Blood smear rendering: RGB crops by a Beer-Lambert mix of stains among red cells."""

from __future__ import annotations

import numpy as np

from .tables import _F32, _NUCLEUS_RGB, _RBC_RGB, _SMEAR, _SMEAR_PX_PER_UM, _SMEAR_SIZE, _Shape, _SmearLook, _od
from .styles import PatientStyle
from .noise import _bytes, _draws, _smooth_noise, _threshold
from .kernels import _discs_kernel, _smear_kernel, _upsample2
from .geometry import _geometry, _radius, _spots


def _red_cells(rng: np.random.Generator, n: int, size: int, px: float, style: PatientStyle,
               edge: float) -> np.ndarray:
    """Density of red cells around the white cell: pale discs with a paler centre, some cut by the frame."""
    slots = 6
    discs = np.zeros((n, slots, 4))
    discs[..., :2] = rng.uniform(-0.15 * size, 1.15 * size, (n, slots, 2))
    discs[..., 2] = np.where(rng.random((n, slots)) < style.crowding, 3.7 * px * rng.uniform(0.9, 1.1, (n, slots)), 0)
    discs[..., 3] = rng.uniform(0.45, 0.65, (n, slots))
    out = np.zeros((n, size, size), _F32)
    _discs_kernel(discs, float(edge), False, out)
    return out


def _smear_od(rng: np.random.Generator, look: _SmearLook, style: PatientStyle, n: int) -> np.ndarray:
    """``(n, 5, 3)`` optical densities of nucleus, cytoplasm, granules, red cells, background, per cell."""
    base = np.stack([_od(_NUCLEUS_RGB) * style.stain[0], _od(look.cytoplasm) * style.stain[1], _od(look.granule),
                     _od(_RBC_RGB) * style.stain[2], np.asarray(style.offset)])
    spread = 1 + 0.06 * rng.standard_normal((n, 5, 1))   # per-cell stain uptake
    spread[:, 3] = rng.uniform(0.8, 1.1, (n, 1))          # red-cell density
    spread[:, 4] = 1.0
    return base[None] * spread * np.asarray(style.tint)[None, None]


def _smear_cell_params(rng: np.random.Generator, look: _SmearLook, n: int) -> np.ndarray:
    """``(n, 6)`` per-cell values :func:`_smear_kernel` reads."""
    p = _draws(rng, look, n)
    flags = np.broadcast_to(np.array([float(look.coarse), float(look.over_nucleus)]), (n, 2))
    return np.column_stack([p["chromatin"], p["clump"], p["cyt_density"], _threshold(p["density"]), flags])


def _smear_batch(cls: str, n: int, rng: np.random.Generator, style: PatientStyle, size: int | None,
                 kind: tuple[_Shape, _SmearLook] | None = None) -> list[np.ndarray]:
    """Render ``n`` smear cells of one class on ``size`` squares (default 224).

    ``kind``: the ``(shape, look)`` to draw instead of class ``cls``'s (the abnormal cells
    of :mod:`.subtype`); the random draws are the same either way.
    """
    size = size or _SMEAR_SIZE
    shape, look = kind or _SMEAR[cls]
    px = _SMEAR_PX_PER_UM * size / _SMEAR_SIZE * style.magnification
    edge = max(0.5, style.blur * size / _SMEAR_SIZE)
    geo = _geometry(rng, _radius(rng, n, shape, px=px), shape, canvas=size, jitter=0.03 * size, edge=edge)
    fine = _smooth_noise(rng, n, size, max(0.5, 0.11 * px))
    coarse = _upsample2(_smooth_noise(rng, n, (size + 1) // 2, max(0.5, 0.15 * px)), size)
    spots = [_spots(rng, geo, look.nucleoli, where="nucleus", px=px, edge=edge),
             _spots(rng, geo, look.vacuoles, where="cytoplasm", px=px, edge=edge)]
    rbc = _red_cells(rng, n, size, px, style, edge)
    k = np.array([255.0 * g for g in style.gain] + [2.0 * style.noise])
    out = np.empty((n, 3, size, size), np.uint8)
    _smear_kernel(geo.body, geo.nuc, fine, coarse, *spots, rbc, _smear_cell_params(rng, look, n),
                  _smear_od(rng, look, style, n), k, _bytes(rng, (n, 3, size, size), np.int8), out)
    return list(out)
