"""Shared assets of the cohort tests: a tiny simulated cohort, a fast reference, an untrained model.

The reference is a real :class:`Reference` whose embedding is the events' first two
principal components instead of a UMAP fit (scoring only needs train events, an
embedding and UMAP parameters; a umap-learn fit would cost ~40 s of JIT here). The
model is an untrained MrdNet (fixed seed): scoring does not need a trained model.
Assets are built once per test session under pytest's base temp folder.
"""

from __future__ import annotations

import dataclasses
import fcntl
import sys
from pathlib import Path

import numpy as np

from rescue_gpu.config import HeadSpec, Pipeline, load_pipeline
from rescue_gpu.runner.store import RunStore

N_SAMPLES = 6
N_EVENTS = 2500
RASTER_SIZE = 32


def tiny_pipeline() -> Pipeline:
    """aml-mrd with a 32-pixel raster."""
    pipe = load_pipeline("aml-mrd")
    return dataclasses.replace(pipe, raster=dataclasses.replace(pipe.raster, size=RASTER_SIZE))


def fast_reference(rows: list, pipeline: Pipeline, *, events_per_sample: int = 400):
    """A Reference from pooled events with a PCA embedding (no UMAP fit)."""
    from rescue_gpu.flow.stages import load_events, pipeline_settings
    from rescue_gpu.preprocess import preprocess_fingerprint
    from rescue_gpu.projection.transform import UmapParams
    from rescue_gpu.reference import Reference
    from rescue_gpu.reference.build import extent_of

    pooled, markers = [], None
    for row in rows:
        ev = load_events(row.path, pipeline)
        markers = ev.markers
        pooled.append(ev.values[:events_per_sample])
    x = np.concatenate(pooled).astype(np.float32)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    emb = centred @ vt[:2].T
    emb = (emb * (4.0 / emb.std())).astype(np.float32)  # UMAP-like spread, so the transform's SGD stays in the canvas
    return Reference(train_events=x, embedding=emb, params=UmapParams(random_state=0), markers=markers,
                     preprocess_fingerprint=preprocess_fingerprint(pipeline.panel, pipeline.preprocess),
                     raster=pipeline.raster, extent=extent_of(emb, padding=pipeline.raster.padding),
                     settings=pipeline_settings(pipeline), provenance={"note": "test reference, PCA embedding"})


def untrained_model(reference, *, threshold: float = 0.5, seed: int = 0):
    """An untrained MrdNet record fitting ``reference`` (random init, fixed seed)."""
    import torch

    from rescue_gpu.flow.record import build_model as MrdNet
    from rescue_gpu.flow.record import ModelRecord, expected_channels

    torch.manual_seed(seed)
    c = expected_channels(reference.raster, reference.markers)
    net = MrdNet(in_channels=c, head=HeadSpec(hidden=(16,), dropout=0.0)).eval()
    return ModelRecord(model=net, in_channels=c, image_size=reference.raster.size, head=HeadSpec(hidden=(16,), dropout=0.0),
                       raster=reference.raster, reference_fingerprint=reference.fingerprint, threshold=threshold)


def build_assets(base: Path) -> dict[str, Path]:
    """Build (once; file-locked) the cohort, reference and two models under ``base``."""
    from rescue_gpu.runner.manifest import read_manifest
    from rescue_gpu.simulate import simulate_cohort

    base.mkdir(parents=True, exist_ok=True)
    paths = {"cohort": base / "cohort", "manifest": base / "cohort" / "manifest.csv", "reference": base / "ref",
             "model": base / "model", "model_low": base / "model-low"}
    with open(base / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (base / ".done").exists():
            simulate_cohort(paths["cohort"], n_samples=N_SAMPLES, n_events=N_EVENTS, seed=3)
            ref = fast_reference(read_manifest(paths["manifest"]), tiny_pipeline())
            ref.save(paths["reference"], overwrite=True)
            untrained_model(ref).save(paths["model"], overwrite=True)
            untrained_model(ref, threshold=0.0).save(paths["model_low"], overwrite=True)  # every call positive
            (base / ".done").write_text("ok")
    return paths


def run_cli(args: list[str], *, cwd: Path | None = None, timeout: float = 240):
    """Run ``rescue score`` as a subprocess (``python -m rescue_gpu.flow.cli``)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "rescue_gpu.flow.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def stored_samples(store_dir: Path) -> int:
    """Samples a run store at ``store_dir`` holds so far (0 while it is missing or being created)."""
    if not (store_dir / "zarr.json").exists():
        return 0
    try:
        return sum(1 for _ in RunStore(store_dir))
    except Exception:
        return 0
