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
    from rescue_gpu.flow.cli import _main

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
    (d / "adir.fcs").mkdir()
    bad = [{"sample_id": s, "path": f"{s}.fcs", "patient_id": "PX"}
           for s in ("garbage", "truncated", "missing", "otherpanel", "adir")]
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
                   "--dashboard-address", "127.0.0.1:0", "--flag-events"])
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
    assert "is a directory, not an FCS file" in err["adir"] and "unexpected" not in err["adir"]
    for sid in ("garbage", "truncated", "missing", "otherpanel", "adir"):
        assert f"failed: {sid}:" in res.stderr


def test_outputs_have_the_documented_columns(dask_run) -> None:
    _, out = dask_run
    df = pd.read_csv(out / "scores.csv", keep_default_na=False)
    expected = ["sample_id", "patient_id", "timepoint", "p_mrd", "call", "threshold", "status", "error", "n_events",
                "n_events_used", "debris", "doublets", "saturated", "non_finite"]
    assert set(expected) <= set(df.columns)
    pq = pd.read_parquet(out / "scores.parquet")
    assert list(pq["sample_id"]) == list(df["sample_id"]) and len(pq) == 8
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
    assert again.returncode == 3 and "5 to score, 3 already done" in again.stdout  # failed ones are retried


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


# ----------------------------------------------------------------------------- warnings, identifiers, help


def _write_manifest(path: Path, rows: list[tuple[str, Path]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "path", "patient_id"])
        w.writerows([(sid, str(p), f"P-{sid}") for sid, p in rows])
    return path


def _spillover_variants(src: Path, d: Path) -> tuple[Path, Path, str]:
    """``badspill.fcs`` (one ``$SPILLOVER`` channel name changed) and ``nospill.fcs`` (no matrix) made from ``src``."""
    from rescue_gpu.fcs.spillover import SPILLOVER_KEYWORDS
    from rescue_gpu.fcs.types import Spillover
    from rescue_gpu.fcs.writer import spillover_value

    f = read_fcs(src)
    kw = {k: v for k, v in f.keywords.items() if k not in SPILLOVER_KEYWORDS}
    names = list(f.spillover.channels)
    names[1] = names[1][:-2] + "-Q"  # e.g. BV510-A -> BV510-Q: not a $PnN of the file
    bad = write_fcs(d / "badspill.fcs", f.events, channels=f.channels, markers=f.markers,
                    keywords={**kw, "$SPILLOVER": spillover_value(Spillover(tuple(names), f.spillover.matrix))})
    none = write_fcs(d / "nospill.fcs", f.events, channels=f.channels, markers=f.markers, keywords=kw)
    return bad, none, names[1]


def test_bad_spillover_fails_the_sample_and_warnings_reach_every_output(assets: dict[str, Path], tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from rescue_gpu.runner.store import RunStore
    from rescue_gpu.preprocess.compensation import NO_FILE_MATRIX

    good = (assets["cohort"] / "fcs" / "S00000.fcs").resolve()
    bad, none, changed = _spillover_variants(good, tmp_path)
    manifest = _write_manifest(tmp_path / "m.csv", [("S00000", good), ("badspill", bad), ("nospill", none)])
    out = tmp_path / "run"
    res = run_here(["score", manifest, "--reference", assets["reference"], "--model", assets["model"], "--out", out,
                    "--in-process"], capsys)
    assert res.returncode == 3, res.stderr[-2000:]
    df = pd.read_csv(out / "scores.csv", keep_default_na=False).set_index("sample_id")
    assert dict(df["status"]) == {"S00000": "scored", "badspill": "failed", "nospill": "scored"}
    assert changed in df.loc["badspill", "error"] and '"none"' in df.loc["badspill", "error"]
    assert df.loc["S00000", "warnings"] == "" and df.loc["nospill", "warnings"] == NO_FILE_MATRIX
    pq = pd.read_parquet(out / "scores.parquet").set_index("sample_id")
    assert pq.loc["nospill", "warnings"] == NO_FILE_MATRIX and pq.loc["S00000", "warnings"] == ""
    assert f"failed: badspill: [badspill]: compensation = \"file\"" in res.stderr and changed in res.stderr
    assert f"warning: nospill: {NO_FILE_MATRIX}" in res.stderr and "warning: S00000" not in res.stderr
    assert RunStore(out / "store.zarr").read("nospill").record["warnings"] == [NO_FILE_MATRIX]
    assert RunStore(out / "store.zarr").read("S00000").record["warnings"] == []
    html = (out / "report.html").read_text()
    assert "<h2>Warnings</h2>" in html and "no spillover matrix in the file" in html


def test_flagged_fcs_leaves_out_identifiers_unless_kept(assets: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from rescue_gpu.fcs.spillover import SPILLOVER_KEYWORDS

    sim = read_fcs(assets["cohort"] / "fcs" / "S00000.fcs")
    src = write_fcs(tmp_path / "S00000.fcs", sim.events, channels=sim.channels, spillover=sim.spillover,
                    markers=[f"{m} pt J Doe" if m else "" for m in sim.markers],  # free text in $PnS
                    keywords={k: v for k, v in sim.keywords.items() if k not in SPILLOVER_KEYWORDS})
    orig = read_fcs(src)
    assert orig.keywords.get("$CYTSN") and orig.keywords.get("$INST") and orig.keywords.get("$DATE")
    manifest = _write_manifest(tmp_path / "m.csv", [("S00000", src)])
    flagged = {}
    for keep in (False, True):
        out = tmp_path / f"run-{keep}"
        res = run_here(["score", manifest, "--reference", assets["reference"], "--model", assets["model_low"],
                        "--out", out, "--in-process", "--flag-events", "--no-report",
                        *(["--keep-identifiers"] if keep else [])], capsys)
        assert res.returncode == 0, res.stderr[-2000:]
        flagged[keep] = read_fcs(out / "flagged" / "S00000.fcs")
    plain, kept = flagged[False], flagged[True]
    for key in ("$CYTSN", "$INST", "$FIL", "$DATE", "$BTIM", "$ETIM", "TUBE NAME", "CREATOR"):
        assert key not in plain.keywords, key
        assert kept.keywords[key] == orig.keywords[key], key
    assert plain.keywords["$CYT"] == orig.keywords["$CYT"] and plain.keywords["$TIMESTEP"] == orig.keywords["$TIMESTEP"]
    cd34 = next(i for i, m in enumerate(orig.markers) if m.upper().startswith("CD34"))
    assert "J Doe" in orig.markers[cd34] and plain.markers[cd34] == "CD34"  # $PnS: the panel's name, no free text
    assert plain.markers[orig.channels.index("FSC-A")] == ""
    assert kept.markers[:-1] == orig.markers  # --keep-identifiers: $PnS verbatim
    assert plain.spillover is not None and plain.spillover.channels == orig.spillover.channels


def test_flagged_keywords_allow_list_drops_serial_numbers() -> None:
    from rescue_gpu.flow.flag import flagged_keywords
    from rescue_gpu.fcs.types import FcsData

    kw = {"$CYT": "FACSCanto II (V96300015)", "$CYTSN": "V96300015", "$TIMESTEP": "0.01", "$SRC": "J. Doe",
          "$INSTADDRESS": "1 Main St", "$SMNO": "12345", "$OP": "op", "$PROJ": "p", "$EXP": "e", "$COM": "c",
          "$CELLS": "marrow", "$LAST_MODIFIER": "x", "$ORIGINALITY": "Original", "$SYS": "Windows host-7",
          "CYTNUM": "V96300015", "$P1G": "2.0", "$P1R": "1024", "$P1V": "500", "SPILL": "1,FSC-A,1"}
    fcs = FcsData(events=np.zeros((1, 1), np.float32), channels=["FSC-A"], markers=[""], keywords=kw, version="FCS3.1")
    plain = flagged_keywords(fcs, keep_identifiers=False)
    assert set(plain) == {"$TIMESTEP", "$P1R", "$P2R", "RESCUE_FLAG_NOTE"}  # $CYT with a serial number left out
    fcs.keywords["$CYT"] = "FACSCanto II"
    assert flagged_keywords(fcs, keep_identifiers=False)["$CYT"] == "FACSCanto II"
    kept = flagged_keywords(fcs, keep_identifiers=True)
    assert kept["$CYTSN"] == "V96300015" and kept["$SRC"] == "J. Doe" and kept["$P1V"] == "500"
    assert "$P1G" not in kept and "SPILL" not in kept  # the values are written gain-applied, the matrix as $SPILLOVER


def test_score_help_says_the_pipeline_comes_from_the_reference() -> None:
    import typer

    from rescue_gpu.cli import app

    for name in ("score", "train", "project"):
        command = typer.main.get_command(app).commands[name]
        option = next(p for p in command.params if "--pipeline" in p.opts)
        assert option.default is None and "the reference was built with" in option.help, name
