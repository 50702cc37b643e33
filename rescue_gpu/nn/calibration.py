"""Temperature scaling: ``p = sigmoid(logit / T)`` for one logit, ``softmax(logits / T)`` for K classes.

``T`` is fitted on held-out logits (out-of-fold, or the validation part) by minimising
the negative log-likelihood over ``log T`` (a bounded 1-D search,
:func:`scipy.optimize.minimize_scalar`). ``T > 1`` softens over-confident logits,
``T < 1`` sharpens them; the ranking (and so ROC AUC) is unchanged.

:func:`site_threshold` re-sets a model's decision threshold at a new site from that site's
own normal samples (a Neyman-Pearson rule: the lowest threshold that calls at most a given
share of them positive), as ELN asks each laboratory to establish its own normal range.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["nll", "multiclass_nll", "fit_temperature", "apply_temperature", "site_threshold"]


def nll(logits: Any, y: Any, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood of ``sigmoid(logits / temperature)`` (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64).ravel() / float(temperature)
    t = np.asarray(y, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def multiclass_nll(logits: Any, y: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / temperature)`` for ``(N, K)`` logits and class indices."""
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = np.asarray(y, dtype=np.int64)
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(y.size), y]))


def fit_temperature(logits: Any, y: Any, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Fit the temperature ``T > 0`` minimising the NLL of the calibrated probabilities.

    Parameters
    ----------
    logits
        Held-out logits: ``(N,)`` (one per sample; ``sigmoid``) or ``(N, K)`` with
        ``K >= 2`` (``softmax``).
    y
        Truth: 0/1 for ``(N,)`` logits, class indices ``0..K-1`` for ``(N, K)``.
    bounds
        Search interval for ``T``.

    Returns
    -------
    float
        The fitted temperature (1.0 when the logits carry no information to fit on:
        no samples, one class only, or all logits zero).

    Raises
    ------
    ValueError
        Logits and truth of different lengths.
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    multiclass = z.ndim == 2
    z = z if multiclass else z.ravel()
    t = np.asarray(y, dtype=np.int64 if multiclass else np.float64).ravel()
    if z.shape[0] != t.shape[0]:
        raise ValueError(f"logits and y must have the same length (got {z.shape[0]} and {t.size})")
    if z.shape[0] == 0 or np.unique(t).size < 2 or not np.any(z):
        return 1.0
    loss = multiclass_nll if multiclass else nll
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda s: loss(z, t, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def site_threshold(p_normals: Any, max_positive_rate: float = 0.05) -> float:
    """The lowest threshold at which at most ``max_positive_rate`` of a site's normals are called positive.

    A sample is called positive when ``p >= threshold``. With ``n`` normals at most
    ``floor(max_positive_rate * n)`` of them may be at or above the returned threshold, so
    with fewer than ``1 / max_positive_rate`` normals the threshold lies just above the
    highest normal (none of them positive).

    Parameters
    ----------
    p_normals
        The model's calibrated probabilities (or any score where higher means positive) on
        the site's MRD-negative samples (controls, MRD-negative follow-ups), ``(N,)``.
    max_positive_rate
        Share of the site's normals allowed to be called positive, in ``[0, 1)``.

    Returns
    -------
    float
        The threshold (the next float above the ``(n - m)``-th smallest normal score).

    Raises
    ------
    ValueError
        No normals, a non-finite score, or a rate outside ``[0, 1)``.
    """
    p = np.sort(np.asarray(p_normals, dtype=np.float64).ravel())
    if p.size == 0:
        raise ValueError("site_threshold needs the scores of at least one normal sample of the site")
    if not np.isfinite(p).all():
        raise ValueError(f"site_threshold: {int((~np.isfinite(p)).sum())} normal scores are not finite "
                         "(failed samples?); leave them out")
    if not 0.0 <= float(max_positive_rate) < 1.0:
        raise ValueError(f"max_positive_rate must be in [0, 1) (got {max_positive_rate})")
    allowed = int(math.floor(float(max_positive_rate) * p.size + 1e-9))
    return float(np.nextafter(p[p.size - allowed - 1], np.inf))
