"""Lab B's marrow model: populations as curved maturation paths with heavy-tailed spread.

Each population is a quadratic Bezier path through three control points in a 10-D space
(log10 intensity of the 8 markers, then log10 FSC and log10 SSC, on the 2**20 scale).
A cell draws its maturation position ``u ~ Beta(a, b)`` along the path and a Student-t
deviation (5 degrees of freedom) around it; a per-cell "staining" factor scales all
markers together. Normal marrow and a regenerating variant differ in composition; a
patient's leukaemic LAIP is a progenitor-like blast with 1-3 aberrations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .panel import MARKERS

__all__ = ["DIMS", "Path", "NORMAL", "NORMAL_SHARE", "REGENERATING_SHARE", "ABERRATIONS", "Laip",
           "draw_laip", "blast_path", "draw_cells"]

#: Dimensions: markers then log10 FSC-A, log10 SSC-A.
DIMS: tuple[str, ...] = MARKERS + ("FSC", "SSC")
_AT = {d: i for i, d in enumerate(DIMS)}
_NEG = 2.4  # log10 autofluorescence of a negative cell on the 2**20 scale (~250)


def _point(fsc: float, ssc: float, **markers: float) -> np.ndarray:
    """A control point: every marker negative unless given (``HLA_DR`` for HLA-DR)."""
    v = np.full(len(DIMS), _NEG)
    for key, value in markers.items():
        v[_AT[key.replace("_", "-")]] = value
    v[_AT["FSC"]], v[_AT["SSC"]] = fsc, ssc
    return v


@dataclass(frozen=True)
class Path:
    """A population: a Bezier path (``p0 -> p1 -> p2``), spread and maturation law."""

    name: str
    p0: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    sd: float
    beta: tuple[float, float] = (1.0, 1.0)

    def at(self, u: np.ndarray) -> np.ndarray:
        """Mean positions at maturation ``u`` (shape ``(n,)``) -> ``(n, DIMS)``."""
        u = u[:, None]
        return (1 - u) ** 2 * self.p0 + 2 * (1 - u) * u * self.p1 + u ** 2 * self.p2


def _still(name: str, p: np.ndarray, sd: float) -> Path:
    return Path(name, p, p, p, sd)


#: Normal populations (granulocytes, erythroid and monocytes mature along their path).
NORMAL: tuple[Path, ...] = (
    _still("t_lymphocyte", _point(5.45, 4.55, CD45=4.75, CD7=4.2), 0.11),
    _still("nk_cell", _point(5.48, 4.62, CD45=4.65, CD7=3.9, CD56=4.1), 0.12),
    _still("b_lymphocyte", _point(5.45, 4.5, CD45=4.55, HLA_DR=4.5), 0.11),
    Path("monocyte", _point(5.62, 5.05, CD45=4.3, CD33=4.4, CD13=3.6, HLA_DR=3.9, CD117=2.6),
         _point(5.7, 5.15, CD45=4.55, CD33=4.85, CD13=4.1, HLA_DR=4.2),
         _point(5.72, 5.2, CD45=4.65, CD33=4.9, CD13=4.3, HLA_DR=4.0, CD56=2.8), 0.1, (2.0, 1.5)),
    Path("granulocyte", _point(5.7, 5.55, CD45=3.9, CD117=3.5, CD13=4.6, CD33=4.2, HLA_DR=2.6),
         _point(5.65, 5.75, CD45=4.0, CD13=3.3, CD33=3.8),
         _point(5.6, 5.65, CD45=4.2, CD13=4.55, CD33=3.5), 0.1, (2.2, 1.2)),
    Path("erythroid", _point(5.5, 4.45, CD45=3.1, CD117=3.9, CD33=2.9),
         _point(5.4, 4.35, CD45=2.6, CD117=2.9),
         _point(5.3, 4.3, CD45=2.3), 0.1, (1.5, 1.5)),
    Path("progenitor", _point(5.5, 4.6, CD45=3.7, CD34=4.5, CD117=4.0, CD13=3.9, CD33=3.3, HLA_DR=4.4),
         _point(5.52, 4.7, CD45=3.8, CD34=4.1, CD117=4.1, CD13=4.1, CD33=3.7, HLA_DR=4.2),
         _point(5.55, 4.85, CD45=3.85, CD34=3.3, CD117=3.9, CD13=4.3, CD33=4.0, HLA_DR=3.8), 0.1, (1.2, 2.5)),
)
_NAMES = tuple(p.name for p in NORMAL)
#: Share of nucleated cells in a normal and in a regenerating marrow (NORMAL order).
NORMAL_SHARE = np.array([0.15, 0.03, 0.04, 0.07, 0.58, 0.11, 0.012])
REGENERATING_SHARE = np.array([0.12, 0.04, 0.08, 0.12, 0.42, 0.17, 0.045])

#: Aberrations of a LAIP: (name, {marker: shift in log10 units}); an "=" sets a level.
ABERRATIONS: dict[str, dict[str, float]] = {
    "CD7+": {"CD7": +1.5},
    "CD56+": {"CD56": +1.6},
    "HLA-DR-": {"HLA-DR": -1.8},
    "CD34-": {"CD34": -1.9},
    "CD13-": {"CD13": -1.4},
    "CD33bright": {"CD33": +0.9},
    "CD45dim": {"CD45": -0.6},
    "CD117bright": {"CD117": +0.6},
}


@dataclass(frozen=True)
class Laip:
    """A patient's leukaemia-associated immunophenotype."""

    aberrations: tuple[str, ...]
    centre: np.ndarray
    sd: float


def blast_path(laip: Laip) -> Path:
    """The blast population of a LAIP (a still cloud at its centre)."""
    return _still("blast", laip.centre, laip.sd)


def draw_laip(rng: np.random.Generator) -> Laip:
    """Draw a patient-specific LAIP: 1-3 aberrations on a progenitor-like blast, with jitter."""
    k = int(rng.integers(1, 4))
    picks = tuple(sorted(rng.choice(list(ABERRATIONS), size=k, replace=False)))
    centre = NORMAL[-1].at(np.array([0.15]))[0].copy()
    for name in picks:
        for marker, shift in ABERRATIONS[name].items():
            centre[_AT[marker]] += shift * float(rng.uniform(0.8, 1.2))
    centre[: len(MARKERS)] = np.maximum(centre[: len(MARKERS)], _NEG)
    centre += rng.normal(0.0, 0.08, centre.shape)
    centre[_AT["FSC"]] += float(rng.uniform(0.0, 0.08))  # blasts a little larger
    return Laip(picks, centre, float(rng.uniform(0.09, 0.14)))


def draw_cells(path: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` cells of a population in log10 space, ``(n, DIMS)``."""
    u = rng.beta(*path.beta, size=n)
    dev = rng.standard_t(5, size=(n, len(DIMS))) * path.sd
    stain = rng.normal(0.0, 0.06, size=(n, 1))
    x = path.at(u) + dev
    x[:, : len(MARKERS)] += stain
    return x
