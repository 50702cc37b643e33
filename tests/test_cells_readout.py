"""Per-sample readout: the adjusted count corrects the classifier's bias and the interval covers the truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rescue_gpu.cells.readout import (
    AccRates, acc_rates, adjusted_count, bootstrap_interval, class_fractions, leukaemic_probability, sample_readout,
)
from rescue_gpu.cells.spec import CellClassesSpec, CellReadoutSpec
from rescue_gpu.errors import CellDataError, ModelError

TPR, FPR = 0.85, 0.08
FRACTIONS = (0.0, 0.02, 0.1, 0.3, 0.6)


def _simulate(rng: np.random.Generator, f: float, n: int, tpr: float = TPR,
              fpr: float = FPR) -> tuple[np.ndarray, np.ndarray]:
    """Cells with true leukaemic fraction ``f`` and calls with the given TPR / FPR."""
    truth = rng.random(n) < f
    calls = np.where(truth, rng.random(n) < tpr, rng.random(n) < fpr)
    return truth, calls


def _validation_rates(rng: np.random.Generator, n_pos: int = 3000, n_neg: int = 6000) -> AccRates:
    truth = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    calls = np.where(truth, rng.random(truth.size) < TPR, rng.random(truth.size) < FPR)
    return acc_rates(truth, calls)


def _probs_from_calls(calls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """3-class probabilities (blast, promyelocyte, normal) whose leukaemic sum is >= 0.5 exactly for ``calls``."""
    leuk = np.where(calls, rng.uniform(0.5, 1.0, calls.size), rng.uniform(0.0, 0.49, calls.size))
    split = rng.uniform(0.0, 1.0, calls.size)
    return np.c_[leuk * split, leuk * (1 - split), 1 - leuk]


# --------------------------------------------------------------------------- simple pieces


def test_leukaemic_probability_and_fractions() -> None:
    probs = np.array([[0.3, 0.3, 0.4], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    np.testing.assert_allclose(leukaemic_probability(probs, leukaemic_index=[0, 1]), [0.6, 0.2, 0.9, 0.7])
    fr = class_fractions(probs, classes=["a", "b", "c"])
    assert fr == {"a": 0.25, "b": 0.25, "c": 0.5} and sum(fr.values()) == pytest.approx(1.0)
    rnd = np.random.default_rng(0).dirichlet(np.ones(4), size=101)
    assert sum(class_fractions(rnd, classes="wxyz").values()) == pytest.approx(1.0)
    assert class_fractions(np.zeros((0, 3)), classes=["a", "b", "c"]) == {"a": 0.0, "b": 0.0, "c": 0.0}
    with pytest.raises(ModelError, match="3 class probabilities.*2 classes"):
        class_fractions(probs, classes=["a", "b"])
    with pytest.raises(ModelError, match="do not fit"):
        leukaemic_probability(probs, leukaemic_index=[3])


def test_adjusted_count_formula_clipping_and_shapes() -> None:
    assert adjusted_count(0.5, tpr=0.9, fpr=0.1) == pytest.approx(0.5)
    assert adjusted_count(0.26, tpr=0.9, fpr=0.1) == pytest.approx(0.2)
    assert adjusted_count(0.02, tpr=0.9, fpr=0.1) == 0.0  # below FPR: clipped at 0
    assert adjusted_count(0.97, tpr=0.9, fpr=0.1) == 1.0  # above TPR: clipped at 1
    arr = adjusted_count(np.array([0.0, 0.5, 1.0]), tpr=0.9, fpr=0.1)
    assert isinstance(arr, np.ndarray) and arr.shape == (3,)
    np.testing.assert_allclose(arr, [0.0, 0.5, 1.0])
    assert isinstance(adjusted_count(0.3, tpr=0.9, fpr=0.1), float)


@pytest.mark.parametrize(("tpr", "fpr"), [(0.5, 0.5), (0.52, 0.49), (0.3, 0.6), (0.55, 0.5)])
def test_adjusted_count_refuses_inseparable_classifier(tpr: float, fpr: float) -> None:
    with pytest.raises(ModelError, match="hardly separates.*readout.adjust = false"):
        adjusted_count(0.4, tpr=tpr, fpr=fpr)


def test_acc_rates() -> None:
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    calls = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0], bool)
    r = acc_rates(truth, calls)
    assert (r.tpr, r.fpr, r.n_pos, r.n_neg) == (0.75, 0.2, 4, 5)
    assert json.loads(json.dumps(r.as_dict())) == {"tpr": 0.75, "fpr": 0.2, "n_pos": 4, "n_neg": 5}
    with pytest.raises(ModelError, match="both groups"):
        acc_rates(np.ones(5, bool), np.ones(5, bool))
    with pytest.raises(ModelError, match="both groups"):
        acc_rates(np.zeros(5, bool), np.ones(5, bool))


# --------------------------------------------------------------------------- the correction works


def test_raw_share_is_biased_and_adjusted_is_not() -> None:
    rng = np.random.default_rng(11)
    for f in FRACTIONS:
        raw, adj = [], []
        for _ in range(40):
            _, calls = _simulate(rng, f, 3000)
            rates = _validation_rates(rng)
            raw.append(calls.mean())
            adj.append(adjusted_count(calls.mean(), tpr=rates.tpr, fpr=rates.fpr))
        expected_raw = f * TPR + (1 - f) * FPR
        assert np.mean(raw) == pytest.approx(expected_raw, abs=0.005)
        if f != 0.3:  # the raw share's bias f (TPR - 1) + (1 - f) FPR vanishes near f = 0.35
            assert abs(np.mean(raw) - f) > 0.05
        # clipping at 0 biases the mean a little upwards at f = 0: allow for it
        assert abs(np.mean(adj) - f) < (0.01 if f > 0 else 0.015)


def test_bootstrap_interval_coverage() -> None:
    rng = np.random.default_rng(2024)
    for f in (0.0, 0.05, 0.2, 0.45):
        covered = 0
        for rep in range(200):
            _, calls = _simulate(rng, f, 2000)
            rates = _validation_rates(rng, n_pos=1500, n_neg=3000)
            low, high = bootstrap_interval(calls, rates=rates, n_boot=400, level=0.95, seed=rep)
            covered += low <= f <= high
        # at f = 0 the clipped interval reaches 0 more often than nominal: only a lower bound there
        assert 0.85 <= covered / 200 <= (1.0 if f == 0 else 0.99), (f, covered)


def test_bootstrap_interval_unadjusted_covers_expected_share() -> None:
    rng = np.random.default_rng(5)
    f = 0.3
    q_true = f * TPR + (1 - f) * FPR
    covered = 0
    for rep in range(200):
        _, calls = _simulate(rng, f, 1500)
        low, high = bootstrap_interval(calls, rates=None, n_boot=400, level=0.95, seed=rep)
        covered += low <= q_true <= high
    assert 0.85 <= covered / 200 <= 0.99


def test_bootstrap_interval_edges() -> None:
    rates = AccRates(tpr=0.9, fpr=0.1, n_pos=500, n_neg=500)
    all_neg = np.zeros(1000, bool)
    low, high = bootstrap_interval(all_neg, rates=rates, n_boot=300, level=0.95, seed=0)
    assert low == 0.0 and 0.0 <= high <= 0.01
    all_pos = np.ones(1000, bool)
    low, high = bootstrap_interval(all_pos, rates=rates, n_boot=300, level=0.95, seed=0)
    assert high == 1.0 and low >= 0.99
    assert all(math.isnan(x) for x in bootstrap_interval(all_pos, rates=None, n_boot=0, level=0.9, seed=0))
    a = bootstrap_interval(all_pos[:10] | (np.arange(10) < 3), rates=rates, n_boot=200, level=0.9, seed=7)
    assert a == bootstrap_interval(all_pos[:10] | (np.arange(10) < 3), rates=rates, n_boot=200, level=0.9, seed=7)
    with pytest.raises(CellDataError, match="no cells"):
        bootstrap_interval(np.zeros(0, bool), rates=None, n_boot=10, level=0.95, seed=0)


# --------------------------------------------------------------------------- sample_readout


CLASSES = CellClassesSpec(names=("blast", "promyelocyte", "normal"), leukaemic=("blast", "promyelocyte"))


def test_sample_readout_adjusted_positive_and_json() -> None:
    rng = np.random.default_rng(3)
    _, calls = _simulate(rng, 0.4, 4000)
    probs = _probs_from_calls(calls, rng)
    rates = AccRates(tpr=TPR, fpr=FPR, n_pos=3000, n_neg=6000)
    r = sample_readout(probs, classes=CLASSES, readout=CellReadoutSpec(cutoff=25.0, n_boot=300), rates=rates, seed=1)
    assert r.adjusted and r.n_cells == 4000
    assert r.q_raw == pytest.approx(calls.mean())
    assert r.leukaemic_pct == pytest.approx(100 * adjusted_count(calls.mean(), tpr=TPR, fpr=FPR))
    assert abs(r.leukaemic_pct - 40.0) < 4.0
    assert r.ci_low_pct <= r.leukaemic_pct <= r.ci_high_pct
    assert r.call == "positive" and r.cutoff_pct == 25.0
    assert sum(r.fractions.values()) == pytest.approx(1.0)
    d = json.loads(json.dumps(r.as_dict()))
    assert d["call"] == "positive" and set(d["fractions"]) == set(CLASSES.names)


def test_sample_readout_unadjusted_and_negative() -> None:
    rng = np.random.default_rng(4)
    _, calls = _simulate(rng, 0.05, 3000)
    probs = _probs_from_calls(calls, rng)
    rates = AccRates(tpr=TPR, fpr=FPR, n_pos=3000, n_neg=6000)
    off = sample_readout(probs, classes=CLASSES, readout=CellReadoutSpec(adjust=False, n_boot=0), rates=rates)
    assert not off.adjusted and off.leukaemic_pct == pytest.approx(100 * calls.mean())
    assert off.call == "negative" and off.as_dict()["ci_low_pct"] is None
    none = sample_readout(probs, classes=CLASSES, readout=CellReadoutSpec(n_boot=50), rates=None)
    assert not none.adjusted and none.leukaemic_pct == off.leukaemic_pct
    at_cutoff = sample_readout(probs, classes=CLASSES, readout=CellReadoutSpec(cutoff=0.0, n_boot=0), rates=None)
    assert at_cutoff.call == "positive"


def test_sample_readout_errors() -> None:
    with pytest.raises(CellDataError, match="no cells"):
        sample_readout(np.zeros((0, 3)), classes=CLASSES, readout=CellReadoutSpec(), rates=None)
    with pytest.raises(ModelError, match="2 class probabilities"):
        sample_readout(np.full((4, 2), 0.5), classes=CLASSES, readout=CellReadoutSpec(), rates=None)
    bad = AccRates(tpr=0.5, fpr=0.48, n_pos=100, n_neg=100)
    with pytest.raises(ModelError, match="hardly separates"):
        sample_readout(np.full((4, 3), 1 / 3), classes=CLASSES, readout=CellReadoutSpec(), rates=bad)
    for bad_rates in ({"tpr": 1.2, "fpr": 0.1, "n_pos": 10, "n_neg": 10},
                      {"tpr": 0.9, "fpr": None, "n_pos": 10, "n_neg": 10},
                      {"tpr": math.nan, "fpr": 0.1, "n_pos": 10, "n_neg": 10},
                      {"tpr": 0.9, "fpr": 0.1, "n_pos": 0, "n_neg": 10}):
        with pytest.raises(ModelError, match="invalid classifier rates"):
            AccRates(**bad_rates)
