"""Patient-level splits: a patient's samples or cells are never on both sides of a split.

:func:`patient_folds` gives stratified, grouped k-fold cross-validation (the flow MRD
model: one image per sample, several samples per patient); :func:`split_patients`
gives one train / validation / test split by patient that spreads the patients of each
majority class over the parts (the cell classifier: many cells per patient).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import CellDataError, ConfigError

__all__ = ["patient_folds", "split_patients"]


def patient_folds(y: np.ndarray, groups: np.ndarray, *, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold over samples, grouped by patient (sklearn ``StratifiedGroupKFold``).

    Raises
    ------
    ConfigError
        Fewer patients than folds.
    AssertionError
        A patient lands on both sides of a split (never expected; checked anyway).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(groups).astype(str)
    n_patients = np.unique(groups).size
    if n_patients < folds:
        raise ConfigError(f"{folds}-fold cross-validation needs at least {folds} patients (have {n_patients}); use fewer --folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
        for tr, va in splitter.split(np.zeros(len(y)), np.asarray(y), groups):
            shared = set(groups[tr]) & set(groups[va])
            if shared:
                raise AssertionError(f"patient-level split leaked patients {sorted(shared)[:5]} into both sides")
            out.append((tr, va))
    return out


def _majority_class(labels: np.ndarray, inverse: np.ndarray, n_patients: int) -> np.ndarray:
    counts = np.zeros((n_patients, int(labels.max()) + 1 if labels.size else 1), dtype=np.int64)
    np.add.at(counts, (inverse, labels), 1)
    return counts.argmax(axis=1)


def _interleaved(majority: np.ndarray, seed: int) -> tuple[list[int], int]:
    """Patients in round-robin order over their majority class (shuffled within a class); also the class count."""
    perm = np.random.default_rng(seed).permutation(majority.size)
    classes, sizes = np.unique(majority, return_counts=True)
    queues = [list(perm[majority[perm] == c]) for c in classes[np.argsort(-sizes, kind="stable")]]
    order: list[int] = []
    while any(queues):
        order += [q.pop(0) for q in queues if q]
    return order, len(queues)


def _part_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val = max(1, int(math.floor(val_fraction * n + 0.5)))
    n_test = max(1, int(math.floor(test_fraction * n + 0.5))) if test_fraction > 0 else 0
    while n_val + n_test > n - 1:
        if n_test > 1 and n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def split_patients(labels: np.ndarray, patients: np.ndarray, *, val_fraction: float, test_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split cells into train / validation / test by patient.

    Patients are ordered round-robin over their majority class (shuffled with ``seed``
    within a class); the first patient of each majority class goes to training, then
    test and validation take the next ``round(fraction x patients)`` (at least one
    each; none for test when ``test_fraction`` is 0) and the rest go to training.

    Parameters
    ----------
    labels
        Class index per cell.
    patients
        Patient id per cell.
    val_fraction, test_fraction
        Fractions of patients for validation and test.
    seed
        Seed of the shuffle (the split is deterministic for a seed).

    Returns
    -------
    tuple of numpy.ndarray
        Sorted cell indices of the train, validation and test parts.

    Raises
    ------
    CellDataError
        Too few patients (3 needed, 2 with ``test_fraction = 0``), or labels and
        patients of different lengths.
    ConfigError
        Fractions out of range.
    """
    labels, patients = np.asarray(labels).ravel().astype(np.int64), np.asarray(patients).astype(str).ravel()
    if labels.shape != patients.shape:
        raise CellDataError(f"labels and patients need one entry per cell (got {labels.size} and {patients.size})")
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("need 0 < val_fraction, 0 <= test_fraction and val_fraction + test_fraction < 1 "
                          f"(got {val_fraction}, {test_fraction})")
    names, inverse = np.unique(patients, return_inverse=True)
    need = 3 if test_fraction > 0 else 2
    if names.size < need:
        raise CellDataError(f"a patient-level train/validation{'/test' if need == 3 else ''} split needs at least "
                            f"{need} patients; there are {names.size} ({list(names[:5])}). Add patients"
                            + (" or set train.test_fraction = 0" if need == 3 else ""))
    order, n_groups = _interleaved(_majority_class(labels, inverse, names.size), seed)
    n_val, n_test = _part_sizes(names.size, val_fraction, test_fraction)
    reserve = min(n_groups, names.size - n_val - n_test)
    rest = order[reserve:]
    part = np.zeros(names.size, dtype=np.int64)
    part[rest[:n_test]] = 2
    part[rest[n_test:n_test + n_val]] = 1
    cell_part = part[inverse]
    return tuple(np.flatnonzero(cell_part == k) for k in range(3))  # type: ignore[return-value]
