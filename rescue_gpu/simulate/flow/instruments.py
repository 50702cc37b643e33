"""Instruments: channel layouts, marker labels, gains, spillover, detector noise.

Three simulated cytometers carry the same ELN-style 10-colour panel but differ the way
real ones do: parameter order, how ``$PnS`` is written ("CD7 FITC", "CD7", "CD7-FITC";
"HLA-DR APC-H7" vs "HLADR"), extra channels (SSC-H), detector gains, spillover values,
electronic noise, and the spillover keyword (BD ``SPILL`` vs ``$SPILLOVER``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...fcs.types import Spillover
from ...fcs.writer import spillover_value
from .populations import MARKERS

__all__ = [
    "FLUOROCHROMES",
    "FLUOR_CHANNELS",
    "MARKER_FLUOR",
    "Instrument",
    "INSTRUMENTS",
    "base_spillover",
    "sample_spillover",
    "spill_keyword",
    "RANGE",
]

#: $PnR of every fluorescence and scatter parameter (BD FACSDiva float data).
RANGE = 262144
_MAX = float(RANGE - 1)

#: Fluorochromes of the panel, as their detector channel ($PnN) prefixes.
FLUOROCHROMES: tuple[str, ...] = (
    "FITC", "PE", "PerCP-Cy5-5", "PE-Cy7", "APC", "APC-H7", "BV421", "BV510", "BV605", "BV786",
)
FLUOR_CHANNELS: tuple[str, ...] = tuple(f"{f}-A" for f in FLUOROCHROMES)
#: Marker -> fluorochrome of the ELN-style tube.
MARKER_FLUOR: dict[str, str] = {
    "CD7": "FITC", "CD56": "PE", "CD34": "PerCP-Cy5-5", "CD117": "PE-Cy7", "CD33": "APC",
    "HLA-DR": "APC-H7", "CD13": "BV421", "CD45": "BV510", "CD19": "BV605", "CD38": "BV786",
}
#: Index into MARKERS of the marker carried by each fluorochrome.
FLUOR_MARKER_INDEX: np.ndarray = np.array(
    [MARKERS.index(next(m for m, f in MARKER_FLUOR.items() if f == fl)) for fl in FLUOROCHROMES]
)

_DISPLAY = {"PerCP-Cy5-5": "PerCP-Cy5.5"}
_SHORT = {"FITC": "FITC", "PE": "PE", "PerCP-Cy5-5": "PC5.5", "PE-Cy7": "PC7", "APC": "APC",
          "APC-H7": "APC750", "BV421": "PB", "BV510": "KrO", "BV605": "BV605", "BV786": "BV786"}

# (source, detector): fraction of the source fluorochrome's signal seen in the detector.
_SPILL: dict[tuple[str, str], float] = {
    ("FITC", "PE"): 0.20, ("FITC", "PerCP-Cy5-5"): 0.03, ("FITC", "PE-Cy7"): 0.005, ("FITC", "BV510"): 0.02,
    ("PE", "FITC"): 0.01, ("PE", "PerCP-Cy5-5"): 0.18, ("PE", "PE-Cy7"): 0.04, ("PE", "BV605"): 0.03,
    ("PE", "APC"): 0.005,
    ("PerCP-Cy5-5", "PE-Cy7"): 0.12, ("PerCP-Cy5-5", "APC"): 0.02, ("PerCP-Cy5-5", "APC-H7"): 0.05,
    ("PerCP-Cy5-5", "BV786"): 0.03,
    ("PE-Cy7", "APC-H7"): 0.08, ("PE-Cy7", "PerCP-Cy5-5"): 0.02, ("PE-Cy7", "BV786"): 0.05,
    ("APC", "APC-H7"): 0.10, ("APC", "PerCP-Cy5-5"): 0.01, ("APC", "PE-Cy7"): 0.01,
    ("APC-H7", "APC"): 0.02, ("APC-H7", "PE-Cy7"): 0.03, ("APC-H7", "BV786"): 0.01,
    ("BV421", "BV510"): 0.10, ("BV421", "FITC"): 0.01, ("BV421", "BV605"): 0.01,
    ("BV510", "FITC"): 0.05, ("BV510", "BV605"): 0.06, ("BV510", "PE"): 0.01,
    ("BV605", "PE"): 0.03, ("BV605", "BV786"): 0.02, ("BV605", "PerCP-Cy5-5"): 0.02, ("BV605", "BV510"): 0.01,
    ("BV786", "PE-Cy7"): 0.06, ("BV786", "APC-H7"): 0.02, ("BV786", "BV605"): 0.005,
}


def base_spillover() -> np.ndarray:
    """The nominal panel spillover matrix, rows/columns in :data:`FLUOROCHROMES` order.

    Returns
    -------
    numpy.ndarray
        ``(10, 10)`` float64, unit diagonal; ``S[i, j]`` is the share of fluorochrome
        ``i`` seen in detector ``j`` (so ``raw = true @ S``).
    """
    s = np.eye(len(FLUOROCHROMES))
    pos = {f: i for i, f in enumerate(FLUOROCHROMES)}
    for (src, det), value in _SPILL.items():
        s[pos[src], pos[det]] = value
    return s


@dataclass(frozen=True)
class Instrument:
    """One simulated cytometer.

    Attributes
    ----------
    name, serial
        ``$CYT`` and ``$CYTSN``.
    layout
        ``$PnN`` in file order (fluorescence channels, scatter, ``Time``).
    labels
        ``$PnS`` in file order (``""`` for none).
    gains
        Multiplicative gain of every fluorochrome (FLUOROCHROMES order), FSC and SSC.
    spillover
        The instrument's spillover matrix (FLUOROCHROMES order).
    noise_sd
        Electronic noise (standard deviation, units) of every fluorescence detector.
    photon
        Variance per unit of signal (Poisson-like photon statistics).
    spill_keyword
        ``"SPILL"`` (BD) or ``"$SPILLOVER"``.
    voltages
        ``$PnV`` of every parameter in file order (``""`` for none).
    """

    name: str
    serial: str
    layout: tuple[str, ...]
    labels: tuple[str, ...]
    gains: np.ndarray
    spillover: np.ndarray
    noise_sd: np.ndarray
    photon: float
    spill_keyword: str
    voltages: tuple[str, ...]

    @property
    def fluor_channels(self) -> tuple[str, ...]:
        """Fluorescence ``$PnN`` in file order (the order of the written spillover)."""
        return tuple(c for c in self.layout if c in FLUOR_CHANNELS)

    @property
    def fluor_order(self) -> np.ndarray:
        """Index into FLUOROCHROMES of each fluorescence channel in file order."""
        return np.array([FLUOR_CHANNELS.index(c) for c in self.fluor_channels])


def _label(style: str, marker: str, fluor: str) -> str:
    if style == "marker fluor":
        return f"{marker} {_DISPLAY.get(fluor, fluor)}"
    if style == "marker":
        return "HLADR" if marker == "HLA-DR" else marker
    return f"{marker}-{_SHORT[fluor]}"


def _make_instrument(index: int, name: str, style: str, order: tuple[str, ...], spill_kw: str) -> Instrument:
    rng = np.random.default_rng([20240611, index])  # fixed: instruments are the same in every cohort
    by_channel = {f"{f}-A": m for m, f in MARKER_FLUOR.items()}
    labels = tuple(_label(style, by_channel[c], c[:-2]) if c in by_channel else "" for c in order)
    off = base_spillover() * rng.lognormal(0.0, 0.15, (10, 10))
    np.fill_diagonal(off, 1.0)
    volts = tuple("" if c == "Time" else str(int(rng.uniform(350, 650))) for c in order)
    return Instrument(
        name=name, serial=f"R{index + 1}{int(rng.integers(10000, 99999))}", layout=order, labels=labels,
        gains=rng.uniform(0.75, 1.35, len(FLUOROCHROMES) + 2), spillover=off,
        noise_sd=rng.uniform(15.0, 45.0, len(FLUOROCHROMES)), photon=float(rng.uniform(0.8, 2.0)),
        spill_keyword=spill_kw, voltages=volts,
    )


_SCATTER = ("FSC-A", "FSC-H", "SSC-A")
_VIOLET_FIRST = FLUOR_CHANNELS[6:] + FLUOR_CHANNELS[:6]
#: The simulated instruments (index = the ``instrument`` of a patient).
INSTRUMENTS: tuple[Instrument, ...] = (
    _make_instrument(0, "LSRFortessa", "marker fluor", _SCATTER + FLUOR_CHANNELS + ("Time",), "SPILL"),
    _make_instrument(1, "FACSLyric", "marker", ("Time",) + _SCATTER + ("SSC-H",) + FLUOR_CHANNELS, "SPILL"),
    _make_instrument(2, "CytoFLEX LX", "marker-short", _SCATTER + _VIOLET_FIRST + ("Time",), "$SPILLOVER"),
)


def sample_spillover(instrument: Instrument, rng: np.random.Generator, *, jitter: float = 0.03) -> Spillover:
    """The spillover matrix of one acquisition day, in the instrument's file order.

    Parameters
    ----------
    instrument
        The cytometer.
    rng
        Random generator for the day-to-day jitter.
    jitter
        Log-normal sigma of each off-diagonal entry's day-to-day variation.

    Returns
    -------
    Spillover
        Channels are the instrument's fluorescence ``$PnN`` in file order; the values are
        rounded to 6 decimals, exactly as written, so ``raw = true @ matrix`` holds.
    """
    order = instrument.fluor_order
    m = instrument.spillover[np.ix_(order, order)] * rng.lognormal(0.0, jitter, (len(order),) * 2)
    np.fill_diagonal(m, 1.0)
    return Spillover(instrument.fluor_channels, np.round(m, 6), source=instrument.spill_keyword)


spill_keyword = spillover_value  # the FCS value format, written as SPILL or $SPILLOVER
