"""Issue 17: per-epoch validation curves of one flow fold with and without the BatchNorm recompute.

A small simulated cohort (``--samples`` samples, 3 folds, so about two thirds train a
fold), a PCA reference (no UMAP fit), ``--size`` pixel images, ``augment_copies`` 3,
batch 32: a few optimiser steps per epoch, the regime where the validation AUC swung
below chance. Fold 0 is trained twice with the same seed and data, once with
``train.recompute_bn = false`` (the loop as it was before the fix) and once with
``true``; the per-epoch training loss, validation loss and validation AUC are printed
as a Markdown table. Because BatchNorm's running statistics never enter a train-mode
forward pass, both runs follow the same weights; only evaluation differs.

It also compares the pixel statistics of the training images (bootstrap re-renders with
intensity jitter) with the full renders that validation and scoring use.

    PYTHONPATH=$PWD python benchmarks/bn_curves.py --samples 70 --size 64 --epochs 12 --patience 4
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rescue_gpu.config import Pipeline, load_pipeline
from rescue_gpu.flow import stages
from rescue_gpu.flow.train import FoldResult, TrainingData, fit_fold
from rescue_gpu.flow.dataset import CachedSample, build_cache
from rescue_gpu.nn.splits import patient_folds
from rescue_gpu.projection.transform import UmapParams
from rescue_gpu.reference import Reference
from rescue_gpu.runner.manifest import ManifestRow, read_manifest
from rescue_gpu.simulate import simulate_cohort


def small_pipeline(*, size: int, epochs: int, patience: int, recompute_bn: bool) -> Pipeline:
    """``aml-mrd`` with ``size`` pixel images, 3 folds, batch 32, 3 augmented copies."""
    pipe = load_pipeline("aml-mrd")
    train = dataclasses.replace(pipe.model.train, folds=3, max_epochs=epochs, patience=patience, batch_size=32,
                                augment_copies=3, recompute_bn=recompute_bn)
    return dataclasses.replace(pipe, raster=dataclasses.replace(pipe.raster, size=size),
                               model=dataclasses.replace(pipe.model, train=train))


def pca_reference(rows: list[ManifestRow], pipe: Pipeline, *, n: int = 1500) -> Reference:
    """A reference without a UMAP fit: events of three samples embedded by their first two principal components."""
    ev = np.concatenate([stages.load_events(r.path, pipe).values[:n // 3] for r in rows[:3]])
    centred = ev - ev.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    emb = centred @ vt[:2].T
    emb = (emb * (5.0 / emb.std())).astype(np.float32)
    lo, hi = emb.min(0), emb.max(0)
    pad = 0.05 * (hi - lo)
    markers = stages.load_events(rows[0].path, pipe).markers
    return Reference(ev, emb, UmapParams(random_state=0), markers, raster=pipe.raster,
                     extent=(lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1]))


def training_data(rows: list[ManifestRow], ref: Reference, pipe: Pipeline, cache_dir: Path) -> TrainingData:
    """Project every sample into the cache; the labelled samples with their patients."""
    from rescue_gpu.flow.dataset import label_value
    from rescue_gpu.flow.record import expected_channels

    cache, failed = build_cache(rows, ref, pipe, cache_dir=cache_dir, seed=0, backend="cpu")
    assert not failed, failed
    samples: list[CachedSample] = [dataclasses.replace(cache.get(r.sample_id), label=label_value(r.label),
                                                       patient_id=r.patient_id, timepoint=r.timepoint) for r in rows]
    return TrainingData(samples=samples, extent=ref.extent, in_channels=expected_channels(ref.raster, ref.markers))


def pixel_stats(data: TrainingData, index: np.ndarray, pipe: Pipeline, *, train: bool) -> tuple[np.ndarray, ...]:
    """Per-channel mean and standard deviation of the images of ``index`` (training or full renders), epoch 1."""
    ds = data.dataset(index, pipe, pipe.raster, train=train, seed=0)
    ds.set_epoch(1)
    imgs = np.stack([ds.image(i) for i in range(len(ds))]).astype(np.float64)
    return imgs.mean(axis=(0, 2, 3)), imgs.std(axis=(0, 2, 3))


def run_fold(data: TrainingData, fold: tuple[np.ndarray, np.ndarray], pipe: Pipeline) -> list[dict[str, Any]]:
    """Train fold 0 on the CPU; its per-epoch history."""
    tr, va = fold
    result = fit_fold(data, FoldResult(fold=0, train_index=tr, val_index=va), pipe, pipe.raster,
                      device=torch.device("cpu"))
    return result.history


def _num(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals; "nan" for a missing (non-finite) one."""
    return "nan" if value is None else f"{value:.{digits}f}"


def main() -> None:
    """Simulate, train fold 0 without and with the recompute, print both curves."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=70)
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        summary = simulate_cohort(Path(tmp) / "sim", n_samples=args.samples, n_events=args.events, seed=args.seed)
        rows = read_manifest(summary.manifest)
        pipe = small_pipeline(size=args.size, epochs=args.epochs, patience=args.patience, recompute_bn=False)
        ref = pca_reference(rows, pipe)
        data = training_data(rows, ref, pipe, Path(tmp) / "cache")
        fold = next(iter(patient_folds(data.y, data.groups, folds=3, seed=pipe.model.train.seed)))
        print(f"fold 0: {fold[0].size} training samples x 3 copies, {fold[1].size} validation samples, "
              f"{args.size} px, batch 32")
        for train in (True, False):
            mean, std = pixel_stats(data, fold[0], pipe, train=train)
            print(f"{'training (bootstrap + jitter)' if train else 'full renders'}: per-channel mean "
                  f"{np.round(mean, 5).tolist()}, std {np.round(std, 5).tolist()}")
        curves = {}
        for on in (False, True):
            p = small_pipeline(size=args.size, epochs=args.epochs, patience=args.patience, recompute_bn=on)
            curves[on] = run_fold(data, fold, p)
    print("| epoch | train loss (off) | val loss (off) | val AUC (off) | train loss (on) | val loss (on) | val AUC (on) |")
    print("|---|---|---|---|---|---|---|")
    for i in range(max(len(curves[False]), len(curves[True]))):
        cells = [str(i + 1)]
        for on in (False, True):
            h = curves[on]
            cells += ([_num(h[i]["train_loss"], 4), _num(h[i]["val_loss"], 4), _num(h[i]["val_auc"], 3)]
                      if i < len(h) else ["-", "-", "-"])
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
