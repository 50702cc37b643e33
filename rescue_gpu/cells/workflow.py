"""End-to-end cell workflows the command line calls: train from a folder, and the demo.

``train_cell_model``: read a labelled folder tree (``class/patient/images``) or a labelled
``.npz`` stack, prepare every crop as the pipeline says, train with patient-level splits
(:func:`rescue_gpu.cells.train.train_cells`) and save the model record plus
``training.json`` (history, split sizes, per-class and grouped metrics on validation and
held-out test patients).

``run_cell_demo``: simulate a small imaging-flow library, train, score the simulated
samples and report the readout error against the known fractions.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CellDataError
from .spec import CellPipeline

__all__ = ["train_cell_model", "run_cell_demo", "CellDemoResult", "with_overrides"]


def with_overrides(pipeline: CellPipeline, *, architecture: str | None = None, epochs: int | None = None,
                   batch_size: int | None = None, seed: int | None = None) -> CellPipeline:
    """``pipeline`` with model/training settings replaced where given (validated again)."""
    train = pipeline.model.train
    train = dataclasses.replace(train, **{k: v for k, v in (("max_epochs", epochs), ("batch_size", batch_size),
                                                              ("seed", seed)) if v is not None})
    model = dataclasses.replace(pipeline.model, train=train,
                                **({"architecture": architecture} if architecture else {}))
    return dataclasses.replace(pipeline, model=model)


def _load_training(path: Path, pipeline: CellPipeline, on_read: Callable[..., None] | None) -> Any:
    from .io import read_stack, read_tree

    if path.is_file():
        return read_stack(path, channels=pipeline.input.channels)
    return read_tree(path, spec=pipeline.input, classes=pipeline.classes.names, on_progress=on_read)


def train_cell_model(train_path: str | Path, *, pipeline: CellPipeline, out: str | Path, device: str = "auto",
                     on_read: Callable[..., None] | None = None,
                     on_epoch: Callable[[dict], None] | None = None) -> tuple[Any, Any]:
    """Train a cell classifier from labelled images and save it to ``out``; returns ``(record, report)``.

    Raises
    ------
    CellDataError
        Unreadable or unlabelled images, classes not in the pipeline, too few patients.
    """
    from .preprocess import prepare_cells
    from .train import train_cells

    cells = _load_training(Path(train_path), pipeline, on_read)
    if not cells.labelled:
        raise CellDataError(f"{train_path}: training needs a class for every cell (class/patient/image folders, "
                            "or an .npz with 'labels')")
    unknown = sorted(set(cells.labels) - set(pipeline.classes.names))
    if unknown:
        raise CellDataError(f"{train_path}: classes {unknown} are not in pipeline '{pipeline.name}' "
                            f"({list(pipeline.classes.names)})")
    index = [pipeline.input.channels.index(c) for c in pipeline.input.network_channels]
    x = prepare_cells(cells, spec=pipeline.preprocess, channel_index=index, seed=pipeline.model.train.seed)
    y = np.array([pipeline.classes.names.index(c) for c in cells.labels], dtype=np.int64)
    record, report = train_cells(x, y, cells.patient_ids, pipeline=pipeline, device=device, on_epoch=on_epoch)
    record.provenance["training_data"] = {"n_cells": len(cells), "source": Path(train_path).name,
                                          "class_counts": {c: int((cells.labels == c).sum())
                                                           for c in pipeline.classes.names}}
    path = record.save(out)
    (Path(path) / "training.json").write_text(json.dumps(report.summary(), indent=1, default=_json_default))
    return record, report


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


@dataclass
class CellDemoResult:
    """What the demo made and measured."""

    out: Path
    model_dir: Path
    run_dir: Path
    test_metrics: dict[str, Any]
    readout_errors: dict[str, Any]
    seconds: float


def run_cell_demo(out: str | Path, *, n_train_patients: int = 10, cells_per_class: int = 30, n_samples: int = 6,
                  cells_per_sample: int = 300, epochs: int = 8, architecture: str = "resnet18", seed: int = 7,
                  say: Callable[[str], None] = print) -> CellDemoResult:
    """Simulate an imaging-flow library, train a small classifier, score the samples; see the module docstring.

    The demo trains ``architecture`` (ResNet-18 by default, so it runs in minutes on a laptop
    CPU) for ``epochs`` epochs; the assay's pipeline uses ResNet-50. ``library/``,
    ``cell-model/`` and ``cell-run/`` under ``out`` are replaced if present.
    """
    from ..config import RuntimeConfig
    from ..report.cells import readout_errors
    from ..simulate.cells import simulate_cell_library
    from .assay import CellScoreOptions, score_cells
    from .spec import load_cell_pipeline

    import shutil

    t0 = time.perf_counter()
    root = Path(out)
    for name in ("library", "cell-model", "cell-run"):  # a demo starts afresh
        shutil.rmtree(root / name, ignore_errors=True)
    lib = simulate_cell_library(root / "library", assay="ifc", layout="channel-tiffs",
                                n_train_patients=n_train_patients, cells_per_class=cells_per_class,
                                n_samples=n_samples, cells_per_sample=cells_per_sample, seed=seed)
    say(f"simulated: {lib}")
    pipe = with_overrides(load_cell_pipeline("ifc-labelfree"), architecture=architecture, epochs=epochs,
                          batch_size=64, seed=seed)
    record, report = train_cell_model(lib.train_dir, pipeline=pipe, out=root / "cell-model", device="cpu",
                                      on_epoch=lambda h: say(f"epoch {h['epoch']}: train loss {h['train_loss']:.3f}, "
                                                             f"val loss {h['val_loss']:.3f}"))
    for text in report.warnings:
        say(f"warning: {text}")
    test = report.summary().get("test", {})
    say(f"model: {root / 'cell-model'} (held-out patients: {json.dumps(_headline(test))})")
    options = CellScoreOptions(pipeline=pipe, seed=seed)
    summary = score_cells(lib.samples_manifest, model=root / "cell-model", out=root / "cell-run", options=options,
                          runtime=RuntimeConfig(backend="cpu"), in_process=True)
    import pandas as pd

    errors = readout_errors(pd.read_parquet(summary.outputs["parquet"]))
    say(f"scored {summary.n_scored}/{summary.n_samples} samples, {summary.cells_per_s:,.0f} cells/s; "
        f"readout error vs truth: {errors}; report: {summary.outputs.get('report')}")
    return CellDemoResult(root, root / "cell-model", root / "cell-run", test, errors, time.perf_counter() - t0)


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    per = metrics.get("per_class", metrics)
    grouped = metrics.get("grouped", {})
    keys = ("accuracy", "balanced_accuracy", "macro_f1")
    out = {k: round(float(per[k]), 3) for k in keys if isinstance(per.get(k), (int, float))}
    out.update({f"leukaemic_{k}": round(float(grouped[k]), 3) for k in ("sensitivity", "specificity", "roc_auc")
                if isinstance(grouped.get(k), (int, float))})
    return out
