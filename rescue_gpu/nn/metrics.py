"""Classification metrics: binary calls (with patient-level bootstrap intervals) and multi-class labels.

Everything here is plain numpy (scikit-learn serves as the independent peer in the
tests). Conventions:

- Binary: ``y`` holds the truth as 0/1 (1 = MRD-positive), ``p`` the scores (higher = more
  likely positive); a call is positive when ``p >= threshold``.
- A metric that is undefined on the data at hand (sensitivity without positives,
  AUC with one class) is ``nan`` in arrays and ``None`` in JSON records.
- Intervals resample *patients* with replacement (all samples of a drawn patient come
  along), because samples of one patient are not independent.
- Multi-class: ``y_true`` and ``y_pred`` hold class indices ``0..K-1``; macro averages
  leave undefined entries out (as scikit-learn does with ``zero_division=np.nan``), and
  balanced accuracy is the mean recall over the classes present in the truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Interval", "confusion", "sensitivity", "specificity", "f1_score", "roc_curve", "roc_auc", "pr_auc",
    "binary_metrics", "choose_threshold", "bootstrap_intervals", "by_timepoint", "evaluate_predictions",
    "plot_roc", "TIMEPOINT_ORDER", "json_float", "safe_ratio", "confusion_matrix", "per_class_metrics", "class_indices",
]

TIMEPOINT_ORDER = ("diagnosis", "follow-up", "control", "")
_METRICS = ("sensitivity", "specificity", "f1", "roc_auc", "pr_auc")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval (``nan`` where undefined)."""

    estimate: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready: ``nan`` becomes ``None``."""
        return {"estimate": json_float(self.estimate), "low": json_float(self.low), "high": json_float(self.high)}

    def __str__(self) -> str:
        if not math.isfinite(self.estimate):
            return "n/a"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.estimate:.3f}"
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def json_float(x: float) -> float | None:
    """``x`` as a float, or None where it is not finite (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y and p must have the same length (got {y.size} and {p.size})")
    if np.any((y != 0) & (y != 1)):
        raise ValueError("y must hold 0 (negative) and 1 (positive) only")
    return y, p


def confusion(y: Any, calls: Any) -> dict[str, int]:
    """Confusion counts of binary ``calls`` against truth ``y``.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``tn``, ``fn``.
    """
    y, c = _arrays(y, calls)
    c = c.astype(bool)
    t = y.astype(bool)
    return {"tp": int(np.sum(c & t)), "fp": int(np.sum(c & ~t)), "tn": int(np.sum(~c & ~t)), "fn": int(np.sum(~c & t))}


def safe_ratio(a: float, b: float) -> float:
    """``a / b``, NaN where ``b`` is 0."""
    return a / b if b else float("nan")


def sensitivity(y: Any, calls: Any) -> float:
    """TP / (TP + FN); ``nan`` without positives."""
    c = confusion(y, calls)
    return safe_ratio(c["tp"], c["tp"] + c["fn"])


def specificity(y: Any, calls: Any) -> float:
    """TN / (TN + FP); ``nan`` without negatives."""
    c = confusion(y, calls)
    return safe_ratio(c["tn"], c["tn"] + c["fp"])


def f1_score(y: Any, calls: Any) -> float:
    """2 TP / (2 TP + FP + FN); ``nan`` when there are no positives and no positive calls."""
    c = confusion(y, calls)
    return safe_ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])


def _cumulative(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at every distinct threshold, highest threshold first."""
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ys.size - 1]  # last index of each run of equal scores
    tps = np.cumsum(ys)[last]
    fps = (last + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64), ps[last]


def roc_curve(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold ``inf``."""
    y, p = _arrays(y, p)
    tps, fps, thr = _cumulative(y, p)
    n_pos, n_neg = y.sum(), y.size - y.sum()
    tpr = np.r_[0.0, tps / n_pos if n_pos else np.full_like(tps, np.nan)]
    fpr = np.r_[0.0, fps / n_neg if n_neg else np.full_like(fps, np.nan)]
    return fpr, tpr, np.r_[np.inf, thr]


def roc_auc(y: Any, p: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); ``nan`` with one class."""
    y, p = _arrays(y, p)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ps = p[order]
    ranks = np.empty(p.size, dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(ps)) + 1]
    ends = np.r_[starts[1:], ps.size]
    mid = (starts + ends + 1) / 2.0  # average 1-based rank of each tie run
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_auc(y: Any, p: Any) -> float:
    """Average precision: sum over thresholds of (recall step) x precision; ``nan`` without positives."""
    y, p = _arrays(y, p)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    tps, fps, _ = _cumulative(y, p)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(y: Any, p: Any, *, threshold: float) -> dict[str, Any]:
    """Every metric at one threshold: confusion counts, sensitivity, specificity, F1, ROC AUC, PR AUC."""
    y, p = _arrays(y, p)
    calls = p >= threshold
    return {"n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
            "confusion": confusion(y, calls), "sensitivity": sensitivity(y, calls),
            "specificity": specificity(y, calls), "f1": f1_score(y, calls),
            "roc_auc": roc_auc(y, p), "pr_auc": pr_auc(y, p)}


def choose_threshold(y: Any, p: Any, *, target_sensitivity: float = 0.0) -> float:
    """Pick the decision threshold (calls are ``p >= threshold``).

    Parameters
    ----------
    y, p
        Truth (0/1) and scores, e.g. out-of-fold predictions.
    target_sensitivity
        0: maximise Youden's J = sensitivity + specificity - 1 (ties go to the largest
        threshold). Otherwise the largest threshold whose sensitivity reaches the target.

    Returns
    -------
    float
        One of the observed scores.
    """
    y, p = _arrays(y, p)
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("choosing a threshold needs both positive and negative samples")
    fpr, tpr, thr = roc_curve(y, p)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop the (0, 0) point at threshold inf
    if target_sensitivity > 0:
        reached = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        return float(thr[reached[0]])
    j = tpr - fpr
    best = np.flatnonzero(j >= j.max() - 1e-12)  # ties (up to rounding): the largest threshold
    return float(thr[best[0]])


def _patient_index(groups: Any) -> list[np.ndarray]:
    groups = np.asarray(groups).astype(str)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    cuts = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, cuts)


def _metric_fns(threshold: float) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    return {"sensitivity": lambda y, p: sensitivity(y, p >= threshold),
            "specificity": lambda y, p: specificity(y, p >= threshold),
            "f1": lambda y, p: f1_score(y, p >= threshold),
            "roc_auc": roc_auc, "pr_auc": pr_auc}


def bootstrap_intervals(
    y: Any, p: Any, groups: Any, *, threshold: float, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
    metrics: Sequence[str] = _METRICS,
) -> dict[str, Interval]:
    """Point estimates and patient-level percentile bootstrap intervals.

    Parameters
    ----------
    y, p
        Truth (0/1) and scores per sample.
    groups
        Patient id per sample; patients are drawn with replacement, with all their samples.
    threshold
        Decision threshold for the call-based metrics.
    n_boot
        Bootstrap replicates (replicates where a metric is undefined are skipped for it).
    seed
        Seed of the resampling.
    level
        Interval coverage, e.g. 0.95 for the 2.5th and 97.5th percentiles.
    metrics
        Which of ``sensitivity, specificity, f1, roc_auc, pr_auc``.

    Returns
    -------
    dict
        Metric name -> :class:`Interval`.
    """
    y, p = _arrays(y, p)
    fns = {k: v for k, v in _metric_fns(threshold).items() if k in metrics}
    patients = _patient_index(groups)
    rng = np.random.default_rng(seed)
    draws = {k: np.full(n_boot, np.nan) for k in fns}
    for b in range(n_boot):
        pick = rng.integers(0, len(patients), size=len(patients))
        idx = np.concatenate([patients[i] for i in pick])
        for k, fn in fns.items():
            draws[k][b] = fn(y[idx], p[idx])
    alpha = (1.0 - level) / 2.0
    out = {}
    for k, fn in fns.items():
        ok = draws[k][np.isfinite(draws[k])]
        lo, hi = (np.quantile(ok, [alpha, 1 - alpha]) if ok.size else (np.nan, np.nan))
        out[k] = Interval(fn(y, p), float(lo), float(hi))
    return out


def by_timepoint(
    y: Any, p: Any, groups: Any, timepoints: Any, *, threshold: float, n_boot: int = 1000, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Metrics per timepoint (diagnosis, follow-up, control, unspecified ``""``).

    A group without positives (controls) gets specificity only; one without negatives
    (diagnosis) sensitivity only; AUCs need both classes. Undefined entries are ``None``.
    """
    y, p = _arrays(y, p)
    groups = np.asarray(groups).astype(str)
    tps = np.asarray(timepoints).astype(str)
    out: dict[str, dict[str, Any]] = {}
    for tp in [t for t in TIMEPOINT_ORDER if t in set(tps)] + sorted(set(tps) - set(TIMEPOINT_ORDER)):
        m = tps == tp
        yy, pp = y[m], p[m]
        iv = bootstrap_intervals(yy, pp, groups[m], threshold=threshold, n_boot=n_boot, seed=seed)
        row: dict[str, Any] = {"n": int(m.sum()), "n_positive": int(yy.sum()), "n_negative": int((1 - yy).sum()),
                               "confusion": confusion(yy, pp >= threshold)}
        row.update({k: (v.as_dict() if math.isfinite(v.estimate) else None) for k, v in iv.items()})
        out[tp or "unspecified"] = row
    return out


def evaluate_predictions(
    y: Any, p: Any, *, threshold: float, groups: Any = None, timepoints: Any = None,
    n_boot: int = 1000, seed: int = 0,
) -> dict[str, Any]:
    """The full JSON-ready report: pooled metrics with intervals, confusion, per-timepoint table.

    ``groups`` defaults to one patient per sample; ``timepoints`` to unspecified.
    """
    y, p = _arrays(y, p)
    groups = np.arange(y.size).astype(str) if groups is None else np.asarray(groups).astype(str)
    timepoints = np.full(y.size, "") if timepoints is None else np.asarray(timepoints).astype(str)
    iv = bootstrap_intervals(y, p, groups, threshold=threshold, n_boot=n_boot, seed=seed)
    return {
        "n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
        "n_patients": int(np.unique(groups).size), "threshold": float(threshold),
        "confusion": confusion(y, p >= threshold),
        "metrics": {k: v.as_dict() for k, v in iv.items()},
        "by_timepoint": by_timepoint(y, p, groups, timepoints, threshold=threshold, n_boot=n_boot, seed=seed),
        "bootstrap": {"unit": "patient", "replicates": int(n_boot), "level": 0.95, "seed": int(seed)},
    }


def plot_roc(y: Any, p: Any, path: str | Path, *, threshold: float | None = None, title: str = "ROC") -> Path:
    """Write the ROC curve as a PNG (matplotlib, Agg backend), marking the operating point."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    try:
        ax.plot(fpr, tpr, lw=1.8, label=f"AUC = {roc_auc(y, p):.3f}")
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        if threshold is not None:
            yy, pp = _arrays(y, p)
            ax.plot(1 - specificity(yy, pp >= threshold), sensitivity(yy, pp >= threshold), "o",
                    color="crimson", label=f"threshold {threshold:.3g}")
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out


# --------------------------------------------------------------------------- multi-class

def class_indices(y: Any, k: int, name: str) -> np.ndarray:
    """``y`` as int64 class indices, checked to lie in ``0..k-1`` (``name`` in the ValueError)."""
    y = np.asarray(y).ravel()
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k):
        raise ValueError(f"{name} must hold class indices 0..{k - 1}")
    return y.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, *, n_classes: int) -> np.ndarray:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    t, p = class_indices(y_true, n_classes, "y_true"), class_indices(y_pred, n_classes, "y_pred")
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
    precision = np.array([safe_ratio(a, b) for a, b in zip(tp, predicted)])
    recall = np.array([safe_ratio(a, b) for a, b in zip(tp, support)])
    f1 = np.array([safe_ratio(2 * a, b + c) for a, b, c in zip(tp, support, predicted)])
    per_class = {name: {"precision": json_float(precision[i]), "recall": json_float(recall[i]), "f1": json_float(f1[i]),
                        "support": int(support[i])} for i, name in enumerate(classes)}
    n = cm.sum()
    return {"n": int(n), "classes": list(classes), "per_class": per_class,
            "accuracy": json_float(safe_ratio(tp.sum(), n)), "balanced_accuracy": json_float(_nanmean(recall)),
            "macro_f1": json_float(_nanmean(f1)), "confusion": cm.astype(np.int64).tolist()}


def _nanmean(a: np.ndarray) -> float:
    ok = a[np.isfinite(a)]
    return float(ok.mean()) if ok.size else float("nan")
