"""The independent Lab B generator (``rescue_gpu.simulate.labb``): files, determinism, MRD levels, independence, pipeline."""

from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import flowio
import numpy as np
import pytest

from rescue_gpu.config import load_pipeline
from rescue_gpu.fcs import read_fcs
from rescue_gpu.preprocess.panel import match_panel
from rescue_gpu.simulate.labb import (
    CHANNELS, FLUOR, FLUOR_CHANNELS, LABELS, MARKERS, PIPELINE_FILE, POPULATIONS, RANGE, draw_laip,
    nominal_spillover, simulate_labb_cohort, simulate_labb_sample,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rescue_gpu" / "simulate" / "labb"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labb") / "cohort"
    simulate_labb_cohort(out, n_patients=4, n_events=1500, seed=3, n_controls=2)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_files_read_back_with_the_declared_panel(cohort: Path) -> None:
    manifest = _rows(cohort / "manifest.csv")
    assert {r["timepoint"] for r in manifest} == {"diagnosis", "follow-up", "control"}
    assert {r["label"] for r in manifest if r["timepoint"] == "follow-up"} == {"positive", "negative"}
    panel = load_pipeline(cohort / "pipeline.toml").panel
    assert list(panel.markers) == list(MARKERS)
    for r in manifest:
        f = read_fcs(cohort / r["path"])
        assert tuple(f.channels) == CHANNELS and tuple(f.markers) == LABELS and f.events.shape == (1500, len(CHANNELS))
        assert f.spillover is not None and tuple(f.spillover.channels) == FLUOR_CHANNELS
        assert all(float(x) == RANGE for x in f.ranges())
        cols = match_panel(f.channels, f.markers, panel)
        assert [f.channels[c] for c in cols[: len(MARKERS)]] == [f"{FLUOR[m]}-A" for m in MARKERS]
        t = f.events[:, CHANNELS.index("Time")]
        assert np.all(np.diff(t) >= 0)
        fl = flowio.FlowData(str(cohort / r["path"]))
        assert fl.event_count == 1500 and fl.channel_count == len(CHANNELS)
        assert list(fl.pnn_labels) == list(CHANNELS) and list(fl.pnr_values) == [RANGE] * len(CHANNELS)
        assert [s or "" for s in fl.pns_labels] == list(LABELS)
        assert np.array_equal(fl.as_array(preprocess=False), f.events)


def test_pipeline_in_the_cohort_is_the_repository_file(cohort: Path) -> None:
    assert (cohort / "pipeline.toml").read_text() == PIPELINE_FILE.read_text()
    assert load_pipeline("labb-8colour").preprocess.fluorescence.t == float(RANGE)


def test_fluorochromes_and_spillover_differ_from_the_main_simulator() -> None:
    main_fluors = {"FITC", "PE", "PerCP-Cy5-5", "PE-Cy7", "APC", "APC-H7", "BV421", "BV510", "BV605", "BV786"}
    assert not set(FLUOR.values()) & main_fluors
    s = nominal_spillover()
    assert np.allclose(np.diag(s), 1.0) and (s >= 0).all() and (s[~np.eye(len(s), dtype=bool)] < 0.4).all()


def test_deterministic_for_a_seed(tmp_path: Path, cohort: Path) -> None:
    again = tmp_path / "again"
    simulate_labb_cohort(again, n_patients=4, n_events=1500, seed=3, n_controls=2)
    for name in ("manifest.csv", "truth.csv", "cohort.json"):
        assert (again / name).read_bytes() == (cohort / name).read_bytes()
    for r in _rows(cohort / "manifest.csv"):
        assert (again / r["path"]).read_bytes() == (cohort / r["path"]).read_bytes()
    other = tmp_path / "other"
    simulate_labb_cohort(other, n_patients=4, n_events=1500, seed=4, n_controls=2)
    assert (other / "fcs" / "LBP000-V0.fcs").read_bytes() != (cohort / "fcs" / "LBP000-V0.fcs").read_bytes()


@pytest.mark.parametrize("fraction", [0.002, 0.02, 0.3])
@pytest.mark.parametrize("regenerating", [False, True])
def test_blast_share_matches_the_requested_level(fraction: float, regenerating: bool) -> None:
    laip = draw_laip(np.random.default_rng(11))
    s = simulate_labb_sample(laip=laip, fraction=fraction, regenerating=regenerating, n_events=20000, seed=5)
    blast = POPULATIONS.index("blast")
    leuk = s.labels <= blast
    observed = float(np.mean(s.labels[leuk] == blast))
    sd = np.sqrt(fraction * (1 - fraction) / leuk.sum())
    assert abs(observed - fraction) < 4 * sd and s.n_blasts == int(np.sum(s.labels == blast))


def test_negative_samples_have_no_blasts_and_truth_agrees(cohort: Path) -> None:
    for r in _rows(cohort / "truth.csv"):
        if r["kind"] in ("mrd_negative", "control"):
            assert r["n_blasts"] == "0" and float(r["blast_fraction"]) == 0.0
        else:
            assert int(r["n_blasts"]) >= 1 and r["laip"]
    summary = json.loads((cohort / "cohort.json").read_text())
    assert summary["counts"]["control"] == 2 and summary["counts"]["diagnosis"] == 4


def test_no_import_from_the_main_simulator() -> None:
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                assert "flow" not in mod and not (node.level >= 2 and node.module in (None, "simulate")), (path, mod)
            elif isinstance(node, ast.Import):
                assert all("simulate.flow" not in a.name for a in node.names), path
    code = ("import sys, tempfile; from rescue_gpu.simulate.labb import simulate_labb_cohort; "
            "simulate_labb_cohort(tempfile.mkdtemp(), n_patients=1, n_events=300, seed=0, n_controls=1); "
            "print(sorted(m for m in sys.modules if m.startswith('rescue_gpu.simulate')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = eval(out)  # a printed list of module names
    assert loaded and not any(m.startswith("rescue_gpu.simulate.flow") for m in loaded), loaded


def test_command_line_entry(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "rescue_gpu.simulate.labb", "--out", str(out), "--patients", "2",
                           "--events", "300", "--seed", "1"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_samples"] == len(_rows(out / "manifest.csv"))
    bad = subprocess.run([sys.executable, "-m", "rescue_gpu.simulate.labb", "--out", str(out), "--patients", "1",
                          "--events", "50"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "at least" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_reference_build_and_preprocessing_with_its_pipeline(cohort: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from rescue_gpu.cli import main

    capsys.readouterr()
    assert main(["preprocess", str(cohort / "manifest.csv"), "--pipeline", str(cohort / "pipeline.toml")]) == 0
    out = capsys.readouterr().out
    assert "labb-8colour" in out and "failed" not in out
    rc = main(["reference", "build", str(cohort / "manifest.csv"), "--out", str(tmp_path / "ref"), "--pipeline",
               str(cohort / "pipeline.toml"), "--backend", "cpu", "--events-per-sample", "200"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    stored = json.loads((tmp_path / "ref" / "reference.json").read_text())["pipeline"]
    assert stored["name"] == "labb-8colour" and stored["panel"]["markers"] == list(MARKERS)
    n = len(_rows(cohort / "manifest.csv"))
    assert f" x 10 markers from {n} samples" in " ".join(out.split())
