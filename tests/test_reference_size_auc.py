"""benchmarks/reference_size_auc.py: held-out metrics against an independent peer, and its output schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import reference_size_auc as rsa  # noqa: E402

from rescue_gpu.runner.manifest import ManifestRow  # noqa: E402


def test_held_out_metrics_against_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    n = 40
    y = np.array([1] * 25 + [0] * 15)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1)
    rows = [ManifestRow(sample_id=f"s{i}", path=Path(f"s{i}.fcs"), patient_id=f"P{i // 2}",
                        label="positive" if y[i] else "negative") for i in range(n)]
    lines = ["sample_id,patient_id,p_mrd,threshold,status"]
    lines += [f"s{i},P{i // 2},{p[i]:.6f},0.5,scored" for i in range(n)]
    lines.append("s99,P99,,0.5,failed")  # failed rows are not scored and not counted
    (tmp_path / "scores.csv").write_text("\n".join(lines) + "\n")
    m = rsa.held_out_metrics(tmp_path / "scores.csv", rows, n_boot=200, seed=0)
    q = np.round(p, 6)
    assert m["n_scored"] == n and m["threshold"] == 0.5
    assert m["roc_auc"]["estimate"] == pytest.approx(roc_auc_score(y, q))
    assert m["sensitivity"]["estimate"] == pytest.approx(np.mean(q[y == 1] >= 0.5))
    assert m["specificity"]["estimate"] == pytest.approx(np.mean(q[y == 0] < 0.5))
    for k in ("roc_auc", "sensitivity", "specificity"):
        assert m[k]["low"] <= m[k]["estimate"] <= m[k]["high"]


@pytest.mark.slow
def test_output_schema_tiny_cohort(tmp_path):
    out = tmp_path / "r.json"
    rsa.main(["--samples", "12", "--events", "1000", "--sizes", "1000,1500", "--folds", "2", "--epochs", "1",
              "--patience", "1", "--copies", "1", "--image-size", "16", "--boot", "20",
              "--out", str(tmp_path / "w"), "--json", str(out)])
    rec = json.loads(out.read_text())
    c = rec["cohort"]
    assert c["train"]["samples"] + c["held_out"]["samples"] == 12
    assert [r["reference_events"] for r in rec["rows"]] == [1000, 1500]
    for r in rec["rows"]:
        assert set(rsa.ROW_KEYS) <= set(r)
        assert r["seed"] == 0 and r["n_scored"] == c["held_out"]["samples"]
        assert r["build_s"] > 0 and r["train_s"] > 0 and r["score_s_per_sample"] > 0
        for k in ("roc_auc", "sensitivity", "specificity"):
            assert set(r[k]) == set(rsa.INTERVAL_KEYS)
    assert len(rsa.format_table(rec["rows"]).splitlines()) == 2 + len(rec["rows"])
