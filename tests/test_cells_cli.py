"""``rescue cells simulate`` and ``rescue cells train`` end to end on a tiny library; their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rescue_gpu.cells.record import CellModelRecord
from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rc = main(["cells", "simulate", str(root / "lib"), "--assay", "ifc", "--layout", "tree", "--patients", "5",
               "--cells-per-class", "4", "--samples", "2", "--cells-per-sample", "20", "--seed", "2"])
    assert rc == 0
    pipe = root / "p.toml"
    text = Path(load_cell_pipeline("ifc-labelfree").source).read_text()
    pipe.write_text(text.replace('architecture = "resnet50"', 'architecture = "resnet18"'))
    return root, pipe


def test_simulate_then_train_writes_a_loadable_model(tiny, capsys):
    root, pipe = tiny
    capsys.readouterr()
    rc = main(["cells", "train", str(root / "lib" / "train"), "--out", str(root / "model"), "--pipeline", str(pipe),
               "--epochs", "2", "--batch-size", "16", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "epoch 1:" in out and "epoch 2:" in out
    rec = CellModelRecord.load(root / "model")
    assert rec.architecture == "resnet18" and rec.classes == load_cell_pipeline("ifc-labelfree").classes.names
    assert rec.channels == ("Ch1", "Ch6") and rec.image_size == 48
    report = json.loads((root / "model" / "training.json").read_text())
    split = report["split"]
    assert sum(split[p]["patients"] for p in ("train", "val", "test")) == 5  # patients, not cells, are split
    assert sum(split[p]["cells"] for p in ("train", "val", "test")) == 5 * 5 * 4
    assert rec.provenance["training_data"]["n_cells"] == 5 * 5 * 4
    assert set(rec.rates) >= {"tpr", "fpr", "n_pos", "n_neg"}


def test_train_refuses_unknown_class_folder(tiny, tmp_path, capsys):
    root, pipe = tiny
    train = tmp_path / "train"
    shutil.copytree(root / "lib" / "train", train)
    (train / "blast").rename(train / "myeloblast")
    rc = main(["cells", "train", str(train), "--out", str(tmp_path / "m"), "--pipeline", str(pipe), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "myeloblast" in err and "blast" in err
    assert not (tmp_path / "m").exists()


def test_train_refuses_a_flow_pipeline(tiny, tmp_path, capsys):
    root, _ = tiny
    rc = main(["cells", "train", str(root / "lib" / "train"), "--out", str(tmp_path / "m"), "--pipeline", "aml-mrd"])
    assert rc == 2 and 'kind = "cells"' in capsys.readouterr().err


def test_simulate_refuses_channel_tiffs_for_smears(tmp_path, capsys):
    rc = main(["cells", "simulate", str(tmp_path / "x"), "--assay", "smear", "--layout", "channel-tiffs"])
    assert rc == 2 and "channel-tiffs" in capsys.readouterr().err
