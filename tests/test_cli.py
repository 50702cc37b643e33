"""The command line: output, exit codes (0 ok, 2 usage/config, 3 failed samples), no tracebacks."""

import re
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.cli import main
from rescue_gpu.fcs import write_fcs


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_fcs_inspect_good_and_refused(tmp_path, capsys):
    good = write_fcs(tmp_path / "good.fcs", np.ones((5, 2), np.float32), channels=["FSC-A", "FL1-A"], markers=["", "CD34"])
    bad = tmp_path / "bad.fcs"
    bad.write_bytes(b"FCS3.0    garbage")
    rc, out, _ = _run(capsys, "fcs", "inspect", good)
    assert rc == 0 and "FCS3.1" in out and "CD34" in out and "events:     5" in out
    rc, out, _ = _run(capsys, "fcs", "inspect", good, bad)
    assert rc == 3 and "REFUSED" in out and str(bad) in out


def test_config_errors_exit_2_without_traceback(tmp_path, capsys):
    p = tmp_path / "p.toml"
    p.write_text("[panel]\nmarkerz = []\n")
    rc, _, err = _run(capsys, "config", "--pipeline", p)
    assert rc == 2 and "unknown key 'panel.markerz'" in err and "Traceback" not in err


def test_usage_error_exit_2(capsys):
    rc, _, err = _run(capsys, "no-such-command")
    assert rc == 2 and "No such command" in err


def test_preprocess_failed_sample_exit_3(tmp_path, capsys):
    f = write_fcs(tmp_path / "s.fcs", np.ones((50, 2), np.float32), channels=["FSC-A", "FL1-A"], markers=["", "CD3"])
    rc, _, err = _run(capsys, "preprocess", f)
    assert rc == 3 and "CD45" in err and "s.fcs" in err


def test_preprocess_manifest_errors_exit_2(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("sample_id,file\n")
    rc, _, err = _run(capsys, "preprocess", m)
    assert rc == 2 and "missing column(s) path" in err


def test_simulate_then_preprocess(tmp_path, capsys):
    out = tmp_path / "cohort"
    rc, text, _ = _run(capsys, "simulate", out, "--samples", 5, "--events", 3000, "--seed", 1)
    assert rc == 0 and "wrote 5 samples" in text
    manifest = (out / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "sample_id,path,patient_id,timepoint,label" and len(manifest) == 6
    rc, text, _ = _run(capsys, "preprocess", out / "manifest.csv")
    assert rc == 0 and text.count(" ok ") == 5


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    rc, text, err = _run(capsys, "demo", "--out", tmp_path / "d", "--samples", 16, "--events", 2500)
    assert rc == 0, err
    report = tmp_path / "d" / "run" / "report.html"
    assert f"report: {report}" in text.replace("\n", "")
    html = report.read_text()
    assert "<img" in html and "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html), "the report must be self-contained"
    scores = (tmp_path / "d" / "run" / "scores.csv").read_text().splitlines()
    assert scores[0].startswith("sample_id,patient_id,timepoint,p_mrd,call,threshold,status,error,n_events,n_events_used")


def test_reference_build_and_project(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    assert _run(capsys, "simulate", cohort, "--samples", 6, "--events", 3000, "--seed", 2)[0] == 0
    ref = tmp_path / "ref"
    rc, text, err = _run(capsys, "reference", "build", cohort / "manifest.csv", "--out", ref, "--events-per-sample", 300)
    assert rc == 0, err
    assert "1,800 events x 12 markers from 6 samples" in text and (ref / "reference.json").exists()
    rc, _, err = _run(capsys, "reference", "build", cohort / "manifest.csv", "--out", ref)
    assert rc == 2 and "already exists" in err
    out = tmp_path / "proj"
    rc, text, err = _run(capsys, "project", cohort / "fcs" / "S00000.fcs", "--reference", ref, "--out", out, "--backend", "cpu")
    assert rc == 0, err
    coords, image = np.load(out / "coords.npy"), np.load(out / "image.npy")
    assert coords.shape[1] == 2 and image.shape == (1, 128, 128) and image.max() == 1.0
    assert (out / "image_0_density.png").exists()


def test_reference_import_needs_trust(tmp_path, capsys):
    p = tmp_path / "m.pkl"
    p.write_bytes(b"not really a pickle")
    rc, _, err = _run(capsys, "reference", "import-umap", p, "--markers", "a,b", "--out", tmp_path / "r")
    assert rc == 2 and "--trust" in err and not (tmp_path / "r").exists()
