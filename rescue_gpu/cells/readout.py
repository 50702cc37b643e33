"""Per-sample readout of a cell classifier: leukaemic percentage, its interval, and the call.

The classifier gives each cell class probabilities ``(N, K)``. A cell is *called
leukaemic* when the summed probability of the leukaemic classes is at least 0.5. The
share ``q`` of called cells is biased by the classifier's errors: with true leukaemic
fraction ``f``, ``E[q] = f * TPR + (1 - f) * FPR``. The adjusted classify-and-count
estimate inverts this, ``f = (q - FPR) / (TPR - FPR)`` clipped to [0, 1], with TPR and
FPR of the grouped leukaemic call measured on validation patients (:class:`AccRates`).

The interval is a parametric bootstrap: ``q* ~ Binomial(N, q) / N`` (resampling cells),
and with rates also ``TPR* ~ Binomial(n_pos, TPR) / n_pos`` and ``FPR*`` likewise, so
the uncertainty of the correction itself is carried into the interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import CellDataError, ModelError
from ..nn.metrics import confusion
from .spec import CellClassesSpec, CellReadoutSpec

__all__ = [
    "AccRates", "SampleReadout", "MIN_SEPARATION", "leukaemic_probability", "class_fractions", "adjusted_count",
    "bootstrap_interval", "sample_readout", "acc_rates",
]

MIN_SEPARATION = 0.05  # TPR - FPR at or below which the adjusted count is refused


@dataclass(frozen=True)
class AccRates:
    """True and false positive rates of the grouped leukaemic call, from validation cells.

    Attributes
    ----------
    tpr, fpr
        Share of leukaemic cells called leukaemic, and of non-leukaemic cells called leukaemic.
    n_pos, n_neg
        Leukaemic and non-leukaemic validation cells the rates come from.
    """

    tpr: float
    fpr: float
    n_pos: int
    n_neg: int

    def __post_init__(self) -> None:
        try:
            ok = (0.0 <= float(self.tpr) <= 1.0 and 0.0 <= float(self.fpr) <= 1.0
                  and int(self.n_pos) >= 1 and int(self.n_neg) >= 1)
        except (TypeError, ValueError):  # None or text where a number belongs
            ok = False
        if not ok:
            raise ModelError(f"invalid classifier rates {self}: tpr and fpr must lie in [0, 1] and come from at "
                             "least one leukaemic and one non-leukaemic validation cell; retrain the model with "
                             "both groups among its validation patients, or set readout.adjust = false")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def _probs(probs: Any, n_classes: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ModelError(f"cell class probabilities must be (N, K), got shape {p.shape}")
    if n_classes is not None and p.shape[1] != n_classes:
        raise ModelError(f"the classifier gives {p.shape[1]} class probabilities per cell but the pipeline names "
                         f"{n_classes} classes; use the model trained with this pipeline")
    return p


def leukaemic_probability(probs: Any, *, leukaemic_index: Sequence[int]) -> np.ndarray:
    """Summed probability of the leukaemic classes per cell.

    Parameters
    ----------
    probs
        ``(N, K)`` class probabilities.
    leukaemic_index
        Columns of the leukaemic classes (:meth:`CellClassesSpec.leukaemic_index`).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` float64.
    """
    p = _probs(probs)
    idx = list(leukaemic_index)
    if not idx or min(idx) < 0 or max(idx) >= p.shape[1]:
        raise ModelError(f"leukaemic class columns {idx} do not fit probabilities with {p.shape[1]} classes")
    return p[:, idx].sum(axis=1)


def class_fractions(probs: Any, *, classes: Sequence[str]) -> dict[str, float]:
    """Share of cells whose most probable class is each class (sums to 1; all 0 without cells)."""
    p = _probs(probs, len(classes))
    n = p.shape[0]
    counts = np.bincount(p.argmax(axis=1), minlength=len(classes)) if n else np.zeros(len(classes))
    return {name: (float(counts[k]) / n if n else 0.0) for k, name in enumerate(classes)}


def _check_separation(tpr: float, fpr: float) -> None:
    if not tpr - fpr > MIN_SEPARATION + 1e-12:  # 0.55 - 0.5 counts as 0.05
        raise ModelError(f"the classifier's leukaemic call hardly separates leukaemic from normal cells on its "
                         f"validation patients (TPR {tpr:.3f}, FPR {fpr:.3f}; TPR - FPR must exceed "
                         f"{MIN_SEPARATION}), so the adjusted count is undefined; retrain the model or set "
                         "readout.adjust = false")


def adjusted_count(q: float | np.ndarray, *, tpr: float, fpr: float) -> float | np.ndarray:
    """Adjusted classify-and-count: ``(q - fpr) / (tpr - fpr)`` clipped to [0, 1].

    Parameters
    ----------
    q
        Share(s) of cells called leukaemic.
    tpr, fpr
        The call's true and false positive rates.

    Returns
    -------
    float or numpy.ndarray
        Same shape as ``q``.

    Raises
    ------
    ModelError
        ``tpr - fpr <= 0.05``: the classifier cannot separate the groups.
    """
    _check_separation(tpr, fpr)
    out = np.clip((np.asarray(q, dtype=np.float64) - fpr) / (tpr - fpr), 0.0, 1.0)
    return float(out) if np.ndim(out) == 0 else out


def bootstrap_interval(
    calls: Any,
    *,
    rates: AccRates | None,
    n_boot: int,
    level: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the (adjusted) leukaemic fraction.

    Cells are resampled as ``q* ~ Binomial(N, q) / N``. With ``rates``, each replicate
    also draws ``TPR* ~ Binomial(n_pos, tpr) / n_pos`` and ``FPR* ~ Binomial(n_neg, fpr) /
    n_neg`` and is adjusted with them (clipped to [0, 1]); replicates with
    ``TPR* <= FPR*`` are dropped.

    Parameters
    ----------
    calls
        ``(N,)`` booleans: cell called leukaemic.
    rates
        The call's rates, or ``None`` for an interval of the raw share ``q``.
    n_boot
        Replicates (0 gives ``(nan, nan)``).
    level
        Coverage, e.g. 0.95.
    seed
        Random seed (the interval is deterministic for a seed).

    Returns
    -------
    (low, high)
        Fractions in [0, 1].
    """
    c = np.asarray(calls, dtype=bool).ravel()
    if c.size == 0:
        raise CellDataError("no cells in the sample: a leukaemic fraction needs at least one cell")
    if n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    q = rng.binomial(c.size, c.mean(), size=n_boot) / c.size
    if rates is not None:
        tpr = rng.binomial(rates.n_pos, rates.tpr, size=n_boot) / rates.n_pos
        fpr = rng.binomial(rates.n_neg, rates.fpr, size=n_boot) / rates.n_neg
        keep = tpr > fpr
        q = np.clip((q[keep] - fpr[keep]) / (tpr[keep] - fpr[keep]), 0.0, 1.0)
    if q.size == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(q, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass
class SampleReadout:
    """One sample's readout.

    Attributes
    ----------
    n_cells
        Cells scored.
    fractions
        Share of cells whose most probable class is each class.
    q_raw
        Share of cells called leukaemic (summed leukaemic probability >= 0.5), 0-1.
    leukaemic_pct
        Leukaemic percentage (0-100): adjusted when :attr:`adjusted`, else ``100 * q_raw``.
    ci_low_pct, ci_high_pct
        Bootstrap interval of :attr:`leukaemic_pct` (``nan`` with no replicates).
    cutoff_pct
        The pipeline's cutoff.
    call
        ``"positive"`` when ``leukaemic_pct >= cutoff_pct``, else ``"negative"``.
    adjusted
        Whether the adjusted classify-and-count correction was applied.
    """

    n_cells: int
    fractions: dict[str, float]
    q_raw: float
    leukaemic_pct: float
    ci_low_pct: float
    ci_high_pct: float
    cutoff_pct: float
    call: str
    adjusted: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``nan`` becomes ``None``)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def sample_readout(
    probs: Any,
    *,
    classes: CellClassesSpec,
    readout: CellReadoutSpec,
    rates: AccRates | None,
    seed: int = 0,
) -> SampleReadout:
    """Read out one sample from its cells' class probabilities.

    Parameters
    ----------
    probs
        ``(N, K)`` probabilities, columns in the order of ``classes.names``.
    classes
        Class names and the leukaemic ones.
    readout
        Cutoff, whether to adjust, bootstrap replicates and level.
    rates
        The model's validation TPR / FPR; ``None`` (or ``readout.adjust`` false) reports
        the raw share.
    seed
        Bootstrap seed.

    Raises
    ------
    CellDataError
        No cells.
    ModelError
        Probabilities do not fit the classes, or the rates cannot separate the groups.
    """
    p = _probs(probs, len(classes.names))
    if p.shape[0] == 0:
        raise CellDataError("no cells in the sample: nothing to read out (check the sample's images)")
    calls = leukaemic_probability(p, leukaemic_index=classes.leukaemic_index()) >= 0.5
    q = float(calls.mean())
    use = rates if readout.adjust and rates is not None else None
    est = adjusted_count(q, tpr=use.tpr, fpr=use.fpr) if use is not None else q
    low, high = bootstrap_interval(calls, rates=use, n_boot=readout.n_boot, level=readout.level, seed=seed)
    pct = 100.0 * float(est)
    return SampleReadout(n_cells=int(p.shape[0]), fractions=class_fractions(p, classes=classes.names), q_raw=q,
                         leukaemic_pct=pct, ci_low_pct=100.0 * low, ci_high_pct=100.0 * high,
                         cutoff_pct=float(readout.cutoff), call="positive" if pct >= readout.cutoff else "negative",
                         adjusted=use is not None)


def acc_rates(y_true_leukaemic: Any, called_leukaemic: Any) -> AccRates:
    """TPR and FPR of the grouped leukaemic call on validation cells.

    Parameters
    ----------
    y_true_leukaemic
        ``(N,)`` booleans: the cell's true class is leukaemic.
    called_leukaemic
        ``(N,)`` booleans: the cell was called leukaemic.

    Raises
    ------
    ModelError
        No leukaemic or no non-leukaemic validation cells.
    """
    y = np.asarray(y_true_leukaemic, dtype=bool).ravel()
    c = np.asarray(called_leukaemic, dtype=bool).ravel()
    if y.shape != c.shape:
        raise ModelError(f"truth ({y.size}) and calls ({c.size}) differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ModelError(f"cannot measure the leukaemic call's TPR and FPR: the validation cells hold {n_pos} "
                         f"leukaemic and {n_neg} non-leukaemic cell(s); both groups are needed")
    counts = confusion(y, c)
    return AccRates(tpr=counts["tp"] / n_pos, fpr=counts["fp"] / n_neg, n_pos=n_pos, n_neg=n_neg)
