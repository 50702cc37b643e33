"""Inference engines: parity with eager fp32, batching, input types, caching, errors.

CPU engines are checked here. The ``gpu`` tests (fp16/bf16 within |delta p| <= 1e-3 with
identical calls, CUDA graphs, torch.compile, cupy input, onnxruntime CUDA, TensorRT)
are written against documented APIs and have not been run on our machines.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from rescue_gpu.config import HeadSpec, RasterSpec
from rescue_gpu.engine import Engine, clear_engine_cache, export_onnx, make_engine
from rescue_gpu.engine.onnxrt import OnnxEngine
from rescue_gpu.engine.torch_engine import TorchEngine
from rescue_gpu.errors import BackendError, ModelError
from rescue_gpu.flow.record import ModelRecord, build_model
from rescue_gpu.nn.network import Network

SIZE, C, N = 32, 1, 10
CPU = torch.device("cpu")
HEAD = HeadSpec(hidden=(), dropout=0.0)


def _images(n: int, seed: int) -> np.ndarray:
    """Smooth positive 'density-like' images with per-image structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.zeros((n, C, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        for _ in range(4):
            cx, cy, s = rng.random(), rng.random(), 0.05 + 0.15 * rng.random()
            out[i, 0] += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s)).astype(np.float32)
    return out / out.max(axis=(1, 2, 3), keepdims=True)


def _calibrated_model() -> Network:
    """Random backbone, BatchNorm statistics taken from data, linear head along the features' first
    principal component: logits spread around 0 with standard deviation 1 (a random head would give
    near-constant logits, squashing every parity check)."""
    torch.manual_seed(0)
    model = build_model(in_channels=C, head=HEAD)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(_images(24, seed=99)))
        model.eval()
        f = model.forward_features(torch.from_numpy(_images(24, seed=98)))
        mu = f.mean(0)
        w = torch.linalg.svd(f - mu, full_matrices=False).Vh[0]
        w = w / ((f - mu) @ w).std()
        model.head[-1].weight.copy_(w[None])
        model.head[-1].bias.copy_(-(mu @ w))
    return model


@pytest.fixture(scope="module")
def record() -> ModelRecord:
    return ModelRecord(model=_calibrated_model(), in_channels=C, image_size=SIZE, head=HEAD,
                       raster=RasterSpec(size=SIZE), reference_fingerprint="test", temperature=1.3, threshold=0.5)


@pytest.fixture(scope="module")
def onnx_file(record: ModelRecord, tmp_path_factory: pytest.TempPathFactory):
    return export_onnx(record, tmp_path_factory.mktemp("onnx") / "sub" / "m.onnx", opset=17)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return _images(N, seed=1)


@pytest.fixture(scope="module")
def reference_p(record: ModelRecord, images: np.ndarray) -> np.ndarray:
    """Eager fp32 probabilities straight from the module (one batch)."""
    with torch.inference_mode():
        return record.probabilities(record.model(torch.from_numpy(images)).numpy())


def test_fixture_spreads_probabilities(reference_p: np.ndarray) -> None:
    assert reference_p.min() < 0.4 and reference_p.max() > 0.6  # parity below is not squashed near 0 or 1


def test_eager_fp32_identical_to_module(record, images, reference_p) -> None:
    eng = TorchEngine(record, device=CPU, precision="fp32", batch_size=64, channels_last=False)
    p = eng.predict(images)
    assert p.dtype == np.float64 and p.shape == (N,)
    assert np.array_equal(p, reference_p)
    assert np.array_equal(eng.predict(images), p)  # deterministic


def test_channels_last_parity(record, images, reference_p) -> None:
    p = TorchEngine(record, device=CPU, precision="fp32", batch_size=64, channels_last=True).predict(images)
    assert np.abs(p - reference_p).max() <= 1e-5
    assert list(record.calls(p)) == list(record.calls(reference_p))


def test_batching_invariance(record, images) -> None:
    p3 = make_engine(record, kind="torch", device="cpu", batch_size=3).predict(images)
    p64 = make_engine(record, kind="torch", device="cpu", batch_size=64).predict(images)
    assert np.abs(p3 - p64).max() <= 1e-5
    assert list(record.calls(p3)) == list(record.calls(p64))


def test_input_types(record, images) -> None:
    eng = make_engine(record, kind="torch", device="cpu", batch_size=4)
    p = eng.predict(images)
    assert np.array_equal(eng.predict(torch.from_numpy(images)), p)
    assert np.abs(eng.predict(images.astype(np.float64)) - p).max() <= 1e-6
    wide = np.zeros((N, C, SIZE, 2 * SIZE), dtype=np.float32)
    wide[..., ::2] = images
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous
    assert np.abs(eng.predict(strided) - p).max() <= 1e-6


def test_temperature_applied(record, images) -> None:
    eng = TorchEngine(record, device=CPU, batch_size=64, channels_last=False)
    logits = eng.logits(images)
    np.testing.assert_array_equal(eng.predict(images), record.probabilities(logits))
    np.testing.assert_allclose(eng.predict(images), 1 / (1 + np.exp(-logits / 1.3)), rtol=1e-12)


def test_onnx_parity(record, images, reference_p, onnx_file) -> None:
    eng = make_engine(record, kind="onnx", device="cpu", batch_size=3)
    assert isinstance(eng, OnnxEngine) and isinstance(eng, Engine)
    p = eng.predict(images)
    assert np.abs(p - reference_p).max() <= 1e-4
    assert list(record.calls(p)) == list(record.calls(reference_p))
    p64 = OnnxEngine(record, device=CPU, batch_size=64, onnx_path=onnx_file).predict(torch.from_numpy(images))
    assert np.abs(p64 - reference_p).max() <= 1e-4


def test_export_onnx_metadata_and_dynamic_batch(record, onnx_file) -> None:
    import onnx
    import onnxruntime as ort

    path = onnx_file
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["rescue.sha256"] == record.sha256 and props["rescue.image_size"] == str(SIZE)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        assert sess.run(["logits"], {"images": _images(n, seed=3)})[0].shape == (n,)


def test_bf16_cpu_close_to_fp32(record, images, reference_p) -> None:
    p = make_engine(record, kind="torch", device="cpu", precision="bf16", batch_size=64).predict(images)
    assert np.abs(p - reference_p).max() <= 1e-2


def test_engine_leaves_record_model_alone(record, images) -> None:
    record.model.train()
    try:
        TorchEngine(record, device=CPU, batch_size=4, channels_last=True).predict(images[:2])
        assert record.model.training
        assert record.model.backbone.conv1.weight.is_contiguous()
    finally:
        record.model.eval()


def test_make_engine_cache(record) -> None:
    clear_engine_cache()
    a = make_engine(record, kind="torch", device="cpu", precision="fp32", batch_size=8)
    assert make_engine(record, kind="torch", device="cpu", precision="auto", batch_size=8) is a
    assert make_engine(record, kind="torch", device="cpu", precision="bf16", batch_size=8) is not a
    model = build_model(in_channels=C, head=record.head)
    other = ModelRecord(model=model, in_channels=C, image_size=SIZE, head=record.head, raster=record.raster,
                        reference_fingerprint="test")
    assert make_engine(other, kind="torch", device="cpu", batch_size=8) is not a
    clear_engine_cache()


def test_make_engine_auto_on_cpu_warns(record) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.warns(RuntimeWarning, match="CPU"):
        eng = make_engine(record)
    assert isinstance(eng, TorchEngine) and eng.precision == "fp32"


def test_wrong_shape_and_empty(record) -> None:
    eng = make_engine(record, kind="torch", device="cpu")
    with pytest.raises(ModelError, match=r"expects \(N, 1, 32, 32\)"):
        eng.predict(np.zeros((2, 3, SIZE, SIZE), dtype=np.float32))
    with pytest.raises(ModelError):
        eng.predict(np.zeros((1, SIZE, SIZE), dtype=np.float32))
    assert eng.predict(np.zeros((0, C, SIZE, SIZE), dtype=np.float32)).shape == (0,)


@pytest.mark.parametrize("kwargs, error", [
    ({"kind": "cuda-graphs", "device": "cpu"}, BackendError),
    ({"kind": "tensorrt", "device": "cpu"}, BackendError),
    ({"kind": "torch", "device": "cpu", "precision": "fp16"}, ModelError),
    ({"kind": "onnx", "device": "cpu", "precision": "bf16"}, ModelError),
    ({"kind": "magic", "device": "cpu"}, ModelError),
    ({"kind": "torch", "device": "cpu", "precision": "fp8"}, ModelError),
    ({"kind": "torch", "device": "tpu"}, BackendError),
    ({"kind": "torch", "device": "cpu", "batch_size": 0}, ModelError),
])
def test_make_engine_refusals(record, kwargs, error) -> None:
    with pytest.raises(error):
        make_engine(record, **kwargs)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RESCUE_GPU_SLOW_TESTS") != "1",
                    reason="torch.compile on the CPU takes ~100 s here; set RESCUE_GPU_SLOW_TESTS=1")
def test_compiled_cpu_parity(record, images, reference_p) -> None:
    p = make_engine(record, kind="compiled", device="cpu", batch_size=4).predict(images)
    assert np.abs(p - reference_p).max() <= 1e-4
    assert list(record.calls(p)) == list(record.calls(reference_p))


def test_gpu_device_refused_without_gpu(record) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendError, match="no CUDA device"):
        make_engine(record, kind="torch", device="gpu")


# ----------------------------------------------------------------------------- GPU (unverified here)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("kind", ["torch", "cuda-graphs"])
def test_gpu_reduced_precision_parity(record, images, reference_p, kind, precision) -> None:
    p = make_engine(record, kind=kind, device="cuda", precision=precision, batch_size=4).predict(images)
    assert np.abs(p - reference_p).max() <= 1e-3
    assert list(record.calls(p)) == list(record.calls(reference_p))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["torch", "cuda-graphs", "compiled", "onnx"])
def test_gpu_fp32_parity(record, images, reference_p, kind) -> None:
    if kind == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime without CUDAExecutionProvider")
    p = make_engine(record, kind=kind, device="cuda", precision="fp32", batch_size=4).predict(images)
    assert np.abs(p - reference_p).max() <= 1e-4


@pytest.mark.gpu
def test_gpu_input_types(record, images) -> None:
    import cupy

    eng = make_engine(record, kind="cuda-graphs", device="cuda", precision="fp32", batch_size=4)
    p = eng.predict(images)
    x_cp = cupy.asarray(images)
    assert torch.from_dlpack(x_cp).data_ptr() == x_cp.data.ptr  # DLPack: no copy
    assert np.abs(eng.predict(x_cp) - p).max() <= 1e-6
    assert np.abs(eng.predict(torch.from_numpy(images).cuda()) - p).max() <= 1e-6
    assert np.abs(make_engine(record, kind="torch", device="cpu").predict(x_cp) - p).max() <= 1e-4


@pytest.mark.gpu
def test_gpu_tensorrt_parity(record, images, reference_p, tmp_path, monkeypatch) -> None:
    pytest.importorskip("tensorrt")
    monkeypatch.setenv("RESCUE_GPU_CACHE", str(tmp_path))
    p = make_engine(record, kind="tensorrt", device="cuda", precision="fp16", batch_size=4).predict(images)
    assert np.abs(p - reference_p).max() <= 1e-3
    assert list(record.calls(p)) == list(record.calls(reference_p))
    assert list((tmp_path / "tensorrt").glob("*.plan"))


def test_every_engine_offers_the_whole_protocol(record, images) -> None:
    torch_eng = make_engine(record, kind="torch", device="cpu", precision="fp32", batch_size=4)
    onnx_eng = make_engine(record, kind="onnx", device="cpu", batch_size=3)
    for eng in (torch_eng, onnx_eng):
        assert isinstance(eng, Engine)
        logits, feats = eng.logits_and_features(images)
        assert logits.shape == (len(images),) and feats.shape == (len(images), 512) and feats.dtype == np.float32
    ref_logits, ref_feats = torch_eng.logits_and_features(images)
    got_logits, got_feats = onnx_eng.logits_and_features(images)
    np.testing.assert_allclose(got_feats, ref_feats, rtol=1e-3, atol=1e-3)  # channels_last vs NCHW convolutions
    np.testing.assert_allclose(got_logits, ref_logits, rtol=1e-3, atol=1e-3)
