"""Public drawing API: :func:`simulate_cells` (a batch of cells of given classes) and :func:`draw_labels`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError
from .tables import _IFC_CROP, _LEUKAEMIC, _PROPORTIONS, _SMEAR_SIZE, assay_classes
from .styles import PatientStyle, _typical_style
from .ifc import _ifc_batch
from .smear import _smear_batch


def _check_labels(labels: Sequence[str], assay: str) -> np.ndarray:
    names = np.asarray(list(labels), dtype=str)
    valid = assay_classes(assay)
    bad = sorted(set(names.tolist()) - set(valid))
    if bad:
        raise ConfigError(f"unknown {assay} cell class(es) {bad}; valid classes are {', '.join(valid)}")
    return names


def _check_style(style: PatientStyle | None, assay: str) -> PatientStyle:
    if style is None:
        return _typical_style(assay)
    if not isinstance(style, PatientStyle) or style.assay != assay:
        got = style.assay if isinstance(style, PatientStyle) else type(style).__name__
        raise ConfigError(f"style is for {got!r}, not {assay!r}; draw one with patient_style({assay!r}, seed=...)")
    return style


def _check_size(size: int | None) -> int | None:
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 16):
        raise ConfigError(f"size must be None or a whole number of pixels >= 16 (got {size!r})")
    return None if size is None else int(size)


def _batch_size(assay: str, size: int | None) -> int:
    side = size or (_IFC_CROP[1] if assay == "ifc" else _SMEAR_SIZE)
    return int(np.clip(1_000_000 // (side * side), 4, 256))


def simulate_cells(labels: Sequence[str], *, assay: str, style: PatientStyle | None = None,
                   size: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Render one cell image per label.

    Parameters
    ----------
    labels
        Class names of the cells, from :func:`assay_classes`.
    assay
        ``"ifc"`` (2 planes Ch1, Ch6, uint16 12-bit) or ``"smear"`` (RGB uint8).
    style
        The patient's :class:`PatientStyle` (:func:`patient_style`); ``None``: a typical patient.
    size
        Side of every crop in pixels (>= 16). ``None``: ifc crops are sized to the
        object (36-64 px, not square, differing per cell), smear crops are 224 px.
    seed
        Seed of the cells. Cells of one class depend only on the seed and on how many
        cells of that class come before them.

    Returns
    -------
    list of numpy.ndarray
        One ``(C, h, w)`` array per label, in order.

    Raises
    ------
    ConfigError
        Unknown assay or class, a style of another assay, a bad size.
    """
    names = _check_labels(labels, assay)
    style, size = _check_style(style, assay), _check_size(size)
    render, batch = (_ifc_batch if assay == "ifc" else _smear_batch), _batch_size(assay, size)
    out: list[np.ndarray] = [np.empty(0)] * names.size
    classes = assay_classes(assay)
    for cls, child in zip(classes, np.random.SeedSequence(int(seed)).spawn(len(classes))):
        idx, rng = np.flatnonzero(names == cls), np.random.default_rng(child)
        for start in range(0, idx.size, batch):
            chunk = idx[start:start + batch]
            for i, image in zip(chunk, render(cls, chunk.size, rng, style, size)):
                out[i] = image
    return out


def _check_fraction(fraction: float, what: str) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not (0.0 <= value <= 1.0):
        raise ConfigError(f"{what} must be a fraction in [0, 1] (got {fraction!r})")
    return value


def _leukaemic(assay: str, leukaemic: Sequence[str] | None) -> tuple[str, ...]:
    classes = assay_classes(assay)
    chosen = _LEUKAEMIC[assay] if leukaemic is None else tuple(leukaemic)
    bad = [c for c in chosen if c not in classes]
    if bad or not chosen or len(set(chosen)) == len(classes):
        raise ConfigError(f"leukaemic classes must be a non-empty proper subset of {', '.join(classes)} "
                          f"(got {list(chosen)})")
    return chosen


def draw_labels(n: int, *, assay: str, leukaemic_fraction: float, seed: int,
                leukaemic: Sequence[str] | None = None) -> np.ndarray:
    """Class names of ``n`` cells with an exact leukaemic share.

    Parameters
    ----------
    n
        Number of cells.
    assay
        ``"ifc"`` or ``"smear"``.
    leukaemic_fraction
        Share of leukaemic cells: exactly ``round(n * leukaemic_fraction)`` of them.
    seed
        Seed of the draw and of the shuffle.
    leukaemic
        The leukaemic classes (default ifc ``("blast",)``, smear ``("MYO", "MOB")``); the
        leukaemic cells are spread evenly at random over them. The other cells come from
        the remaining classes with fixed plausible proportions.

    Returns
    -------
    numpy.ndarray
        ``n`` class names, shuffled.

    Raises
    ------
    ConfigError
        Unknown assay or class, a fraction outside [0, 1], a negative ``n``.
    """
    chosen = _leukaemic(assay, leukaemic)
    fraction = _check_fraction(leukaemic_fraction, "leukaemic_fraction")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n must be a whole number >= 0 (got {n!r})")
    rng = np.random.default_rng(int(seed))
    k = int(round(n * fraction))
    normal = [c for c in assay_classes(assay) if c not in chosen]
    weights = np.array([_PROPORTIONS[assay][c] for c in normal])
    labels = np.concatenate([rng.choice(np.array(chosen), k),
                             rng.choice(np.array(normal), n - k, p=weights / weights.sum())])
    return rng.permutation(labels.astype(str))
