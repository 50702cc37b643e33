"""TensorRT engine, built from the ONNX export in FP16 and cached on disk.

UNVERIFIED: TensorRT cannot be installed on our machines (its libraries are not on
PyPI proper and the GPU test machine has no network), so this module is written
against the documented TensorRT 10 Python API (``Builder``, ``OnnxParser``,
``IBuilderConfig.set_memory_pool_limit``, optimization profiles,
``build_serialized_network``, ``IExecutionContext.set_input_shape`` /
``set_tensor_address`` / ``execute_async_v3``) and has never been run. It is used by
``make_engine(kind="auto")`` only when ``import tensorrt`` works and a CUDA device is
present.

The serialized engine is cached under ``$RESCUE_GPU_CACHE/tensorrt`` (default
``~/.cache/rescue_gpu/tensorrt``), keyed by the model's sha256, the GPU name, the
TensorRT version, the precision, the image shape and the maximum batch size.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendError, ModelError
from ..nn.record import WeightsRecord
from ._common import TorchFeatures, batches, cache_dir, check_images, output_dims, to_torch
from .onnxrt import INPUT_NAME, OUTPUT_NAME, export_onnx

__all__ = ["TensorRtEngine", "is_available", "engine_path"]


def is_available() -> bool:
    """Whether ``import tensorrt`` works and torch sees a CUDA device."""
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def engine_path(record: WeightsRecord, *, device: torch.device, precision: str, batch_size: int) -> Path:
    """Cache file of the serialized engine for this model, GPU, TensorRT version and settings."""
    import tensorrt as trt

    gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(device)).strip("-")
    shape = f"c{record.in_channels}-s{record.image_size}-b{batch_size}"
    return cache_dir("tensorrt") / f"{record.sha256[:32]}-{gpu}-trt{trt.__version__}-{precision}-{shape}.plan"


def _build(onnx_file: Path, *, shape: tuple[int, int, int], batch_size: int, precision: str) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_file.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {onnx_file}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *shape), (batch_size, *shape), (batch_size, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError("TensorRT failed to build an engine (see the TensorRT log above)")
    return bytes(plan)


class TensorRtEngine:
    """TensorRT inference (FP16 by default) of a record on a CUDA device. Unverified (see module docstring).

    Parameters
    ----------
    record
        The model.
    device
        A resolved CUDA :class:`torch.device`.
    precision
        ``"fp16"`` (default via ``"auto"``) or ``"fp32"``.
    batch_size
        Largest batch in the optimisation profile and per execution.
    """

    def __init__(self, record: WeightsRecord, *, device: torch.device, precision: str = "fp16", batch_size: int = 64) -> None:
        if not is_available() or device.type != "cuda":
            raise BackendError("kind='tensorrt' needs the tensorrt package and a CUDA device; use kind='torch' "
                               "(or 'cuda-graphs') instead")
        if precision not in ("fp16", "fp32"):
            raise ModelError(f"kind='tensorrt' builds fp16 or fp32 engines, not {precision!r}")
        import tensorrt as trt

        self.record, self.device, self.precision, self.batch_size = record, device, precision, int(batch_size)
        self.name = f"tensorrt-{precision}"
        self._features = TorchFeatures(record, device=device, batch_size=self.batch_size)
        plan = engine_path(record, device=device, precision=precision, batch_size=self.batch_size)
        if not plan.exists():
            plan.write_bytes(self._build_plan())
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise ModelError(f"{plan}: TensorRT could not load the cached engine; delete it to rebuild")
        self._context = self._engine.create_execution_context()

    def _build_plan(self) -> bytes:
        shape = (self.record.in_channels, self.record.image_size, self.record.image_size)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = export_onnx(self.record, Path(tmp) / "model.onnx")
            return _build(onnx_file, shape=shape, batch_size=self.batch_size, precision=self.precision)

    def _execute(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.empty((x.shape[0], *output_dims(self.record)), dtype=torch.float32, device=self.device)
        self._context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self._context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not self._context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise ModelError("TensorRT execution failed")
        return out

    def logits(self, images: Any) -> np.ndarray:
        """Raw logits (float64) of ``(N, C, H, W)`` images; numpy input goes through pinned memory."""
        t = to_torch(images)
        check_images(tuple(t.shape), in_channels=self.record.in_channels, image_size=self.record.image_size)
        outs = []
        for sl in batches(t.shape[0], self.batch_size):
            x = t[sl]
            x = x.pin_memory().to(self.device, non_blocking=True) if x.device.type == "cpu" else x.to(self.device)
            outs.append(self._execute(x.contiguous()))
        if not outs:
            return np.zeros((0, *output_dims(self.record)), dtype=np.float64)
        return torch.cat(outs).cpu().numpy().astype(np.float64)

    def logits_and_features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits as :meth:`logits` and float32 ``(N, F)`` pooled features (from the record's torch network)."""
        return self.logits(images), self._features(images)

    def predict(self, images: Any) -> np.ndarray:
        """Calibrated probabilities (temperature applied), float64 ``(N,)`` or ``(N, K)``."""
        return self.record.probabilities(self.logits(images))
