"""Metrics of the grouped leukaemic call of a cell classifier (the cells-specific part).

The cells are called leukaemic when the summed probabilities of the leukaemic classes
reach 0.5; :func:`grouped_binary_metrics` measures that call against the truth and
:func:`grouped_rates` keeps the rates the adjusted classify-and-count needs. Per-class
metrics and the confusion matrix are generic: :mod:`rescue_gpu.nn.metrics`. A metric
undefined on the data at hand is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..nn.metrics import class_indices, confusion, json_float, roc_auc, safe_ratio

__all__ = ["grouped_binary_metrics", "grouped_rates"]


def grouped_binary_metrics(y_true: Any, probs: Any, *, leukaemic_index: Sequence[int],
                           threshold: float = 0.5) -> dict[str, Any]:
    """The grouped call "leukaemic vs rest": leukaemic when the summed leukaemic probability >= ``threshold``.

    Parameters
    ----------
    y_true
        Class indices per cell.
    probs
        ``(N, K)`` class probabilities.
    leukaemic_index
        Positions of the leukaemic classes.
    threshold
        Decision threshold on the summed leukaemic probability.

    Returns
    -------
    dict
        ``n``, ``n_positive``, ``n_negative``, ``threshold``, ``tp``, ``fp``, ``tn``,
        ``fn``, ``sensitivity``, ``specificity`` and ``roc_auc`` (of the summed
        probability); undefined values are ``None``.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {p.shape}")
    y = np.isin(class_indices(y_true, p.shape[1], "y_true"), np.asarray(leukaemic_index, dtype=np.int64)).astype(np.int64)
    if y.size != p.shape[0]:
        raise ValueError(f"y_true and probs must have the same length (got {y.size} and {p.shape[0]})")
    score = p[:, list(leukaemic_index)].sum(axis=1)
    c = confusion(y, score >= threshold)
    return {"n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
            "threshold": float(threshold), **c,
            "sensitivity": json_float(safe_ratio(c["tp"], c["tp"] + c["fn"])),
            "specificity": json_float(safe_ratio(c["tn"], c["tn"] + c["fp"])), "roc_auc": json_float(roc_auc(y, score))}


def grouped_rates(grouped: dict[str, Any]) -> dict[str, Any]:
    """``tpr``, ``fpr``, ``n_pos``, ``n_neg`` of a :func:`grouped_binary_metrics` result (for adjusted counting)."""
    spec = grouped["specificity"]
    return {"tpr": grouped["sensitivity"], "fpr": None if spec is None else 1.0 - spec,
            "n_pos": grouped["n_positive"], "n_neg": grouped["n_negative"]}
