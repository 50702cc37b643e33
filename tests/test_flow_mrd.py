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


def _brute_counts(q: np.ndarray, p: np.ndarray, r: float) -> np.ndarray:
    """Points of ``p`` within ``r`` of each row of ``q`` (float64, all pairs)."""
    if len(p) == 0:
        return np.zeros(len(q))
    d = np.sqrt(((q[:, None, :].astype(np.float64) - p[None, :, :].astype(np.float64)) ** 2).sum(-1))
    return (d <= r).sum(1).astype(np.float64)


def _brute_dfn(model: mrd.NormalModel, x: np.ndarray) -> np.ndarray:
    """The DfN rule from its definition: candidates by the k-NN distance, then the cluster score, all pairs."""
    d = np.sqrt(((x[:, None, :].astype(np.float64) - model.points[None].astype(np.float64)) ** 2).sum(-1))
    cand = np.sort(d, axis=1)[:, model.k - 1] > model.candidate_threshold
    c, rest = x[cand], x[~cand]
    r = model.cluster_radius
    a = _brute_counts(c, c, r) - 1
    lam = _brute_counts(c, model.sparse_points, r) * len(x) / len(model.points)
    score = (a + 1) / (_brute_counts(c, rest, r) + lam + 1)
    out = np.zeros(len(x), dtype=bool)
    out[np.flatnonzero(cand)] = score > model.cluster_threshold
    return out


def test_cluster_score_matches_brute_force() -> None:
    rng = np.random.default_rng(21)
    c = np.concatenate([rng.normal(0, 0.1, (40, 3)), rng.normal(0, 1, (30, 3))]).astype(np.float32)
    others = rng.normal(0.5, 0.5, (200, 3)).astype(np.float32)
    sparse = rng.normal(0, 0.8, (25, 3)).astype(np.float32)
    for r, w in ((0.2, 1.0), (0.5, 3.5), (1.0, 0.25)):
        a = _brute_counts(c, c, r) - 1
        lam = _brute_counts(c, sparse, r) * 5000 / 800
        expected = (a + 1) / (w * _brute_counts(c, others, r) + lam + 1)
        got = mrd.cluster_score(c, others, sparse, r, n_events=5000, n_points=800, others_weight=w, chunk=7)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    empty = np.zeros((0, 3), np.float32)  # no sparse model points, no other events: the score is the cluster size
    np.testing.assert_allclose(mrd.cluster_score(c, empty, empty, 0.2, n_events=10, n_points=10),
                               _brute_counts(c, c, 0.2))


def test_dfn_flags_match_brute_force_rule() -> None:
    rng = np.random.default_rng(2)
    # the pooled threshold rule: one 3,000-event calibration sample is too small for the per-sample rule's 0.02%
    model = mrd.fit_normal_model([_normal(rng, 3000), _normal(rng, 3000)], MARKERS, k=3, false_flag_rate=0.01,
                                 candidate_rate=0.02, cluster_radius=0.4, cluster_rule="pooled", cross_fit=False)
    x = np.concatenate([_normal(rng, 2000), _blasts(rng, 30)])  # about the calibration samples' size
    flags, gate = mrd.dfn_flags(model, x)
    np.testing.assert_array_equal(flags, _brute_dfn(model, x))  # any CD45: the gate only defines the denominator
    np.testing.assert_array_equal(gate, x[:, 0] >= model.cd45_min)
    assert flags[2000:].all()  # every blast is different from normal
    assert flags[:2000].mean() <= 0.02  # about the 1% false-flag rate
    assert 0.0 < model.cd45_min < 3.0  # Otsu split between CD45- and CD45+
    # the stored sparse points are the model points with fewer than k other points within the candidate threshold
    d = np.sqrt(((model.points[:, None, :].astype(np.float64) - model.points[None]) ** 2).sum(-1))
    loo = np.sort(d, axis=1)[:, model.k]  # column 0 is the point itself
    np.testing.assert_array_equal(model.sparse_points, model.points[loo > model.candidate_threshold])


def test_false_flag_rate_on_unseen_normal() -> None:
    rng = np.random.default_rng(3)
    model = mrd.fit_normal_model([_normal(rng, 4000) for _ in range(4)], MARKERS, k=5, false_flag_rate=0.01,
                                 candidate_rate=0.05, cluster_radius=0.3)
    flags, _ = mrd.dfn_flags(model, _normal(rng, 4000))  # the calibration samples' size
    rate = flags.mean()  # all normal events are modelled, CD45- ones included
    assert rate < 0.02  # at most about the requested 1% (calibrated on whole held-out samples)


def test_own_threshold_is_the_lowest_within_the_rate() -> None:
    rng = np.random.default_rng(31)
    for trial in range(200):
        scores = np.round(rng.exponential(2.0, int(rng.integers(0, 40))), 1)  # ties on purpose
        n, rate = int(rng.integers(40, 2000)), float(rng.choice([1e-3, 5e-3, 0.02]))
        allowed = math.floor(rate * n)
        ok = [t for t in np.concatenate([[0.0], scores]) if (scores > t).sum() <= allowed]
        assert mrd.own_threshold(scores, n, rate) == min(ok), (trial, scores, n, rate)


def _kinds_split(n: int) -> tuple[list[int], list[int]]:
    """Model and calibration indices of n samples of one kind (the alternating split)."""
    return list(range(0, n, 2)), list(range(1, n, 2))


def test_sample_rule_bounds_every_calibration_sample() -> None:
    """The default rule: no calibration normal flags more than sample_flag_rate, the threshold is their maximum."""
    rng = np.random.default_rng(32)
    # normals of different tails: the pooled rule lets the heavy-tailed ones flag more than the rate
    samples = [_normal(rng, 5000) for _ in range(6)]
    for i in (1, 2):
        samples[i][:60] = _blasts(rng, 60) * np.float32(0.97)  # a small off-normal cluster in two normals
    kw = dict(k=5, candidate_rate=0.02, cluster_radius=0.3)
    model = mrd.fit_normal_model(samples, MARKERS, sample_flag_rate=2e-3, cross_fit=False, **kw)
    fit_idx, cal_idx = _kinds_split(len(samples))
    assert model.cluster_rule == "sample" and not model.cross_fit and len(model.sample_thresholds) == len(cal_idx)
    assert model.cluster_threshold == max(model.sample_thresholds)
    for i in cal_idx:
        flags, _ = mrd.dfn_flags(model, samples[i])
        assert flags.sum() <= math.floor(2e-3 * len(samples[i]))
    # each per-sample threshold is that sample's own, from its scores (independent recomputation)
    for t, i in zip(model.sample_thresholds, cal_idx):
        _, sc = mrd.dfn_scores(model, samples[i])
        assert t == mrd.own_threshold(np.asarray(sc), len(samples[i]), 2e-3)
    pooled = mrd.fit_normal_model(samples, MARKERS, false_flag_rate=2e-3, cluster_rule="pooled", cross_fit=False,
                                  **kw)
    np.testing.assert_array_equal(pooled.points, model.points)  # only the threshold differs
    together = np.concatenate([np.asarray(mrd.dfn_scores(pooled, samples[i])[1]) for i in cal_idx])
    assert pooled.cluster_threshold == mrd.own_threshold(together, sum(len(samples[i]) for i in cal_idx), 2e-3)
    assert pooled.cluster_threshold < model.cluster_threshold  # the pooled rule averages the clustered normal away
    flags, _ = mrd.dfn_flags(pooled, samples[1])
    assert flags.sum() > math.floor(2e-3 * len(samples[1]))  # ... and flags that sample beyond the rate


def test_cross_fit_calibrates_every_normal() -> None:
    rng = np.random.default_rng(33)
    samples = [_normal(rng, 3000) for _ in range(4)]
    kw = dict(k=5, candidate_rate=0.02, cluster_radius=0.3, sample_flag_rate=5e-3)
    plain = mrd.fit_normal_model(samples, MARKERS, cross_fit=False, **kw)
    cross = mrd.fit_normal_model(samples, MARKERS, **kw)
    assert cross.cross_fit and len(cross.sample_thresholds) == 4 and len(plain.sample_thresholds) == 2
    np.testing.assert_array_equal(cross.points, plain.points)  # the model kept is the first half's
    assert cross.sample_thresholds[:2] == plain.sample_thresholds  # calibration half first, then the mirror's
    # the mirror: a model of the calibration half scoring the model half
    mirror = mrd.fit_normal_model([samples[i] for i in (1, 0, 3, 2)], MARKERS, cross_fit=False, seed=0, **kw)
    assert cross.sample_thresholds[2:] == mirror.sample_thresholds  # the model half, each scored without itself
    assert cross.cluster_threshold == max(cross.sample_thresholds)
    again = mrd.fit_normal_model(samples, MARKERS, **kw)
    assert again.meta() == cross.meta()  # deterministic for a seed
    with pytest.raises(ConfigError, match="cluster_rule must be one of"):
        mrd.fit_normal_model(samples, MARKERS, cluster_rule="mean")
    with pytest.raises(ConfigError, match="sample_quantile must be in"):
        mrd.fit_normal_model(samples, MARKERS, sample_quantile=1.5)
    with pytest.raises(ConfigError, match="sample_flag_rate"):
        mrd.fit_normal_model(samples, MARKERS, sample_flag_rate=0.0)


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
    import json

    model.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "normal.json").read_text())
    np.testing.assert_array_equal(back.sparse_points, model.sparse_points)
    # /1: CD45+-only model; /2: the k-NN distance rule without the cluster score's sparse points
    for old in ("rescue-mrd-normal/1", "rescue-mrd-normal/2"):
        (tmp_path / "old" / "normal.json").write_text(json.dumps({**meta, "format": old}))
        with pytest.raises(ReferenceDataError, match=f"format '{old}'.*rebuild it with rescue mrd build-normal"):
            mrd.NormalModel.load(tmp_path / "old")
    # /3 (before the threshold's rule was stored) still loads: the pooled rule, no cross-fitting
    rule_keys = ("cluster_rule", "sample_flag_rate", "sample_quantile", "cross_fit", "sample_thresholds")
    excess_keys = ("excess_radius", "excess_ratio", "excess_share", "excess_shares")
    assert meta["format"] == "rescue-mrd-normal/5" and meta["cluster_rule"] == "sample" and meta["cross_fit"] is True
    assert meta["excess_radius"] == pytest.approx(2 * model.cluster_radius) and back.excess
    # /4 (before the excess rule) still loads, without it: its calls stay as they were
    v4 = {key: v for key, v in meta.items() if key not in excess_keys}
    (tmp_path / "old" / "normal.json").write_text(json.dumps({**v4, "format": "rescue-mrd-normal/4"}))
    from rescue_gpu.artifacts import RecordFormatWarning

    with pytest.warns(RecordFormatWarning, match="no excess-population rule.*rescue mrd build-normal"):
        four = mrd.NormalModel.load(tmp_path / "old")
    assert not four.excess and four.cluster_rule == "sample" and four.sample_thresholds == model.sample_thresholds
    assert not bool(mrd.excess_flags(four, model.points).any())
    v3 = {key: v for key, v in v4.items() if key not in rule_keys}
    (tmp_path / "old" / "normal.json").write_text(json.dumps({**v3, "format": "rescue-mrd-normal/3"}))
    with pytest.warns(RecordFormatWarning):
        three = mrd.NormalModel.load(tmp_path / "old")
    assert three.cluster_rule == "pooled" and not three.cross_fit and three.sample_thresholds == ()
    assert three.cluster_threshold == model.cluster_threshold


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
    # a method whose samples are all MRD-negative has undefined figures: null, never a bare NaN
    rows = [dict(r, mrd_pct="0.0") for r in scores]
    for name, data in (("scores.csv", rows), ("truth.csv", [dict(r, true_mrd_pct="0.0") for r in tr])):
        with open(tmp_path / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "scores.csv"), "--truth", str(tmp_path / "manifest.csv"),
                                   "--mrd-truth", str(tmp_path / "truth.csv"), "--out", str(tmp_path / "ev0"),
                                   "--boot", "20"])
    assert res.exit_code == 0, res.output

    def strict(token: str) -> None:
        raise ValueError(f"metrics.json holds {token}")

    rep = json.loads((tmp_path / "ev0" / "metrics.json").read_text(), parse_constant=strict)["mrd"]
    assert rep["all"]["spearman"] is None and rep["all"]["n_samples"] == n


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


def test_fewer_within_is_exactly_the_count_rule() -> None:
    rng = np.random.default_rng(10)
    p = rng.normal(size=(800, 4)).astype(np.float32)
    q = np.concatenate([rng.normal(size=(300, 4)), rng.normal(3.0, 1.0, (50, 4))]).astype(np.float32)
    for r, k, screen in ((0.4, 3, 16), (0.8, 5, 4), (1.5, 1, 1), (0.2, 5, 200)):
        np.testing.assert_array_equal(mrd.fewer_within(q, p, r, k, screen=screen, chunk=33),
                                      mrd.count_within(q, p, r) < k)


def _cd45dim_case(rng: np.random.Generator):
    """Normal marrow as in _normal, blasts CD45-dim (CD45 = 0.5, below the Otsu split) and CD34+ CD7+."""
    model = mrd.fit_normal_model([_normal(rng, 4000) for _ in range(4)], MARKERS, k=5, false_flag_rate=1e-3,
                                 cluster_radius=0.4)  # the blasts' spread in this 4-D space (0.15 per marker)
    blasts = _blasts(rng, 60)
    blasts[:, 0] -= 2.5
    return model, blasts


def test_cd45dim_blasts_are_counted() -> None:
    """Old behaviour: flags were ANDed with the Otsu CD45+ gate, so CD45-dim blasts were never counted."""
    rng = np.random.default_rng(11)
    model, blasts = _cd45dim_case(rng)
    assert (blasts[:, 0] < model.cd45_min).all()  # below the CD45+ split
    x = np.concatenate([_normal(rng, 20000), blasts])
    dfn, gate = mrd.dfn_flags(model, x)
    assert dfn[20000:].all() and dfn[:20000].mean() < 0.005
    leuk = mrd.leukocytes(gate, dfn)
    np.testing.assert_array_equal(leuk, gate | dfn)
    assert leuk[20000:].all() and not gate[20000:].any()  # counted although below the gate
    diag = np.concatenate([_normal(rng, 2000), _blasts(rng, 2000) - np.array([2.5, 0, 0, 0], np.float32)])
    laip = mrd.fit_laip(model, diag)
    assert laip is not None
    assert mrd.laip_flags(model, laip, x)[20000:].sum() >= 58


def test_laip_fit_is_not_truncated_by_the_normal_threshold() -> None:
    """Old behaviour: the Gaussian was fitted to the diagnosis events beyond the loose threshold only,
    so a leukaemic cloud touching normal marrow got its mean pushed away and its spread shrunk."""
    rng = np.random.default_rng(12)
    model = mrd.fit_normal_model([_normal(rng, 4000) for _ in range(4)], MARKERS, k=5, false_flag_rate=1e-3)
    centre = np.array([3.0, 1.5, 0.0, 0.0], dtype=np.float32)  # CD34 just beyond the normal cloud
    sd = np.array([0.15, 0.25, 0.15, 0.15], dtype=np.float32)
    leuk = rng.normal(0.0, 1.0, (4000, 4)).astype(np.float32) * sd + centre
    laip = mrd.fit_laip(model, np.concatenate([_normal(rng, 3000), leuk]))
    assert laip is not None
    fitted_sd = np.sqrt(np.diag(np.linalg.inv(laip.precision)))
    np.testing.assert_allclose(laip.mean, centre, atol=0.02)  # old: CD34 mean 1.546
    np.testing.assert_allclose(fitted_sd, sd, rtol=0.04)  # old: CD34 sd 0.232 (7% short)
    inside = mrd.mahalanobis2(leuk, laip.mean, laip.precision) <= laip.cutoff
    assert inside.mean() > 0.99  # the ellipsoid covers the leukaemic cloud, not only its far side


def _marrow_with_tail(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normal marrow with a sparse tail: a CD45+ cloud, 1.5% CD34+ CD117+ progenitors and 1.5% events
    scattered over the whole space (doublets surviving QC); returns (events, tail mask)."""
    x = rng.normal(0.0, 0.3, (n, 4)).astype(np.float32) + np.array([3.0, 0.0, 0.0, 0.0], np.float32)
    kind = rng.choice(3, n, p=[0.97, 0.015, 0.015])
    prog = kind == 1
    x[prog] = rng.normal(0.0, 0.1, (int(prog.sum()), 4)) + np.array([3.0, 2.0, 2.0, 0.0])
    tail = kind == 2
    x[tail] = rng.uniform([-1.0, -1.0, -1.0, -1.0], [5.0, 4.0, 4.0, 4.0], (int(tail.sum()), 4))
    return x, tail


def test_dfn_finds_a_two_marker_aberrant_cluster_the_distance_rule_missed() -> None:
    """Old behaviour: DfN flagged events whose k-NN distance exceeded the 1 - false_flag_rate quantile of
    normal events' distances; the sparse tail set that threshold, so blasts two markers away from the normal
    progenitors (CD117 down, CD7 up) lay within it and were missed, while tail events were flagged."""
    rng = np.random.default_rng(31)
    model = mrd.fit_normal_model([_marrow_with_tail(rng, 4000)[0] for _ in range(4)], MARKERS, k=5,
                                 false_flag_rate=1e-3, candidate_rate=0.02, cluster_radius=0.3)
    normal, tail = _marrow_with_tail(rng, 8000)
    blasts = rng.normal(0.0, 0.08, (60, 4)).astype(np.float32) + np.array([3.0, 2.0, 1.4, 0.6], np.float32)
    x = np.concatenate([normal, blasts])
    old = np.asarray(mrd.knn_distance(x, model.points, model.k)) > model.threshold
    new, _ = mrd.dfn_flags(model, x)
    assert old[8000:].mean() < 0.2  # the distance rule misses the cluster ...
    assert new[8000:].mean() > 0.9  # ... the cluster score finds it
    assert old[:8000][tail].sum() > new[:8000][tail].sum()  # tail events the distance rule flagged are not
    assert new[:8000].mean() < 2e-3  # about the 1e-3 false-flag rate on an unseen normal marrow


def _model_samples(model: mrd.NormalModel, samples: list[np.ndarray]) -> list[int]:
    """Indices of the samples whose events are the model points, in the points' order (no subsampling)."""
    starts = [next(i for i, s in enumerate(samples) if np.array_equal(model.points[j], s[0]))
              for j in range(0, len(model.points), len(samples[0]))]
    got = np.concatenate([samples[i] for i in starts]) if starts else np.zeros((0, len(MARKERS)), np.float32)
    np.testing.assert_array_equal(model.points, got)  # whole samples, nothing else
    return starts


def test_split_alternates_within_each_kind() -> None:
    rng = np.random.default_rng(21)
    samples = [_normal(rng, 300) for _ in range(8)]
    kinds = ["follow-up", "control"] * 4  # the order that put every follow-up in the model
    model = mrd.fit_normal_model(samples, MARKERS, k=3, false_flag_rate=0.01, kinds=kinds)
    # follow-ups 0, 2, 4, 6 alternate model / calibration, then the controls 1, 3, 5, 7 carry on
    assert _model_samples(model, samples) == [0, 4, 1, 5]
    assert model.n_calibration == 4 * 300 and model.n_samples == 8  # 2, 6, 3, 7 calibrate
    # without kinds: even-indexed samples model (every follow-up), odd-indexed calibrate (every control)
    plain = mrd.fit_normal_model(samples, MARKERS, k=3, false_flag_rate=0.01)
    assert _model_samples(plain, samples) == [0, 2, 4, 6]
    # any order: each kind with two or more samples is on both sides, the halves equal
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(8)
        m = mrd.fit_normal_model([samples[i] for i in perm], MARKERS, k=3, false_flag_rate=0.01,
                                 kinds=[kinds[i] for i in perm])
        fit = {int(perm[i]) for i in _model_samples(m, [samples[i] for i in perm])}
        cal = set(range(8)) - fit
        assert len(fit) == len(cal) == 4
        for kind in ("follow-up", "control"):
            assert {i for i in fit if kinds[i] == kind} and {i for i in cal if kinds[i] == kind}, (seed, kind)
    # empty samples are dropped with their kind; kinds must be one per sample
    m = mrd.fit_normal_model([samples[0], samples[1][:0], samples[2], samples[3]], MARKERS, k=3,
                             false_flag_rate=0.01, kinds=["a", "b", "a", "b"])
    assert _model_samples(m, samples) == [0, 3]
    with pytest.raises(ConfigError, match="one kind per normal sample"):
        mrd.fit_normal_model(samples, MARKERS, k=3, kinds=kinds[:-1])
