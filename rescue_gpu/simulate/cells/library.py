"""The library writer: :func:`simulate_cell_library` (training tree, samples with known fractions, CSVs)."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from .tables import LAYOUTS, _CUTOFF, _LEUKAEMIC, _NUMPY_IFC_SIZE, _SMEAR_SIZE, assay_channels, assay_classes
from .styles import patient_style
from .draw import _check_fraction, _check_size, draw_labels, simulate_cells
from .write import write_channel_tiffs, write_image, write_stack


@dataclass
class CellLibrarySummary:
    """What :func:`simulate_cell_library` wrote.

    Attributes
    ----------
    out_dir
        The library folder.
    assay, layout
        As requested.
    n_train_cells, n_train_patients
        Labelled training cells and the patients they come from (``P001``, ...).
    n_samples
        Unlabelled samples of new patients (``S001``, ...).
    train_dir
        ``out_dir/train`` (tree, channel-tiffs) or ``out_dir/train.npz`` (numpy).
    samples_manifest
        ``out_dir/samples.csv``: ``sample_id, path, patient_id, label, true_fraction``.
    truth
        ``out_dir/truth.csv``: ``sample_id, cell_id, class`` of every sample cell.
    classes
        The assay's classes.
    fractions
        True leukaemic fraction per sample (exact: leukaemic cells / cells).
    seconds
        Wall time.
    """

    out_dir: Path
    assay: str
    layout: str
    n_train_cells: int
    n_train_patients: int
    n_samples: int
    train_dir: Path
    samples_manifest: Path
    truth: Path
    classes: tuple[str, ...]
    fractions: tuple[float, ...]
    seconds: float

    def __str__(self) -> str:
        spread = f", leukaemic fractions {min(self.fractions):.3f}-{max(self.fractions):.3f}" if self.fractions else ""
        return (f"{self.assay} cell library in {self.out_dir} ({self.layout} layout): {self.n_train_cells} training "
                f"cells from {self.n_train_patients} patients, {self.n_samples} samples{spread}; "
                f"{self.seconds:.1f} s")


@dataclass(frozen=True)
class _Plan:
    """Settings shared by the writers of one library."""

    out: Path
    assay: str
    layout: str
    size: int | None
    progress: Callable[[], None]

    @property
    def ext(self) -> str:
        return ".tif" if self.assay == "ifc" else ".png"


def _check_layout(assay: str, layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {', '.join(map(repr, LAYOUTS))}")
    if layout == "channel-tiffs" and assay != "ifc":
        raise ConfigError(f"layout 'channel-tiffs' is for imaging-flow exports (assay 'ifc'), not {assay!r}; "
                          "use 'tree' or 'numpy'")
    return layout


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        least = 0 if name == "n_samples" else 1
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ConfigError(f"{name} must be a whole number >= {least} (got {value!r})")


def _default_fractions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Fractions over [0, 0.6]: a third near 0, a third in (0.02, 0.25), a third in (0.3, 0.6)."""
    groups = rng.permutation(np.arange(n) % 3)
    lo, hi = np.array([0.0, 0.02, 0.3])[groups], np.array([0.01, 0.25, 0.6])[groups]
    return rng.uniform(lo, hi)


def _sample_fractions(n_samples: int, fractions: Sequence[float] | None, seed: np.random.SeedSequence) -> np.ndarray:
    if fractions is None:
        return _default_fractions(n_samples, np.random.default_rng(seed))
    values = [_check_fraction(f, "each of fractions") for f in fractions]
    if len(values) != n_samples:
        raise ConfigError(f"fractions has {len(values)} values but n_samples is {n_samples}; give one per sample")
    return np.asarray(values, dtype=float)


def _write_cells(plan: _Plan, folder: Path, cell_ids: Sequence[str], images: Sequence[np.ndarray]) -> None:
    """Write cells into ``folder``: one file per cell (tree) or one TIFF per channel (channel-tiffs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for cid, image in zip(cell_ids, images):
        if plan.layout == "channel-tiffs":
            write_channel_tiffs(folder, cid, image, assay_channels(plan.assay))
        else:
            write_image(folder / f"{cid}{plan.ext}", image)


def _patient_cells(plan: _Plan, child: np.random.SeedSequence, labels: Sequence[str]) -> list[np.ndarray]:
    """The cells of one patient, in the patient's own style."""
    style_seed, cell_seed = (int(s) for s in child.generate_state(2))
    style = patient_style(plan.assay, seed=style_seed)
    return simulate_cells(labels, assay=plan.assay, style=style, size=plan.size, seed=cell_seed)


def _write_training(plan: _Plan, seed: np.random.SeedSequence, n_patients: int, per_class: int) -> int:
    """Write ``train/<class>/<patient>/`` (or ``train.npz``); return the number of cells."""
    classes = assay_classes(plan.assay)
    labels = np.repeat(np.array(classes), per_class)
    stack: dict[str, list] = {"images": [], "labels": [], "patient_ids": [], "cell_ids": []}
    for p, child in enumerate(seed.spawn(n_patients)):
        pid = f"P{p + 1:03d}"
        images = _patient_cells(plan, child, labels)
        ids = [f"{pid}_{k:05d}" for k in range(labels.size)]
        if plan.layout == "numpy":
            for key, values in zip(stack, (images, labels.tolist(), [pid] * labels.size, ids)):
                stack[key].extend(values)
        else:
            for cls in classes:
                sel = np.flatnonzero(labels == cls)
                _write_cells(plan, plan.out / "train" / cls / pid, [ids[i] for i in sel], [images[i] for i in sel])
        plan.progress()
    if plan.layout == "numpy":
        write_stack(plan.out / "train.npz", np.stack(stack.pop("images")), channels=assay_channels(plan.assay), **stack)
    return n_patients * labels.size


def _write_sample(plan: _Plan, sid: str, child: np.random.SeedSequence, labels: np.ndarray) -> tuple[str, list[str]]:
    """Write one unlabelled sample; return its path (relative to ``out``) and its cell ids."""
    images = _patient_cells(plan, child, labels)
    if plan.layout == "numpy":
        rel = f"samples/{sid}.npy"
        write_stack(plan.out / rel, np.stack(images))
        return rel, [str(k) for k in range(labels.size)]
    rel, ids = f"samples/{sid}", [f"{sid}_{k:05d}" for k in range(labels.size)]
    _write_cells(plan, plan.out / rel, ids, images)
    return rel, ids


def _write_samples(plan: _Plan, seed: np.random.SeedSequence, fractions: np.ndarray,
                   per_sample: int) -> tuple[list[dict], list[tuple[str, str, str]], list[float]]:
    """Write every sample; return the ``samples.csv`` rows, the ``truth.csv`` rows and the true fractions."""
    rows, truth, true = [], [], []
    for s, (child, fraction) in enumerate(zip(seed.spawn(fractions.size), fractions)):
        sid = f"S{s + 1:03d}"
        label_seed = int(child.spawn(1)[0].generate_state(1)[0])
        labels = draw_labels(per_sample, assay=plan.assay, leukaemic_fraction=fraction, seed=label_seed)
        rel, ids = _write_sample(plan, sid, child, labels)
        exact = float(np.isin(labels, _LEUKAEMIC[plan.assay]).mean())
        positive = round(exact * 100, 9) >= _CUTOFF[plan.assay]
        rows.append({"sample_id": sid, "path": rel, "patient_id": sid, "label": "positive" if positive else "negative",
                     "true_fraction": f"{exact:.6f}"})
        truth.extend(zip([sid] * len(ids), ids, labels.tolist()))
        true.append(exact)
        plan.progress()
    return rows, truth, true


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict | Sequence]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([[r[c] for c in columns] if isinstance(r, dict) else list(r) for r in rows])
    return path


def _counter(total: int, on_progress: Callable[[int, int], None] | None) -> Callable[[], None]:
    done = [0]

    def tick() -> None:
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], total)

    return tick


def simulate_cell_library(out_dir: str | Path, *, assay: str = "ifc", layout: str = "tree",
                          n_train_patients: int = 12, cells_per_class: int = 40, n_samples: int = 8,
                          cells_per_sample: int = 400, fractions: Sequence[float] | None = None,
                          size: int | None = None, seed: int = 0,
                          on_progress: Callable[[int, int], None] | None = None) -> CellLibrarySummary:
    """Write a labelled training library and unlabelled samples with known leukaemic fractions.

    Parameters
    ----------
    out_dir
        Output folder (created).
    assay
        ``"ifc"`` or ``"smear"``.
    layout
        ``"tree"``: ``train/<class>/<patient>/<cell>.tif`` (ifc, 2 planes) or ``.png``
        (smear) and ``samples/<sample>/<cell>.<ext>``; ``"channel-tiffs"`` (ifc only):
        ``<cell>_Ch1.tif`` and ``<cell>_Ch6.tif`` in the same folders; ``"numpy"``:
        ``train.npz`` (images, labels, patient_ids, cell_ids, channels) and
        ``samples/<sample>.npy``, with fixed-size crops.
    n_train_patients, cells_per_class
        Training patients ``P001``... and cells per class per patient.
    n_samples, cells_per_sample
        Samples of new patients ``S001``... (never among the training patients).
    fractions
        True leukaemic fraction per sample; default spread over [0, 0.6] with several
        near 0 and several above 0.25. The leukaemic count is exactly
        ``round(cells_per_sample * fraction)``.
    size
        Crop side (>= 16); default: object-sized ifc crops (64 px for numpy), 224 px smears.
    seed
        Seed of everything: the same seed writes the same pixels.
    on_progress
        Called as ``on_progress(i, n)`` after each training patient and each sample.

    Returns
    -------
    CellLibrarySummary

    Raises
    ------
    ConfigError
        Unknown assay or layout, channel-tiffs for smears, bad counts, sizes or fractions.
    """
    start = time.perf_counter()
    classes, layout = assay_classes(assay), _check_layout(assay, layout)
    _check_counts(n_train_patients=n_train_patients, cells_per_class=cells_per_class, n_samples=n_samples,
                  cells_per_sample=cells_per_sample)
    size = _check_size(size)
    if layout == "numpy" and size is None:
        size = _NUMPY_IFC_SIZE if assay == "ifc" else _SMEAR_SIZE
    plan_seed, train_seed, sample_seed = np.random.SeedSequence(int(seed)).spawn(3)
    wanted = _sample_fractions(n_samples, fractions, plan_seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _Plan(out, assay, layout, size, _counter(n_train_patients + n_samples, on_progress))
    n_train = _write_training(plan, train_seed, n_train_patients, cells_per_class)
    rows, truth, true = _write_samples(plan, sample_seed, wanted, cells_per_sample)
    manifest = _write_csv(out / "samples.csv", ("sample_id", "path", "patient_id", "label", "true_fraction"), rows)
    truth_csv = _write_csv(out / "truth.csv", ("sample_id", "cell_id", "class"), truth)
    return CellLibrarySummary(out, assay, layout, n_train, n_train_patients, n_samples,
                              out / ("train.npz" if layout == "numpy" else "train"), manifest, truth_csv, classes,
                              tuple(true), time.perf_counter() - start)
