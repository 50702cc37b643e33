"""Pieces every engine shares: input conversion, shape checks, batching, the on-disk cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import is_cupy
from ..errors import ModelError

__all__ = ["DTYPES", "to_torch", "to_numpy_images", "check_images", "batches", "cache_dir", "output_dims"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


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
    """Per-image output shape of a weights record: ``()`` for one logit (MRD), ``(K,)`` for K classes (cells)."""
    return tuple(record.output_shape)


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
