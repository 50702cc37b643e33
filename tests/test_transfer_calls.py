"""benchmarks/transfer.py: image / MRD % / combined call metrics against a hand-computed table (issue 17)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import transfer  # noqa: E402

# sample, patient, kind, p_mrd, mrd_pct, mrd_status, combined_call, simulator's MRD %, mrd_events
# (the row threshold is 0.5, cd45_events 10,000; combined_call as rescue_gpu.flow.mrd.combined_call gives it)
TABLE = [
    ("s1", "P1", "diagnosis", 0.90, 20.0, "positive", "positive", 25.0, 2000),
    ("s2", "P1", "mrd_positive", 0.30, 0.80, "positive", "positive", 0.9, 80),
    ("s3", "P2", "mrd_positive", 0.70, 0.05, "negative", "negative", 0.05, 5),
    ("s4", "P2", "diagnosis", 0.95, 30.0, "positive", "positive", 31.0, 3000),
    ("s5", "P3", "mrd_negative", 0.60, 0.00, "insufficient-events", "positive", 0.0, 0),
    ("s6", "P4", "control", 0.20, 0.01, "negative", "negative", 0.0, 1),
    ("s7", "P3", "mrd_negative", 0.10, 0.20, "below-lloq", "negative", 0.0, 20),
    ("s8", "P4", "control", 0.40, 0.00, "negative", "negative", 0.0, 0),
]


def _rows() -> list[dict[str, str]]:
    rows = [{"sample_id": s, "patient_id": g, "status": "scored", "p_mrd": str(p), "threshold": "0.5",
             "call": "positive" if p >= 0.5 else "negative", "mrd_pct": str(pct), "mrd_status": st,
             "combined_call": cc, "mrd_events": str(ev), "cd45_events": "10000"}
            for s, g, _, p, pct, st, cc, _, ev in TABLE]
    # a failed row is neither scored nor counted
    rows.append({"sample_id": "s9", "patient_id": "P5", "status": "failed", "p_mrd": "", "threshold": "0.5",
                 "call": "", "mrd_pct": "", "mrd_status": "", "combined_call": "", "mrd_events": "",
                 "cd45_events": ""})
    return rows


KINDS = {t[0]: t[2] for t in TABLE} | {"s9": "mrd_positive"}
LABEL = {s: int(k in ("diagnosis", "mrd_positive")) for s, k in KINDS.items()}


def _est(d: dict) -> float:
    return d["estimate"]


def test_call_metrics_hand_computed():
    m = transfer.call_metrics(_rows(), LABEL, KINDS, n_boot=200, seed=1)
    assert (m["n"], m["n_positive"], m["n_patients"], m["n_no_mrd"]) == (8, 4, 4, 0)
    # image: p >= 0.5 -> s1, s3, s4 of the positives (3/4), s5 of the negatives (spec 3/4);
    # AUC by p_mrd: 14 of 16 positive-negative pairs ordered; follow-ups+controls 6 of 8
    img = m["image"]
    assert _est(img["all"]["sensitivity"]) == pytest.approx(0.75)
    assert _est(img["all"]["specificity"]) == pytest.approx(0.75)
    assert _est(img["all"]["roc_auc"]) == pytest.approx(14 / 16)
    assert _est(img["follow_up_and_control"]["roc_auc"]) == pytest.approx(6 / 8)
    assert _est(img["mrd_positive"]["sensitivity"]) == pytest.approx(0.5)
    assert _est(img["mrd_negative"]["specificity"]) == pytest.approx(0.5)
    assert _est(img["control"]["specificity"]) == pytest.approx(1.0)
    # MRD %: only "positive" status counts (s7's below-lloq and s5's insufficient-events do not):
    # s1, s2, s4 -> sens 3/4, spec 1; AUC by mrd_pct 15/16 (s3's 0.05 < s7's 0.2), follow-ups 7/8
    mrd = m["mrd"]
    assert mrd["positive"] == 3
    assert _est(mrd["all"]["sensitivity"]) == pytest.approx(0.75)
    assert _est(mrd["all"]["specificity"]) == pytest.approx(1.0)
    assert _est(mrd["all"]["roc_auc"]) == pytest.approx(15 / 16)
    assert _est(mrd["follow_up_and_control"]["roc_auc"]) == pytest.approx(7 / 8)
    assert _est(mrd["mrd_positive"]["sensitivity"]) == pytest.approx(0.5)
    assert _est(mrd["mrd_negative"]["specificity"]) == pytest.approx(1.0)
    # combined: s1, s2, s4 and s5 (inconclusive count, image positive) -> sens 3/4, spec 3/4; no AUC
    comb = m["combined"]
    assert comb["positive"] == 4
    assert _est(comb["all"]["sensitivity"]) == pytest.approx(0.75)
    assert _est(comb["all"]["specificity"]) == pytest.approx(0.75)
    assert comb["all"]["roc_auc"] is None
    assert _est(comb["mrd_negative"]["specificity"]) == pytest.approx(0.5)
    # as if at ELN's 500,000 CD45+ events: s5's zero count is a quantified negative the image
    # model may not overturn -> s1, s2, s4 only: sens 3/4, spec 1
    eln = m["combined_at_eln_counts"]
    assert eln["positive"] == 3
    assert _est(eln["all"]["specificity"]) == pytest.approx(1.0)
    assert _est(eln["all"]["sensitivity"]) == pytest.approx(0.75)
    # undefined metrics per kind are None; intervals bracket the estimate
    assert img["control"]["sensitivity"]["estimate"] is None
    for call in (img, mrd, comb):
        for metric in ("sensitivity", "specificity"):
            d = call["all"][metric]
            assert d["low"] <= d["estimate"] <= d["high"]


def test_call_metrics_catches_swapped_labels_and_threshold_direction():
    """A swapped truth or a reversed threshold gives other figures (the checks above are not vacuous)."""
    swapped = transfer.call_metrics(_rows(), {s: 1 - v for s, v in LABEL.items()}, KINDS, n_boot=50)
    assert _est(swapped["mrd"]["all"]["sensitivity"]) == pytest.approx(0.0)
    assert _est(swapped["image"]["all"]["roc_auc"]) == pytest.approx(2 / 16)
    # the image call uses the row's own threshold, p >= threshold (not <=): at threshold 0.35
    # s2 (0.30) stays negative and s8 (0.40) turns positive
    rows = [r | {"threshold": "0.35"} for r in _rows()]
    m = transfer.call_metrics(rows, LABEL, KINDS, n_boot=50)
    assert _est(m["image"]["all"]["sensitivity"]) == pytest.approx(0.75)
    assert _est(m["image"]["all"]["specificity"]) == pytest.approx(0.5)


def test_call_metrics_without_mrd_columns_counts_them():
    drop = ("mrd_pct", "mrd_status", "combined_call", "mrd_events", "cd45_events")
    rows = [{k: v for k, v in r.items() if k not in drop} for r in _rows()]
    m = transfer.call_metrics(rows, LABEL, KINDS, n_boot=20)
    assert m["n_no_mrd"] == 8
    assert m["mrd"]["positive"] == 0 and m["mrd"]["all"]["roc_auc"] is None
    assert "combined_at_eln_counts" not in m
    assert _est(m["image"]["all"]["roc_auc"]) == pytest.approx(14 / 16)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def test_metrics_from_files_both_truth_definitions_and_tables(tmp_path):
    scores = _write(tmp_path / "scores.csv", _rows())
    truth = _write(tmp_path / "truth.csv", [{"sample_id": t[0], "kind": t[2], "observed_fraction": repr(t[7] / 100)}
                                            for t in TABLE] + [{"sample_id": "s9", "kind": "mrd_positive",
                                                                "observed_fraction": "0.01"}])
    r = transfer._metrics(scores, transfer._kinds(truth), 50, 0, transfer._truth_pct(truth))
    # image block of the old output is unchanged in form and agrees with call_metrics
    assert _est(r["all"]["roc_auc"]) == pytest.approx(14 / 16)
    assert r["n"] == 8 and r["n_failed"] == 1
    assert _est(r["calls"]["mrd"]["all"]["sensitivity"]) == pytest.approx(0.75)
    # by the simulator's truth (>= 0.1 %), s3 (0.05 %) is negative: the MRD call finds 3 of 3 positives
    # and s3 is a true negative of it; the image call's s3 becomes a false positive
    t = r["calls_truth_ge_0.1"]
    assert t["n_positive"] == 3
    assert _est(t["mrd"]["all"]["sensitivity"]) == pytest.approx(1.0)
    assert _est(t["mrd"]["all"]["specificity"]) == pytest.approx(1.0)
    assert _est(t["image"]["all"]["specificity"]) == pytest.approx(3 / 5)
    table = transfer._calls_table({"main → labb": r})
    lines = table.splitlines()
    assert len(lines) == 2 + 4 and lines[3].startswith("| main → labb | mrd | 0.94 [")
    assert "| combined | n/a | n/a | 0.75 [" in lines[4]
    assert np.isfinite(_est(r["calls"]["image"]["all"]["roc_auc"]))



@pytest.mark.parametrize("method", ["landmarks", "peaks"])
def test_landmark_table_of_the_training_manifest_loads_as_the_pipelines_normalize(tmp_path, method):
    from rescue_gpu.cli import main
    from rescue_gpu.config import load_pipeline

    cohort = tmp_path / "cohort"
    assert main(["simulate", str(cohort), "--samples", "2", "--events", "2000", "--seed", "3"]) == 0
    aml = Path(load_pipeline("aml-mrd").source)
    block = transfer._landmarks(aml, cohort / "manifest.csv", method, [0.1, 0.5, 0.9], ["CD45", "SSC-A"])
    lab = tmp_path / "lab.toml"
    lab.write_text(aml.read_text(encoding="utf-8") + "\n" + block, encoding="utf-8")
    spec = load_pipeline(lab).preprocess.normalize
    assert spec.method == method and sorted(spec.targets) == ["CD45", "SSC-A"]
    assert all(len(t) == 3 for t in spec.targets.values()) if method == "landmarks" else \
        all(1 <= len(t) <= 4 for t in spec.targets.values())
