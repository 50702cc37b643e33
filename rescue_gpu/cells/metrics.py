"""Metrics of a multi-class cell classifier: per class, and of the grouped leukaemic call.

Plain numpy (scikit-learn is the independent peer in the tests). Conventions follow
:mod:`rescue_gpu.model.metrics`: a metric undefined on the data at hand (precision of a
class never predicted, recall of a class absent from the truth, AUC with one group) is
``None`` in these JSON-ready dicts, and macro averages leave undefined entries out (as
scikit-learn does with ``zero_division=np.nan``). Balanced accuracy is the mean recall
over the classes present in the truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..model.metrics import confusion, roc_auc

__all__ = ["confusion_matrix", "per_class_metrics", "grouped_binary_metrics", "grouped_rates"]


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _labels(y: Any, k: int, name: str) -> np.ndarray:
    y = np.asarray(y).ravel()
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise ValueError(f"{name} must hold class indices 0..{k - 1}")
    return y.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, *, n_classes: int) -> np.ndarray:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    t, p = _labels(y_true, n_classes, "y_true"), _labels(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length (got {t.size} and {p.size})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_metrics(y_true: Any, y_pred: Any, *, classes: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, plus accuracy, balanced accuracy and macro F1.

    Parameters
    ----------
    y_true, y_pred
        Class indices ``0..K-1`` per cell.
    classes
        The ``K`` class names, in index order.

    Returns
    -------
    dict
        ``n``, ``classes``, ``per_class`` (name -> ``precision``, ``recall``, ``f1``,
        ``support``), ``accuracy``, ``balanced_accuracy``, ``macro_f1`` and
        ``confusion`` (``K x K`` nested list, rows = truth). Undefined values are ``None``.
    """
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, n_classes=k).astype(np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    precision = np.array([_ratio(a, b) for a, b in zip(tp, predicted)])
    recall = np.array([_ratio(a, b) for a, b in zip(tp, support)])
    f1 = np.array([_ratio(2 * a, b + c) for a, b, c in zip(tp, support, predicted)])
    per_class = {name: {"precision": _num(precision[i]), "recall": _num(recall[i]), "f1": _num(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(classes)}
    n = cm.sum()
    return {"n": int(n), "classes": list(classes), "per_class": per_class,
            "accuracy": _num(_ratio(tp.sum(), n)), "balanced_accuracy": _num(_nanmean(recall)),
            "macro_f1": _num(_nanmean(f1)), "confusion": cm.astype(np.int64).tolist()}


def _nanmean(a: np.ndarray) -> float:
    ok = a[np.isfinite(a)]
    return float(ok.mean()) if ok.size else float("nan")


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
    y = np.isin(_labels(y_true, p.shape[1], "y_true"), np.asarray(leukaemic_index, dtype=np.int64)).astype(np.int64)
    if y.size != p.shape[0]:
        raise ValueError(f"y_true and probs must have the same length (got {y.size} and {p.shape[0]})")
    score = p[:, list(leukaemic_index)].sum(axis=1)
    c = confusion(y, score >= threshold)
    return {"n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
            "threshold": float(threshold), **c,
            "sensitivity": _num(_ratio(c["tp"], c["tp"] + c["fn"])),
            "specificity": _num(_ratio(c["tn"], c["tn"] + c["fp"])), "roc_auc": _num(roc_auc(y, score))}


def grouped_rates(grouped: dict[str, Any]) -> dict[str, Any]:
    """``tpr``, ``fpr``, ``n_pos``, ``n_neg`` of a :func:`grouped_binary_metrics` result (for adjusted counting)."""
    spec = grouped["specificity"]
    return {"tpr": grouped["sensitivity"], "fpr": None if spec is None else 1.0 - spec,
            "n_pos": grouped["n_positive"], "n_neg": grouped["n_negative"]}
