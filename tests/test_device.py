"""Device choice (rescue_gpu.device, and the run plan of rescue_gpu.engine.plan_run_device): explicit errors for an unavailable GPU, a warning on auto fall-back."""

import warnings

import numpy as np
import pytest

from rescue_gpu import device as backend
from rescue_gpu.engine import plan_run_device
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


# ----------------------------------------------------------------------------- one decision, one error type


NO_TORCH_GPU = pytest.mark.skipif(HAS_GPU or __import__("torch").cuda.is_available(),
                                  reason="needs a machine without a GPU")


@NO_TORCH_GPU
def test_every_gpu_question_shares_one_decision_and_error_type():
    train_device = backend.torch_device  # training and inference share the one torch-device decision

    for ask in (backend.resolve_backend, backend.torch_device, lambda d: plan_run_device(d)):
        with pytest.raises(BackendError, match="'gpu' was requested but"):
            ask("gpu")
        with pytest.raises(BackendError, match="unknown"):
            ask("tpu")
        with pytest.warns(backend.BackendFallbackWarning, match="'auto': using the CPU because"):
            ask("auto")
    with pytest.raises(BackendError, match="device='cuda:1' was requested but torch sees no CUDA device"):
        train_device("cuda:1")


def test_choose_backend_is_the_rule():
    assert backend.choose_backend("cpu", (True, "x")) == "cpu"
    assert backend.choose_backend("auto", (True, "x")) == "gpu"
    assert backend.choose_backend("gpu", (True, "x")) == "gpu"
    with pytest.raises(BackendError, match="backend='gpu' was requested but no GPU here; fix it"):
        backend.choose_backend("gpu", (False, "no GPU here"), fix="fix it")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        assert backend.choose_backend("auto", (False, "no GPU here")) == "cpu"
    assert [w.category for w in got] == [backend.BackendFallbackWarning]
    assert issubclass(backend.BackendFallbackWarning, RuntimeWarning)


def test_cpu_plan_is_concrete_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_run_device("cpu")
        assert plan.record() == {"backend": "cpu", "engine": "torch", "precision": "fp32"}
        assert plan_run_device("cpu", engine="onnx").record()["precision"] == "fp32"
    assert "device: cpu, engine torch, precision fp32" in plan.describe()
    with pytest.raises(BackendError, match="needs a CUDA device"):
        plan_run_device("cpu", engine="tensorrt")


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a GPU")
def test_auto_plan_warns_exactly_once_and_says_so():
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        plan = plan_run_device("auto")
    assert [w.category for w in got] == [backend.BackendFallbackWarning]
    assert plan.backend == "cpu" and plan.engine == "torch" and plan.precision == "fp32"
    assert "auto fell back to the CPU" in plan.describe()


def test_plan_from_worker_probes():
    gpu = {"gpu": True, "reason": "1 CUDA device(s)", "tensorrt": False}
    cpu = {"gpu": False, "reason": "cupy is not importable", "tensorrt": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = plan_run_device("auto", probes={"w1": gpu, "w2": gpu})
    assert plan.record() == {"backend": "gpu", "engine": "torch", "precision": "fp16"}
    trt = {**gpu, "tensorrt": True}
    assert plan_run_device("gpu", probes={"w1": trt, "w2": trt}).engine == "tensorrt"
    assert plan_run_device("gpu", probes={"w1": trt, "w2": gpu}).engine == "torch"
    with pytest.warns(backend.BackendFallbackWarning, match="no worker has a usable GPU"):
        assert plan_run_device("auto", probes={"w1": cpu}).backend == "cpu"
    with pytest.raises(BackendError, match="1 of 2 workers have no usable GPU"):
        plan_run_device("auto", probes={"w1": gpu, "w2": cpu})
    with pytest.raises(BackendError, match="backend='gpu' was requested but 1 of 2 workers"):
        plan_run_device("gpu", probes={"w1": gpu, "w2": cpu})
    assert plan_run_device("cpu", probes={"w1": gpu}).backend == "cpu"
    with pytest.raises(BackendError, match="no workers"):
        plan_run_device("auto", probes={})


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a GPU")
def test_existing_cluster_is_asked_not_the_client():
    from distributed import LocalCluster

    from rescue_gpu.runner.run import resolve_run_device
    from rescue_gpu.config import RuntimeConfig

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            plan = resolve_run_device(RuntimeConfig(backend="auto"), scheduler=cluster.scheduler_address)
    fallbacks = [w for w in got if w.category is backend.BackendFallbackWarning]
    assert len(fallbacks) == 1 and "no worker has a usable GPU" in str(fallbacks[0].message)
    assert plan.backend == "cpu"
