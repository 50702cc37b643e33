"""Preprocessing ``xp`` code under array_api_strict, a namespace that refuses numpy-only idioms.

What passes here uses nothing beyond the array API standard, so it also runs on cupy;
the reviewed non-standard calls are listed in rescue_gpu.xp (and the forward logicle's
integer-array assignment in rescue_gpu.preprocess.transforms).
"""

from __future__ import annotations

import numpy as np
import pytest

from rescue_gpu.config import TransformSpec
from rescue_gpu.preprocess import transforms
from rescue_gpu.xp import NON_STANDARD_CALLS, namespace

xps = pytest.importorskip("array_api_strict")


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 300, 500), rng.lognormal(8, 2, 500), [0.0, -5.0, 262144.0]])


def _same(strict_out, numpy_out) -> None:
    assert type(strict_out).__module__.startswith("array_api_strict")
    np.testing.assert_array_equal(np.from_dlpack(strict_out), numpy_out)


def test_namespace_dispatch() -> None:
    assert namespace(np.zeros(2)) is np
    assert namespace(xps.asarray([1.0])) is xps
    assert namespace([1.0]) is np


def test_arcsinh_and_linear_are_standard() -> None:
    x = _data()
    _same(transforms.arcsinh(xps.asarray(x), cofactor=150.0), transforms.arcsinh(x, cofactor=150.0))
    _same(transforms.linear(xps.asarray(x), scale=262144.0), transforms.linear(x, scale=262144.0))


def test_logicle_inverse_is_standard() -> None:
    y = np.linspace(-0.1, 1.0, 301)
    _same(transforms.logicle_inverse(xps.asarray(y)), transforms.logicle_inverse(y))


@pytest.mark.parametrize("kind", ["arcsinh", "linear"])
def test_apply_transform_dispatch_is_standard(kind: str) -> None:
    spec = TransformSpec(kind=kind)
    x = _data()
    _same(transforms.apply_transform(xps.asarray(x), spec), transforms.apply_transform(x, spec))


def test_forward_logicle_is_listed_as_non_standard() -> None:
    """The forward logicle needs integer-array assignment: refused by the strict namespace, listed."""
    assert "integer-array assignment" in NON_STANDARD_CALLS
    assert "x[idx] = ..." in transforms.__doc__
    with pytest.raises((AttributeError, TypeError, IndexError)):
        transforms.logicle(xps.asarray(_data()))
