"""Per-patient imaging style (illumination, stain, focus, noise, magnification), drawn from a seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .tables import ASSAYS, _IFC_STYLE_RANGES, _check_assay


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
