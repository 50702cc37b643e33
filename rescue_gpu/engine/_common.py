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

__all__ = ["DTYPES", "to_torch", "to_numpy_images", "check_images", "batches", "cache_dir", "output_dims",
           "TorchFeatures"]

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


class TorchFeatures:
    """Pooled ``(N, F)`` features from a private fp32 eval copy of a record's network.

    For engines whose exported graph gives only logits (ONNX Runtime, TensorRT): their
    ``logits_and_features`` takes the logits from the engine and the features from here.

    Parameters
    ----------
    record
        The weights record (its own module is left as is).
    device
        A resolved :class:`torch.device`.
    batch_size
        Images per forward pass.
    """

    def __init__(self, record: Any, *, device: torch.device, batch_size: int) -> None:
        self.record, self.device, self.batch_size = record, device, int(batch_size)
        self._model: torch.nn.Module | None = None

    def __call__(self, images: Any) -> np.ndarray:
        """float32 ``(N, F)`` features of ``(N, C, H, W)`` images."""
        if self._model is None:
            import copy

            self._model = copy.deepcopy(self.record.model).float().eval().to(self.device)
        t = to_torch(images)
        width = int(getattr(self._model, "num_features", 0))
        if t.shape[0] == 0:
            return np.zeros((0, width), dtype=np.float32)
        with torch.inference_mode():
            outs = [self._model.forward_features(t[sl].to(self.device)).float().cpu() for sl in batches(t.shape[0],
                                                                                                          self.batch_size)]
        return torch.cat(outs).numpy().astype(np.float32)
