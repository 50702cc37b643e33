"""Procedural single-cell images with known classes: imaging flow cytometry and blood smears.

Two assays:

``"ifc"``
    Label-free imaging flow cytometry of bone marrow. Plane ``Ch1`` is bright-field (a
    darker, absorbing cell body with a bright halo at its edge on a flat grey
    background), plane ``Ch6`` dark-field / side scatter (a dark background and a
    speckled signal that grows with the cell's granularity). 12-bit counts stored as
    uint16; crops differ in size from cell to cell, like IDEAS exports.
``"smear"``
    May-Grünwald-Giemsa stained smear crops in the 15 LMU classes, RGB uint8: a white
    cell centred among red cells, coloured by a Beer-Lambert mix of stains (purple
    nucleus, blue / grey-blue / pink cytoplasm, granules by class).

Cells are drawn in vectorised batches of one class: per-cell coordinate grids, polar
outlines ``r(θ) = r0 (1 + Σ_k a_k cos(kθ + φ_k))``, nuclei as unions of ellipses (round,
bilobed, band, segmented) minus an indenting disc (kidney shapes), chromatin and
granules from smoothed noise. Class parameter ranges overlap (blast and monocyte size,
lymphocyte and erythroid size, granularity of monocytes and granulocytes) so that shape
and texture matter. Each patient has a :class:`PatientStyle` (illumination, stain,
focus, noise, magnification) drawn from its seed, so held-out patients are a real test
of generalisation.

The pixel work runs in small numba kernels (compiled on first use, then cached; no
fast-math, so results do not depend on the vector width); the random numbers come from
one numpy ``Generator`` per class and seed, so the same seeds give the same pixels.

:func:`simulate_cell_library` writes a training library (``train/<class>/<patient>/``),
unlabelled samples of new patients with known leukaemic fractions, ``samples.csv`` and
``truth.csv``, in any of the layouts :mod:`rescue_gpu.cells` reads.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numba
import numpy as np
from scipy import special

from ..cells.write import write_channel_tiffs, write_image, write_stack
from ..errors import ConfigError

__all__ = [
    "ASSAYS",
    "LAYOUTS",
    "PatientStyle",
    "CellLibrarySummary",
    "assay_classes",
    "assay_channels",
    "patient_style",
    "simulate_cells",
    "draw_labels",
    "simulate_cell_library",
]

#: The simulated assays.
ASSAYS: tuple[str, ...] = ("ifc", "smear")
#: On-disk layouts written by :func:`simulate_cell_library`.
LAYOUTS: tuple[str, ...] = ("tree", "channel-tiffs", "numpy")

_CLASSES = {
    "ifc": ("blast", "lymphocyte", "granulocyte", "monocyte", "erythroid"),
    "smear": ("BAS", "EBO", "EOS", "KSC", "LYA", "LYT", "MMZ", "MOB", "MON", "MYB", "MYO", "NGB", "NGS",
              "PMB", "PMO"),
}
_CHANNELS = {"ifc": ("Ch1", "Ch6"), "smear": ("R", "G", "B")}
_LEUKAEMIC = {"ifc": ("blast",), "smear": ("MYO", "MOB")}
#: Leukaemic percentage at or above which a sample is positive (as in the pipeline files).
_CUTOFF = {"ifc": 25.0, "smear": 20.0}
#: Plausible shares of the classes among normal cells (renormalised over the non-leukaemic ones).
_PROPORTIONS = {
    "ifc": {"blast": 0.01, "lymphocyte": 0.18, "granulocyte": 0.52, "monocyte": 0.07, "erythroid": 0.22},
    "smear": {"BAS": 0.01, "EBO": 0.03, "EOS": 0.03, "KSC": 0.04, "LYA": 0.03, "LYT": 0.22, "MMZ": 0.03,
              "MOB": 0.005, "MON": 0.07, "MYB": 0.03, "MYO": 0.01, "NGB": 0.05, "NGS": 0.40, "PMB": 0.005,
              "PMO": 0.02},
}
_IFC_MAX = 4095              # 12-bit camera
_IFC_CROP = (36, 64)         # raw crop side range, px
_SMEAR_SIZE = 224            # default smear crop side, px
_SMEAR_PX_PER_UM = 8.0       # at 224 px
_NUMPY_IFC_SIZE = 64
#: ifc patient style ranges: blur, bright-field contrast, dark-field gain, bright-field background,
#: dark level, nucleus absorbance, halo strength, granularity.
_IFC_STYLE_RANGES = ((0.6, 1.8), (0.8, 1.2), (0.7, 1.4), (400, 800), (10, 40), (0.85, 1.15), (0.6, 1.4), (0.8, 1.2))
_TAU = 2.0 * np.pi
_F32 = np.float32


def _check_assay(assay: str) -> str:
    if assay not in ASSAYS:
        raise ConfigError(f"unknown assay {assay!r}; choose one of {', '.join(map(repr, ASSAYS))}")
    return assay


def assay_classes(assay: str) -> tuple[str, ...]:
    """The cell classes of an assay, in the order of its pipeline file.

    Parameters
    ----------
    assay
        ``"ifc"`` or ``"smear"``.

    Raises
    ------
    ConfigError
        Unknown assay.
    """
    return _CLASSES[_check_assay(assay)]


def assay_channels(assay: str) -> tuple[str, ...]:
    """The plane names of an assay's images: ``("Ch1", "Ch6")`` or ``("R", "G", "B")``.

    Raises
    ------
    ConfigError
        Unknown assay.
    """
    return _CHANNELS[_check_assay(assay)]


# --------------------------------------------------------------------------- patient style


@dataclass(frozen=True)
class PatientStyle:
    """How one patient's cells were stained and imaged.

    Attributes
    ----------
    assay
        The assay the style belongs to.
    seed
        The seed it was drawn from (``-1`` for the typical patient).
    magnification
        Multiplies every cell and nucleus size (slight optical / preparation differences).
    blur
        Focus: width of soft edges in pixels (smear: at 224 px) and of the edge halo.
    noise
        Multiplies the detector noise.
    gain
        ifc: (bright-field absorbance contrast, dark-field gain); smear: white balance (R, G, B).
    offset
        ifc: (bright-field background counts, dark-field dark level); smear: background
        plasma optical density (R, G, B).
    stain
        ifc: (nucleus absorbance, halo strength, granularity); smear: (nuclear stain,
        cytoplasm stain, eosin) strengths.
    tint
        smear: per-channel multipliers of every optical density (colour shift); ifc: ones.
    crowding
        smear: chance that each of the red-cell slots around the white cell is filled.
    """

    assay: str
    seed: int
    magnification: float
    blur: float
    noise: float
    gain: tuple[float, ...]
    offset: tuple[float, ...]
    stain: tuple[float, float, float]
    tint: tuple[float, float, float]
    crowding: float


def _typical_style(assay: str) -> PatientStyle:
    if assay == "ifc":
        return PatientStyle("ifc", -1, 1.0, 1.0, 1.0, (1.0, 1.0), (600.0, 25.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0),
                            0.0)
    return PatientStyle("smear", -1, 1.0, 1.4, 1.0, (0.96, 0.94, 0.93), (0.03, 0.07, 0.06), (1.0, 1.0, 1.0),
                        (1.0, 1.0, 1.0), 0.6)


def _spread(rng: np.random.Generator, centre: Sequence[float], rel: float) -> tuple[float, ...]:
    """``centre`` times independent factors uniform in ``[1 - rel, 1 + rel]``."""
    return tuple(float(c * f) for c, f in zip(centre, rng.uniform(1 - rel, 1 + rel, len(centre))))


def patient_style(assay: str, *, seed: int) -> PatientStyle:
    """Draw one patient's staining and imaging style.

    Parameters
    ----------
    assay
        ``"ifc"`` or ``"smear"``.
    seed
        The patient's seed; the same seed gives the same style.

    Returns
    -------
    PatientStyle
        ifc: bright-field background 400-800 counts, dark-field gain 0.7-1.4, focus,
        noise and magnification (0.9-1.1) per patient; smear: white balance, stain
        strengths, a colour shift, background density, red-cell crowding as well.

    Raises
    ------
    ConfigError
        Unknown assay.
    """
    _check_assay(assay)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED, ASSAYS.index(assay)])
    mag, noise = float(rng.uniform(0.9, 1.1)), float(rng.uniform(0.6, 1.6))
    if assay == "ifc":
        draw = [float(rng.uniform(lo, hi)) for lo, hi in _IFC_STYLE_RANGES]
        return PatientStyle("ifc", int(seed), mag, draw[0], noise, tuple(draw[1:3]), tuple(draw[3:5]),
                            tuple(draw[5:8]), (1.0, 1.0, 1.0), 0.0)
    return _smear_style(rng, int(seed), mag, noise)


def _smear_style(rng: np.random.Generator, seed: int, magnification: float, noise: float) -> PatientStyle:
    """The smear part of :func:`patient_style`: white balance, background, stains, colour shift, red cells."""
    typical = _typical_style("smear")
    brightness, density = float(rng.uniform(0.92, 1.04)), float(rng.uniform(0.5, 1.6))
    gain = tuple(min(1.0, g * brightness) for g in _spread(rng, typical.gain, 0.03))
    background = tuple(o * density for o in _spread(rng, typical.offset, 0.15))
    return PatientStyle("smear", seed, magnification, float(rng.uniform(0.8, 2.6)), noise, gain, background,
                        _spread(rng, (1.0, 1.0, 1.0), 0.2), _spread(rng, (1.0, 1.0, 1.0), 0.1),
                        float(rng.uniform(0.3, 0.9)))


# --------------------------------------------------------------------------- class tables


class _Shape(NamedTuple):
    """Geometry of a class: sizes in px (ifc) or µm (smear), fractions of the cell radius."""

    diameter: tuple[float, float]
    wobble: float = 0.03                      # amplitude of outline harmonics 3..5
    elong: float = 0.05                       # amplitude of harmonic 2 (ellipticity)
    layout: str = "round"                     # "round", "chain" (lobes in a row) or "body" (smudge)
    nucleus: tuple[float, float] = (0.7, 0.85)  # round: semi-axis / R; chain: lobe radius / R
    lobes: tuple[int, int] = (1, 1)           # chain: lobe count
    step: tuple[float, float] = (1.0, 1.0)    # chain: centre distance / lobe diameter
    turn: tuple[float, float] = (0.0, 0.0)    # chain: heading change per lobe, radians
    zigzag: bool = False                      # chain: random turn sign per lobe (segments)
    offset: float = 0.3                       # eccentricity, fraction of the free room
    indent: tuple[float, float, float] = (0.0, 0.0, 0.0)  # probability, depth range (kidney)
    p_nucleus: float = 1.0


class _IfcLook(NamedTuple):
    """Appearance of an ifc class (ranges drawn per cell)."""

    nuc_absorb: tuple[float, float]   # bright-field absorbance of the nucleus
    cyt_absorb: tuple[float, float]   # ... of the cytoplasm
    clump: tuple[float, float]        # chromatin: 0 fine and homogeneous .. 1 coarse clumps
    halo: tuple[float, float]         # edge ring (refraction)
    scatter: tuple[float, float]      # dark-field counts of the whole cell
    granules: tuple[float, float]     # dark-field counts of a granule
    density: tuple[float, float]      # granule area fraction


class _SmearLook(NamedTuple):
    """Appearance of a smear class: stain densities and colours (RGB at density 1)."""

    chromatin: tuple[float, float]
    clump: tuple[float, float]
    cytoplasm: tuple[int, int, int]
    cyt_density: tuple[float, float]
    granule: tuple[int, int, int] = (190, 150, 190)
    density: tuple[float, float] = (0.0, 0.0)
    coarse: bool = False
    over_nucleus: bool = False
    nucleoli: tuple[int, int] = (0, 0)
    vacuoles: tuple[int, int] = (0, 0)


_BAND = dict(layout="chain", nucleus=(0.16, 0.2), lobes=(5, 7), step=(0.45, 0.6), turn=(0.3, 0.5), offset=0.2)
_SEGMENTS = dict(layout="chain", nucleus=(0.22, 0.28), lobes=(2, 5), step=(0.95, 1.25), turn=(0.3, 1.1),
                 zigzag=True, offset=0.2)
_BILOBED = dict(layout="chain", nucleus=(0.3, 0.36), lobes=(2, 2), step=(0.75, 1.0), offset=0.3)

_IFC: dict[str, tuple[_Shape, _IfcLook]] = {
    "blast": (_Shape((22, 32), 0.03, 0.06, nucleus=(0.72, 0.86), offset=0.3, indent=(0.25, 0.05, 0.45)),
              _IfcLook((0.2, 0.32), (0.06, 0.12), (0.0, 0.2), (0.8, 1.1), (25, 55), (10, 40), (0.02, 0.08))),
    "lymphocyte": (_Shape((15, 21), 0.03, 0.05, nucleus=(0.72, 0.92), offset=0.4, indent=(0.1, 0.05, 0.25)),
                   _IfcLook((0.32, 0.5), (0.05, 0.1), (0.35, 0.75), (0.8, 1.1), (15, 40), (5, 25), (0.02, 0.06))),
    "granulocyte": (_Shape((20, 28), 0.05, 0.08, **{**_SEGMENTS, "lobes": (2, 4), "nucleus": (0.24, 0.32)}),
                    _IfcLook((0.22, 0.36), (0.1, 0.2), (0.3, 0.6), (0.8, 1.2), (55, 140), (110, 380), (0.15, 0.4))),
    "monocyte": (_Shape((23, 34), 0.09, 0.1, nucleus=(0.58, 0.78), offset=0.6, indent=(0.8, 0.05, 0.9)),
                 _IfcLook((0.17, 0.28), (0.09, 0.16), (0.1, 0.35), (0.8, 1.2), (40, 95), (40, 150), (0.06, 0.18))),
    "erythroid": (_Shape((13, 20), 0.015, 0.03, nucleus=(0.4, 0.75), offset=0.5, p_nucleus=0.5),
                  _IfcLook((0.45, 0.7), (0.16, 0.3), (0.5, 0.9), (1.1, 1.6), (15, 40), (0, 10), (0.01, 0.03))),
}

_PINK, _LILAC, _AZUR = (225, 196, 200), (190, 150, 190), (150, 55, 125)
_SMEAR: dict[str, tuple[_Shape, _SmearLook]] = {
    "BAS": (_Shape((10, 14), 0.04, 0.06, **_BILOBED),
            _SmearLook((0.8, 1.0), (0.3, 0.6), (200, 185, 215), (0.6, 0.9), (70, 30, 100), (0.3, 0.5), True, True)),
    "EBO": (_Shape((8, 14), 0.02, 0.04, nucleus=(0.55, 0.75), offset=0.3),
            _SmearLook((1.1, 1.35), (0.6, 0.9), (110, 130, 200), (0.6, 1.1))),
    "EOS": (_Shape((12, 16), 0.04, 0.06, **_BILOBED),
            _SmearLook((0.9, 1.1), (0.4, 0.7), (220, 200, 200), (0.6, 0.9), (235, 120, 80), (0.45, 0.65), True)),
    "KSC": (_Shape((10, 20), 0.2, 0.2, layout="body"),
            _SmearLook((0.35, 0.7), (0.5, 0.9), (255, 255, 255), (0.0, 0.0))),
    "LYA": (_Shape((11, 18), 0.12, 0.12, nucleus=(0.5, 0.7), offset=0.6, indent=(0.3, 0.1, 0.4)),
            _SmearLook((0.85, 1.05), (0.3, 0.6), (120, 150, 210), (0.7, 1.2), _AZUR, (0.0, 0.03))),
    "LYT": (_Shape((7, 10), 0.03, 0.05, nucleus=(0.8, 0.92), offset=0.4),
            _SmearLook((1.05, 1.25), (0.6, 0.9), (140, 170, 220), (0.6, 1.0), _AZUR, (0.0, 0.02))),
    "MMZ": (_Shape((10, 14), 0.04, 0.06, nucleus=(0.5, 0.62), offset=0.5, indent=(1.0, 0.3, 0.6)),
            _SmearLook((0.9, 1.1), (0.4, 0.7), _PINK, (0.8, 1.2), _LILAC, (0.15, 0.3))),
    "MOB": (_Shape((14, 20), 0.06, 0.08, nucleus=(0.7, 0.85), offset=0.3, indent=(0.25, 0.05, 0.3)),
            _SmearLook((0.6, 0.8), (0.0, 0.2), (160, 170, 205), (0.7, 1.1), _LILAC, (0.0, 0.04), nucleoli=(1, 2))),
    "MON": (_Shape((13, 20), 0.1, 0.1, nucleus=(0.55, 0.72), offset=0.5, indent=(1.0, 0.4, 0.9)),
            _SmearLook((0.75, 0.95), (0.2, 0.4), (175, 175, 200), (0.8, 1.1), _LILAC, (0.05, 0.12),
                       vacuoles=(0, 3))),
    "MYB": (_Shape((12, 16), 0.04, 0.06, nucleus=(0.5, 0.65), offset=0.7),
            _SmearLook((0.85, 1.05), (0.3, 0.55), (215, 190, 205), (0.8, 1.2), (180, 130, 180), (0.2, 0.35))),
    "MYO": (_Shape((11, 17), 0.04, 0.06, nucleus=(0.75, 0.88), offset=0.3),
            _SmearLook((0.6, 0.8), (0.0, 0.2), (150, 175, 215), (0.6, 1.0), _AZUR, (0.0, 0.04), nucleoli=(1, 3))),
    "NGB": (_Shape((10, 14), 0.04, 0.06, **_BAND),
            _SmearLook((1.0, 1.2), (0.5, 0.8), _PINK, (0.8, 1.2), _LILAC, (0.15, 0.3))),
    "NGS": (_Shape((10, 14), 0.04, 0.06, **_SEGMENTS),
            _SmearLook((1.05, 1.25), (0.6, 0.9), _PINK, (0.8, 1.2), _LILAC, (0.15, 0.3))),
    "PMB": (_Shape((14, 20), 0.05, 0.07, **_BILOBED),
            _SmearLook((0.7, 0.9), (0.1, 0.3), (155, 175, 215), (0.7, 1.0), _AZUR, (0.15, 0.3), nucleoli=(0, 1))),
    "PMO": (_Shape((14, 20), 0.05, 0.07, nucleus=(0.55, 0.7), offset=0.7),
            _SmearLook((0.7, 0.9), (0.1, 0.3), (155, 175, 215), (0.7, 1.0), _AZUR, (0.15, 0.3), nucleoli=(0, 2))),
}
_NUCLEUS_RGB = (100, 55, 140)
_RBC_RGB = (232, 165, 168)


def _od(rgb: Sequence[float]) -> np.ndarray:
    """Optical density per channel of a stain that shows ``rgb`` on white."""
    return -np.log(np.clip(np.asarray(rgb, dtype=np.float64), 1.0, 255.0) / 255.0).astype(_F32)


# --------------------------------------------------------------------------- draws and noise


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


# --------------------------------------------------------------------------- pixel kernels
# Each kernel walks one cell and one image row at a time with the per-cell values held
# in scalars, so that the innermost loop over x has no branches and compiles to SIMD.


@numba.njit(cache=True, inline="always")
def _ramp(d: float, inv_edge: float) -> float:
    """Soft inside-mask of a signed distance ``d`` (negative inside): a ramp one edge wide."""
    return min(max(0.5 - d * inv_edge, 0.0), 1.0)


@numba.njit(cache=True, inline="always")
def _bump(x: float) -> float:
    """A smooth bump of width ~1 around 0, exactly 0 beyond |x| = 1.58 (a cheap ``exp(-x²)``)."""
    t = max(1.0 - 0.4 * x * x, 0.0)
    return t * t


@numba.njit(cache=True, inline="always")
def _exp_neg(a: float) -> float:
    """``exp(-a)`` for ``a >= 0`` as ``(1 - a/1024)^1024`` (within 1 % up to a = 4; vectorises)."""
    e = max(1.0 - a * (1.0 / 1024.0), 0.0)
    for _ in range(10):
        e *= e
    return e


@numba.njit(cache=True)
def _outline_kernel(centre: np.ndarray, radius: np.ndarray, coef: np.ndarray, edge: float, d_out: np.ndarray,
                    body_out: np.ndarray) -> None:
    """Signed distance to ``r(θ) = R (1 + Σ_k p_k cos kθ + q_k sin kθ)`` (k = 2..5) and the soft body mask."""
    inv_edge, size = 1.0 / edge, d_out.shape[1]
    for i in range(radius.shape[0]):
        cx, cy, rad = centre[i, 0], centre[i, 1], radius[i]
        p2, q2, p3, q3 = coef[i, 0, 0] * rad, coef[i, 0, 1] * rad, coef[i, 1, 0] * rad, coef[i, 1, 1] * rad
        p4, q4, p5, q5 = coef[i, 2, 0] * rad, coef[i, 2, 1] * rad, coef[i, 3, 0] * rad, coef[i, 3, 1] * rad
        for y in range(size):
            dy, d_row, b_row = y - cy, d_out[i, y], body_out[i, y]
            for x in range(size):
                dx = x - cx
                r = np.sqrt(dx * dx + dy * dy)
                c1, s1 = dx / max(r, 1e-3), dy / max(r, 1e-3)
                c2, s2 = c1 * c1 - s1 * s1, 2.0 * c1 * s1
                c3, s3 = c2 * c1 - s2 * s1, s2 * c1 + c2 * s1
                c4, s4 = c3 * c1 - s3 * s1, s3 * c1 + c3 * s1
                c5, s5 = c4 * c1 - s4 * s1, s4 * c1 + c4 * s1
                d = r - rad - (p2 * c2 + q2 * s2 + p3 * c3 + q3 * s3 + p4 * c4 + q4 * s4 + p5 * c5 + q5 * s5)
                d_row[x], b_row[x] = d, _ramp(d, inv_edge)


@numba.njit(cache=True)
def _lobes_kernel(centre: np.ndarray, lobes: np.ndarray, edge: float, out: np.ndarray) -> None:
    """Max-combine soft ellipses ``(n, L, 8)`` (x, y, a, b, cos, sin, sqrt(a b), on) into ``out``, box by box."""
    inv_edge, size = 1.0 / edge, out.shape[1]
    for i in range(lobes.shape[0]):
        for j in range(lobes.shape[1]):
            lx, ly, a, b, co, si, g, on = lobes[i, j]
            if on == 0.0:
                continue
            cx, cy, reach, ia, ib = centre[i, 0] + lx, centre[i, 1] + ly, max(a, b) + 2 * edge, 1.0 / a, 1.0 / b
            x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
            for y in range(max(0, int(cy - reach)), min(size, int(cy + reach) + 2)):
                v, row = y - cy, out[i, y]
                for x in range(x0, x1):
                    u = x - cx
                    ur, vr = (u * co + v * si) * ia, (v * co - u * si) * ib
                    row[x] = max(row[x], _ramp((np.sqrt(ur * ur + vr * vr) - 1.0) * g, inv_edge))


@numba.njit(cache=True)
def _discs_kernel(discs: np.ndarray, edge: float, carve: bool, out: np.ndarray) -> None:
    """Soft discs ``(n, K, 4)`` (x, y, radius, pallor; radius <= 0 is off), box by box.

    ``carve=False``: max-combine them into ``out``, their centres dimmed by ``pallor``
    (the paler middle of a red cell); ``carve=True``: cut them out of ``out``.
    """
    inv_edge, size = 1.0 / edge, out.shape[1]
    for i in range(discs.shape[0]):
        for k in range(discs.shape[1]):
            cx, cy, rad, pallor = discs[i, k]
            if rad <= 0.0:
                continue
            reach, core = rad + 2 * edge, 1.0 / (0.55 * rad)
            x0, x1 = max(0, int(cx - reach)), min(size, int(cx + reach) + 2)
            for y in range(max(0, int(cy - reach)), min(size, int(cy + reach) + 2)):
                dy, row = y - cy, out[i, y]
                for x in range(x0, x1):
                    dist = np.sqrt((x - cx) ** 2 + dy * dy)
                    m = _ramp(dist - rad, inv_edge)
                    if carve:
                        row[x] *= 1.0 - m
                    else:
                        row[x] = max(row[x], m * (1.0 - pallor * max(0.0, 1.0 - (dist * core) ** 2)))


@numba.njit(cache=True)
def _blur_kernel(src: np.ndarray, w: np.ndarray, scale: float, out: np.ndarray) -> None:
    """Separable blur of ``(n, S, S)`` bytes by kernel ``w``, borders reflected: ``out = (blur - 127.5) * scale``."""
    n, size, r = src.shape[0], src.shape[1], (w.shape[0] - 1) // 2
    tmp = np.empty(size + 2 * r, np.float32)
    for i in range(n):
        for y in range(size):
            tmp[:] = 0.0
            for t in range(w.shape[0]):
                yy = y + t - r
                row, wt = src[i, -yy - 1 if yy < 0 else (2 * size - yy - 1 if yy >= size else yy)], w[t]
                for x in range(size):
                    tmp[x + r] += wt * row[x]
            for j in range(r):
                tmp[r - 1 - j], tmp[size + r + j] = tmp[r + min(j, size - 1)], tmp[size + r - 1 - min(j, size - 1)]
            orow = out[i, y]
            orow[:] = -127.5
            for t in range(w.shape[0]):
                wt = w[t]
                for x in range(size):
                    orow[x] += wt * tmp[x + t]
            for x in range(size):
                orow[x] *= scale


@numba.njit(cache=True)
def _upsample2(field: np.ndarray, size: int) -> np.ndarray:
    """Bilinear 2x upsampling of ``(n, h, h)`` fields to ``(n, size, size)`` (``size <= 2 h``)."""
    n, h = field.shape[0], field.shape[1]
    out, tmp = np.empty((n, size, size), np.float32), np.empty(h + 2, np.float32)
    for i in range(n):
        for y in range(size):
            j = y // 2
            k = max(j - 1, 0) if y % 2 == 0 else min(j + 1, h - 1)
            for x in range(h):
                tmp[x + 1] = 0.75 * field[i, j, x] + 0.25 * field[i, k, x]
            tmp[0], tmp[h + 1], row = tmp[1], tmp[h], out[i, y]
            for x in range(size // 2):
                row[2 * x], row[2 * x + 1] = 0.75 * tmp[x + 1] + 0.25 * tmp[x], 0.75 * tmp[x + 1] + 0.25 * tmp[x + 2]
            if size % 2:
                row[size - 1] = tmp[size // 2 + 1]
    return out


@numba.njit(cache=True)
def _ifc_kernel(d: np.ndarray, body: np.ndarray, nuc: np.ndarray, fine: np.ndarray, coarse: np.ndarray,
                cell: np.ndarray, k: np.ndarray, noise: np.ndarray, out: np.ndarray) -> None:
    """Bright-field (plane 0) and dark-field (plane 1) counts of a batch, with read and shot noise.

    ``cell`` ``(n, 7)``: nucleus and cytoplasm absorbance, chromatin clumping, halo,
    scatter, granule counts, granule threshold. ``k``: background, contrast, nucleus
    stain, halo stain, granularity, dark level, dark-field gain, 1 / edge, bright- and
    dark-field read noise, shot-noise factor. ``noise`` ``(n, 2, 2, S, S)`` int8 pairs.
    """
    bg, contrast, s_nuc, s_halo, s_gran, dark, gain, inv_edge, read0, read1, shot = k
    for i in range(d.shape[0]):
        nuc_abs, cyt_abs, clump, halo, scatter, granules, thr = cell[i]
        for y in range(d.shape[1]):
            dr, br, nr, fr, cr = d[i, y], body[i, y], nuc[i, y], fine[i, y], coarse[i, y]
            z00, z01, z10, z11, o0, o1 = noise[i, 0, 0, y], noise[i, 0, 1, y], noise[i, 1, 0, y], noise[i, 1, 1, y], \
                out[i, 0, y], out[i, 1, y]
            for x in range(d.shape[2]):
                b, nn, f, cl, e = br[x], nr[x], fr[x], cr[x], dr[x] * inv_edge
                tex = (1.0 - clump) * 0.12 * f + clump * 0.45 * cl
                absorb = cyt_abs * (b - nn) * (1.0 + 0.15 * cl) + nuc_abs * s_nuc * nn * (1.0 + tex)
                ring = halo * s_halo * (0.3 * _bump(e / 1.2 - 1.0) - 0.12 * _bump(e / 1.2 + 1.2))
                bf = bg * (1.0 - contrast * absorb + ring)
                grain = min(max((-f - thr) * 1.5, 0.0), 1.0) * b
                df = dark + gain * (scatter * (b * (1.0 + 0.25 * cl) + 0.4 * _bump(e)) + grain * granules * s_gran)
                bf += np.sqrt(read0 * read0 + shot * max(bf, 0.0)) * (z00[x] + z01[x] + 1.0) * (1.0 / 104.5)
                df += np.sqrt(read1 * read1 + shot * max(df, 0.0)) * (z10[x] + z11[x] + 1.0) * (1.0 / 104.5)
                o0[x], o1[x] = min(max(int(bf + 0.5), 0), 4095), min(max(int(df + 0.5), 0), 4095)


@numba.njit(cache=True)
def _smear_kernel(body: np.ndarray, nuc: np.ndarray, fine: np.ndarray, coarse: np.ndarray, nucleoli: np.ndarray,
                  vacuoles: np.ndarray, rbc: np.ndarray, cell: np.ndarray, od: np.ndarray, k: np.ndarray,
                  noise: np.ndarray, out: np.ndarray) -> None:
    """RGB of a batch: Beer-Lambert mix of the stains, white balance, camera noise, uint8.

    ``cell`` ``(n, 6)``: chromatin, clumping, cytoplasm density, granule threshold,
    coarse granules (0/1), granules over the nucleus (0/1). ``od`` ``(n, 5, 3)``: optical
    densities of nucleus, cytoplasm, granules, red cells and background. ``k``: R, G, B
    gain (times 255) and the noise level. ``noise`` ``(n, 3, S, S)`` int8.
    """
    for i in range(body.shape[0]):
        chromatin, clump, cyt_density, thr, coarse_grains, over = cell[i]
        o = od[i]
        for y in range(body.shape[1]):
            br, nr, fr, cr, lr, vr, rr = body[i, y], nuc[i, y], fine[i, y], coarse[i, y], nucleoli[i, y], \
                vacuoles[i, y], rbc[i, y]
            for x in range(body.shape[2]):
                b, nn, f, cl = br[x], nr[x], fr[x], cr[x]
                nl, cyt = lr[x] * nn, (b - nn) * (1.0 - vr[x])
                tex = max(1.0 + (1.0 - clump) * 0.15 * f + clump * 0.55 * cl, 0.15)
                grain = min(max((-(coarse_grains * cl + (1.0 - coarse_grains) * f) - thr) * 2.0, 0.0), 1.0)
                cn, cg = nn * chromatin * tex * (1.0 - 0.7 * nl), grain * (over * b + (1.0 - over) * cyt)
                cc, cb = cyt * cyt_density * (1.0 + 0.1 * cl) + 0.3 * nl, rr[x] * (1.0 - b)
                for c in range(3):
                    a = o[4, c] + cn * o[0, c] + cc * o[1, c] + cg * o[2, c] + cb * o[3, c]
                    v = k[c] * _exp_neg(a) + k[3] * (noise[i, c, y, x] + 0.5) * (1.0 / 73.9)
                    out[i, c, y, x] = min(max(int(v + 0.5), 0), 255)


# --------------------------------------------------------------------------- geometry


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


# --------------------------------------------------------------------------- ifc rendering


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


# --------------------------------------------------------------------------- smear rendering


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


def _smear_batch(cls: str, n: int, rng: np.random.Generator, style: PatientStyle, size: int | None) -> list[np.ndarray]:
    """Render ``n`` smear cells of one class on ``size`` squares (default 224)."""
    size = size or _SMEAR_SIZE
    shape, look = _SMEAR[cls]
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


# --------------------------------------------------------------------------- public: cells


def _check_labels(labels: Sequence[str], assay: str) -> np.ndarray:
    names = np.asarray(list(labels), dtype=str)
    valid = assay_classes(assay)
    bad = sorted(set(names.tolist()) - set(valid))
    if bad:
        raise ConfigError(f"unknown {assay} cell class(es) {bad}; valid classes are {', '.join(valid)}")
    return names


def _check_style(style: PatientStyle | None, assay: str) -> PatientStyle:
    if style is None:
        return _typical_style(assay)
    if not isinstance(style, PatientStyle) or style.assay != assay:
        got = style.assay if isinstance(style, PatientStyle) else type(style).__name__
        raise ConfigError(f"style is for {got!r}, not {assay!r}; draw one with patient_style({assay!r}, seed=...)")
    return style


def _check_size(size: int | None) -> int | None:
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 16):
        raise ConfigError(f"size must be None or a whole number of pixels >= 16 (got {size!r})")
    return None if size is None else int(size)


def _batch_size(assay: str, size: int | None) -> int:
    side = size or (_IFC_CROP[1] if assay == "ifc" else _SMEAR_SIZE)
    return int(np.clip(1_000_000 // (side * side), 4, 256))


def simulate_cells(labels: Sequence[str], *, assay: str, style: PatientStyle | None = None,
                   size: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Render one cell image per label.

    Parameters
    ----------
    labels
        Class names of the cells, from :func:`assay_classes`.
    assay
        ``"ifc"`` (2 planes Ch1, Ch6, uint16 12-bit) or ``"smear"`` (RGB uint8).
    style
        The patient's :class:`PatientStyle` (:func:`patient_style`); ``None``: a typical patient.
    size
        Side of every crop in pixels (>= 16). ``None``: ifc crops are sized to the
        object (36-64 px, not square, differing per cell), smear crops are 224 px.
    seed
        Seed of the cells. Cells of one class depend only on the seed and on how many
        cells of that class come before them.

    Returns
    -------
    list of numpy.ndarray
        One ``(C, h, w)`` array per label, in order.

    Raises
    ------
    ConfigError
        Unknown assay or class, a style of another assay, a bad size.
    """
    names = _check_labels(labels, assay)
    style, size = _check_style(style, assay), _check_size(size)
    render, batch = (_ifc_batch if assay == "ifc" else _smear_batch), _batch_size(assay, size)
    out: list[np.ndarray] = [np.empty(0)] * names.size
    classes = assay_classes(assay)
    for cls, child in zip(classes, np.random.SeedSequence(int(seed)).spawn(len(classes))):
        idx, rng = np.flatnonzero(names == cls), np.random.default_rng(child)
        for start in range(0, idx.size, batch):
            chunk = idx[start:start + batch]
            for i, image in zip(chunk, render(cls, chunk.size, rng, style, size)):
                out[i] = image
    return out


def _check_fraction(fraction: float, what: str) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"{what} must be a fraction in [0, 1] (got {fraction!r})")
    return value


def _leukaemic(assay: str, leukaemic: Sequence[str] | None) -> tuple[str, ...]:
    classes = assay_classes(assay)
    chosen = _LEUKAEMIC[assay] if leukaemic is None else tuple(leukaemic)
    bad = [c for c in chosen if c not in classes]
    if bad or not chosen or len(set(chosen)) == len(classes):
        raise ConfigError(f"leukaemic classes must be a non-empty proper subset of {', '.join(classes)} "
                          f"(got {list(chosen)})")
    return chosen


def draw_labels(n: int, *, assay: str, leukaemic_fraction: float, seed: int,
                leukaemic: Sequence[str] | None = None) -> np.ndarray:
    """Class names of ``n`` cells with an exact leukaemic share.

    Parameters
    ----------
    n
        Number of cells.
    assay
        ``"ifc"`` or ``"smear"``.
    leukaemic_fraction
        Share of leukaemic cells: exactly ``round(n * leukaemic_fraction)`` of them.
    seed
        Seed of the draw and of the shuffle.
    leukaemic
        The leukaemic classes (default ifc ``("blast",)``, smear ``("MYO", "MOB")``); the
        leukaemic cells are spread evenly at random over them. The other cells come from
        the remaining classes with fixed plausible proportions.

    Returns
    -------
    numpy.ndarray
        ``n`` class names, shuffled.

    Raises
    ------
    ConfigError
        Unknown assay or class, a fraction outside [0, 1], a negative ``n``.
    """
    chosen = _leukaemic(assay, leukaemic)
    fraction = _check_fraction(leukaemic_fraction, "leukaemic_fraction")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n must be a whole number >= 0 (got {n!r})")
    rng = np.random.default_rng(int(seed))
    k = int(round(n * fraction))
    normal = [c for c in assay_classes(assay) if c not in chosen]
    weights = np.array([_PROPORTIONS[assay][c] for c in normal])
    labels = np.concatenate([rng.choice(np.array(chosen), k),
                             rng.choice(np.array(normal), n - k, p=weights / weights.sum())])
    return rng.permutation(labels.astype(str))


# --------------------------------------------------------------------------- public: library


@dataclass
class CellLibrarySummary:
    """What :func:`simulate_cell_library` wrote.

    Attributes
    ----------
    out_dir
        The library folder.
    assay, layout
        As requested.
    n_train_cells, n_train_patients
        Labelled training cells and the patients they come from (``P001``, ...).
    n_samples
        Unlabelled samples of new patients (``S001``, ...).
    train_dir
        ``out_dir/train`` (tree, channel-tiffs) or ``out_dir/train.npz`` (numpy).
    samples_manifest
        ``out_dir/samples.csv``: ``sample_id, path, patient_id, label, true_fraction``.
    truth
        ``out_dir/truth.csv``: ``sample_id, cell_id, class`` of every sample cell.
    classes
        The assay's classes.
    fractions
        True leukaemic fraction per sample (exact: leukaemic cells / cells).
    seconds
        Wall time.
    """

    out_dir: Path
    assay: str
    layout: str
    n_train_cells: int
    n_train_patients: int
    n_samples: int
    train_dir: Path
    samples_manifest: Path
    truth: Path
    classes: tuple[str, ...]
    fractions: tuple[float, ...]
    seconds: float

    def __str__(self) -> str:
        spread = f", leukaemic fractions {min(self.fractions):.3f}-{max(self.fractions):.3f}" if self.fractions else ""
        return (f"{self.assay} cell library in {self.out_dir} ({self.layout} layout): {self.n_train_cells} training "
                f"cells from {self.n_train_patients} patients, {self.n_samples} samples{spread}; "
                f"{self.seconds:.1f} s")


@dataclass(frozen=True)
class _Plan:
    """Settings shared by the writers of one library."""

    out: Path
    assay: str
    layout: str
    size: int | None
    progress: Callable[[], None]

    @property
    def ext(self) -> str:
        return ".tif" if self.assay == "ifc" else ".png"


def _check_layout(assay: str, layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {', '.join(map(repr, LAYOUTS))}")
    if layout == "channel-tiffs" and assay != "ifc":
        raise ConfigError(f"layout 'channel-tiffs' is for imaging-flow exports (assay 'ifc'), not {assay!r}; "
                          "use 'tree' or 'numpy'")
    return layout


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        least = 0 if name == "n_samples" else 1
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ConfigError(f"{name} must be a whole number >= {least} (got {value!r})")


def _default_fractions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Fractions over [0, 0.6]: a third near 0, a third in (0.02, 0.25), a third in (0.3, 0.6)."""
    groups = rng.permutation(np.arange(n) % 3)
    lo, hi = np.array([0.0, 0.02, 0.3])[groups], np.array([0.01, 0.25, 0.6])[groups]
    return rng.uniform(lo, hi)


def _sample_fractions(n_samples: int, fractions: Sequence[float] | None, seed: np.random.SeedSequence) -> np.ndarray:
    if fractions is None:
        return _default_fractions(n_samples, np.random.default_rng(seed))
    values = [_check_fraction(f, "each of fractions") for f in fractions]
    if len(values) != n_samples:
        raise ConfigError(f"fractions has {len(values)} values but n_samples is {n_samples}; give one per sample")
    return np.asarray(values, dtype=float)


def _write_cells(plan: _Plan, folder: Path, cell_ids: Sequence[str], images: Sequence[np.ndarray]) -> None:
    """Write cells into ``folder``: one file per cell (tree) or one TIFF per channel (channel-tiffs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for cid, image in zip(cell_ids, images):
        if plan.layout == "channel-tiffs":
            write_channel_tiffs(folder, cid, image, assay_channels(plan.assay))
        else:
            write_image(folder / f"{cid}{plan.ext}", image)


def _patient_cells(plan: _Plan, child: np.random.SeedSequence, labels: Sequence[str]) -> list[np.ndarray]:
    """The cells of one patient, in the patient's own style."""
    style_seed, cell_seed = (int(s) for s in child.generate_state(2))
    style = patient_style(plan.assay, seed=style_seed)
    return simulate_cells(labels, assay=plan.assay, style=style, size=plan.size, seed=cell_seed)


def _write_training(plan: _Plan, seed: np.random.SeedSequence, n_patients: int, per_class: int) -> int:
    """Write ``train/<class>/<patient>/`` (or ``train.npz``); return the number of cells."""
    classes = assay_classes(plan.assay)
    labels = np.repeat(np.array(classes), per_class)
    stack: dict[str, list] = {"images": [], "labels": [], "patient_ids": [], "cell_ids": []}
    for p, child in enumerate(seed.spawn(n_patients)):
        pid = f"P{p + 1:03d}"
        images = _patient_cells(plan, child, labels)
        ids = [f"{pid}_{k:05d}" for k in range(labels.size)]
        if plan.layout == "numpy":
            for key, values in zip(stack, (images, labels.tolist(), [pid] * labels.size, ids)):
                stack[key].extend(values)
        else:
            for cls in classes:
                sel = np.flatnonzero(labels == cls)
                _write_cells(plan, plan.out / "train" / cls / pid, [ids[i] for i in sel], [images[i] for i in sel])
        plan.progress()
    if plan.layout == "numpy":
        write_stack(plan.out / "train.npz", np.stack(stack.pop("images")), channels=assay_channels(plan.assay), **stack)
    return n_patients * labels.size


def _write_sample(plan: _Plan, sid: str, child: np.random.SeedSequence, labels: np.ndarray) -> tuple[str, list[str]]:
    """Write one unlabelled sample; return its path (relative to ``out``) and its cell ids."""
    images = _patient_cells(plan, child, labels)
    if plan.layout == "numpy":
        rel = f"samples/{sid}.npy"
        write_stack(plan.out / rel, np.stack(images))
        return rel, [str(k) for k in range(labels.size)]
    rel, ids = f"samples/{sid}", [f"{sid}_{k:05d}" for k in range(labels.size)]
    _write_cells(plan, plan.out / rel, ids, images)
    return rel, ids


def _write_samples(plan: _Plan, seed: np.random.SeedSequence, fractions: np.ndarray,
                   per_sample: int) -> tuple[list[dict], list[tuple[str, str, str]], list[float]]:
    """Write every sample; return the ``samples.csv`` rows, the ``truth.csv`` rows and the true fractions."""
    rows, truth, true = [], [], []
    for s, (child, fraction) in enumerate(zip(seed.spawn(fractions.size), fractions)):
        sid = f"S{s + 1:03d}"
        label_seed = int(child.spawn(1)[0].generate_state(1)[0])
        labels = draw_labels(per_sample, assay=plan.assay, leukaemic_fraction=fraction, seed=label_seed)
        rel, ids = _write_sample(plan, sid, child, labels)
        exact = float(np.isin(labels, _LEUKAEMIC[plan.assay]).mean())
        positive = round(exact * 100, 9) >= _CUTOFF[plan.assay]
        rows.append({"sample_id": sid, "path": rel, "patient_id": sid, "label": "positive" if positive else "negative",
                     "true_fraction": f"{exact:.6f}"})
        truth.extend(zip([sid] * len(ids), ids, labels.tolist()))
        true.append(exact)
        plan.progress()
    return rows, truth, true


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict | Sequence]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([[r[c] for c in columns] if isinstance(r, dict) else list(r) for r in rows])
    return path


def _counter(total: int, on_progress: Callable[[int, int], None] | None) -> Callable[[], None]:
    done = [0]

    def tick() -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], total)

    return tick


def simulate_cell_library(out_dir: str | Path, *, assay: str = "ifc", layout: str = "tree",
                          n_train_patients: int = 12, cells_per_class: int = 40, n_samples: int = 8,
                          cells_per_sample: int = 400, fractions: Sequence[float] | None = None,
                          size: int | None = None, seed: int = 0,
                          on_progress: Callable[[int, int], None] | None = None) -> CellLibrarySummary:
    """Write a labelled training library and unlabelled samples with known leukaemic fractions.

    Parameters
    ----------
    out_dir
        Output folder (created).
    assay
        ``"ifc"`` or ``"smear"``.
    layout
        ``"tree"``: ``train/<class>/<patient>/<cell>.tif`` (ifc, 2 planes) or ``.png``
        (smear) and ``samples/<sample>/<cell>.<ext>``; ``"channel-tiffs"`` (ifc only):
        ``<cell>_Ch1.tif`` and ``<cell>_Ch6.tif`` in the same folders; ``"numpy"``:
        ``train.npz`` (images, labels, patient_ids, cell_ids, channels) and
        ``samples/<sample>.npy``, with fixed-size crops.
    n_train_patients, cells_per_class
        Training patients ``P001``... and cells per class per patient.
    n_samples, cells_per_sample
        Samples of new patients ``S001``... (never among the training patients).
    fractions
        True leukaemic fraction per sample; default spread over [0, 0.6] with several
        near 0 and several above 0.25. The leukaemic count is exactly
        ``round(cells_per_sample * fraction)``.
    size
        Crop side (>= 16); default: object-sized ifc crops (64 px for numpy), 224 px smears.
    seed
        Seed of everything: the same seed writes the same pixels.
    on_progress
        Called as ``on_progress(i, n)`` after each training patient and each sample.

    Returns
    -------
    CellLibrarySummary

    Raises
    ------
    ConfigError
        Unknown assay or layout, channel-tiffs for smears, bad counts, sizes or fractions.
    """
    start = time.perf_counter()
    classes, layout = assay_classes(assay), _check_layout(assay, layout)
    _check_counts(n_train_patients=n_train_patients, cells_per_class=cells_per_class, n_samples=n_samples,
                  cells_per_sample=cells_per_sample)
    size = _check_size(size)
    if layout == "numpy" and size is None:
        size = _NUMPY_IFC_SIZE if assay == "ifc" else _SMEAR_SIZE
    plan_seed, train_seed, sample_seed = np.random.SeedSequence(int(seed)).spawn(3)
    wanted = _sample_fractions(n_samples, fractions, plan_seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _Plan(out, assay, layout, size, _counter(n_train_patients + n_samples, on_progress))
    n_train = _write_training(plan, train_seed, n_train_patients, cells_per_class)
    rows, truth, true = _write_samples(plan, sample_seed, wanted, cells_per_sample)
    manifest = _write_csv(out / "samples.csv", ("sample_id", "path", "patient_id", "label", "true_fraction"), rows)
    truth_csv = _write_csv(out / "truth.csv", ("sample_id", "cell_id", "class"), truth)
    return CellLibrarySummary(out, assay, layout, n_train, n_train_patients, n_samples,
                              out / ("train.npz" if layout == "numpy" else "train"), manifest, truth_csv, classes,
                              tuple(true), time.perf_counter() - start)
