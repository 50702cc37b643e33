"""Pieces every engine shares: device and precision choice, input conversion, checks."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendError, ModelError

__all__ = ["PRECISIONS", "resolve_device", "resolve_precision", "to_torch", "to_numpy_images", "check_images",
           "batches", "cache_dir", "is_cupy", "output_dims"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def is_cupy(a: Any) -> bool:
    """Whether ``a`` is a cupy array (checked without importing cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def resolve_device(device: str) -> torch.device:
    """``"auto" | "cpu" | "gpu" | "cuda" | "cuda:N"`` to a :class:`torch.device`.

    ``"auto"`` takes the first CUDA device torch sees and warns when it falls back to
    the CPU. Raises :class:`BackendError` for a GPU request without a CUDA device.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        warnings.warn("device='auto': running the network on the CPU because torch sees no CUDA device",
                      RuntimeWarning, stacklevel=3)
        return torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device in ("gpu", "cuda") or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise BackendError(f"device={device!r} was requested but torch sees no CUDA device "
                               "(torch.cuda.is_available() is False); use device='cpu' or a CUDA build of torch")
        return torch.device("cuda", torch.cuda.current_device() if ":" not in device else int(device.split(":")[1]))
    raise BackendError(f"unknown device {device!r}; choose 'auto', 'cpu', 'gpu', 'cuda' or 'cuda:N'")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` to ``"fp32"`` on the CPU and ``"fp16"`` on a GPU; checks the others."""
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ModelError("precision='fp16' is for GPUs; on the CPU use 'fp32' or 'bf16'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BackendError(f"{torch.cuda.get_device_name(device)} has no bf16 support; use precision='fp16'")
    return precision


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
