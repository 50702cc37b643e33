"""Inference engines: torch (eager / compiled / CUDA graphs), ONNX Runtime, TensorRT.

Every engine takes ``(N, C, H, W)`` float32 images (numpy, cupy via DLPack, or torch)
of a :class:`~rescue_gpu.nn.record.WeightsRecord` and offers the three calls of
:class:`Engine`. The output shape follows the record's network: ``(N,)`` for a one-logit
network (the flow MRD model: ``predict`` gives ``sigmoid(logit / T)``), ``(N, K)`` for a
``K``-class network (a cell model: ``predict`` gives ``softmax(logits / T)``). The
record's temperature ``T`` is applied by ``predict`` only. :func:`make_engine` picks and
caches one per process, so a Dask worker loads its model once; :func:`plan_run_device`
resolves a run's backend, engine kind and precision once, on the client.

Verified on the CPU here: torch eager (fp32, bf16 autocast, channels_last) and
onnxruntime's CPU provider. Written against documented APIs but NOT verified (no GPU
here): every CUDA path (autocast fp16/bf16, pinned memory, CUDA graphs, torch.compile
on a GPU, onnxruntime's CUDA provider) and TensorRT.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..device import torch_device
from ..errors import BackendError, ModelError
from ..nn.record import WeightsRecord
from .plan import KINDS, PRECISIONS, plan_engine, plan_run_device, resolve_precision, tensorrt_importable

__all__ = ["Engine", "KINDS", "PRECISIONS", "make_engine", "clear_engine_cache", "export_onnx", "plan_run_device"]

_CACHE_SIZE = 4
_cache: OrderedDict[tuple, Engine] = OrderedDict()
_lock = threading.Lock()


@runtime_checkable
class Engine(Protocol):
    """What every inference engine offers.

    Images are float32 ``(N, C, H, W)`` (numpy, cupy or torch) with ``C`` and ``H = W``
    those of the engine's record. Outputs are float64 numpy arrays of shape ``(N,)`` for
    a one-logit network and ``(N, K)`` for a ``K``-class network.
    """

    name: str

    def logits(self, images: Any) -> np.ndarray:
        """Raw logits (before temperature): ``(N,)`` or ``(N, K)``, float64."""
        ...

    def logits_and_features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits as :meth:`logits` and the pooled features, float32 ``(N, F)``, from one pass."""
        ...

    def predict(self, images: Any) -> np.ndarray:
        """Calibrated probabilities (the record's temperature applied): ``(N,)`` or ``(N, K)``, float64."""
        ...


def export_onnx(*args: Any, **kwargs: Any) -> Any:
    """See :func:`rescue_gpu.engine.onnxrt.export_onnx` (imported lazily: onnx is optional)."""
    from .onnxrt import export_onnx as _export

    return _export(*args, **kwargs)


def _build(record: WeightsRecord, kind: str, device: Any, precision: str, batch_size: int) -> Engine:
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


def make_engine(record: WeightsRecord, *, kind: str = "auto", device: str = "auto", precision: str = "auto",
                batch_size: int = 64) -> Engine:
    """Build (or reuse) an inference engine for ``record``.

    Parameters
    ----------
    record
        The model (a flow :class:`~rescue_gpu.flow.record.ModelRecord`, a
        :class:`~rescue_gpu.cells.record.CellModelRecord`, or any other weights record).
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
    dev = torch_device(device)
    kind = plan_engine(kind, dev.type, tensorrt=tensorrt_importable())
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
