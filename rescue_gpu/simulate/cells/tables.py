"""The simulated assays' class tables: class names, channels, leukaemic classes, cut-offs, normal
proportions, and each class's shape and look (ifc and smear)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ...errors import ConfigError

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
