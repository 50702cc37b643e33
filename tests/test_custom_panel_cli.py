"""A lab's own panel, as a new user would try it: ``reference build --pipeline``, then ``train`` and ``score`` without.

The cohort is the simulator's, rewritten as an 8-colour tube with other fluorochromes and
channel names than aml-mrd (CD45 V500, CD34 PerCP, ..., CD56 PE-CF594; no CD19, no CD38),
each file with its own ``$SPILLOVER`` over the new channel names. The pipeline file names
only what differs from the defaults. Everything runs through ``rescue_gpu.cli.main`` in this
process, with small sizes (16-pixel images, one epoch, two folds).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rescue_gpu.cli import main
from rescue_gpu.config import load_pipeline
from rescue_gpu.fcs import read_fcs, write_fcs
from rescue_gpu.fcs.types import Spillover
from rescue_gpu.preprocess.panel import match_panel

FLUOR = {"CD45": "V500", "CD34": "PerCP", "CD117": "PE-Cy5", "CD13": "BUV395", "CD33": "BB515",
         "HLA-DR": "BV650", "CD7": "AF700", "CD56": "PE-CF594"}
SCATTER = ("FSC-A", "FSC-H", "SSC-A")

PIPELINE = """
name = "lab-8colour"
description = "our 8-colour AML MRD tube"

[panel]
markers = ["CD45", "CD34", "CD117", "CD13", "CD33", "HLA-DR", "CD7", "CD56"]
scatter = ["FSC-A", "SSC-A"]

[preprocess]
compensation = "file"

[reference]
events_per_sample = 300
n_neighbors = 10
n_epochs = 30
min_events = 500

[raster]
size = 16

[model.head]
hidden = [16]
dropout = 0.0

[model.train]
folds = 2
max_epochs = 1
patience = 1
batch_size = 8
augment_copies = 1
"""


def _eight_colour(src: Path, dst: Path) -> None:
    """Rewrite a simulated 10-colour file as the 8-colour tube (stored values and spillover kept)."""
    f, panel = read_fcs(src), load_pipeline("aml-mrd").panel
    cols = dict(zip(panel.markers, match_panel(f.channels, f.markers, panel)))
    fluo = [cols[m] for m in FLUOR]
    keep = [f.channels.index(c) for c in SCATTER] + fluo + [f.channels.index("Time")]
    names = [*SCATTER, *(f"{FLUOR[m]}-A" for m in FLUOR), "Time"]
    labels = ["", "", "", *(f"{m} {FLUOR[m]}" for m in FLUOR), ""]
    at = [f.spillover.channels.index(f.channels[c]) for c in fluo]
    spill = Spillover(tuple(f"{FLUOR[m]}-A" for m in FLUOR), f.spillover.matrix[np.ix_(at, at)])
    kw = {"$CYT": "Lab cytometer", "$TIMESTEP": f.keywords["$TIMESTEP"],
          **{f"$P{i}R": f.keywords[f"$P{c + 1}R"] for i, c in enumerate(keep, start=1)}}
    write_fcs(dst, f.events[:, keep], channels=names, markers=labels, keywords=kw, spillover=spill)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from rescue_gpu.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("lab")
    summary = simulate_cohort(root / "sim", n_samples=12, n_events=1500, seed=5)
    (root / "fcs").mkdir()
    rows = list(csv.DictReader(open(summary.manifest)))
    for r in rows:
        _eight_colour(root / "sim" / r["path"], root / "fcs" / f"{r['sample_id']}.fcs")
        r["path"] = f"fcs/{r['sample_id']}.fcs"
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "lab-8colour.toml").write_text(PIPELINE)
    return {"root": root, "manifest": root / "manifest.csv", "pipeline": root / "lab-8colour.toml"}


def _run(capsys: pytest.CaptureFixture, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, " ".join(out.split()), " ".join(err.split())


@pytest.mark.slow
def test_train_and_score_take_the_pipeline_from_the_reference(lab: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    root, manifest = lab["root"], lab["manifest"]
    rc, out, err = _run(capsys, "reference", "build", manifest, "--out", root / "ref", "--pipeline", lab["pipeline"],
                        "--backend", "cpu")
    assert rc == 0, err
    assert "x 10 markers from 12 samples" in out  # 8 markers + 2 scatter and "warning:" not in err
    stored = json.loads((root / "ref" / "reference.json").read_text())["pipeline"]
    assert stored["name"] == "lab-8colour" and stored["panel"]["markers"] == list(FLUOR)
    assert stored["model"]["train"]["max_epochs"] == 1 and stored["raster"]["size"] == 16

    rc, out, err = _run(capsys, "train", manifest, "--reference", root / "ref", "--out", root / "model", "--device", "cpu")
    assert rc == 0, err
    assert "cross-validation (out-of-fold, 2 folds)" in out and "note:" not in err  # the stored training settings
    model = json.loads((root / "model" / "model.json").read_text())
    assert model["provenance"]["pipeline"] == "lab-8colour" and model["provenance"]["failed_samples"] == {}

    rc, out, err = _run(capsys, "score", manifest, "--reference", root / "ref", "--model", root / "model",
                        "--out", root / "run", "--in-process")
    assert rc == 0, err
    scores = pd.read_csv(root / "run" / "scores.csv", keep_default_na=False)
    assert len(scores) == 12 and (scores["status"] == "scored").all() and (scores["warnings"] == "").all()

    for cmd in (["score", manifest, "--reference", root / "ref", "--model", root / "model", "--out", root / "run2"],
                ["train", manifest, "--reference", root / "ref", "--out", root / "model2"]):
        rc, _, err = _run(capsys, *cmd, "--pipeline", "aml-mrd")
        assert rc == 2 and "Traceback" not in err, err
        assert "--pipeline aml-mrd does not match the pipeline reference" in err and "panel.markers" in err
        assert "not in the reference CD19, CD38" in err and "Leave out --pipeline" in err
    assert not (root / "run2").exists() and not (root / "model2").exists()
