"""Cell training gives the flow path's training warnings (issue 17): computed, stored in provenance, printed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.cells.record import CellModelRecord
from rescue_gpu.cells.spec import (CellClassesSpec, CellInputSpec, CellModelSpec, CellPipeline, CellPreprocessSpec,
                                   CellTrainSpec, load_cell_pipeline)
from rescue_gpu.cells.train import MIN_PATIENTS_PER_CLASS, train_cells, training_warnings
from rescue_gpu.cli import main
from rescue_gpu.nn.diagnostics import small_cohort_warnings, unstable_curve_warnings, worse_than_guessing_warnings

CLASSES = ("blast", "lymphocyte", "monocyte")


def _parts(n_val_patients: int, per_patient: int = 6) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """Labels, patients and (train, val, test) where each validation patient has every class."""
    n_train = 4
    pats = np.repeat([f"P{i}" for i in range(n_train + n_val_patients)], per_patient)
    labels = np.tile(np.arange(per_patient) % len(CLASSES), n_train + n_val_patients)
    idx = np.arange(pats.size)
    cut = n_train * per_patient
    return labels, pats, (idx[:cut], idx[cut:], idx[:0])


def _history(acc: list[float]) -> list[dict]:
    return [{"epoch": e, "val_accuracy": a} for e, a in enumerate(acc, start=1)]


def test_small_validation_split_is_named_by_class():
    labels, pats, parts = _parts(2)
    got = training_warnings(labels, pats, parts, classes=CLASSES, history=_history([0.5, 0.6]))
    assert len(got) == 1
    assert got[0].startswith("validation split: its validation part has 2 blast, 2 lymphocyte, 2 monocyte patient(s), "
                             f"fewer than {MIN_PATIENTS_PER_CLASS} per class")
    assert "train.val_fraction" in got[0] and "--folds" not in got[0]
    # the same rule as the flow path's: the shared function on the same split, with names
    names = np.asarray(CLASSES, dtype=object)[labels]
    shared = small_cohort_warnings(labels=names, groups=pats, folds=[parts[:2]], parts=["validation split"])
    assert [s.split("; ")[0] for s in shared] == [g.split("; ")[0] for g in got]
    assert "the temperature and the rates rest on few patients" in got[0] and "out-of-fold" not in got[0]


def test_enough_validation_patients_and_a_stable_curve_give_nothing():
    labels, pats, parts = _parts(3)
    assert training_warnings(labels, pats, parts, classes=CLASSES, history=_history([0.5, 0.7, 0.65, 0.8]),
                             min_patients_per_class=3) == []


def test_unstable_accuracy_curve_is_flagged_against_chance_of_the_classes():
    labels, pats, parts = _parts(3)
    fall = training_warnings(labels, pats, parts, classes=CLASSES, history=_history([0.2, 0.85, 0.5, 0.9]),
                             min_patients_per_class=3)
    assert fall == [fall[0]] and fall[0].startswith(
        "validation split: validation accuracy falls from its best 0.850 to 0.500 (by more than 0.3) at epoch 3")
    assert "training.json" in fall[0]
    # 3 classes: chance is 1/3, so 0.30 after 0.45 is below chance; with the flow default (0.5) 0.45 never rose above it
    below = training_warnings(labels, pats, parts, classes=CLASSES, history=_history([0.45, 0.30]),
                              min_patients_per_class=3)
    assert len(below) == 1 and "goes below 0.333 (0.300) at epoch 2 after being above it" in below[0]
    assert unstable_curve_warnings([[0.45, 0.30]]) == []


def test_flow_messages_keep_their_wording():
    """The defaults are the flow path's own messages (the cell options are additive)."""
    msg = unstable_curve_warnings([[0.9, 0.4]])[0]
    assert msg.startswith("fold 0: validation AUC falls from its best 0.900 to 0.400")
    assert msg.endswith("check this fold's history in model.json (provenance fold_results)")
    assert "the fold overfits" in msg
    labels, groups = np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "c"])
    cohort = small_cohort_warnings(labels=labels, groups=groups, folds=[(np.arange(2), np.arange(2, 4))])
    assert cohort == ["fold 0: its validation part has 1 negative, 1 positive patient(s), fewer than 20 per class; "
                      "its metrics, early stopping and the threshold chosen on the out-of-fold predictions rest on few "
                      "patients and are noisy. Add patients, use fewer folds (--folds), and read the cross-validation "
                      "metrics as rough estimates (check their bootstrap intervals)"]
    with pytest.raises(ValueError, match="2 part names for 1 folds"):
        unstable_curve_warnings([[0.9]], parts=["a", "b"])


def _pipeline() -> CellPipeline:
    spec = CellTrainSpec(max_epochs=1, patience=2, batch_size=16)
    return CellPipeline(name="synthetic", classes=CellClassesSpec(names=("disc", "ring"), leukaemic=("disc",)),
                        input=CellInputSpec(channels=("BF", "DF")), preprocess=CellPreprocessSpec(size=16),
                        model=CellModelSpec(architecture="resnet18", train=spec))


def test_train_cells_stores_the_warnings_in_provenance_and_report():
    rng = np.random.default_rng(0)
    n_pat, per = 5, 12
    y = np.tile(np.arange(per) % 2, n_pat)
    x = rng.normal(0, 1, (y.size, 2, 16, 16)).astype(np.float32)
    x[y == 0, :, 5:11, 5:11] += 2.0
    pats = np.repeat([f"P{i}" for i in range(n_pat)], per)
    rec, rep = train_cells(x, y, pats, pipeline=_pipeline(), device="cpu")
    assert rep.split["val"]["patients"] == 1
    assert rep.warnings and rep.warnings[0].startswith(
        "validation split: its validation part has 1 disc, 1 ring patient(s), fewer than 20 per class")
    assert rec.provenance["warnings"] == rep.warnings
    assert json.loads(json.dumps(rep.summary()))["warnings"] == rep.warnings


def test_cells_train_cli_prints_and_stores_warnings(tmp_path, capsys):
    rc = main(["cells", "simulate", str(tmp_path / "lib"), "--assay", "ifc", "--layout", "tree", "--patients", "5",
               "--cells-per-class", "4", "--samples", "1", "--cells-per-sample", "10", "--seed", "3"])
    assert rc == 0
    pipe = tmp_path / "p.toml"
    pipe.write_text(Path(load_cell_pipeline("ifc-labelfree").source).read_text()
                    .replace('architecture = "resnet50"', 'architecture = "resnet18"'))
    capsys.readouterr()
    rc = main(["cells", "train", str(tmp_path / "lib" / "train"), "--out", str(tmp_path / "model"), "--pipeline",
               str(pipe), "--epochs", "1", "--batch-size", "16", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    stored = CellModelRecord.load(tmp_path / "model").provenance["warnings"]
    assert stored and stored[0].startswith("validation split: its validation part has 1 ")
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("warning: ")]
    assert lines[0] == f"warning: {stored[0]}"
    assert json.loads((tmp_path / "model" / "training.json").read_text())["warnings"] == stored


def test_validation_loss_worse_than_guessing_while_training_fits_is_flagged():
    """The cells demo's curve before the BatchNorm fix (issue 17): val loss 5.27, 11.13, 10.89, 0.85 over 5 classes."""
    labels, pats, parts = _parts(3)
    five = ("a", "b", "c", "d", "e")
    before = [{"epoch": e, "train_loss": t, "val_loss": v, "val_accuracy": a} for e, (t, v, a) in enumerate(
        [(0.882, 5.271, 0.200), (0.572, 11.133, 0.207), (0.435, 10.888, 0.277), (0.526, 0.854, 0.727)], start=1)]
    got = training_warnings(labels % 5, pats, parts, classes=five, history=before, min_patients_per_class=1)
    assert len(got) == 1 and got[0].startswith(
        "validation split: validation loss 5.271 at epoch 1 is above the loss of a uniform guess (1.609) while the "
        "training loss is 0.882, below it")
    after = [dict(h, val_loss=v) for h, v in zip(before, (0.539, 0.421, 1.026, 0.398))]
    assert training_warnings(labels % 5, pats, parts, classes=five, history=after, min_patients_per_class=1) == []
    # not flagged while the training loss is itself above the guess (nothing fitted yet), nor on NaN epochs
    assert worse_than_guessing_warnings([[2.0, float("nan")]], [[1.7, 0.1]], guess_loss=math.log(5)) == []
    with pytest.raises(ValueError, match="2 validation but 1 training"):
        worse_than_guessing_warnings([[1.0, 2.0]], [[1.0]], guess_loss=1.0)
