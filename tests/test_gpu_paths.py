"""The parts of the GPU path outside the kernels, exercised without a GPU (issue 13, item 3).

* torch inference: the flow network on ``device="meta"`` (shapes and dtypes, no memory,
  no compute) in fp32/fp16/bf16 and channels_last, and the engine's refusal of CUDA-only
  modes on a CPU;
* the ``LocalCUDACluster`` set-up path up to the point that needs a device: the planning
  errors, and a clear ``ConfigError`` when dask-cuda finds no GPU (with a stand-in
  ``dask_cuda`` module, since dask-cuda is not installed on our machines).

Imports are from ``rescue_gpu.runner.cluster`` and ``rescue_gpu.engine``; the
(they stand in for dask-cuda where it is not installed).
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from rescue_gpu.config import HeadSpec, RuntimeConfig
from rescue_gpu.errors import BackendError, ConfigError
from rescue_gpu.flow.record import build_model

META = torch.device("meta")
HEAD = HeadSpec(hidden=(), dropout=0.0)


@pytest.fixture(scope="module")
def meta_net() -> torch.nn.Module:
    return build_model(in_channels=3, head=HEAD).eval().to(META)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_flow_network_shapes_and_dtypes_on_meta(meta_net, dtype, channels_last) -> None:
    """ResNet-34 flow network: (B, C, H, W) -> one logit per image, in the compute dtype."""
    net = meta_net.to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.empty((512, 3, 128, 128), device=META, dtype=dtype).to(memory_format=fmt)
    with torch.inference_mode():
        y = net(x)
        f = net.forward_features(x)
    assert y.device.type == "meta" and y.dtype == dtype
    assert y.shape[0] == 512 and y.numel() == 512  # one logit per image
    assert f.shape == (512, 512) and f.dtype == dtype  # ResNet-34 pooled features


def test_cuda_graphs_mode_refused_without_cuda() -> None:
    from rescue_gpu.engine.torch_engine import TorchEngine
    from rescue_gpu.flow.record import ModelRecord
    from rescue_gpu.config import RasterSpec

    rec = ModelRecord(model=build_model(in_channels=1, head=HEAD), in_channels=1, image_size=32, head=HEAD,
                      raster=RasterSpec(size=32), reference_fingerprint="t", temperature=1.0, threshold=0.5)
    with pytest.raises(BackendError, match="needs a CUDA device"):
        TorchEngine(rec, device=torch.device("cpu"), mode="cuda-graphs")


# ---------------------------------------------------------------- LocalCUDACluster set-up


def _cluster():
    from rescue_gpu.runner import cluster

    return cluster


def test_gpu_backend_without_cupy_device_is_a_clear_config_error() -> None:
    cl = _cluster()
    ok, reason = cl.gpu_cluster_available()
    if ok:
        pytest.skip("a GPU cluster can be made here")
    with pytest.raises(ConfigError, match="backend 'gpu' was asked for but .*--backend cpu"):
        cl.plan_cluster(RuntimeConfig(backend="gpu"))


def test_missing_dask_cuda_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import rescue_gpu.device as device

    monkeypatch.setattr(device, "device_probe", lambda: {"gpu": True, "reason": "1 CUDA device(s)", "tensorrt": False})
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # import fails
    ok, reason = _cluster().gpu_cluster_available()
    assert not ok and "dask-cuda is not installed" in reason and "rescue_gpu[gpu]" in reason


def test_plan_cluster_with_a_gpu_asks_for_one_worker_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import rescue_gpu.device as device

    monkeypatch.setattr(device, "device_probe", lambda: {"gpu": True, "reason": "1 CUDA device(s)", "tensorrt": False})
    monkeypatch.setitem(sys.modules, "dask_cuda", types.ModuleType("dask_cuda"))
    assert _cluster().plan_cluster(RuntimeConfig(backend="gpu")) == ("cuda", 0)
    assert _cluster().plan_cluster(RuntimeConfig(backend="auto", workers="2")) == ("cuda", 2)


class NVMLError_DriverNotLoaded(Exception):  # noqa: N801 - the name pynvml uses
    """What pynvml raises inside dask-cuda on a machine without an NVIDIA driver."""


@pytest.mark.parametrize("exc", [NVMLError_DriverNotLoaded("Driver Not Loaded"),
                                 ValueError("Number of workers cannot be less than 1.")],
                         ids=["nvml-no-driver", "zero-gpus"])
def test_dask_cuda_finding_no_gpu_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    import rescue_gpu.device as device

    def no_gpu(**kwargs):
        raise exc

    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = no_gpu
    monkeypatch.setattr(device, "device_probe", lambda: {"gpu": True, "reason": "1 CUDA device(s)", "tensorrt": False})
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    with pytest.raises(ConfigError, match="LocalCUDACluster.*GPU"):
        with _cluster().open_client(RuntimeConfig(backend="gpu"), dashboard_address=":0"):
            pass
