"""``rescue score`` end to end through the command line.

One run on a real ``LocalCluster`` (2 worker processes) with good samples and a garbage,
a truncated, a missing and another panel's file; then the same cohort in-process
(parity with Dask, resume skipping), directory input, manifest errors and exit codes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rescue_gpu.fcs import read_fcs, write_fcs

from .test_cohort_fixtures import build_assets, run_cli


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, " ".join(stdout.split()), " ".join(stderr.split())


def run_here(args: list, capsys: pytest.CaptureFixture) -> _Result:
    """``rescue score`` in this process (``cli.main``: the same exit-code mapping, no torch import per call)."""
    from rescue_gpu.cohort.cli import _main

    capsys.readouterr()
    rc = _main([str(a) for a in args])
    out = capsys.readouterr()
    return _Result(rc, out.out, out.err)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")


@pytest.fixture(scope="module")
def mixed_manifest(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three good samples plus garbage, truncated, missing and other-panel files."""
    d = tmp_path_factory.mktemp("mixed")
    good = list(csv.DictReader(open(assets["manifest"])))[:3]
    for r in good:
        r["path"] = str((assets["cohort"] / r["path"]).resolve())
    (d / "garbage.fcs").write_bytes(b"not an fcs file " * 20)
    data = Path(good[0]["path"]).read_bytes()
    (d / "truncated.fcs").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    write_fcs(d / "otherpanel.fcs", rng.uniform(0, 1000, (2000, 4)).astype("f4"),
              channels=["FSC-A", "SSC-A", "FL1-A", "FL2-A"], markers=["", "", "CD3", "CD4"])
    bad = [{"sample_id": s, "path": f"{s}.fcs", "patient_id": "PX"} for s in ("garbage", "truncated", "missing", "otherpanel")]
    with open(d / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["sample_id", "path", "patient_id", "timepoint", "label"])
        w.writeheader()
        for r in good + bad:
            w.writerow({k: r.get(k, "") for k in w.fieldnames})
    return d / "manifest.csv"


@pytest.fixture(scope="module")
def dask_run(assets: dict[str, Path], mixed_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("dask") / "run"
    res = run_cli(["score", mixed_manifest, "--reference", assets["reference"], "--model", assets["model_low"],
                   "--out", out, "--workers", "2", "--threads-per-worker", "1", "--samples-per-task", "2",
                   "--dashboard-address", ":0", "--flag-events"])
    return res, out


def test_dask_run_isolates_failures_and_exits_3(dask_run) -> None:
    res, out = dask_run
    assert res.returncode == 3, res.stderr[-3000:]
    assert "LocalCluster" in res.stdout and "dashboard" in res.stdout
    df = pd.read_csv(out / "scores.csv", keep_default_na=False)
    status = dict(zip(df["sample_id"], df["status"]))
    assert [s for s, v in status.items() if v == "scored"] == ["S00000", "S00001", "S00002"]
    err = dict(zip(df["sample_id"], df["error"]))
    assert "not an FCS file" in err["garbage"]
    assert "truncated" in err["truncated"]
    assert "file not found" in err["missing"]
    assert "panel marker" in err["otherpanel"]
    for sid in ("garbage", "truncated", "missing", "otherpanel"):
        assert f"failed: {sid}:" in res.stderr


def test_outputs_have_the_documented_columns(dask_run) -> None:
    _, out = dask_run
    df = pd.read_csv(out / "scores.csv", keep_default_na=False)
    expected = ["sample_id", "patient_id", "timepoint", "p_mrd", "call", "threshold", "status", "error", "n_events",
                "n_events_used", "debris", "doublets", "saturated", "non_finite"]
    assert set(expected) <= set(df.columns)
    pq = pd.read_parquet(out / "scores.parquet")
    assert list(pq["sample_id"]) == list(df["sample_id"]) and len(pq) == 7
    scored = pq[pq["status"] == "scored"]
    assert scored["p_mrd"].between(0, 1).all() and (scored["call"] == "positive").all()  # threshold 0
    assert (scored["n_events"] == 2500).all() and (scored["n_events_used"] <= scored["n_events"]).all()


def test_report_is_self_contained(dask_run) -> None:
    _, out = dask_run
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # histogram, ROC, gallery
    assert "<script" not in html and "src='http" not in html and 'src="http' not in html
    for section in ("Summary", "Evaluation", "Images", "Failed samples", "Provenance"):
        assert f"<h2>{section}</h2>" in html
    assert "file not found" in html


def test_no_identifiers_without_keep_identifiers(dask_run, mixed_manifest: Path) -> None:
    _, out = dask_run
    texts = [(out / "scores.csv").read_text(), (out / "report.html").read_text()]
    texts += [p.read_text() for p in (out / "store.zarr").rglob("zarr.json")]
    for text in texts:
        assert "$FIL" not in text and "$SRC" not in text and str(mixed_manifest.parent) not in text


def test_flag_events_writes_fcs_with_flag_parameter(dask_run, assets: dict[str, Path]) -> None:
    _, out = dask_run
    flagged = sorted(p.name for p in (out / "flagged").glob("*.fcs"))
    assert flagged == ["S00000.fcs", "S00001.fcs", "S00002.fcs"]
    f = read_fcs(out / "flagged" / "S00000.fcs")
    orig = read_fcs(assets["cohort"] / "fcs" / "S00000.fcs")
    assert f.channels[-1] == "RESCUE_FLAG" and f.channels[:-1] == orig.channels
    assert f.n_events == orig.n_events
    flags = f.events[:, -1]
    assert set(np.unique(flags)) <= {0.0, 1.0} and 0 < flags.sum() < f.n_events
    np.testing.assert_allclose(f.events[:, :-1], orig.events, rtol=1e-6)  # float data: stored values unchanged
    assert "$FIL" not in f.keywords and "$FIL" in orig.keywords


def test_in_process_run_equals_dask_and_resume_skips(dask_run, assets: dict[str, Path], mixed_manifest: Path,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, dask_out = dask_run
    res = run_here(["score", mixed_manifest, "--reference", assets["reference"], "--model", assets["model_low"],
                   "--out", tmp_path / "run", "--in-process", "--flag-events", "--no-report"], capsys)
    assert res.returncode == 3, res.stderr[-2000:]
    a = pd.read_csv(dask_out / "scores.csv", keep_default_na=False)
    b = pd.read_csv(tmp_path / "run" / "scores.csv", keep_default_na=False)
    assert list(a["status"]) == list(b["status"]) and list(a["call"]) == list(b["call"])
    np.testing.assert_allclose(pd.to_numeric(a["p_mrd"]), pd.to_numeric(b["p_mrd"]), rtol=1e-5, atol=1e-6)
    again = run_here(["score", mixed_manifest, "--reference", assets["reference"], "--model", assets["model_low"],
                     "--out", tmp_path / "run", "--in-process", "--flag-events", "--no-report"], capsys)
    assert again.returncode == 3 and "4 to score, 3 already done" in again.stdout  # failed ones are retried


def test_directory_input_scores_every_file(assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_here(["score", assets["cohort"] / "fcs", "--reference", assets["reference"], "--model", assets["model"],
                   "--out", tmp_path / "run", "--in-process"], capsys)
    assert res.returncode == 0, res.stderr[-2000:]
    df = pd.read_csv(tmp_path / "run" / "scores.csv", keep_default_na=False)
    assert sorted(df["sample_id"]) == [f"S0000{i}" for i in range(6)] and (df["status"] == "scored").all()
    assert set(df["call"]) <= {"positive", "negative"}


def test_manifest_errors_exit_2_before_any_work(assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("sample_id,path,label\nA,a.fcs,positive\nA,b.fcs,maybe\n")
    res = run_here(["score", bad, "--reference", assets["reference"], "--model", assets["model"], "--out", tmp_path / "run"], capsys)
    assert res.returncode == 2
    assert "duplicate sample_id 'A'" in res.stderr and "maybe" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("id,file\nA,a.fcs\n")
    res = run_here(["score", nocol, "--reference", assets["reference"], "--model", assets["model"], "--out", tmp_path / "r2"], capsys)
    assert res.returncode == 2 and "missing column" in res.stderr


def test_bad_reference_or_model_exit_2(assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_here(["score", assets["manifest"], "--reference", tmp_path / "nope", "--model", assets["model"],
                   "--out", tmp_path / "run"], capsys)
    assert res.returncode == 2 and "not a reference directory" in res.stderr
    meta = json.loads((assets["model"] / "model.json").read_text())
    assert meta["reference_fingerprint"]
