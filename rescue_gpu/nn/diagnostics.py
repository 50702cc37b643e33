"""Warnings about a training run whose cross-validation cannot be trusted much.

:func:`small_cohort_warnings`: a fold whose validation part holds fewer than
``min_patients_per_class_per_fold`` distinct patients of a class measures its metrics,
and picks the early-stopping epoch, on too few independent units.
:func:`unstable_curve_warnings`: a fold whose validation curve (AUC by default) falls
far from its best, or drops below chance after being above it, learned something that
does not hold on held-out patients (overfitting, or a learning rate too high).
:func:`worse_than_guessing_warnings`: an epoch whose validation loss is above the loss of
a uniform guess (``ln K`` for a K-class cross-entropy, class-weighted or not) while its
training loss is below it: the network does worse than guessing on patients it did not
train on while fitting the training patients (a training/evaluation mismatch such as
stale BatchNorm statistics, or strong overfitting).

All three return plain messages, each saying what to do; the training commands print them
as ``warning: ...`` lines and store them in the record's provenance (``warnings``). The
flow assay passes its cross-validation folds and validation-AUC curves; the cell assay
its single validation split (``parts=["validation split"]``), its validation-accuracy
curve with ``chance = 1 / n_classes`` and its own advice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["small_cohort_warnings", "unstable_curve_warnings", "worse_than_guessing_warnings"]

_CLASS_NAMES = {0: "negative", 1: "positive"}
_COHORT_ADVICE = ("its metrics, early stopping and the threshold chosen on the out-of-fold predictions rest on few "
                  "patients and are noisy. Add patients, use fewer folds (--folds), and read the cross-validation "
                  "metrics as rough estimates (check their bootstrap intervals)")
_CURVE_ADVICE = ("Lower the learning rate, lower patience or max_epochs, add augmentation or patients, and check "
                 "this fold's history in model.json (provenance fold_results)")


def _class_name(c: Any) -> str:
    """``negative`` / ``positive`` for 0 / 1, else the label itself."""
    try:
        return _CLASS_NAMES.get(int(c), str(c))
    except (TypeError, ValueError):
        return str(c)


def _part_names(parts: Sequence[str] | None, n: int) -> list[str]:
    """What each fold / split is called in the messages (``fold k`` unless given)."""
    names = [f"fold {k}" for k in range(n)] if parts is None else [str(p) for p in parts]
    if len(names) != n:
        raise ValueError(f"{len(names)} part names for {n} folds / curves")
    return names


def _patients_per_class(labels: np.ndarray, groups: np.ndarray, index: np.ndarray) -> dict[Any, int]:
    """Distinct patients per class among the samples ``index`` (a patient with both classes counts for both)."""
    y, g = labels[index], groups[index]
    return {c: int(np.unique(g[y == c]).size) for c in np.unique(labels).tolist()}


def small_cohort_warnings(*, labels: Sequence[Any] | np.ndarray, groups: Sequence[Any] | np.ndarray,
                          folds: Sequence[tuple[np.ndarray, np.ndarray]],
                          min_patients_per_class_per_fold: int = 20, parts: Sequence[str] | None = None,
                          advice: str = _COHORT_ADVICE) -> list[str]:
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
    parts
        Name of each fold in the messages (default ``fold 0``, ``fold 1``, ...).
    advice
        The rest of each message, after "fewer than N per class; ": what it means and
        what to do (default: the flow CLI's).

    Returns
    -------
    list of str
        Empty when every fold has enough patients of every class.
    """
    y, g = np.asarray(labels), np.asarray(groups).astype(str)
    names = _part_names(parts, len(folds))
    out = []
    for k, (_, val) in enumerate(folds):
        counts = _patients_per_class(y, g, np.asarray(val, dtype=np.int64))
        short = {c: n for c, n in counts.items() if n < min_patients_per_class_per_fold}
        if not short:
            continue
        have = ", ".join(f"{n} {_class_name(c)}" for c, n in short.items())
        out.append(f"{names[k]}: its validation part has {have} patient(s), fewer than "
                   f"{min_patients_per_class_per_fold} per class; {advice}")
    return out


def _finite(values: Sequence[Any]) -> list[float]:
    """The finite numbers of a curve (None and NaN, e.g. an AUC of a one-class part, left out)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _curve_problem(values: list[float], *, drop: float, chance: float = 0.5) -> str:
    """What is wrong with one curve ('' when nothing is)."""
    best, was_above = -math.inf, False
    for epoch, v in enumerate(values, start=1):
        if best - v > drop:
            return f"falls from its best {best:.3f} to {v:.3f} (by more than {drop:g}) at epoch {epoch}"
        if was_above and v < chance:
            return f"goes below {chance:.3g} ({v:.3f}) at epoch {epoch} after being above it"
        best, was_above = max(best, v), was_above or v > chance
    return ""


def unstable_curve_warnings(histories: Sequence[Sequence[float]], *, name: str = "validation AUC",
                            drop: float = 0.3, chance: float = 0.5, parts: Sequence[str] | None = None,
                            advice: str = _CURVE_ADVICE) -> list[str]:
    """One message per fold whose curve falls by more than ``drop`` from its best or sinks below ``chance``.

    Parameters
    ----------
    histories
        The curve of each fold (one value per epoch; None / NaN values are skipped).
    name
        What the curve is, for the messages.
    drop
        Largest fall from the best value so far that is not flagged.
    chance
        The curve's chance level (0.5 for an AUC; e.g. ``1 / n_classes`` for an accuracy):
        sinking below it after having been above it is flagged.
    parts
        Name of each curve's fold in the messages (default ``fold 0``, ``fold 1``, ...).
    advice
        The last sentence of each message: what to do (default: the flow CLI's).

    Returns
    -------
    list of str
        Empty when every curve is stable.
    """
    names = _part_names(parts, len(histories))
    out = []
    for k, values in enumerate(histories):
        problem = _curve_problem(_finite(values), drop=drop, chance=chance)
        if problem:
            out.append(f"{names[k]}: {name} {problem}; the {'fold' if parts is None else 'model'} overfits or "
                       f"trains unstably. {advice}")
    return out


def worse_than_guessing_warnings(val_losses: Sequence[Sequence[float]], train_losses: Sequence[Sequence[float]], *,
                                 guess_loss: float, parts: Sequence[str] | None = None,
                                 advice: str = _CURVE_ADVICE) -> list[str]:
    """One message per fold with an epoch whose validation loss is above ``guess_loss`` while its training loss is below.

    Parameters
    ----------
    val_losses, train_losses
        Per fold, the validation and training loss of each epoch (same lengths; None / NaN
        epochs are skipped).
    guess_loss
        The loss of a uniform guess (``math.log(K)`` for a K-class cross-entropy).
    parts
        Name of each fold in the messages (default ``fold 0``, ``fold 1``, ...).
    advice
        The last sentence of each message: what to do.

    Returns
    -------
    list of str
        Empty when no epoch of any fold does worse than guessing on validation while
        fitting its training data.
    """
    if len(val_losses) != len(train_losses):
        raise ValueError(f"{len(val_losses)} validation curves but {len(train_losses)} training curves")
    names = _part_names(parts, len(val_losses))
    out = []
    for k, (val, train) in enumerate(zip(val_losses, train_losses)):
        if len(val) != len(train):
            raise ValueError(f"{names[k]}: {len(val)} validation but {len(train)} training losses")
        for epoch, (v, t) in enumerate(zip(val, train), start=1):
            if len(_finite([v, t])) < 2:
                continue
            if float(v) > guess_loss > float(t):
                out.append(f"{names[k]}: validation loss {float(v):.3f} at epoch {epoch} is above the loss of a "
                           f"uniform guess ({guess_loss:.3f}) while the training loss is {float(t):.3f}, below it: "
                           f"the network does worse than guessing on patients it did not train on (a training/"
                           f"evaluation mismatch such as stale BatchNorm statistics, or strong overfitting). "
                           f"{advice}")
                break
    return out
