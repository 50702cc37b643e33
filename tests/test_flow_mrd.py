"""Event-level MRD (rescue_gpu.flow.mrd): kNN flags vs brute force, intervals vs scipy, ELN rules, artifacts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from rescue_gpu.errors import ConfigError, ReferenceDataError
from rescue_gpu.flow import mrd

MARKERS = ("CD45", "CD34", "CD117", "CD7")


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normal marrow: CD45+ cloud at CD45=3 plus 20% CD45- events at CD45=0."""
    x = rng.normal(0.0, 0.3, (n, 4)).astype(np.float32)
    x[:, 0] += 3.0
    neg = rng.random(n) < 0.2
    x[neg, 0] -= 3.0
    return x


def _blasts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Leukaemic CD45+ CD34+ CD7+ events far from normal."""
    x = rng.normal(0.0, 0.15, (n, 4)).astype(np.float32)
    x += np.array([3.0, 2.5, 2.0, 2.5], dtype=np.float32)
    return x


def test_knn_distance_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    q, p = rng.normal(size=(37, 3)).astype(np.float32), rng.normal(size=(23, 3)).astype(np.float32)
    for k in (1, 3, 23):
        brute = np.sort(np.sqrt(((q[:, None, :].astype(np.float64) - p[None, :, :]) ** 2).sum(-1)), axis=1)[:, k - 1]
        got = mrd.knn_distance(q, p, k, chunk=5)  # several chunks
        np.testing.assert_allclose(got, brute, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="k must be"):
        mrd.knn_distance(q, p, 24)


def test_dfn_flags_match_brute_force_rule() -> None:
    rng = np.random.default_rng(2)
    model = mrd.fit_normal_model([_normal(rng, 3000), _normal(rng, 3000)], MARKERS, k=3, false_flag_rate=0.01)
    x = np.concatenate([_normal(rng, 200), _blasts(rng, 30)])
    flags, gate = mrd.dfn_flags(model, x)
    d = np.sqrt(((x[:, None, :].astype(np.float64) - model.points[None]) ** 2).sum(-1))
    kth = np.sort(d, axis=1)[:, 2]
    expected = (x[:, 0] >= model.cd45_min) & (kth > model.threshold)
    np.testing.assert_array_equal(flags, expected)
    np.testing.assert_array_equal(gate, x[:, 0] >= model.cd45_min)
    assert flags[200:].all()  # every blast is different from normal
    assert 0.0 < model.cd45_min < 3.0  # Otsu split between CD45- and CD45+


def test_false_flag_rate_on_unseen_normal() -> None:
    rng = np.random.default_rng(3)
    model = mrd.fit_normal_model([_normal(rng, 4000) for _ in range(4)], MARKERS, k=5, false_flag_rate=0.01)
    flags, gate = mrd.dfn_flags(model, _normal(rng, 20000))
    rate = flags.sum() / gate.sum()
    assert 0.004 < rate < 0.02  # about the requested 1%


def test_laip_tracks_diagnosis_population() -> None:
    rng = np.random.default_rng(4)
    model = mrd.fit_normal_model([_normal(rng, 4000) for _ in range(4)], MARKERS, k=5, false_flag_rate=1e-3)
    diag = np.concatenate([_normal(rng, 2000), _blasts(rng, 2000)])
    laip = mrd.fit_laip(model, diag)
    assert laip is not None and laip.n_events >= 1900
    np.testing.assert_allclose(laip.mean, [3.0, 2.5, 2.0, 2.5], atol=0.05)
    follow = np.concatenate([_normal(rng, 20000), _blasts(rng, 40)])
    f = mrd.laip_flags(model, laip, follow)
    assert f[20000:].sum() >= 38 and f[:20000].sum() <= 2
    assert mrd.LaipModel.from_record(laip.record()).cutoff == laip.cutoff
    assert mrd.fit_laip(model, _normal(rng, 2000)) is None  # no leukaemic population at diagnosis


def test_pack_flags_round_trip() -> None:
    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 8, 9, 1001):
        f = rng.random(n) < 0.3
        bits = mrd.pack_flags(f)
        assert bits.dtype == np.uint8 and bits.size == (n + 7) // 8
        np.testing.assert_array_equal(mrd.unpack_flags(bits, n), f)


def test_model_save_load_and_checksum(tmp_path) -> None:
    rng = np.random.default_rng(6)
    model = mrd.fit_normal_model([_normal(rng, 1000), _normal(rng, 1000)], MARKERS, k=3)
    model.save(tmp_path / "m")
    back = mrd.NormalModel.load(tmp_path / "m")
    np.testing.assert_array_equal(back.points, model.points)
    assert back.meta() == model.meta()
    raw = bytearray((tmp_path / "m" / "normal.npz").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "m" / "normal.npz").write_bytes(bytes(raw))
    with pytest.raises(ReferenceDataError, match="checksum differs"):
        mrd.NormalModel.load(tmp_path / "m")
    with pytest.raises(ConfigError, match="differ from the DfN model"):
        back.check_markers(("CD45", "CD34"))


@pytest.mark.parametrize("k,n", [(0, 1000), (1, 1000), (50, 500000), (999, 1000), (1000, 1000)])
def test_clopper_pearson_matches_scipy(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = mrd.clopper_pearson(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_eln_status_boundaries() -> None:
    s = mrd.mrd_status
    assert s(500, 500_000) == "positive"           # exactly 0.1%, >= 50 events
    assert s(499, 500_000) == "negative"           # just below 0.1%
    assert s(50, 50_000) == "positive"             # 0.1% with 50 events; positivity needs no 500k
    assert s(49, 49_000) == "below-lloq"           # 0.1% but below LLOQ (50)
    assert s(20, 20_000) == "below-lloq"           # LOD reached
    assert s(19, 19_000) == "insufficient-events"  # below LOD, too few events to call negative
    assert s(19, 19_000, min_cd45=10_000) == "negative"
    assert s(0, 499_999) == "insufficient-events"
    assert s(0, 500_000) == "negative"
    assert s(0, 0) == "insufficient-events"


def test_mrd_numbers() -> None:
    r = mrd.mrd_numbers(60, 400_000, "dfn")
    ci = binomtest(60, 400_000).proportion_ci(method="exact")
    assert r.mrd_pct == pytest.approx(0.015)
    assert r.mrd_pct_low == pytest.approx(100 * ci.low) and r.mrd_pct_high == pytest.approx(100 * ci.high)
    assert r.lod_pct == pytest.approx(100 * 20 / 400_000) and r.lloq_pct == pytest.approx(100 * 50 / 400_000)
    assert r.mrd_status == "insufficient-events" and r.mrd_method == "dfn"
    assert math.isnan(mrd.mrd_numbers(0, 0, "both").mrd_pct)
    with pytest.raises(ConfigError, match="MRD method"):
        mrd.mrd_numbers(1, 10, "gmm")


def test_combined_call() -> None:
    c = mrd.combined_call
    assert c(0.1, 0.5, "positive") == "positive"
    assert c(0.9, 0.5, "negative") == "negative"
    assert c(0.9, 0.5, "below-lloq") == "positive" and c(0.4, 0.5, "below-lloq") == "negative"
    assert c(0.5, 0.5, "insufficient-events") == "positive"
    assert c(float("nan"), 0.5, "insufficient-events") == "negative"


def test_count_within_equals_knn_rule() -> None:
    rng = np.random.default_rng(7)
    q, p = rng.normal(size=(300, 4)).astype(np.float32), rng.normal(size=(120, 4)).astype(np.float32)
    d = np.sqrt(((q[:, None, :].astype(np.float64) - p[None]) ** 2).sum(-1))
    for r in (0.3, 0.8, 1.5):
        np.testing.assert_array_equal(mrd.count_within(q, p, r, chunk=7), (d <= r).sum(1))
        for k in (1, 5):
            kth = np.sort(d, axis=1)[:, k - 1]
            np.testing.assert_array_equal(mrd.count_within(q, p, r) < k, kth > r)


def test_simulated_truth_has_true_mrd_pct(tmp_path) -> None:
    import csv

    from rescue_gpu.simulate.flow.cohort import simulate_cohort

    s = simulate_cohort(tmp_path / "c", n_samples=8, n_events=400, seed=3)
    rows = list(csv.DictReader(open(s.truth, encoding="utf-8")))
    for r in rows:
        expected = 100.0 * int(r["n_blasts"]) / max(int(r["n_leukocytes"]), 1)
        assert float(r["true_mrd_pct"]) == pytest.approx(expected)
        if r["kind"] in ("mrd_negative", "control"):
            assert float(r["true_mrd_pct"]) == 0.0


def _agreement_case():
    rng = np.random.default_rng(8)
    truth = np.concatenate([10 ** rng.uniform(-2, 1, 30), np.zeros(10)])
    est = truth * 10 ** rng.normal(0, 0.2, truth.size)
    est[30:] = rng.uniform(0, 0.15, 10)
    pats = np.array([f"P{i // 2}" for i in range(truth.size)])
    return est, truth, pats


def test_mrd_agreement_against_independent_computation() -> None:
    from scipy.stats import spearmanr

    est, truth, pats = _agreement_case()
    r = mrd.mrd_agreement(est, truth, pats, n_boot=200, seed=1)
    assert r["spearman"] == pytest.approx(spearmanr(est, truth)[0])
    q = truth >= 0.1
    assert r["median_abs_log10_ge_0.1"] == pytest.approx(np.median(np.abs(np.log10(est[q] / truth[q]))))
    assert r["neg_below_0.1_share"] == pytest.approx(np.mean(est[truth == 0] < 0.1))
    assert r["sensitivity"] == pytest.approx(np.mean(est[q] >= 0.1))
    assert r["specificity"] == pytest.approx(np.mean(est[~q] < 0.1))
    lo, hi = r["sensitivity_ci"]
    assert lo <= r["sensitivity"] <= hi and r["n_patients"] == 20 and r["n_truth_ge_0.1"] == int(q.sum())


def test_evaluate_cli_reports_mrd_agreement(tmp_path) -> None:
    import csv
    import json

    import typer
    from typer.testing import CliRunner

    from rescue_gpu.flow.train_cli import register

    est, truth, pats = _agreement_case()
    n = truth.size
    rows = [{"sample_id": f"S{i}", "path": f"fcs/S{i}.fcs", "patient_id": pats[i], "timepoint": "follow-up",
             "label": "positive" if truth[i] > 0 else "negative"} for i in range(n)]
    scores = [{"sample_id": f"S{i}", "patient_id": pats[i], "timepoint": "follow-up", "p_mrd": "0.5",
               "call": "positive", "threshold": "0.5", "status": "scored", "mrd_pct": repr(float(est[i])),
               "mrd_method": "both" if i % 2 else "dfn"} for i in range(n)]
    tr = [{"sample_id": f"S{i}", "true_mrd_pct": repr(float(truth[i]))} for i in range(n)]
    for name, data in (("manifest.csv", rows), ("scores.csv", scores), ("truth.csv", tr)):
        with open(tmp_path / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "scores.csv"), "--truth", str(tmp_path / "manifest.csv"),
                                   "--mrd-truth", str(tmp_path / "truth.csv"), "--out", str(tmp_path / "ev"),
                                   "--boot", "100"])
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())["mrd"]
    expected = mrd.mrd_agreement(est, truth, pats, n_boot=100, seed=0)
    assert rep["all"]["spearman"] == pytest.approx(expected["spearman"])
    assert rep["all"]["median_abs_log10_ge_0.1"] == pytest.approx(expected["median_abs_log10_ge_0.1"])
    odd = np.arange(n) % 2 == 1
    assert rep["both"]["n_samples"] == int(odd.sum())
    assert rep["both"]["spearman"] == pytest.approx(mrd.mrd_agreement(est[odd], truth[odd], pats[odd])["spearman"])


def test_flag_kernels_run_on_the_array_api_standard() -> None:
    """count_within, dfn_flags and laip_flags use only standard calls (the cupy path is CI-checked this way)."""
    xs = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(9)
    model = mrd.fit_normal_model([_normal(rng, 1500), _normal(rng, 1500)], MARKERS, k=3, false_flag_rate=0.01)
    x = np.concatenate([_normal(rng, 300), _blasts(rng, 20)])
    f, g = mrd.dfn_flags(model, xs.asarray(x))
    f0, g0 = mrd.dfn_flags(model, x)
    np.testing.assert_array_equal(np.asarray(f), f0)
    np.testing.assert_array_equal(np.asarray(g), g0)
    laip = mrd.LaipModel(np.array([3.0, 2.5, 2.0, 2.5]), np.eye(4) * 20, 18.0, 20)
    np.testing.assert_array_equal(np.asarray(mrd.laip_flags(model, laip, xs.asarray(x))),
                                  mrd.laip_flags(model, laip, x))
