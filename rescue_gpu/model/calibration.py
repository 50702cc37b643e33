"""Temperature scaling of MRD logits: ``p = sigmoid(logit / T)``.

``T`` is fitted on out-of-fold logits by minimising the binary negative
log-likelihood over ``log T`` (a bounded 1-D search, :func:`scipy.optimize.minimize_scalar`).
``T > 1`` softens over-confident logits, ``T < 1`` sharpens them; the ranking (and so
ROC AUC) is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["nll", "fit_temperature", "apply_temperature"]


def nll(logits: Any, y: Any, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood of ``sigmoid(logits / temperature)`` (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64).ravel() / float(temperature)
    t = np.asarray(y, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_temperature(logits: Any, y: Any, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Fit the temperature ``T > 0`` minimising the NLL of ``sigmoid(logits / T)``.

    Parameters
    ----------
    logits
        Out-of-fold logits, one per sample.
    y
        Truth, 0/1.
    bounds
        Search interval for ``T``.

    Returns
    -------
    float
        The fitted temperature (1.0 when the logits carry no information to fit on:
        one class only, or all logits zero).
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64).ravel()
    t = np.asarray(y, dtype=np.float64).ravel()
    if z.shape != t.shape:
        raise ValueError(f"logits and y must have the same length (got {z.size} and {t.size})")
    if z.size == 0 or t.min() == t.max() or not np.any(z):
        return 1.0
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda s: nll(z, t, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))
