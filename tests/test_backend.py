"""Backend choice: explicit errors for an unavailable GPU, a warning on auto fall-back."""

import warnings

import numpy as np
import pytest

from rescue_gpu import backend
from rescue_gpu.errors import BackendError
from tests.conftest import HAS_GPU


def test_cpu_always():
    assert backend.resolve_backend("cpu") == "cpu"
    assert backend.get_xp("cpu") is np
    assert backend.array_module(np.zeros(2)) is np
    a = np.arange(3)
    assert backend.to_numpy(a) is a


def test_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend 'tpu'"):
        backend.resolve_backend("tpu")


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a GPU")
def test_gpu_missing_is_explicit_and_auto_warns():
    with pytest.raises(BackendError, match="backend='gpu' was requested but"):
        backend.resolve_backend("gpu")
    with pytest.warns(RuntimeWarning, match="using the CPU because"):
        assert backend.resolve_backend("auto") == "cpu"


@pytest.mark.gpu
def test_gpu_present():
    import cupy

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.resolve_backend("auto") == "gpu"
    x = cupy.arange(4)
    assert backend.array_module(x) is cupy
    np.testing.assert_array_equal(backend.to_numpy(x), np.arange(4))
