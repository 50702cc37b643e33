"""Bone-marrow cell populations and leukaemia-associated immunophenotypes (LAIPs).

Every population lives in a 12-dimensional "true" space: the log10 intensity of the
ten panel markers (in standard fluorescence units, before any instrument) followed by
log10 FSC and log10 SSC. A population is a multivariate normal cloud in that space
(so log-normal in linear units) whose mean may run along a maturation segment
(``start`` -> ``end``): neutrophils, erythroid and B precursors mature continuously
rather than sitting in separate blobs. A shared "cell size" factor correlates scatter
with every marker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MARKERS",
    "DIMS",
    "Population",
    "POPULATIONS",
    "POPULATION_NAMES",
    "BLAST",
    "DEBRIS",
    "ERYTHROID",
    "DOUBLET",
    "LABEL_NAMES",
    "ABERRATIONS",
    "Laip",
    "draw_laip",
    "make_laip",
    "normal_proportions",
    "covariance",
    "LOADING",
]

#: Panel markers in the order of the pipeline (``pipelines/aml-mrd.toml``).
MARKERS: tuple[str, ...] = ("CD45", "CD34", "CD117", "CD33", "CD13", "HLA-DR", "CD7", "CD56", "CD19", "CD38")
#: Dimensions of the true space: markers, then log10 FSC-A and log10 SSC-A.
DIMS: tuple[str, ...] = MARKERS + ("FSC", "SSC")
_IDX = {name: i for i, name in enumerate(DIMS)}
_NEG = 1.7  # log10 autofluorescence of an antigen-negative cell (~50 units)

# Size-factor loadings: how much each dimension follows the cell's size.
LOADING = np.array([0.3] * len(MARKERS) + [0.7, 0.45])


@dataclass(frozen=True)
class Population:
    """A cell population: a cloud in :data:`DIMS` space along a maturation segment.

    Attributes
    ----------
    name
        Label written to the truth (``"monocyte"``, ``"blast"``, ...).
    start, end
        Mean log10 vectors at the start and end of maturation (equal when discrete).
    sd
        Per-dimension standard deviation in log10 units.
    proportion
        Share of nucleated marrow cells in a normal adult marrow (before normalising).
    """

    name: str
    start: np.ndarray
    end: np.ndarray
    sd: np.ndarray
    proportion: float

    @property
    def continuous(self) -> bool:
        """Whether the mean moves along a maturation segment."""
        return bool(np.any(self.start != self.end))


def _vec(neg: float = _NEG, **levels: float) -> np.ndarray:
    """A mean vector: ``neg`` for every marker unless given (``HLA_DR`` for HLA-DR)."""
    v = np.full(len(DIMS), neg)
    for key, value in levels.items():
        v[_IDX[key.replace("_", "-")]] = value
    return v


def _sd(marker: float = 0.2, fsc: float = 0.06, ssc: float = 0.08) -> np.ndarray:
    return np.array([marker] * len(MARKERS) + [fsc, ssc])


def _pop(name: str, proportion: float, start: np.ndarray, end: np.ndarray | None = None,
         sd: np.ndarray | None = None) -> Population:
    return Population(name, start, start if end is None else end, _sd() if sd is None else sd, proportion)


# Neutrophil maturation anchors: promyelocyte -> myelocyte -> metamyelocyte -> segmented.
_N0 = _vec(2.0, CD45=3.2, CD117=3.0, CD33=4.0, CD13=4.2, HLA_DR=2.1, CD38=3.6, FSC=4.98, SSC=5.0)
_N1 = _vec(2.0, CD45=3.3, CD117=2.0, CD33=3.5, CD13=3.0, CD38=2.8, FSC=4.95, SSC=4.98)
_N2 = _vec(2.0, CD45=3.45, CD33=3.2, CD13=3.2, CD38=2.3, FSC=4.92, SSC=4.92)
_N3 = _vec(2.0, CD45=3.65, CD33=3.2, CD13=4.0, CD38=2.0, FSC=4.9, SSC=4.88)

_NORMAL: tuple[Population, ...] = (
    _pop("t_cell", 0.10, _vec(CD45=4.3, CD7=3.8, HLA_DR=1.9, CD38=2.6, FSC=4.65, SSC=4.1)),
    _pop("b_cell", 0.03, _vec(CD45=4.2, CD19=3.7, HLA_DR=4.0, CD38=2.8, FSC=4.65, SSC=4.1)),
    _pop("nk_cell", 0.02, _vec(CD45=4.2, CD56=3.6, CD7=3.6, CD38=3.3, FSC=4.68, SSC=4.2)),
    _pop("monocyte", 0.07, _vec(1.9, CD45=4.0, CD33=4.2, CD13=3.7, HLA_DR=3.7, CD38=3.0, CD56=2.2,
                                FSC=4.95, SSC=4.7)),
    _pop("promyelocyte", 0.08, _N0, _N1),
    _pop("myelocyte", 0.20, _N1, _N2),
    _pop("neutrophil", 0.22, _N2, _N3),
    _pop("eosinophil", 0.03, _vec(2.3, CD45=4.1, CD33=2.9, CD13=3.0, CD38=2.2, FSC=4.93, SSC=5.15)),
    _pop("erythroid", 0.10,
         _vec(CD45=2.6, CD117=3.0, CD38=3.2, FSC=4.7, SSC=4.0),
         _vec(CD45=1.6, CD38=2.2, FSC=4.5, SSC=3.85)),
    _pop("myeloid_progenitor", 0.010,
         _vec(CD45=3.2, CD34=3.9, CD117=3.5, CD33=3.3, CD13=3.3, HLA_DR=3.8, CD38=3.9, CD7=1.9,
              FSC=4.75, SSC=4.3)),
    _pop("b_progenitor", 0.005,
         _vec(CD45=2.9, CD34=3.6, CD19=3.4, CD38=4.1, HLA_DR=3.9, FSC=4.6, SSC=4.0),
         _vec(CD45=3.5, CD19=3.6, CD38=3.8, HLA_DR=3.9, FSC=4.6, SSC=4.0)),
)

#: Normal blast-like progenitors with which leukaemic blasts start (CD45 dim, low SSC).
BLAST_BASE: np.ndarray = _vec(CD45=3.0, CD34=3.9, CD117=3.4, CD33=3.4, CD13=3.4, HLA_DR=3.7, CD38=3.6,
                              FSC=4.75, SSC=4.25)
_BLAST_SD = _sd(0.16, 0.05, 0.07)
_DEBRIS = _pop("debris", 0.0, _vec(1.8, CD45=2.0, FSC=3.85, SSC=3.8), sd=_sd(0.35, 0.25, 0.3))

#: All singlet populations: normal ones, then leukaemic blasts, then debris.
POPULATIONS: tuple[Population, ...] = _NORMAL + (_pop("blast", 0.0, BLAST_BASE, sd=_BLAST_SD), _DEBRIS)
POPULATION_NAMES: tuple[str, ...] = tuple(p.name for p in POPULATIONS)
BLAST: int = POPULATION_NAMES.index("blast")
DEBRIS: int = POPULATION_NAMES.index("debris")
ERYTHROID: int = POPULATION_NAMES.index("erythroid")
DOUBLET: int = len(POPULATIONS)
#: Truth labels: one per population, then ``"doublet"``.
LABEL_NAMES: tuple[str, ...] = POPULATION_NAMES + ("doublet",)
N_NORMAL: int = len(_NORMAL)
_PROGENITORS = (POPULATION_NAMES.index("myeloid_progenitor"), POPULATION_NAMES.index("b_progenitor"))


def normal_proportions(rng: np.random.Generator, *, concentration: float = 60.0,
                       regenerating: bool = False) -> np.ndarray:
    """Draw one marrow's normal population shares (sum 1, erythroid included).

    Parameters
    ----------
    rng
        Random generator.
    concentration
        Dirichlet concentration: higher means less patient-to-patient variation.
    regenerating
        Post-chemotherapy marrow: more CD34+ myeloid and B progenitors.

    Returns
    -------
    numpy.ndarray
        ``(N_NORMAL,)`` float64 shares in the order of the normal populations.
    """
    base = np.array([p.proportion for p in _NORMAL])
    share = rng.dirichlet(concentration * base / base.sum())
    if regenerating:
        share[_PROGENITORS[0]] *= rng.uniform(1.5, 3.0)
        share[_PROGENITORS[1]] *= rng.uniform(2.0, 5.0)
    return share / share.sum()


def covariance(sd: np.ndarray, loading: np.ndarray = LOADING) -> np.ndarray:
    """Covariance of a population cloud: one shared "cell size" factor plus unique noise.

    Parameters
    ----------
    sd
        Per-dimension standard deviations (log10 units).
    loading
        Correlation of each dimension with the size factor.

    Returns
    -------
    numpy.ndarray
        ``diag(sd) @ R @ diag(sd)`` with ``R = l l^T`` off the diagonal and 1 on it.
    """
    corr = np.outer(loading, loading)
    np.fill_diagonal(corr, 1.0)
    return sd[:, None] * corr * sd[None, :]


# --------------------------------------------------------------------------- LAIPs

@dataclass(frozen=True)
class _Aberration:
    name: str
    probability: float
    marker: str
    low: float  # the new log10 level is drawn uniformly in [low, high] ...
    high: float
    relative: bool = False  # ... or added to the base level when relative
    excludes: tuple[str, ...] = ()


#: The aberrations a LAIP is drawn from: name, probability, marker and effect.
ABERRATIONS: tuple[_Aberration, ...] = (
    _Aberration("CD7+", 0.35, "CD7", 3.1, 3.8),
    _Aberration("CD56+", 0.20, "CD56", 3.0, 3.7),
    _Aberration("CD19+", 0.10, "CD19", 2.9, 3.5),
    _Aberration("HLA-DR-", 0.20, "HLA-DR", 1.7, 2.1),
    _Aberration("CD13++", 0.15, "CD13", 0.5, 0.9, relative=True, excludes=("CD13-",)),
    _Aberration("CD13-", 0.15, "CD13", 1.7, 2.2, excludes=("CD13++",)),
    _Aberration("CD33++", 0.15, "CD33", 0.5, 0.9, relative=True, excludes=("CD33-",)),
    _Aberration("CD33-", 0.15, "CD33", 1.7, 2.2, excludes=("CD33++",)),
    _Aberration("CD34-CD117+", 0.20, "CD34", 1.6, 2.0, excludes=("CD34+CD117-",)),
    _Aberration("CD34+CD117-", 0.15, "CD117", 1.6, 2.0, excludes=("CD34-CD117+",)),
    _Aberration("CD38dim", 0.25, "CD38", 2.4, 2.8),
    _Aberration("CD45dim", 0.20, "CD45", 2.5, 2.75),
)
_BY_NAME = {a.name: a for a in ABERRATIONS}


@dataclass(frozen=True)
class Laip:
    """A patient's leukaemia-associated immunophenotype.

    Attributes
    ----------
    aberrations
        Names from :data:`ABERRATIONS` (e.g. ``("CD7+", "HLA-DR-")``).
    mean
        Mean log10 vector of the patient's blasts in :data:`DIMS` space.
    """

    aberrations: tuple[str, ...]
    mean: np.ndarray = field(repr=False)

    def describe(self) -> str:
        """The aberrations joined by ``";"`` (as written to ``truth.csv``)."""
        return ";".join(self.aberrations)


def make_laip(aberrations: tuple[str, ...] | list[str], rng: np.random.Generator) -> Laip:
    """Build a LAIP with the given aberrations; their strengths come from ``rng``.

    Parameters
    ----------
    aberrations
        Names from :data:`ABERRATIONS`; conflicting pairs (``"CD13++"`` with
        ``"CD13-"``) are rejected.
    rng
        Random generator for the strengths and the patient's small offsets.

    Returns
    -------
    Laip
    """
    unknown = [a for a in aberrations if a not in _BY_NAME]
    if unknown:
        raise ValueError(f"unknown aberrations {unknown}; choose from {sorted(_BY_NAME)}")
    for name in aberrations:
        clash = set(_BY_NAME[name].excludes) & set(aberrations)
        if clash:
            raise ValueError(f"aberration {name} conflicts with {sorted(clash)}")
    mean = BLAST_BASE + rng.normal(0.0, 0.08, len(DIMS))
    for name in aberrations:
        ab = _BY_NAME[name]
        level = rng.uniform(ab.low, ab.high)
        i = _IDX[ab.marker]
        mean[i] = min(BLAST_BASE[i] + level, 4.6) if ab.relative else level
    return Laip(tuple(aberrations), mean)


def draw_laip(rng: np.random.Generator, *, min_aberrations: int = 2) -> Laip:
    """Draw a random LAIP with at least ``min_aberrations`` aberrations.

    Parameters
    ----------
    rng
        Random generator.
    min_aberrations
        Redraw until the LAIP has this many aberrations (it then differs visibly from
        normal progenitors).

    Returns
    -------
    Laip
    """
    while True:
        chosen: list[str] = []
        for ab in ABERRATIONS:
            if rng.random() < ab.probability and not set(ab.excludes) & set(chosen):
                chosen.append(ab.name)
        if len(chosen) >= min_aberrations:
            return make_laip(chosen, rng)
