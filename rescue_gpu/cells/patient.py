"""Patient-level workflows the command line calls: train a MIL model from a labelled tree, score patients.

``train_patient_model`` (``rescue cells train --level patient``): read a labelled tree
(``class/patient/images``: the class folder is the patient's class), compute every
cell's penultimate features with the given cell model, cross-validate the attention MIL
model over patients (``folds``; macro F1 with a 95 % bootstrap interval and the confusion
matrix go into the record's metrics), then train the model on all patients and save it
(:class:`~rescue_gpu.cells.mil.MilModelRecord`, tied to the cell model's sha256) with
``training.json``.

``score_patient_cells`` (``rescue cells score --level patient``): read patients (a
labelled tree, whose class folders are then the truth, or a folder with one sub-folder
of cell images per patient), score them and write into ``out``:

- ``patients.csv``: ``patient_id, n_cells, call, p_<class>...`` (and ``truth`` when known);
- ``cells.csv`` and ``cells.parquet``: ``patient_id, cell_id, attention, attention_rank``
  and the cell network's probability of the patient's call;
- ``report.html``: per patient the most-attended cells with their Grad-CAM saliency, and
  (with truth) the confusion matrix with patient-level 95 % bootstrap intervals.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CellDataError
from .mil import (MilModelRecord, MilTrainSpec, cell_features, confusion_intervals, cross_validate_mil, group_cells,
                  macro_f1_interval, score_bags, train_mil)
from .record import CellModelRecord
from .spec import CellPipeline

__all__ = ["train_patient_model", "score_patient_cells", "PatientScoreResult", "read_patients"]


def read_patients(path: str | Path, pipeline: CellPipeline) -> tuple[Any, bool]:
    """Cells of ``path`` with patient ids: a labelled ``class/patient`` tree (True) or patient folders (False).

    Raises
    ------
    CellDataError
        No patient folders or unreadable images.
    """
    from .io import read_sample, read_tree
    from .types import CellSet

    root = Path(path)
    if not root.is_dir():
        raise CellDataError(f"{root}: not a folder of patients (class/patient/images or patient/images)")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs and all(d.name in pipeline.classes.names for d in subdirs):
        return read_tree(root, spec=pipeline.input, classes=pipeline.classes.names), True
    if not subdirs:
        raise CellDataError(f"{root}: no patient folders; arrange cells as {root}/<patient>/<images> "
                            "(or <class>/<patient>/<images> with the pipeline's class names)")
    images, ids, pats = [], [], []
    for d in subdirs:
        s = read_sample(d, spec=pipeline.input)
        images.extend(list(s.images))
        ids.extend(f"{d.name}/{c}" for c in s.cell_ids)
        pats.extend([d.name] * len(s))
    return CellSet(images=images, channels=tuple(pipeline.input.channels), cell_ids=np.array(ids),
                   patient_ids=np.array(pats), source=str(root)), False


def _network_cells(cells: Any, pipeline: CellPipeline) -> Any:
    from .io import select_channels

    return select_channels(cells, pipeline.input.network_channels)


def _bags(cells: Any, cell_model: CellModelRecord, pipeline: CellPipeline, device: str):
    probs, feats = cell_features(_network_cells(cells, pipeline), cell_model, device=device,
                                 seed=pipeline.model.train.seed)
    pids, index = group_cells(feats, cells.patient_ids)
    return probs, feats, pids, index


def train_patient_model(train_path: str | Path, *, pipeline: CellPipeline, cell_model: str | Path, out: str | Path,
                        spec: MilTrainSpec = MilTrainSpec(), folds: int = 5, device: str = "cpu",
                        say: Callable[[str], None] = lambda s: None) -> tuple[MilModelRecord, dict[str, Any]]:
    """Cross-validate and train a patient-level MIL model on ``cell_model``'s features; save it to ``out``.

    Returns the record and the training summary (also written to ``out/training.json``).

    Raises
    ------
    CellDataError
        Not a labelled tree, cells without patients, classes outside the pipeline, too few patients.
    ModelError
        The cell model does not fit the pipeline, or training diverged.
    """
    cell = CellModelRecord.load(cell_model)
    cell.check_pipeline(pipeline)
    cells, labelled = read_patients(train_path, pipeline)
    if not labelled:
        raise CellDataError(f"{train_path}: patient-level training needs class/patient/images folders "
                            f"(classes {list(pipeline.classes.names)})")
    if np.any(cells.patient_ids == ""):
        raise CellDataError(f"{train_path}: every cell needs a patient folder (class/patient/images)")
    _, feats, pids, index = _bags(cells, cell, pipeline, device)
    classes = list(pipeline.classes.names)
    y = np.array([classes.index(cells.labels[ix[0]]) for ix in index])
    bags = [feats[ix] for ix in index]
    say(f"{len(pids)} patients, {len(cells)} cells, {feats.shape[1]} features per cell")
    summary: dict[str, Any] = {"patients": len(pids), "cells": len(cells),
                               "class_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)}}
    if folds > 1:
        probs, _, _ = cross_validate_mil(bags, y, classes=classes, folds=folds, spec=spec, device=device,
                                         cell_model_sha256=cell.sha256,
                                         on_fold=lambda f, r: say(f"fold {f + 1}/{folds}: {r.epochs} epochs"))
        calls = probs.argmax(1)
        cm = confusion_intervals(y, calls, n_classes=len(classes))
        summary["cv"] = {"folds": folds, "macro_f1": macro_f1_interval(y, calls, n_classes=len(classes)),
                         "accuracy": float((calls == y).mean()),
                         "confusion": {k: np.asarray(v).tolist() for k, v in cm.items()}}
        say(f"cross-validated macro F1 {summary['cv']['macro_f1']['value']:.3f}")
    record, report = train_mil(bags, y, classes=classes, cell_model_sha256=cell.sha256,
                               cell_model_checksum=cell.checksum, spec=spec, device=device)
    record.metrics = {**record.metrics, **({"cv": summary["cv"]} if "cv" in summary else {})}
    record.provenance.update({"cell_model": str(cell_model), "pipeline": pipeline.name,
                              "training_data": Path(train_path).name, "patients": len(pids)})
    summary.update({"epochs": report.epochs, "best_epoch": report.best_epoch, "temperature": report.temperature,
                    "history": report.history, "val": report.val})
    path = record.save(out)
    (Path(path) / "training.json").write_text(json.dumps(summary, indent=1, default=float))
    return record, summary


@dataclass
class PatientScoreResult:
    """What :func:`score_patient_cells` wrote."""

    out_dir: Path
    patients_csv: Path
    cells_csv: Path
    report: Path | None
    n_patients: int
    n_cells: int
    calls: dict[str, str]


def _saliency(cell: CellModelRecord, x: np.ndarray, class_index: int | None) -> np.ndarray:
    from ..nn.saliency import grad_cam

    def score(out: Any) -> Any:
        return out[:, class_index] if class_index is not None else out.max(dim=1).values

    return grad_cam(cell.model, x, score=score)


def score_patient_cells(inputs: str | Path, *, pipeline: CellPipeline, model: str | Path, cell_model: str | Path,
                        out: str | Path, device: str = "cpu", top: int = 6, report: bool = True) -> PatientScoreResult:
    """Score every patient of ``inputs`` with a MIL model; write the tables and the report (module docstring).

    Raises
    ------
    ModelError
        The MIL model was not trained on ``cell_model``, or the cell model does not fit the pipeline.
    CellDataError
        No patients or unreadable images.
    """
    import pandas as pd

    cell = CellModelRecord.load(cell_model)
    cell.check_pipeline(pipeline)
    mil = MilModelRecord.load_for(model, cell)
    cells, labelled = read_patients(inputs, pipeline)
    probs, feats, pids, index = _bags(cells, cell, pipeline, device)
    p, calls, att = score_bags(mil, [feats[ix] for ix in index], device=device)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    classes = list(mil.classes)
    rows, cell_rows = [], []
    for i, (pid, ix) in enumerate(zip(pids, index)):
        row = {"patient_id": pid, "n_cells": int(ix.size), "call": classes[calls[i]],
               **{f"p_{c}": float(p[i, j]) for j, c in enumerate(classes)}}
        if labelled:
            row["truth"] = str(cells.labels[ix[0]])
        rows.append(row)
        ci = cell.classes.index(classes[calls[i]]) if classes[calls[i]] in cell.classes else None
        rank = np.empty(ix.size, dtype=np.int64)
        rank[np.argsort(-att[i], kind="stable")] = np.arange(1, ix.size + 1)
        for j, c in enumerate(ix):
            cell_rows.append({"patient_id": pid, "cell_id": str(cells.cell_ids[c]), "attention": float(att[i][j]),
                              "attention_rank": int(rank[j]),
                              "cell_p_call": float(probs[c, ci]) if ci is not None else float("nan")})
    patients = pd.DataFrame(rows)
    cell_df = pd.DataFrame(cell_rows)
    patients.to_csv(root / "patients.csv", index=False)
    cell_df.to_csv(root / "cells.csv", index=False)
    cell_df.to_parquet(root / "cells.parquet", index=False)
    page = None
    if report:
        from ..report.patients import write_patient_report
        from .preprocess import prepare_cells

        tops = []
        for i, (pid, ix) in enumerate(zip(pids, index)):
            best = np.argsort(-att[i], kind="stable")[:top]
            x = prepare_cells([_network_cells(cells, pipeline).images[ix[b]] for b in best], spec=cell.preprocess,
                              seed=pipeline.model.train.seed)
            ci = cell.classes.index(classes[calls[i]]) if classes[calls[i]] in cell.classes else None
            tops.append({"patient_id": pid, "images": x, "saliency": _saliency(cell, x, ci),
                         "attention": att[i][best], "cell_ids": [str(cells.cell_ids[ix[b]]) for b in best]})
        cm = None
        if labelled:
            y = np.array([classes.index(t) for t in patients["truth"]])
            cm = confusion_intervals(y, calls, n_classes=len(classes))
        page = write_patient_report(root / "report.html", patients, tops=tops, classes=classes, confusion=cm,
                                    model=mil, cell_model=cell)
    return PatientScoreResult(root, root / "patients.csv", root / "cells.csv", page, len(pids), len(cells),
                              dict(zip(patients["patient_id"], patients["call"])))


def spec_with(spec: MilTrainSpec, **changes: Any) -> MilTrainSpec:
    """``spec`` with the given (non-None) settings replaced (validated again)."""
    return dataclasses.replace(spec, **{k: v for k, v in changes.items() if v is not None})
