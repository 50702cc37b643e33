"""Inference engines: torch (eager / compiled / CUDA graphs), ONNX Runtime, TensorRT.

Every engine takes ``(N, C, H, W)`` float32 images (numpy, cupy via DLPack, or torch)
and returns calibrated MRD probabilities (the record's temperature applied) as float64
``(N,)``. :func:`make_engine` picks and caches one per process, so a Dask worker loads
its model once.

Verified on the CPU here: torch eager (fp32, bf16 autocast, channels_last) and
onnxruntime's CPU provider. Written against documented APIs but NOT verified (no GPU
here): every CUDA path (autocast fp16/bf16, pinned memory, CUDA graphs, torch.compile
on a GPU, onnxruntime's CUDA provider) and TensorRT.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError, ModelError
from ..model.record import ModelRecord
from ._common import KINDS, plan_engine, resolve_device, resolve_precision

__all__ = ["Engine", "KINDS", "make_engine", "clear_engine_cache", "export_onnx", "available_kinds"]

_CACHE_SIZE = 4
_cache: OrderedDict[tuple, Engine] = OrderedDict()
_lock = threading.Lock()


@runtime_checkable
class Engine(Protocol):
    """What every inference engine offers."""

    name: str

    def predict(self, images: Any) -> np.ndarray:
        """Calibrated probabilities, float64 ``(N,)``, of ``(N, C, H, W)`` float32 images."""
        ...


def export_onnx(*args: Any, **kwargs: Any) -> Any:
    """See :func:`rescue_gpu.engine.onnxrt.export_onnx` (imported lazily)."""
    from .onnxrt import export_onnx as _export

    return _export(*args, **kwargs)


def _tensorrt_importable() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def available_kinds(device: str = "auto") -> list[str]:
    """The engine kinds that can be built for ``device`` in this process (``"auto"`` excluded)."""
    dev = resolve_device(device)
    kinds = ["torch", "compiled"]
    if dev.type == "cuda":
        kinds.append("cuda-graphs")
    if importlib.util.find_spec("onnxruntime") is not None:
        kinds.append("onnx")
    if dev.type == "cuda" and _tensorrt_importable():
        kinds.append("tensorrt")
    return kinds


def _resolve_kind(kind: str, device_type: str) -> str:
    """The concrete kind (see :func:`~rescue_gpu.engine._common.plan_engine`, shared with the run's device plan)."""
    return plan_engine(kind, device_type, tensorrt=_tensorrt_importable())


def _build(record: ModelRecord, kind: str, device: Any, precision: str, batch_size: int) -> Engine:
    if kind in ("torch", "compiled", "cuda-graphs"):
        from .torch_engine import TorchEngine

        mode = {"torch": "eager"}.get(kind, kind)
        return TorchEngine(record, device=device, precision=precision, batch_size=batch_size, mode=mode)
    if precision != "fp32" and kind == "onnx":
        raise ModelError(f"kind='onnx' runs fp32 only (got precision={precision!r}); use kind='torch' or 'tensorrt' "
                         "for reduced precision")
    if kind == "onnx":
        from .onnxrt import OnnxEngine

        return OnnxEngine(record, device=device, batch_size=batch_size)
    from .tensorrt import TensorRtEngine

    return TensorRtEngine(record, device=device, precision=precision, batch_size=batch_size)


def make_engine(record: ModelRecord, *, kind: str = "auto", device: str = "auto", precision: str = "auto",
                batch_size: int = 64) -> Engine:
    """Build (or reuse) an inference engine for ``record``.

    Parameters
    ----------
    record
        The model.
    kind
        ``"auto"`` (TensorRT when importable and on a GPU, else torch), ``"torch"``
        (eager, channels_last), ``"compiled"`` (``torch.compile``), ``"cuda-graphs"``
        (GPU only), ``"onnx"`` (onnxruntime, fp32) or ``"tensorrt"`` (GPU only).
    device
        ``"auto"`` (first CUDA device, else the CPU with a warning), ``"cpu"``,
        ``"gpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision
        ``"fp32"``, ``"fp16"`` (GPU), ``"bf16"`` or ``"auto"`` (fp32 on the CPU, fp16 on a
        GPU; fp32 for ``"onnx"``).
    batch_size
        Images per forward pass.

    Returns
    -------
    Engine
        Cached per process by (weights sha256, kind, device, precision, batch size,
        temperature); the last four engines built are kept.

    Raises
    ------
    BackendError
        A GPU kind or device was requested and none is usable.
    ModelError
        Unknown kind or precision, or a precision the kind cannot run.
    """
    if batch_size < 1:
        raise ModelError(f"batch_size must be >= 1 (got {batch_size})")
    dev = resolve_device(device)
    kind = _resolve_kind(kind, dev.type)
    if kind in ("cuda-graphs", "tensorrt") and dev.type != "cuda":
        raise BackendError(f"kind={kind!r} needs a CUDA device (device resolved to 'cpu'); use kind='torch' or 'onnx'")
    prec = "fp32" if (kind == "onnx" and precision == "auto") else resolve_precision(precision, dev)
    key = (record.sha256, kind, str(dev), prec, int(batch_size), float(record.temperature),
           int(record.in_channels), int(record.image_size))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        engine = _build(record, kind, dev, prec, int(batch_size))
        _cache[key] = engine
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return engine


def clear_engine_cache() -> None:
    """Forget every cached engine (frees their models)."""
    with _lock:
        _cache.clear()
