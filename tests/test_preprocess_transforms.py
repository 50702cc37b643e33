"""Transforms: logicle against flowutils' C implementation, arcsinh and linear against formulas."""

from __future__ import annotations

import numpy as np
import pytest
from flowutils import transforms as fu

from rescue_gpu.device import to_numpy
from rescue_gpu.config import TransformSpec
from rescue_gpu.preprocess.transforms import (
    apply_transform, arcsinh, linear, logicle, logicle_inverse, logicle_params,
)
from tests.conftest import xp_params

PARAMS = [
    (262144.0, 0.5, 4.5, 0.0),
    (262144.0, 1.0, 4.5, 0.0),
    (262144.0, 2.0, 4.5, 0.5),
    (10000.0, 0.5, 4.0, 1.0),
    (1024.0, 0.25, 3.0, 0.0),
    (4294967296.0, 0.5, 9.6, 0.0),
]


def _synthetic(t: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([
        np.linspace(-t, t, 20001),
        rng.normal(0.0, t / 500, 20000),
        np.sinh(np.linspace(-14, 14, 2001)) * t / 1e6,
        [0.0, 1e-300, -1e-300, 1e-9, -1e-9, 2 * t, -3 * t, 10 * t],
    ])


@pytest.mark.parametrize("xp", xp_params())
@pytest.mark.parametrize("t,w,m,a", PARAMS)
def test_logicle_matches_flowutils_on_synthetic_range(xp, t, w, m, a):
    x = _synthetic(t)
    ref = fu.logicle(x.copy(), None, t=t, w=w, m=m, a=a)
    assert not np.any(ref == -1), "flowutils did not converge on this input"
    ours = to_numpy(logicle(xp.asarray(x), t=t, w=w, m=m, a=a))
    assert ours.shape == x.shape and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_logicle_fixed_points_and_symmetry():
    p = logicle_params(262144.0, 0.5, 4.5, 0.0)
    x = np.array([0.0, 262144.0, 1000.0, -1000.0])
    y = logicle(x)
    assert y[0] == pytest.approx(0.5 / 4.5, abs=1e-15)  # data zero at w / (m + a)
    assert y[1] == pytest.approx(1.0, abs=1e-13)  # top of scale at 1
    assert y[2] - p.x1 == pytest.approx(p.x1 - y[3], abs=1e-15)  # reflection about zero


def test_logicle_is_monotone_and_inverts():
    x = np.linspace(-50000, 262144, 100001)
    y = logicle(x)
    assert np.all(np.diff(y) > 0)
    back = logicle_inverse(y)
    np.testing.assert_allclose(back, x, rtol=1e-9, atol=1e-7)
    ref = fu.logicle_inverse(y.copy(), None)
    np.testing.assert_allclose(back, ref, rtol=1e-12, atol=1e-9)


def test_logicle_keeps_shape_and_gives_nan_for_non_finite():
    x = np.array([[1.0, np.nan], [np.inf, -5.0]], dtype=np.float32)
    y = logicle(x)
    assert y.shape == (2, 2)
    assert np.isnan(y[0, 1]) and np.isnan(y[1, 0])
    ref = fu.logicle(np.array([1.0, -5.0]), None)
    np.testing.assert_allclose([y[0, 0], y[1, 1]], ref, atol=1e-12)


def test_logicle_rejects_bad_parameters():
    with pytest.raises(ValueError, match="invalid logicle parameters"):
        logicle(np.zeros(3), w=3.0, m=4.5)


@pytest.mark.parametrize("xp", xp_params())
def test_arcsinh_and_linear_formulas(xp):
    x = np.array([-1e5, -150.0, 0.0, 3.0, 150.0, 262144.0])
    u = np.abs(x) / 150.0
    expected = np.sign(x) * np.log(u + np.sqrt(u * u + 1))  # odd form: no cancellation
    np.testing.assert_allclose(to_numpy(arcsinh(xp.asarray(x), cofactor=150.0)), expected, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(linear(xp.asarray(x), scale=262144.0)), x / 262144.0, rtol=0)


def test_arcsinh_and_linear_reject_non_positive_parameters():
    with pytest.raises(ValueError, match="cofactor must be > 0"):
        arcsinh(np.ones(2), cofactor=0.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        linear(np.ones(2), scale=-1.0)


def test_apply_transform_dispatches_on_kind():
    x = np.array([-300.0, 0.0, 5000.0])
    np.testing.assert_allclose(apply_transform(x, TransformSpec(kind="arcsinh", cofactor=5.0)), np.arcsinh(x / 5.0))
    np.testing.assert_allclose(apply_transform(x, TransformSpec(kind="linear", scale=1000.0)), x / 1000.0)
    spec = TransformSpec(kind="logicle", t=10000.0, w=1.0, m=4.0, a=0.0)
    np.testing.assert_allclose(apply_transform(x, spec), fu.logicle(x.copy(), None, t=10000.0, w=1.0, m=4.0, a=0.0),
                               atol=1e-12)
