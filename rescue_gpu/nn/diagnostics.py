"""Warnings about a training run whose cross-validation cannot be trusted much.

:func:`small_cohort_warnings`: a fold whose validation part holds fewer than
``min_patients_per_class_per_fold`` distinct patients of a class measures its metrics,
and picks the early-stopping epoch, on too few independent units.
:func:`unstable_curve_warnings`: a fold whose validation curve (AUC by default) falls
far from its best, or drops below chance after being above it, learned something that
does not hold on held-out patients (overfitting, or a learning rate too high).

Both return plain messages, each saying what to do; the training commands print them
as ``warning: ...`` lines and store them in the record's provenance (``warnings``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["small_cohort_warnings", "unstable_curve_warnings"]

_CLASS_NAMES = {0: "negative", 1: "positive"}


def _class_name(c: Any) -> str:
    """``negative`` / ``positive`` for 0 / 1, else the label itself."""
    try:
        return _CLASS_NAMES.get(int(c), str(c))
    except (TypeError, ValueError):
        return str(c)


def _patients_per_class(labels: np.ndarray, groups: np.ndarray, index: np.ndarray) -> dict[Any, int]:
    """Distinct patients per class among the samples ``index`` (a patient with both classes counts for both)."""
    y, g = labels[index], groups[index]
    return {c: int(np.unique(g[y == c]).size) for c in np.unique(labels).tolist()}


def small_cohort_warnings(*, labels: Sequence[Any] | np.ndarray, groups: Sequence[Any] | np.ndarray,
                          folds: Sequence[tuple[np.ndarray, np.ndarray]],
                          min_patients_per_class_per_fold: int = 20) -> list[str]:
    """One message per fold whose validation part has fewer than the minimum patients of a class.

    Parameters
    ----------
    labels
        Class of each sample (e.g. 0/1).
    groups
        Patient of each sample (the unit of the folds).
    folds
        ``(train_index, val_index)`` per fold, indices into ``labels``.
    min_patients_per_class_per_fold
        Distinct patients of every class a fold's validation part should hold.

    Returns
    -------
    list of str
        Empty when every fold has enough patients of every class.
    """
    y, g = np.asarray(labels), np.asarray(groups).astype(str)
    out = []
    for k, (_, val) in enumerate(folds):
        counts = _patients_per_class(y, g, np.asarray(val, dtype=np.int64))
        short = {c: n for c, n in counts.items() if n < min_patients_per_class_per_fold}
        if not short:
            continue
        have = ", ".join(f"{n} {_class_name(c)}" for c, n in short.items())
        out.append(f"fold {k}: its validation part has {have} patient(s), fewer than "
                   f"{min_patients_per_class_per_fold} per class; its metrics, early stopping and the threshold "
                   f"chosen on the out-of-fold predictions rest on few patients and are noisy. Add patients, use "
                   f"fewer folds (--folds), and read the cross-validation metrics as rough estimates "
                   f"(check their bootstrap intervals)")
    return out


def _finite(values: Sequence[Any]) -> list[float]:
    """The finite numbers of a curve (None and NaN, e.g. an AUC of a one-class part, left out)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _curve_problem(values: list[float], *, drop: float) -> str:
    """What is wrong with one curve ('' when nothing is)."""
    best, was_above = -math.inf, False
    for epoch, v in enumerate(values, start=1):
        if best - v > drop:
            return f"falls from its best {best:.3f} to {v:.3f} (by more than {drop:g}) at epoch {epoch}"
        if was_above and v < 0.5:
            return f"goes below 0.5 ({v:.3f}) at epoch {epoch} after being above it"
        best, was_above = max(best, v), was_above or v > 0.5
    return ""


def unstable_curve_warnings(histories: Sequence[Sequence[float]], *, name: str = "validation AUC",
                            drop: float = 0.3) -> list[str]:
    """One message per fold whose curve falls by more than ``drop`` from its best or sinks below 0.5.

    Parameters
    ----------
    histories
        The curve of each fold (one value per epoch; None / NaN values are skipped).
    name
        What the curve is, for the messages.
    drop
        Largest fall from the best value so far that is not flagged.

    Returns
    -------
    list of str
        Empty when every curve is stable.
    """
    out = []
    for k, values in enumerate(histories):
        problem = _curve_problem(_finite(values), drop=drop)
        if problem:
            out.append(f"fold {k}: {name} {problem}; the fold overfits or trains unstably. Lower the learning "
                       f"rate, lower patience or max_epochs, add augmentation or patients, and check this fold's "
                       f"history in model.json (provenance fold_results)")
    return out
