"""Pieces every engine shares: device and precision choice, input conversion, checks."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendError, ModelError

__all__ = ["PRECISIONS", "KINDS", "resolve_device", "resolve_precision", "plan_engine", "plan_precision", "to_torch",
           "to_numpy_images", "check_images", "batches", "cache_dir", "is_cupy", "output_dims"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
KINDS = ("auto", "torch", "compiled", "cuda-graphs", "onnx", "tensorrt")
_GPU_KINDS = ("cuda-graphs", "tensorrt")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def is_cupy(a: Any) -> bool:
    """Whether ``a`` is a cupy array (checked without importing cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def resolve_device(device: str) -> torch.device:
    """``"auto" | "cpu" | "gpu" | "cuda" | "cuda:N"`` to a :class:`torch.device`.

    The shared decision of :func:`rescue_gpu.backend.torch_device`: ``"auto"`` takes
    torch's current CUDA device and warns (``BackendFallbackWarning``) when it falls back
    to the CPU. Raises :class:`BackendError` for a GPU request without a CUDA device.
    """
    from ..backend import torch_device

    return torch_device(device)


def tensorrt_importable() -> bool:
    """Whether the ``tensorrt`` package can be imported here (it is not imported)."""
    return importlib.util.find_spec("tensorrt") is not None


def plan_engine(kind: str, device_type: str, *, tensorrt: bool | None = None) -> str:
    """The concrete engine kind for ``kind`` on a ``"cpu"`` or ``"cuda"`` device.

    ``"auto"`` is TensorRT on a GPU where it is importable (``tensorrt``; None: look
    here), else torch.

    Raises
    ------
    ModelError
        An unknown kind.
    BackendError
        A GPU-only kind (``"cuda-graphs"``, ``"tensorrt"``) on the CPU.
    """
    if kind not in KINDS:
        raise ModelError(f"unknown engine kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        trt = tensorrt_importable() if tensorrt is None else tensorrt
        return "tensorrt" if device_type == "cuda" and trt else "torch"
    if kind in _GPU_KINDS and device_type != "cuda":
        raise BackendError(f"kind={kind!r} needs a CUDA device (device resolved to 'cpu'); use kind='torch' or 'onnx'")
    return kind


def plan_precision(precision: str, device_type: str, kind: str = "torch") -> str:
    """The concrete precision for ``precision`` on a ``"cpu"`` or ``"cuda"`` device with engine ``kind``.

    ``"auto"`` is fp32 on the CPU and for ONNX Runtime, fp16 on a GPU. Device queries
    (bf16 support) are left to :func:`resolve_precision` on the machine that runs it.

    Raises
    ------
    ModelError
        An unknown precision, fp16 on the CPU, or reduced precision with ONNX Runtime.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp32" if device_type != "cuda" or kind == "onnx" else "fp16"
    if precision == "fp16" and device_type != "cuda":
        raise ModelError("precision='fp16' is for GPUs; on the CPU use 'fp32' or 'bf16'")
    if precision != "fp32" and kind == "onnx":
        raise ModelError(f"kind='onnx' runs fp32 only (got precision={precision!r}); use kind='torch' or 'tensorrt' "
                         "for reduced precision")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` to ``"fp32"`` on the CPU and ``"fp16"`` on a GPU; checks the others (bf16 support here)."""
    prec = plan_precision(precision, device.type)
    if prec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BackendError(f"{torch.cuda.get_device_name(device)} has no bf16 support; use precision='fp16'")
    return prec


def to_torch(images: Any) -> torch.Tensor:
    """numpy, cupy (DLPack, no copy) or torch images as a float32 torch tensor (no copy when possible)."""
    if isinstance(images, torch.Tensor):
        t = images.detach()
    elif is_cupy(images):
        t = torch.from_dlpack(images)
    else:
        t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return t if t.dtype == torch.float32 else t.float()


def to_numpy_images(images: Any) -> np.ndarray:
    """numpy, cupy or torch images as a C-contiguous float32 numpy array (copies device data to host)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    elif is_cupy(images):
        images = images.get()
    return np.ascontiguousarray(images, dtype=np.float32)


def output_dims(record: Any) -> tuple[int, ...]:
    """Per-image output shape: ``()`` for a one-logit MRD model, ``(K,)`` for a K-class cell model."""
    k = getattr(record, "n_classes", None)
    return () if k is None else (int(k),)


def check_images(shape: tuple[int, ...], *, in_channels: int, image_size: int) -> None:
    """Raise :class:`ModelError` unless ``shape`` is ``(N, in_channels, image_size, image_size)``."""
    if len(shape) != 4 or tuple(shape[1:]) != (in_channels, image_size, image_size):
        raise ModelError(f"images have shape {tuple(shape)}, the model expects (N, {in_channels}, {image_size}, "
                         f"{image_size}); render them with the reference's raster settings")


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices ``[i, i + batch_size)`` covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def cache_dir(kind: str) -> Path:
    """On-disk cache folder for ``kind`` (``$RESCUE_GPU_CACHE`` or ``~/.cache/rescue_gpu``)."""
    root = Path(os.environ.get("RESCUE_GPU_CACHE", Path.home() / ".cache" / "rescue_gpu"))
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
