"""AML genetic-subtype patients: normal white cells plus a minority of subtype-specific abnormal cells.

The blood-smear subtype assay (``pipelines/smear-aml-subtype.toml``) has five patient
classes: ``control``, ``PML_RARA``, ``NPM1``, ``CBFB_MYH11`` and ``RUNX1_RUNX1T1``. A
leukaemic patient's smear holds many normal white cells; only some cells show the
subtype. Here every patient's cells are normal smear cells (the non-leukaemic classes of
the ``"smear"`` assay, in their plausible proportions) and, for a subtype patient, a
share of abnormal cells drawn per patient from ``abnormal_share`` (default 10 % to 60 %):

``PML_RARA`` (APL)
    Large promyelocytes, bilobed nuclei under heavy coarse azurophilic granules, with
    Auer rods, sometimes in bundles (faggot cells).
``NPM1``
    Blasts with cup-like nuclei: a deep invagination of a round nucleus, pale fine
    chromatin, pale blue cytoplasm.
``CBFB_MYH11``
    Abnormal eosinophils: large dark purple (basophilic-looking) granules over a
    bilobed nucleus, among the orange eosinophil granules' pink cytoplasm.
``RUNX1_RUNX1T1``
    Myeloblasts with salmon-pink cytoplasm and one long thin Auer rod.
``control``
    Normal cells only.

:func:`simulate_subtype_patient` renders one patient; :func:`simulate_subtype_cohort`
writes a cohort as ``<out>/<class>/<patient>/<cell>.png`` (the tree the cells assay
trains from) with ``patients.csv`` (``patient_id, subtype, abnormal_share, n_cells``)
and ``truth.csv`` (``patient_id, cell_id, subtype, cell_type, abnormal``): the truth of
which cells are abnormal. The same seed gives the same pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...artifacts import write_csv
from ...errors import ConfigError
from .draw import _check_size, _batch_size, draw_labels, simulate_cells
from .noise import _bytes
from .smear import _smear_batch
from .styles import PatientStyle, patient_style
from .tables import _AZUR, _BILOBED, _SMEAR_PX_PER_UM, _SMEAR_SIZE, _Shape, _SmearLook, _od
from .write import write_image

__all__ = ["SUBTYPES", "SubtypePatient", "SubtypeCohortSummary", "simulate_subtype_patient",
           "simulate_subtype_cohort"]

#: Patient classes, in the order of ``pipelines/smear-aml-subtype.toml``.
SUBTYPES: tuple[str, ...] = ("control", "PML_RARA", "NPM1", "CBFB_MYH11", "RUNX1_RUNX1T1")


@dataclass(frozen=True)
class _Rods:
    """Auer rods drawn over an abnormal cell: count range, length and width in µm, bundle spread (radians)."""

    count: tuple[int, int]
    length: tuple[float, float]
    width: float
    spread: float


_ROD_RGB = (150, 40, 95)   # dark red-purple at density 1
#: name of the abnormal cell, (shape, look), rods (None: no rods)
_ABNORMAL: dict[str, tuple[str, tuple[_Shape, _SmearLook], _Rods | None]] = {
    "PML_RARA": ("hypergranular_promyelocyte",
                 (_Shape((16, 22), 0.05, 0.07, **{**_BILOBED, "nucleus": (0.3, 0.36)}),
                  _SmearLook((0.7, 0.9), (0.1, 0.3), (170, 160, 210), (0.7, 1.0), (120, 30, 110), (0.45, 0.6),
                             True, True)),
                 _Rods((2, 6), (3.0, 5.0), 0.55, 0.35)),
    "NPM1": ("cup_like_blast",
             (_Shape((14, 19), 0.04, 0.05, nucleus=(0.74, 0.84), offset=0.2, indent=(1.0, 0.75, 1.0)),
              _SmearLook((0.55, 0.7), (0.0, 0.1), (150, 185, 230), (0.55, 0.8), _AZUR, (0.0, 0.02))),
             None),
    "CBFB_MYH11": ("abnormal_eosinophil",
                   (_Shape((14, 18), 0.04, 0.06, **_BILOBED),
                    _SmearLook((0.9, 1.1), (0.4, 0.7), (225, 190, 190), (0.7, 1.0), (55, 20, 85), (0.35, 0.5), True,
                               True)),
                   None),
    "RUNX1_RUNX1T1": ("blast_with_long_auer_rod",
                      (_Shape((14, 19), 0.04, 0.06, nucleus=(0.6, 0.72), offset=0.6, indent=(0.2, 0.05, 0.3)),
                       _SmearLook((0.6, 0.8), (0.0, 0.2), (235, 175, 165), (0.8, 1.1), _AZUR, (0.02, 0.06),
                                  nucleoli=(1, 2))),
                      _Rods((1, 1), (7.0, 9.5), 0.7, 0.0)),
}


def _check_subtype(subtype: str) -> str:
    if subtype not in SUBTYPES:
        raise ConfigError(f"unknown subtype {subtype!r}; choose one of {', '.join(SUBTYPES)}")
    return subtype


def _check_share(share: float) -> float:
    try:
        value = float(share)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"abnormal_share must be a fraction in [0, 1] (got {share!r})")
    return value


def _segment_mask(size: int, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray,
                  half: float) -> np.ndarray:
    """``(k, size, size)`` soft masks of segments ``(x0, y0)-(x1, y1)`` of half-width ``half`` px."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = (x1 - x0)[:, None, None], (y1 - y0)[:, None, None]
    px, py = xx[None] - x0[:, None, None], yy[None] - y0[:, None, None]
    t = np.clip((px * dx + py * dy) / np.maximum(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    dist = np.hypot(px - t * dx, py - t * dy)
    return np.clip(half + 0.5 - dist, 0.0, 1.0)


def _draw_rods(images: np.ndarray, rods: _Rods, rng: np.random.Generator, *, px: float, cell_um: float) -> None:
    """Darken Auer rods into ``(n, 3, S, S)`` uint8 smear cells in place (Beer-Lambert, near the cell centre)."""
    n, size = images.shape[0], images.shape[-1]
    od = _od(_ROD_RGB).astype(np.float32)
    for i in range(n):
        k = int(rng.integers(rods.count[0], rods.count[1] + 1))
        base = rng.uniform(0, np.pi)
        centre = (size - 1) / 2 + rng.uniform(-0.2, 0.2, 2) * cell_um * px
        ang = base + rng.uniform(-rods.spread, rods.spread, k)
        length = rng.uniform(*rods.length, k) * px
        shift = rng.uniform(-0.15, 0.15, (k, 2)) * cell_um * px
        cx, cy = centre[0] + shift[:, 0], centre[1] + shift[:, 1]
        hx, hy = 0.5 * length * np.cos(ang), 0.5 * length * np.sin(ang)
        mask = _segment_mask(size, cx - hx, cy - hy, cx + hx, cy + hy, max(0.5, 0.5 * rods.width * px)).max(axis=0)
        density = rng.uniform(0.8, 1.2)
        atten = np.exp(-density * od[:, None, None] * mask[None])
        images[i] = np.clip(images[i].astype(np.float32) * atten + 0.5, 0, 255).astype(np.uint8)


def _abnormal_cells(subtype: str, n: int, rng: np.random.Generator, style: PatientStyle,
                    size: int | None) -> list[np.ndarray]:
    """``n`` abnormal cells of ``subtype`` in ``style`` (batched as :func:`simulate_cells` does)."""
    _, kind, rods = _ABNORMAL[subtype]
    side = size or _SMEAR_SIZE
    px = _SMEAR_PX_PER_UM * side / _SMEAR_SIZE * style.magnification
    out: list[np.ndarray] = []
    batch = _batch_size("smear", size)
    for start in range(0, n, batch):
        cells = np.stack(_smear_batch(subtype, min(batch, n - start), rng, style, size, kind=kind))
        if rods is not None:
            _draw_rods(cells, rods, rng, px=px, cell_um=float(np.mean(kind[0].diameter)))
        out.extend(cells)
    return out


@dataclass(frozen=True)
class SubtypePatient:
    """One simulated patient: cell images, which are abnormal, and the white-cell type of each."""

    subtype: str
    images: list[np.ndarray]
    abnormal: np.ndarray
    cell_types: np.ndarray
    abnormal_share: float


def simulate_subtype_patient(subtype: str, n_cells: int, *, abnormal_share: float, style: PatientStyle | None = None,
                             size: int | None = None, seed: int = 0) -> SubtypePatient:
    """Render one patient's smear cells: normal white cells plus ``round(n_cells * abnormal_share)`` abnormal ones.

    Parameters
    ----------
    subtype
        One of :data:`SUBTYPES`; ``"control"`` patients get normal cells only (the share is ignored).
    n_cells
        Cells of the patient.
    abnormal_share
        Share of abnormal cells, in ``[0, 1]``.
    style
        The patient's smear :class:`PatientStyle` (default: drawn from ``seed``).
    size
        Crop side in pixels (>= 16; default 224).
    seed
        Seed of the cells, their order and the style.

    Returns
    -------
    SubtypePatient
        Images in a random order, ``abnormal`` (bool per cell), ``cell_types`` (the
        normal class, e.g. ``"NGS"``, or the abnormal cell's name) and the exact share.

    Raises
    ------
    ConfigError
        Unknown subtype, a share outside [0, 1], a bad cell count or size.
    """
    _check_subtype(subtype)
    share = _check_share(abnormal_share)
    if not isinstance(n_cells, (int, np.integer)) or n_cells < 1:
        raise ConfigError(f"n_cells must be a whole number >= 1 (got {n_cells!r})")
    size = _check_size(size)
    seeds = np.random.SeedSequence(int(seed)).spawn(4)
    style = style or patient_style("smear", seed=int(seeds[0].generate_state(1)[0]))
    k = 0 if subtype == "control" else int(round(n_cells * share))
    normal = draw_labels(n_cells - k, assay="smear", leukaemic_fraction=0.0, seed=int(seeds[1].generate_state(1)[0]))
    images = simulate_cells(normal, assay="smear", style=style, size=size, seed=int(seeds[2].generate_state(1)[0]))
    types = normal.tolist()
    if k:
        images += _abnormal_cells(subtype, k, np.random.default_rng(seeds[3]), style, size)
        types += [_ABNORMAL[subtype][0]] * k
    order = np.random.default_rng(seeds[3].spawn(1)[0]).permutation(n_cells)
    abnormal = np.arange(n_cells) >= n_cells - k
    return SubtypePatient(subtype, [images[i] for i in order], abnormal[order], np.asarray(types)[order],
                          k / n_cells)


@dataclass
class SubtypeCohortSummary:
    """What :func:`simulate_subtype_cohort` wrote: folder, patients per class, cells, and the two CSVs."""

    out_dir: Path
    n_patients: int
    n_cells: int
    patients_csv: Path
    truth_csv: Path
    shares: dict[str, float]
    seconds: float

    def __str__(self) -> str:
        sub = [v for v in self.shares.values() if v > 0]
        spread = f", abnormal shares {min(sub):.2f}-{max(sub):.2f}" if sub else ""
        return (f"subtype cohort in {self.out_dir}: {self.n_patients} patients, {self.n_cells} cells{spread}; "
                f"{self.seconds:.1f} s")


def simulate_subtype_cohort(out_dir: str | Path, *, patients_per_class: int = 12, cells_per_patient: int = 64,
                            abnormal_share: tuple[float, float] = (0.1, 0.6), size: int | None = None,
                            seed: int = 0, prefix: str = "P", subtypes: Sequence[str] = SUBTYPES,
                            on_progress: Callable[[int, int], None] | None = None) -> SubtypeCohortSummary:
    """Write a subtype cohort: ``<out>/<class>/<patient>/<cell>.png``, ``patients.csv`` and ``truth.csv``.

    Patients are ``<prefix>001``, ... interleaved over the classes; each subtype patient's
    abnormal share is drawn uniformly from ``abnormal_share``, each patient has its own
    style. ``truth.csv`` has one row per cell: ``patient_id, cell_id, subtype, cell_type,
    abnormal`` (0/1); the cell id is the image path relative to ``out`` without suffix
    (as :func:`rescue_gpu.cells.io.read_tree` names cells).

    Raises
    ------
    ConfigError
        Bad counts, share range, size or subtype names.
    """
    began = time.perf_counter()
    lo, hi = (_check_share(v) for v in abnormal_share)
    if lo > hi:
        raise ConfigError(f"abnormal_share must be (low, high) with low <= high (got {abnormal_share!r})")
    for name, value in (("patients_per_class", patients_per_class), ("cells_per_patient", cells_per_patient)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a whole number >= 1 (got {value!r})")
    classes = [_check_subtype(s) for s in subtypes]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = [classes[i % len(classes)] for i in range(patients_per_class * len(classes))]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5AB7]))
    shares = rng.uniform(lo, hi, len(plan))
    patients, truth, summary_shares = [], [], {}
    for p, (subtype, share, child) in enumerate(zip(plan, shares, np.random.SeedSequence(int(seed)).spawn(len(plan)))):
        pid = f"{prefix}{p + 1:03d}"
        pat = simulate_subtype_patient(subtype, cells_per_patient, abnormal_share=share, size=size,
                                       seed=int(child.generate_state(1)[0]))
        for c, (image, bad, kind) in enumerate(zip(pat.images, pat.abnormal, pat.cell_types)):
            cid = f"{pid}_{c:05d}"
            write_image(out / subtype / pid / f"{cid}.png", image)
            truth.append({"patient_id": pid, "cell_id": f"{subtype}/{pid}/{cid}", "subtype": subtype,
                          "cell_type": str(kind), "abnormal": str(int(bad))})
        patients.append({"patient_id": pid, "subtype": subtype, "abnormal_share": f"{pat.abnormal_share:.6f}",
                         "n_cells": str(cells_per_patient)})
        summary_shares[pid] = pat.abnormal_share
        if on_progress is not None:
            on_progress(p + 1, len(plan))
    write_csv(out / "patients.csv", ("patient_id", "subtype", "abnormal_share", "n_cells"), patients)
    write_csv(out / "truth.csv", ("patient_id", "cell_id", "subtype", "cell_type", "abnormal"), truth)
    return SubtypeCohortSummary(out, len(plan), len(truth), out / "patients.csv", out / "truth.csv", summary_shares,
                                time.perf_counter() - began)
