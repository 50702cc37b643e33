"""Training: patient-level cross-validation; the fold models, as one ensemble, are the model.

1. Every labelled manifest sample is preprocessed and projected once into a Zarr
   cache (:mod:`.dataset`); images are rendered from it each epoch. With
   ``train.shift_copies`` > 0 so are that many instrument-shifted copies of it (random
   per-channel gain and offset, :func:`~rescue_gpu.flow.dataset.instrument_shift`), which
   only the augmented training images draw on.
2. ``StratifiedGroupKFold`` splits samples by label, grouped by ``patient_id``: a
   patient is never in the training and validation part of a fold at once (checked).
3. Each fold trains the flow network (:func:`rescue_gpu.flow.record.build_model`) with
   ``BCEWithLogits(pos_weight = negatives / positives of the training part)`` in the
   shared loop of :mod:`rescue_gpu.nn.train` (AdamW and a per-step cosine schedule
   spanning ``max_epochs``, AMP on CUDA, early stopping on validation loss with
   ``patience``, the seeding policy of :func:`rescue_gpu.nn.train.seeded`). The
   validation logits of the best epoch are the fold's out-of-fold (OOF) predictions,
   and the weights of that epoch are the fold's model.
4. The model that makes the calls is the ensemble of the fold models
   (:class:`~rescue_gpu.nn.ensemble.EnsembleNetwork`: the mean of their logits), so
   the predictions that choose temperature and threshold come from the models that
   score: each sample's OOF logit is that of the one member that did not train on it
   (calibration route :data:`~rescue_gpu.flow.record.ENSEMBLE_ROUTE`). No model is
   retrained on all data: a threshold fitted on one set of models does not transfer to
   another (a held-out cohort once scored p_mrd 0.774-0.819 against a threshold of 0.660).
5. The temperature is fitted on the OOF logits, the threshold chosen on the calibrated
   OOF probabilities (Youden's J, or a target sensitivity), and the pooled OOF metrics
   with patient-level bootstrap intervals go into the record's ``metrics``.
6. :mod:`rescue_gpu.nn.diagnostics` warns about folds with few patients per class and
   about unstable validation-AUC curves; the messages go into ``provenance["warnings"]``.

Note that sensitivity, specificity and F1 in ``metrics["cv"]`` are measured at a
threshold chosen on the same OOF predictions, so they are slightly optimistic; ROC AUC
and PR AUC do not depend on the threshold. A member's OOF logit stands in for the
ensemble's: the mean over K members usually varies less between members than one
member does, so the ensemble on new data may be somewhat better than the OOF metrics say.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..runner.manifest import ManifestRow
from ..config import Pipeline, TrainSpec
from ..device import is_available, torch_device
from ..errors import ModelError
from ..nn.calibration import fit_temperature, nll
from ..nn.diagnostics import small_cohort_warnings, unstable_curve_warnings
from ..nn.ensemble import EnsembleNetwork
from ..nn.metrics import choose_threshold, evaluate_predictions, roc_auc
from ..nn.splits import patient_folds
from ..nn.train import (Trainer, batch_slices, collect_logits, fit, loss_value, make_trainer, provenance, seeded,
                        train_epoch)
from ..reference import Reference
from .dataset import CachedSample, InstrumentShift, MrdImageDataset, build_cache, label_value

__all__ = ["FoldResult", "train_model", "fit_fold", "TrainingData", "training_warnings"]


@dataclass(kw_only=True)
class FoldResult:
    """One fold: indices, best epoch, its validation logits, the loss history and the best epoch's model."""

    fold: int
    train_index: np.ndarray
    val_index: np.ndarray
    best_epoch: int = 0
    best_val_loss: float = math.inf
    val_logits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    history: list[dict[str, float]] = field(default_factory=list)
    model: nn.Module | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {"fold": self.fold, "n_train": int(self.train_index.size), "n_val": int(self.val_index.size),
                "best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss, "history": self.history}


def _epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled BatchNorm-safe batches of ``range(n)`` (see :func:`rescue_gpu.nn.train.batch_slices`)."""
    order = rng.permutation(n)
    return [order[s] for s in batch_slices(n, batch_size)]


def _stack(ds: MrdImageDataset, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([t for _, t in items])


def _make_trainer(pipeline: Pipeline, in_channels: int, y_train: np.ndarray, *, steps: int,
                  device: torch.device) -> Trainer:
    """The flow network, weighted BCE loss, AdamW and cosine schedule (call inside :func:`seeded`)."""
    from .record import build_model

    spec = pipeline.model.train
    model = build_model(in_channels=in_channels, head=pipeline.model.head, pretrained=spec.pretrained)
    n_pos = max(int(y_train.sum()), 1)
    pos_weight = torch.tensor((y_train.size - n_pos) / n_pos, dtype=torch.float32, device=device)
    return make_trainer(model, loss=nn.BCEWithLogitsLoss(pos_weight=pos_weight), learning_rate=spec.learning_rate,
                        weight_decay=spec.weight_decay, steps=steps, device=device, recompute_bn=spec.recompute_bn)


def _train_one_epoch(t: Trainer, ds: MrdImageDataset, *, epoch: int, batch_size: int, seed: int) -> float:
    ds.set_epoch(epoch)
    order = _epoch_batches(len(ds), batch_size, np.random.default_rng([seed, epoch]))
    return train_epoch(t, (_stack(ds, idx) for idx in order))


def _image_batches(ds: MrdImageDataset, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(ds), batch_size):
        yield _stack(ds, range(start, min(start + batch_size, len(ds))))[0]


def _logits(t: Trainer, ds: MrdImageDataset, *, batch_size: int) -> np.ndarray:
    return collect_logits(t.model, _image_batches(ds, batch_size), device=t.device)


def _val_loss(t: Trainer, logits: np.ndarray, y: np.ndarray) -> float:
    return loss_value(t.loss, logits, torch.from_numpy(y.astype(np.float32)), t.device)


def _steps(n: int, spec: TrainSpec) -> int:
    """Optimiser steps of ``max_epochs`` epochs over ``n`` samples (what the cosine schedule spans)."""
    return spec.max_epochs * len(batch_slices(n, spec.batch_size))


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    """The labelled cached samples and their truth, patients and timepoints."""

    samples: list[CachedSample]
    extent: tuple[float, float, float, float]
    in_channels: int

    @property
    def y(self) -> np.ndarray:
        """Truth per sample, 0/1."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Patient per sample (the sample itself where no patient is given): the unit of the folds."""
        return np.array([s.patient_id or f"sample:{s.sample_id}" for s in self.samples])

    @property
    def timepoints(self) -> np.ndarray:
        """Timepoint per sample."""
        return np.array([s.timepoint for s in self.samples])

    def dataset(self, index: np.ndarray, pipeline: Pipeline, raster: Any, *, train: bool, seed: int) -> MrdImageDataset:
        """The images of samples ``index`` (augmented when ``train``)."""
        spec = pipeline.model.train
        return MrdImageDataset([self.samples[i] for i in index], extent=self.extent, raster=raster, train=train,
                               copies=spec.augment_copies, jitter=spec.intensity_jitter, seed=seed)


def fit_fold(data: TrainingData, fold: FoldResult, pipeline: Pipeline, raster: Any, *, device: torch.device,
             on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FoldResult:
    """Train one fold with early stopping; keep the validation logits and weights (on the CPU) of the best epoch."""
    spec = pipeline.model.train
    seed = spec.seed * 1000 + fold.fold
    y = data.y
    y_val = y[fold.val_index]
    train_ds = data.dataset(fold.train_index, pipeline, raster, train=True, seed=seed)
    val_ds = data.dataset(fold.val_index, pipeline, raster, train=False, seed=seed)
    with seeded(seed, device):
        t = _make_trainer(pipeline, data.in_channels, y[fold.train_index], steps=_steps(len(train_ds), spec),
                          device=device)
        result = fit(max_epochs=spec.max_epochs, patience=spec.patience,
                     train_epoch=lambda epoch: _train_one_epoch(t, train_ds, epoch=epoch, batch_size=spec.batch_size,
                                                                seed=seed),
                     validate=lambda: _logits(t, val_ds, batch_size=spec.batch_size),
                     val_loss=lambda logits: _val_loss(t, logits, y_val),
                     describe=lambda epoch, train_loss, val_loss, logits, seconds: {
                         "fold": fold.fold, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                         "val_auc": roc_auc(y_val, logits)},
                     model=t.model, on_epoch=on_epoch)
        result.stop.restore(t.model)
    fold.history = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
                    for rec in result.history]
    fold.best_epoch, fold.best_val_loss = result.stop.best_epoch, result.stop.best_loss
    if result.stop.best_epoch:
        fold.val_logits = result.best_logits
    fold.model = t.model.cpu().eval()
    return fold


def _labelled(rows: Sequence[ManifestRow]) -> tuple[list[ManifestRow], list[str]]:
    keep = [r for r in rows if label_value(r.label) is not None]
    return keep, [r.sample_id for r in rows if label_value(r.label) is None]


def _load_data(rows: Sequence[ManifestRow], reference: Reference, pipeline: Pipeline, *, cache_dir: Path,
               backend: str, show_progress: bool) -> tuple[TrainingData, dict[str, str]]:
    from ..cliutil import progress
    from .record import expected_channels

    spec = pipeline.model.train
    seed = spec.seed
    shift = (InstrumentShift(copies=spec.shift_copies, gain=spec.shift_gain, offset=spec.shift_offset, seed=seed)
             if spec.shift_copies > 0 else None)
    bar = progress("projecting into the cache", len(rows)) if show_progress else contextlib.nullcontext(None)
    with bar as advance:
        cache, failed = build_cache(rows, reference, pipeline, cache_dir=cache_dir, seed=seed, backend=backend,
                                    shift=shift, on_sample=advance)
    samples = [cache.get(r.sample_id, shift) for r in rows if r.sample_id not in failed]
    samples = [dataclasses.replace(s, label=label_value(r.label), patient_id=r.patient_id, timepoint=r.timepoint)
               for s, r in zip(samples, [r for r in rows if r.sample_id not in failed])]
    return TrainingData(samples=samples, extent=reference.extent,
                        in_channels=expected_channels(reference.raster, reference.markers)), failed


def _cv(data: TrainingData, pipeline: Pipeline, raster: Any, *, folds: int, device: torch.device,
        on_epoch: Callable[[dict[str, Any]], None] | None, show_progress: bool) -> list[FoldResult]:
    from ..cliutil import progress

    spec = pipeline.model.train
    results = []
    for k, (tr, va) in enumerate(patient_folds(data.y, data.groups, folds=folds, seed=spec.seed)):
        bar = progress(f"fold {k + 1}/{folds}", spec.max_epochs) if show_progress else contextlib.nullcontext(None)
        with bar as advance:
            def report(rec: dict[str, Any], advance: Any = advance) -> None:
                if advance is not None:
                    advance(rec["epoch"] - 1, spec.max_epochs, train_loss=f"{rec['train_loss']:.3f}",
                            val_loss=f"{rec['val_loss']:.3f}", val_auc=f"{rec['val_auc']:.3f}")
                if on_epoch is not None:
                    on_epoch(rec)
            results.append(fit_fold(data, FoldResult(fold=k, train_index=tr, val_index=va), pipeline, raster, device=device, on_epoch=report))
    return results


def _oof_logits(n: int, results: list[FoldResult]) -> tuple[np.ndarray, np.ndarray]:
    logits, fold_of = np.full(n, np.nan), np.full(n, -1)
    for r in results:
        logits[r.val_index], fold_of[r.val_index] = r.val_logits, r.fold
    return logits, fold_of


def _cv_metrics(data: TrainingData, logits: np.ndarray, fold_of: np.ndarray, spec: TrainSpec, *, n_boot: int
                ) -> tuple[float, float, dict[str, Any]]:
    """Temperature, threshold and the JSON-ready CV metrics from the OOF logits."""
    y = data.y
    temperature = fit_temperature(logits, y)
    p = 1.0 / (1.0 + np.exp(-logits / temperature))
    threshold = choose_threshold(y, p, target_sensitivity=spec.target_sensitivity)
    report = evaluate_predictions(y, p, threshold=threshold, groups=data.groups, timepoints=data.timepoints,
                                  n_boot=n_boot, seed=spec.seed)
    report["threshold_rule"] = (f"target sensitivity {spec.target_sensitivity}" if spec.target_sensitivity > 0
                                else "Youden's J")
    report["note"] = ("pooled out-of-fold predictions (each from the ensemble member that did not train on the "
                      "sample); the threshold was chosen on these same predictions")
    report["oof_nll"] = {"temperature_1": nll(logits, y, 1.0), "fitted": nll(logits, y, temperature)}
    report["oof"] = [{"sample_id": s.sample_id, "patient_id": s.patient_id, "timepoint": s.timepoint,
                      "label": int(s.label), "fold": int(f), "logit": float(z), "p": float(q)}
                     for s, f, z, q in zip(data.samples, fold_of, logits, p)]
    return temperature, threshold, report


def train_model(
    manifest_rows: Sequence[ManifestRow],
    reference: Reference,
    pipeline: Pipeline,
    *,
    out: str | Path,
    folds: int | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    n_boot: int = 1000,
    show_progress: bool = True,
) -> Any:
    """Cross-validate, calibrate on the out-of-fold logits, and save the fold models' ensemble as a model directory.

    Parameters
    ----------
    manifest_rows
        The cohort; only rows labelled ``positive``/``negative`` are used (others listed
        in the provenance). ``patient_id`` groups the folds (empty: the sample is its own patient).
    reference
        The reference UMAP the samples are projected into; fixes image size and channels.
    pipeline
        Panel, preprocessing and ``model`` settings (head, :class:`TrainSpec`).
    out
        Model directory to write; must not exist yet.
    folds
        Cross-validation folds (default ``pipeline.model.train.folds``).
    cache_dir
        Folder of the projected-events cache (default ``<out>-cache`` beside ``out``).
    device
        ``"auto" | "cpu" | "cuda" | "cuda:N"``.
    on_epoch
        Called with ``{fold, epoch, train_loss, val_loss, val_auc}`` after every epoch.
    n_boot
        Patient-level bootstrap replicates of the CV metric intervals.
    show_progress
        Show progress bars on stderr.

    Returns
    -------
    ModelRecord
        The saved record (threshold, temperature, CV metrics, provenance).

    Raises
    ------
    ModelError
        ``out`` exists, or fewer than two classes remain after failed/unlabelled samples are left out.
    ConfigError
        Fewer patients than folds.
    BackendError
        An unusable device (e.g. ``"cuda"`` without a CUDA device).
    """
    from .record import ENSEMBLE_ROUTE, ModelRecord

    began = time.perf_counter()
    out = Path(out)
    if out.exists():
        raise ModelError(f"{out}: already exists; choose another --out or remove it first")
    spec = pipeline.model.train
    k = int(folds or spec.folds)
    dev = torch_device(device)
    rows, unlabelled = _labelled(manifest_rows)
    cache = Path(cache_dir) if cache_dir is not None else out.with_name(out.name + "-cache")
    backend = "gpu" if dev.type == "cuda" and is_available("gpu") else "cpu"
    data, failed = _load_data(rows, reference, pipeline, cache_dir=cache, backend=backend, show_progress=show_progress)
    _check_classes(data)
    results = _cv(data, pipeline, reference.raster, folds=k, device=dev, on_epoch=on_epoch, show_progress=show_progress)
    logits, fold_of = _oof_logits(len(data.samples), results)
    temperature, threshold, cv = _cv_metrics(data, logits, fold_of, spec, n_boot=n_boot)
    warned = training_warnings(data, results)
    record = ModelRecord(model=EnsembleNetwork([r.model for r in results]), in_channels=data.in_channels,
                         image_size=reference.raster.size, head=pipeline.model.head, raster=reference.raster,
                         reference_fingerprint=reference.fingerprint, threshold=threshold, temperature=temperature,
                         metrics={"cv": cv}, calibration_route=ENSEMBLE_ROUTE,
                         provenance=_provenance(data, results, spec, k, failed, unlabelled, cache, dev, pipeline,
                                                time.perf_counter() - began, warnings=warned))
    record.check_compatible(reference)
    record.save(out)
    return record


def _check_classes(data: TrainingData) -> None:
    y = data.y
    if y.size == 0 or y.min() == y.max():
        raise ModelError(f"training needs positive and negative samples; after leaving out failed and unlabelled "
                         f"samples there are {int(y.sum())} positive and {int(y.size - y.sum())} negative")


def training_warnings(data: TrainingData, results: Sequence[FoldResult]) -> list[str]:
    """The small-cohort and unstable-curve warnings of a cross-validation (see :mod:`rescue_gpu.nn.diagnostics`)."""
    folds = [(r.train_index, r.val_index) for r in results]
    curves = [[rec.get("val_auc") for rec in r.history] for r in results]
    return (small_cohort_warnings(labels=data.y, groups=data.groups, folds=folds)
            + unstable_curve_warnings(curves, name="validation AUC"))


def _provenance(data: TrainingData, results: list[FoldResult], spec: TrainSpec, folds: int,
                failed: dict[str, str], unlabelled: list[str], cache: Path, device: torch.device,
                pipeline: Pipeline, seconds: float, *, warnings: list[str]) -> dict[str, Any]:
    return provenance(device=device, seconds=seconds, pipeline=pipeline.name, train=dataclasses.asdict(spec),
                      folds=folds, ensemble_members=len(results),
                      ensemble_rule="mean logit of the cross-validation fold models, each at its best epoch "
                                    "(lowest validation loss); no model retrained on all data",
                      warnings=warnings, fold_results=[r.summary() for r in results], n_samples=len(data.samples),
                      n_patients=int(np.unique(data.groups).size), n_positive=int(data.y.sum()),
                      failed_samples=failed, unlabelled_samples=unlabelled, cache=str(cache))
