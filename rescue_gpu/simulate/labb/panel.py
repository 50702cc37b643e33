"""Lab B's cytometer: an 8-colour tube, its detectors, ranges and spillover.

Independent of :mod:`rescue_gpu.simulate.flow`: other fluorochromes (no FITC, PE, PerCP,
PE-Cy7, APC, APC-H7, BV421 or BV510), a CytoFLEX-like ``$PnR`` of 2**20, four scatter
parameters (FSC/SSC area and height), and a spillover matrix derived from a physical
model (emission peaks and laser cross-excitation) rather than a table of values.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MARKERS", "FLUOR", "FLUOR_CHANNELS", "SCATTER", "CHANNELS", "LABELS", "RANGE",
           "nominal_spillover", "day_spillover"]

#: Markers of the tube, in the order of the Lab B pipeline.
MARKERS: tuple[str, ...] = ("CD45", "CD34", "CD117", "CD13", "CD33", "HLA-DR", "CD7", "CD56")
#: Marker -> fluorochrome.
FLUOR: dict[str, str] = {
    "CD45": "KO525", "CD34": "ECD", "CD117": "PC5", "CD13": "BUV395",
    "CD33": "AF488", "HLA-DR": "AF700", "CD7": "BB700", "CD56": "BUV737",
}
#: (laser nm, emission peak nm) of each fluorochrome.
_OPTICS: dict[str, tuple[int, float]] = {
    "BUV395": (355, 395.0), "BUV737": (355, 737.0), "KO525": (405, 525.0), "AF488": (488, 520.0),
    "BB700": (488, 695.0), "ECD": (561, 615.0), "PC5": (561, 667.0), "AF700": (640, 719.0),
}
#: Scatter parameters in file order.
SCATTER: tuple[str, ...] = ("FSC-A", "FSC-H", "SSC-A", "SSC-H")
#: Fluorescence $PnN in file order (by laser, then wavelength).
FLUOR_CHANNELS: tuple[str, ...] = tuple(
    f"{f}-A" for f in sorted(FLUOR.values(), key=lambda f: (_OPTICS[f][0], _OPTICS[f][1]))
)
#: All $PnN in file order.
CHANNELS: tuple[str, ...] = SCATTER + FLUOR_CHANNELS + ("Time",)
_BY_CHANNEL = {f"{f}-A": m for m, f in FLUOR.items()}
#: $PnS in file order ("" for scatter and Time), written "CD34 ECD".
LABELS: tuple[str, ...] = tuple(f"{_BY_CHANNEL[c]} {c[:-2]}" if c in _BY_CHANNEL else "" for c in CHANNELS)
#: $PnR of every parameter (2**20, CytoFLEX-like).
RANGE = 1048576


def nominal_spillover() -> np.ndarray:
    """The nominal spillover matrix, rows/columns in :data:`FLUOR_CHANNELS` order.

    ``S[i, j]`` is the share of fluorochrome ``i`` seen in detector ``j``: a Gaussian of
    the emission-peak distance (width 45 nm), damped by 0.15 when detector ``j`` sits on
    another laser than fluorochrome ``i``'s; unit diagonal.
    """
    fl = [c[:-2] for c in FLUOR_CHANNELS]
    n = len(fl)
    s = np.eye(n)
    for i, a in enumerate(fl):
        for j, b in enumerate(fl):
            if i == j:
                continue
            (la, ea), (lb, eb) = _OPTICS[a], _OPTICS[b]
            share = 0.35 * np.exp(-(((eb - ea) / 45.0) ** 2))
            s[i, j] = share * (1.0 if la == lb else 0.15)
    return np.round(s, 4)


def day_spillover(rng: np.random.Generator, *, jitter: float = 0.05) -> np.ndarray:
    """One acquisition day's spillover: the nominal matrix with multiplicative jitter (6 decimals)."""
    s = nominal_spillover()
    m = s * np.exp(rng.normal(0.0, jitter, s.shape))
    np.fill_diagonal(m, 1.0)
    return np.round(m, 6)
