"""Tests of the cohort simulator (rescue_gpu.simulate)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import flowio
import numpy as np
import pytest

from rescue_gpu.errors import RescueError
from rescue_gpu.simulate import (
    INSTRUMENTS,
    KINDS,
    MARKERS,
    class_counts,
    draw_patient,
    plan_cohort,
    simulate_cohort,
    simulate_sample,
)
from rescue_gpu.simulate.flow import MARKER_FLUOR

N_EVENTS = 20_000


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    simulate_cohort(out, n_samples=12, n_events=2_000, seed=7)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ cohort layout

def test_class_counts_reference_size_exact() -> None:
    assert class_counts(1361) == {"diagnosis": 765, "mrd_positive": 336, "mrd_negative": 170, "control": 90}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 50, 137, 1000, 2722])
def test_class_counts_scaled(n: int) -> None:
    counts = class_counts(n)
    assert sum(counts.values()) == n
    if n >= 4:
        assert all(c >= 1 for c in counts.values())
    if n >= 100:  # largest remainder: within one of the exact quota
        quota = {"diagnosis": 765, "mrd_positive": 336, "mrd_negative": 170, "control": 90}
        assert all(abs(counts[k] - n * quota[k] / 1361) < 1 for k in quota)
    assert class_counts(2722) == {"diagnosis": 1530, "mrd_positive": 672, "mrd_negative": 340, "control": 180}


def test_class_counts_weights_monitoring_mix() -> None:
    from rescue_gpu.simulate import MONITORING_COUNTS

    assert class_counts(100, MONITORING_COUNTS) == {"diagnosis": 30, "mrd_positive": 23, "mrd_negative": 30,
                                                    "control": 17}
    counts = class_counts(60, MONITORING_COUNTS)
    assert sum(counts.values()) == 60 and counts["mrd_negative"] + counts["control"] == 28
    assert class_counts(60, {"diagnosis": 765, "mrd_positive": 336, "mrd_negative": 170, "control": 90}) == class_counts(60)
    plan = plan_cohort(60, seed=0, weights=MONITORING_COUNTS)
    assert plan.counts() == counts
    assert plan_cohort(60, seed=0).counts() == class_counts(60)  # default unchanged
    for bad in ({"diagnosis": 1}, {**MONITORING_COUNTS, "control": -1}, dict.fromkeys(MONITORING_COUNTS, 0)):
        with pytest.raises(RescueError, match="class weights"):
            class_counts(10, bad)


def test_plan_patients_and_timepoints() -> None:
    plan = plan_cohort(1361, seed=3)
    assert plan.counts() == class_counts(1361)
    by_patient: dict[int, list[str]] = {}
    for s in plan.samples:
        by_patient.setdefault(s.patient_index, []).append(s.kind)
    for kinds in by_patient.values():
        if "control" in kinds:
            assert kinds == ["control"]
        else:
            assert kinds[0] == "diagnosis" and kinds.count("diagnosis") == 1
            assert 0 <= len(kinds) - 1 <= 3
    assert any(len(k) >= 3 for k in by_patient.values())
    assert len({s.sample_id for s in plan.samples}) == 1361


def test_manifest_columns_and_paths(cohort: Path) -> None:
    rows = _rows(cohort / "manifest.csv")
    assert list(rows[0]) == ["sample_id", "path", "patient_id", "timepoint", "label"]
    assert len(rows) == 12
    for r in rows:
        assert (cohort / r["path"]).is_file()
        assert r["timepoint"] in {"diagnosis", "follow-up", "control"}
        assert r["label"] in {"positive", "negative"}
        if r["timepoint"] in {"diagnosis", "control"}:
            assert r["label"] == ("positive" if r["timepoint"] == "diagnosis" else "negative")
    assert "blast_fraction" not in rows[0]


def test_truth_matches_manifest_and_laip_is_per_patient(cohort: Path) -> None:
    manifest = {r["sample_id"]: r for r in _rows(cohort / "manifest.csv")}
    truth = _rows(cohort / "truth.csv")
    assert {t["sample_id"] for t in truth} == set(manifest)
    laips: dict[str, set[str]] = {}
    for t in truth:
        m = manifest[t["sample_id"]]
        assert t["patient_id"] == m["patient_id"]
        positive = t["kind"] in ("diagnosis", "mrd_positive")
        assert (m["label"] == "positive") == positive
        assert (float(t["blast_fraction"]) > 0) == positive
        if t["kind"] == "control":
            assert t["laip"] == "" and int(t["n_blasts"]) == 0
        laips.setdefault(t["patient_id"], set()).add(t["laip"])
    assert all(len(v) == 1 for v in laips.values())


def test_fcs_files_readable_by_flowio(cohort: Path) -> None:
    for r in _rows(cohort / "manifest.csv"):
        f = flowio.FlowData(str(cohort / r["path"]))
        assert f.event_count == 2_000
        names = list(f.pnn_labels)
        events = np.reshape(np.asarray(f.events, dtype=np.float32), (2_000, len(names)))
        assert np.isfinite(events).all() and (np.diff(events[:, names.index("Time")]) >= 0).all()
        assert {"FSC-A", "FSC-H", "SSC-A", "Time", "FITC-A", "APC-H7-A", "BV786-A"} <= set(names)
        text = {k.lower().lstrip("$"): v for k, v in f.text.items()}  # flowio drops the "$"
        spill = text.get("spill") or text.get("spillover")
        assert spill is not None and spill.startswith("10,")
        assert text["p1r"] == "262144"
        for key in ("fil", "date", "cyt"):
            assert key in text
        leaks = ("blast", "positive", "negative", "diagnos", "follow", "control", "laip")
        assert not any(word in str(v).lower() for v in text.values() for word in leaks)


def test_fcs_keywords_carry_every_instrument_style() -> None:
    labels = {inst.name: set(inst.labels) for inst in INSTRUMENTS}
    assert "HLA-DR APC-H7" in labels["LSRFortessa"]
    assert "HLADR" in labels["FACSLyric"]
    assert {inst.spill_keyword for inst in INSTRUMENTS} == {"SPILL", "$SPILLOVER"}
    for inst in INSTRUMENTS:  # every marker appears once, with its fluorochrome's channel
        for marker in MARKERS:
            j = inst.layout.index(f"{MARKER_FLUOR[marker]}-A")
            assert inst.labels[j].replace("HLADR", "HLA-DR").startswith(marker)


# ------------------------------------------------------------------ determinism

def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 11), (b, 11), (c, 12)):
        simulate_cohort(out, n_samples=5, n_events=1_000, seed=seed)
    assert _digest(a) == _digest(b)
    da, dc = _digest(a), _digest(c)
    assert da.keys() == dc.keys() and all(da[k] != dc[k] for k in da if k.endswith(".fcs"))


def test_sample_independent_of_order(tmp_path: Path) -> None:
    from rescue_gpu.simulate import write_sample

    plan = plan_cohort(6, seed=5)
    (tmp_path / "x" / "fcs").mkdir(parents=True)
    (tmp_path / "y" / "fcs").mkdir(parents=True)
    for i in range(6):
        write_sample(plan, i, tmp_path / "x", n_events=500)
    for i in reversed(range(6)):
        write_sample(plan, i, tmp_path / "y", n_events=500)
    assert _digest(tmp_path / "x") == _digest(tmp_path / "y")


def test_progress_callback(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    summary = simulate_cohort(tmp_path, n_samples=4, n_events=500, seed=1, on_sample=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert summary.counts == {k: 1 for k in KINDS}


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs", [{"n_samples": 0, "n_events": 1000}, {"n_samples": 2, "n_events": 99}])
def test_bad_sizes_raise(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(RescueError):
        simulate_cohort(tmp_path, seed=0, **kwargs)


def test_unwritable_out_dir_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RescueError, match="output directory"):
        simulate_cohort(blocker / "cohort", n_samples=2, n_events=500, seed=0)


def test_control_with_blasts_rejected() -> None:
    with pytest.raises(RescueError):
        simulate_sample(kind="control", blast_fraction=0.01, n_events=500)
    with pytest.raises(RescueError):
        simulate_sample(kind="relapse", n_events=500)


# ------------------------------------------------------------------ signal truth

def _fluor(sim) -> np.ndarray:  # noqa: ANN001
    idx = [sim.channels.index(c) for c in sim.spillover.channels]
    return sim.events[:, idx].astype(np.float64)


def test_compensation_with_file_matrix_recovers_truth() -> None:
    sim = simulate_sample(n_events=N_EVENTS, seed=3)
    raw = _fluor(sim)
    truth = sim.truth["signal"].astype(np.float64)
    ok = (raw < 262143).all(axis=1)
    comp = raw[ok] @ np.linalg.inv(sim.spillover.matrix)
    err = comp - truth[ok]
    uncomp_err = raw[ok] - truth[ok]
    expected_sd = np.sqrt(2.0 * np.abs(truth[ok]) + 60.0**2)  # photon (<= 2/unit) + electronic noise (< 45)
    z = err / expected_sd
    assert np.abs(np.median(z, axis=0)).max() < 0.2
    assert (np.abs(z) < 6).mean() > 0.999
    pe = sim.spillover.channels.index("PE-A")  # FITC spills ~20% into PE: compensation matters
    assert np.abs(err[:, pe]).mean() < 0.25 * np.abs(uncomp_err[:, pe]).mean()


def test_spillover_keyword_parses_to_returned_matrix() -> None:
    sim = simulate_sample(n_events=500, seed=4)
    key = "SPILL" if "SPILL" in sim.keywords else "$SPILLOVER"
    parts = sim.keywords[key].split(",")
    n = int(parts[0])
    assert tuple(parts[1 : n + 1]) == sim.spillover.channels
    np.testing.assert_array_equal(np.array(parts[n + 1 :], float).reshape(n, n), sim.spillover.matrix)


@pytest.mark.parametrize("fraction", [1e-3, 0.02, 0.5])
def test_blast_fraction_matches_request(fraction: float) -> None:
    sim = simulate_sample(kind="mrd_positive" if fraction < 0.2 else "diagnosis", n_events=200_000,
                          seed=8, blast_fraction=fraction)
    t = sim.truth
    n_blast = int((t["labels"] == t["label_names"].index("blast")).sum())
    assert n_blast == t["n_blasts"]
    sd = np.sqrt(fraction * (1 - fraction) / t["n_leukocytes"])
    assert abs(t["observed_fraction"] - fraction) < 5 * sd


@pytest.mark.parametrize("kind", ["control", "mrd_negative"])
def test_negative_samples_have_no_blasts(kind: str) -> None:
    sim = simulate_sample(kind=kind, n_events=N_EVENTS, seed=2)
    assert sim.truth["n_blasts"] == 0
    assert not (sim.truth["labels"] == sim.truth["label_names"].index("blast")).any()
    assert sim.truth["label"] == "negative"


def _median_signal(sim, population: str, marker: str) -> float:  # noqa: ANN001
    t = sim.truth
    j = sim.spillover.channels.index(f"{MARKER_FLUOR[marker]}-A")
    return float(np.median(t["signal"][t["labels"] == t["label_names"].index(population), j]))


@pytest.mark.parametrize("aberration,marker,direction", [
    ("CD7+", "CD7", +1), ("CD56+", "CD56", +1), ("CD19+", "CD19", +1), ("HLA-DR-", "HLA-DR", -1),
    ("CD34-CD117+", "CD34", -1), ("CD34+CD117-", "CD117", -1), ("CD33++", "CD33", +1), ("CD13-", "CD13", -1),
])
def test_diagnosis_blasts_carry_laip(aberration: str, marker: str, direction: int) -> None:
    patient = draw_patient(21, aberrations=[aberration])
    sim = simulate_sample(patient, kind="diagnosis", n_events=N_EVENTS, seed=22, blast_fraction=0.3)
    ratio = _median_signal(sim, "blast", marker) / _median_signal(sim, "myeloid_progenitor", marker)
    assert (ratio > 3.0) if direction > 0 else (ratio < 1 / 3.0)
    assert sim.truth["laip"] == (aberration,)


def test_laip_kept_across_a_patients_samples() -> None:
    patient = draw_patient(30, aberrations=["CD7+", "HLA-DR-"], instrument=0)
    dx = simulate_sample(patient, kind="diagnosis", n_events=N_EVENTS, seed=31, blast_fraction=0.4)
    fu = simulate_sample(patient, kind="mrd_positive", n_events=N_EVENTS, seed=32, blast_fraction=0.05, visit=1)
    assert dx.truth["laip"] == fu.truth["laip"]
    for marker in ("CD7", "HLA-DR", "CD34"):
        a, b = _median_signal(dx, "blast", marker), _median_signal(fu, "blast", marker)
        assert 0.6 < a / b < 1.6, marker  # slight drift only (gains drift ~5% day to day)
    assert dx.channels == fu.channels  # same instrument


def test_doublets_and_debris_look_the_part() -> None:
    sim = simulate_sample(kind="control", n_events=N_EVENTS, seed=9)
    t, ev, ch = sim.truth, sim.events, sim.channels
    ratio = ev[:, ch.index("FSC-A")] / np.maximum(ev[:, ch.index("FSC-H")], 1)
    lab = t["labels"]
    single = ~np.isin(lab, [t["label_names"].index("doublet"), t["label_names"].index("debris")])
    assert np.median(ratio[lab == t["label_names"].index("doublet")]) > 1.3 * np.median(ratio[single])
    fsc = ev[:, ch.index("FSC-A")]
    assert np.median(fsc[lab == t["label_names"].index("debris")]) < 0.05 * 262144 < np.median(fsc[single])
    time_ = ev[:, ch.index("Time")]
    assert (np.diff(time_) >= 0).all() and time_[-1] > 0
    assert (ev[:, [ch.index(c) for c in sim.spillover.channels]] < 0).any()  # noise goes below zero
    assert ev.max() <= 262143


def test_plan_cohort_takes_the_class_counts_asked_for() -> None:
    counts = {"diagnosis": 5, "mrd_positive": 9, "mrd_negative": 4, "control": 3}
    plan = plan_cohort(21, seed=2, counts=counts)
    assert plan.counts() == counts
    by_patient: dict[int, list[str]] = {}
    for s in plan.samples:
        by_patient.setdefault(s.patient_index, []).append(s.kind)
    leuk = [k for k in by_patient.values() if k[0] != "control"]
    assert len(leuk) == 5 and all(k[0] == "diagnosis" and k.count("diagnosis") == 1 for k in leuk)
    assert sum(k == ["control"] for k in by_patient.values()) == 3
    again = plan_cohort(21, seed=2, counts=counts).samples  # same seed, same plan
    assert [(s.sample_id, s.patient_index, s.kind, s.visit) for s in again] == \
        [(s.sample_id, s.patient_index, s.kind, s.visit) for s in plan.samples]
    with pytest.raises(RescueError, match="sum to n_samples"):
        plan_cohort(20, seed=2, counts=counts)
    with pytest.raises(RescueError, match="unknown sample class"):
        plan_cohort(1, seed=2, counts={"relapse": 1})


def test_plan_cohort_refuses_counts_and_weights_together():
    from rescue_gpu.errors import RescueError
    from rescue_gpu.simulate.flow.cohort import MONITORING_COUNTS, plan_cohort

    with pytest.raises(RescueError, match="not both"):
        plan_cohort(10, seed=0, counts={"diagnosis": 10}, weights=MONITORING_COUNTS)
