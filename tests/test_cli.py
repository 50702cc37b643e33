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


def _flat(text: str) -> str:
    """Whitespace normalised: a message check that does not depend on where lines would break."""
    return " ".join(text.split())


def _deep(base: Path, levels: int = 10) -> Path:
    """A folder nested ``levels`` deep under ``base``, each name 40 characters long (about 410 more characters)."""
    d = base.joinpath(*(f"level{i:02d}-" + "n" * 32 for i in range(levels)))
    d.mkdir(parents=True)
    return d


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
    base = _deep(tmp_path)  # as in a clone at a deep path: messages must not depend on the path's length
    cohort = base / "cohort"
    assert _run(capsys, "simulate", cohort, "--samples", 6, "--events", 3000, "--seed", 2)[0] == 0
    ref = base / "ref"
    rc, text, err = _run(capsys, "reference", "build", cohort / "manifest.csv", "--out", ref, "--events-per-sample", 300)
    assert rc == 0, err
    assert "1,800 events x 12 markers from 6 samples" in _flat(text) and (ref / "reference.json").exists()
    rc, _, err = _run(capsys, "reference", "build", cohort / "manifest.csv", "--out", ref)
    assert rc == 2 and "already exists" in _flat(err)
    assert err.count("\n") == 1 and err.startswith(f"error: {ref}: already exists")  # one unbroken line, whole path
    out = base / "proj"
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


def test_messages_are_one_unbroken_line_at_a_very_long_path(tmp_path, capsys):
    deep = _deep(tmp_path)
    bad_pipeline = deep / "pipeline with spaces.toml"
    bad_pipeline.write_text("[panel]\nmarkerz = []\n")
    rc, _, err = _run(capsys, "config", "--pipeline", bad_pipeline)
    assert rc == 2 and err.count("\n") == 1 and err.endswith("\n")
    assert str(bad_pipeline) in err and "unknown key 'panel.markerz'" in err
    sample = write_fcs(deep / "s.fcs", np.ones((50, 2), np.float32), channels=["FSC-A", "FL1-A"], markers=["", "CD3"])
    rc, _, err = _run(capsys, "preprocess", sample)
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert rc == 3 and len(failed) == 1 and "CD45" in failed[0] and str(sample) in failed[0]
    refused = deep / "refused.fcs"
    refused.write_bytes(b"FCS3.0    garbage")
    rc, out, _ = _run(capsys, "fcs", "inspect", refused)
    assert rc == 3 and any(str(refused) in line for line in out.splitlines())


def test_consoles_soft_wrap_only_off_a_terminal():
    import io

    from rescue_gpu.cliutil import _Console

    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped, tty = _Console(file=io.StringIO(), width=40), _Console(file=_Tty(), width=40, force_terminal=True)
    for c in (piped, tty):
        c.print("word " * 20, markup=False)
    assert piped.file.getvalue().count("\n") == 1 and piped.soft_wrap
    assert tty.file.getvalue().count("\n") > 1 and not tty.soft_wrap  # a terminal wraps as before


def test_progress_bar_leaves_nothing_in_a_log(capsys):
    from rescue_gpu.cliutil import progress

    with progress("working", 2) as advance:
        advance(0, 2)
        advance(1, 2)
    assert capsys.readouterr().err == ""


def test_preprocess_prints_warnings_and_fails_a_file_whose_spillover_does_not_fit(tmp_path, capsys):
    pipe = tmp_path / "p.toml"
    pipe.write_text('name = "two"\n[panel]\nmarkers = ["CD7", "CD56"]\nscatter = ["FSC-A"]\n')
    rng = np.random.default_rng(0)
    events = rng.uniform(20000, 60000, (200, 4)).astype(np.float32)
    channels, markers = ["FSC-A", "SSC-A", "FITC-A", "PE-A"], ["", "", "CD7", "CD56"]
    plain = write_fcs(tmp_path / "plain.fcs", events, channels=channels, markers=markers)
    bad = write_fcs(tmp_path / "bad.fcs", events, channels=channels, markers=markers,
                    keywords={"$SPILLOVER": "2,FITC-A,PE-X,1,0.1,0.2,1"})  # one channel name changed
    rc, _, err = _run(capsys, "preprocess", plain, "--pipeline", pipe)
    err = _flat(err)
    assert rc == 0 and "warning: plain: no spillover matrix in the file" in err
    assert "warning: plain: QC gate not run: doublets" in err  # no FSC-H in the file
    rc, _, err = _run(capsys, "preprocess", bad, "--pipeline", pipe)
    assert rc == 3 and "'PE-X'" in _flat(err) and 'compensation = "file"' in _flat(err)
