"""Metrics against scikit-learn, bootstrap intervals, threshold choice, temperature scaling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from rescue_gpu.nn import metrics as M
from rescue_gpu.nn.calibration import apply_temperature, fit_temperature, nll, site_threshold


def _scores(n: int, seed: int, *, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    p = 1 / (1 + np.exp(-(1.2 * (2 * y - 1) + rng.standard_normal(n))))
    if ties:
        p = np.round(p, 1)
    return y, p


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True)])
def test_metrics_match_sklearn(seed: int, ties: bool) -> None:
    y, p = _scores(200, seed, ties=ties)
    thr = 0.5
    calls = (p >= thr).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, calls, labels=[0, 1]).ravel()
    assert M.confusion(y, calls) == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert M.sensitivity(y, calls) == pytest.approx(skm.recall_score(y, calls))
    assert M.specificity(y, calls) == pytest.approx(skm.recall_score(1 - y, 1 - calls))
    assert M.f1_score(y, calls) == pytest.approx(skm.f1_score(y, calls))
    assert M.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert M.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    fpr, tpr, thr_ours = M.roc_curve(y, p)
    fpr_sk, tpr_sk, _ = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_sk)
    np.testing.assert_allclose(tpr, tpr_sk)


def test_undefined_metrics_are_nan() -> None:
    y = np.zeros(5, int)
    p = np.linspace(0, 1, 5)
    assert math.isnan(M.sensitivity(y, p > 0.5))
    assert math.isnan(M.roc_auc(y, p))
    assert math.isnan(M.pr_auc(y, p))
    assert M.specificity(y, p >= 0.5) == pytest.approx(2 / 5)


def _patients(n_patients: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 4, size=n_patients)
    groups = np.repeat([f"P{i}" for i in range(n_patients)], per)
    y = np.repeat(rng.random(n_patients) < 0.5, per).astype(int)
    p = 1 / (1 + np.exp(-(1.0 * (2 * y - 1) + rng.standard_normal(y.size))))
    return y, p, groups


def test_bootstrap_contains_estimate_and_shrinks() -> None:
    widths = []
    for n in (30, 300):
        y, p, g = _patients(n, seed=n)
        iv = M.bootstrap_intervals(y, p, g, threshold=0.5, n_boot=400, seed=1)
        for k, v in iv.items():
            assert v.low <= v.estimate <= v.high, (k, v)
            assert v.estimate == pytest.approx({"sensitivity": M.sensitivity(y, p >= 0.5), "roc_auc": M.roc_auc(y, p),
                                                "specificity": M.specificity(y, p >= 0.5), "f1": M.f1_score(y, p >= 0.5),
                                                "pr_auc": M.pr_auc(y, p)}[k])
        widths.append({k: v.high - v.low for k, v in iv.items()})
    for k in widths[0]:
        assert widths[1][k] < widths[0][k] * 0.7, k


def test_bootstrap_resamples_patients_not_samples() -> None:
    # one patient with 50 identical positive samples: sample-level resampling would give a tiny interval
    y = np.r_[np.ones(50, int), np.ones(5, int), np.zeros(5, int)]
    p = np.r_[np.full(50, 0.9), np.full(5, 0.2), np.full(5, 0.1)]
    g = np.r_[["big"] * 50, [f"s{i}" for i in range(10)]]
    iv = M.bootstrap_intervals(y, p, g, threshold=0.5, n_boot=500, seed=0)["sensitivity"]
    assert iv.high - iv.low > 0.5
    assert iv == M.bootstrap_intervals(y, p, g, threshold=0.5, n_boot=500, seed=0)["sensitivity"]  # seeded


def test_choose_threshold_youden_and_target() -> None:
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])
    # Youden: p >= 0.6 gives sens 0.8, spec 1.0 (J 0.8); p >= 0.35 gives sens 1, spec 0.8 (J 0.8) -> ties to the larger
    assert M.choose_threshold(y, p) == pytest.approx(0.6)
    assert M.choose_threshold(y, p, target_sensitivity=0.8) == pytest.approx(0.6)
    assert M.choose_threshold(y, p, target_sensitivity=0.9) == pytest.approx(0.35)
    assert M.choose_threshold(y, p, target_sensitivity=0.5) == pytest.approx(0.7)
    y2 = np.array([0, 0, 1, 0, 1, 1])
    p2 = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert M.choose_threshold(y2, p2) == pytest.approx(0.5)  # J = 2/3 at 0.5 and at 0.3 (rounding differs): the larger
    with pytest.raises(ValueError):
        M.choose_threshold(np.zeros(3), np.arange(3.0))


def test_by_timepoint_and_report_json(tmp_path) -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.7, 0.2, 0.6, 0.55, 0.1, 0.3, 0.7])
    tp = np.array(["diagnosis"] * 4 + ["follow-up"] * 3 + ["control"] * 3)
    g = np.array([f"P{i}" for i in range(10)])
    rep = M.evaluate_predictions(y, p, threshold=0.5, groups=g, timepoints=tp, n_boot=100)
    json.dumps(rep)  # JSON-ready (no nan)
    diag, ctrl, fu = rep["by_timepoint"]["diagnosis"], rep["by_timepoint"]["control"], rep["by_timepoint"]["follow-up"]
    assert diag["sensitivity"]["estimate"] == pytest.approx(0.75) and diag["specificity"] is None
    assert ctrl["sensitivity"] is None and ctrl["specificity"]["estimate"] == pytest.approx(2 / 3)
    assert fu["roc_auc"]["estimate"] == pytest.approx(skm.roc_auc_score([0, 0, 1], [0.2, 0.6, 0.55]))
    assert rep["confusion"] == {"tp": 4, "fp": 2, "tn": 3, "fn": 1}
    png = M.plot_roc(y, p, tmp_path / "roc.png", threshold=0.5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_recovers_known_value(true_t: float) -> None:
    rng = np.random.default_rng(7)
    z_true = rng.normal(0, 3, size=20000)                   # calibrated logits
    y = (rng.random(z_true.size) < 1 / (1 + np.exp(-z_true))).astype(int)
    logits = z_true * true_t                                # mis-scaled by the known temperature
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.05)
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    np.testing.assert_allclose(apply_temperature(logits, t), 1 / (1 + np.exp(-logits / t)), rtol=1e-9)
    assert fit_temperature(logits, np.ones_like(y)) == 1.0  # one class: nothing to fit


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.25, 0.5])
def test_site_threshold_is_the_lowest_meeting_the_rate(rate: float) -> None:
    rng = np.random.default_rng(3)
    for n in (1, 7, 19, 20, 41, 200):
        p = np.round(rng.random(n), 2)                      # ties included
        t = site_threshold(p, rate)
        allowed = math.floor(rate * n + 1e-9)
        assert (p >= t).sum() <= allowed                     # the rate holds at the threshold
        # brute force: no lower candidate (any normal's own score) meets the rate
        lower = [c for c in np.unique(p) if c < t and (p >= c).sum() <= allowed]
        assert not lower
        assert t > p.min() if allowed < n else True


def test_site_threshold_known_values_and_errors() -> None:
    p = [0.1, 0.9, 0.3, 0.5, 0.7]
    assert site_threshold(p, 0.0) == np.nextafter(0.9, 1.0)       # none positive: just above the highest
    assert site_threshold(p, 0.2) == np.nextafter(0.7, 1.0)       # one of five may be positive
    assert site_threshold(p, 0.4) == np.nextafter(0.5, 1.0)
    assert site_threshold(p * 4, 0.05) == np.nextafter(0.9, 1.0)  # 20 normals, 5 %: one may be positive
    with pytest.raises(ValueError, match="at least one normal"):
        site_threshold([], 0.05)
    with pytest.raises(ValueError, match="not finite"):
        site_threshold([0.2, float("nan")], 0.05)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        site_threshold([0.2], 1.0)
