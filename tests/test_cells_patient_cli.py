"""``rescue cells train --level patient`` and ``rescue cells score --level patient`` end to end on a tiny cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rescue_gpu.cells.mil import MilModelRecord
from rescue_gpu.cells.record import CellModelRecord, build_cell_model
from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.cli import main
from rescue_gpu.simulate.cells.subtype import SUBTYPES, simulate_subtype_cohort


def _cell_model(path: Path, pipe_path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    pipe = load_cell_pipeline(pipe_path)
    net = build_cell_model(architecture="resnet18", in_channels=3, n_classes=len(pipe.classes.names))
    return CellModelRecord.from_pipeline(net.eval(), pipe).save(path)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mil")
    rc = main(["cells", "simulate-subtype", str(root / "tree"), "--patients-per-class", "3", "--cells", "8",
               "--size", "32", "--seed", "3"])
    assert rc == 0
    ref = simulate_subtype_cohort(root / "ref", patients_per_class=3, cells_per_patient=8, size=32, seed=3)
    assert (root / "tree" / "truth.csv").read_text() == ref.truth_csv.read_text()
    pipe = root / "p.toml"
    text = Path(load_cell_pipeline("smear-aml-subtype").source).read_text()
    pipe.write_text(text.replace("resize = 224", "resize = 0").replace("size = 224", "size = 32"))
    return root, pipe, _cell_model(root / "cell", pipe, 0), _cell_model(root / "other", pipe, 1)


def test_train_then_score_patients(cohort, capsys):
    root, pipe, cell, other = cohort
    rc = main(["cells", "train", str(root / "tree"), "--level", "patient", "--cell-model", str(cell),
               "--out", str(root / "mil"), "--pipeline", str(pipe), "--folds", "3", "--epochs", "3",
               "--bag-size", "6"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "15 patients, 120 cells, 512 features per cell" in out and "fold 3/3" in out
    rec = MilModelRecord.load(root / "mil")
    assert rec.classes == SUBTYPES and rec.cell_model_sha256 == CellModelRecord.load(cell).sha256
    cv = rec.metrics["cv"]
    assert cv["folds"] == 3 and np.asarray(cv["confusion"]["counts"]).sum() == 15

    rc = main(["cells", "score", str(root / "tree"), "--level", "patient", "--model", str(root / "mil"),
               "--cell-model", str(cell), "--out", str(root / "run"), "--pipeline", str(pipe)])
    out = capsys.readouterr().out
    assert rc == 0, out
    patients = pd.read_csv(root / "run" / "patients.csv")
    assert len(patients) == 15 and set(patients["truth"]) == set(SUBTYPES)
    probs = patients[[f"p_{c}" for c in SUBTYPES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    assert (patients["call"] == np.array(SUBTYPES)[probs.argmax(1)]).all()
    cells = pd.read_parquet(root / "run" / "cells.parquet")
    assert len(cells) == 120
    np.testing.assert_allclose(cells.groupby("patient_id")["attention"].sum().to_numpy(), 1.0, atol=1e-5)
    top = cells[cells["attention_rank"] == 1].set_index("patient_id")["attention"]
    assert (top.to_numpy() >= cells.groupby("patient_id")["attention"].max().loc[top.index].to_numpy() - 1e-12).all()
    page = (root / "run" / "report.html").read_text()
    assert "Confusion matrix (patients)" in page and "95 % bootstrap interval" in page
    assert page.count("attention 0.") >= 15 and "data:image/png" in page


def test_score_refuses_another_cell_network(cohort, capsys):
    root, pipe, cell, other = cohort
    if not (root / "mil").exists():
        pytest.skip("needs the model of test_train_then_score_patients")
    rc = main(["cells", "score", str(root / "tree"), "--level", "patient", "--model", str(root / "mil"),
               "--cell-model", str(other), "--out", str(root / "run2"), "--pipeline", str(pipe)])
    err = capsys.readouterr().err
    assert rc != 0 and "score with the cell model the MIL model was trained with" in err.replace("\n", " ")


def test_patient_level_needs_a_cell_model(cohort, capsys):
    root, pipe, _, _ = cohort
    rc = main(["cells", "train", str(root / "tree"), "--level", "patient", "--out", str(root / "x"),
               "--pipeline", str(pipe)])
    assert rc == 2 and "--cell-model" in capsys.readouterr().err


def test_patient_options_reach_the_record(cohort, capsys):
    root, pipe, cell, _ = cohort
    rc = main(["cells", "train", str(root / "tree"), "--level", "patient", "--cell-model", str(cell),
               "--out", str(root / "mil2"), "--pipeline", str(pipe), "--folds", "1", "--epochs", "1",
               "--bag-size", "4", "--pooling", "attention", "--members", "2"])
    assert rc == 0, capsys.readouterr().out
    rec = MilModelRecord.load(root / "mil2")
    assert rec.members == 2 and rec.layout.pooling == "attention"


def test_bad_pooling_is_a_usage_error(cohort, capsys):
    root, pipe, cell, _ = cohort
    rc = main(["cells", "train", str(root / "tree"), "--level", "patient", "--cell-model", str(cell),
               "--out", str(root / "mil3"), "--pipeline", str(pipe), "--pooling", "max"])
    err = capsys.readouterr().err
    assert rc == 2 and "mil.pooling must be one of" in err and not (root / "mil3").exists()
