"""Temperature scaling: ``p = sigmoid(logit / T)`` for one logit, ``softmax(logits / T)`` for K classes.

``T`` is fitted on held-out logits (out-of-fold, or the validation part) by minimising
the negative log-likelihood over ``log T`` (a bounded 1-D search,
:func:`scipy.optimize.minimize_scalar`). ``T > 1`` softens over-confident logits,
``T < 1`` sharpens them; the ranking (and so ROC AUC) is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["nll", "multiclass_nll", "fit_temperature", "apply_temperature"]


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
