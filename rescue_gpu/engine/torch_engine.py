"""The torch engine: eager, ``torch.compile`` or CUDA graphs; CPU or GPU; fp32 / fp16 / bf16 autocast.

CPU path (verified here): eager, ``channels_last``, ``torch.inference_mode()``, batches of
``batch_size``; bf16 autocast optional. GPU path (written against torch's documented
APIs; NOT verified on our machines, which have no GPU): autocast fp16/bf16,
``channels_last``, numpy input staged through pinned host memory with
``non_blocking`` copies, cupy input taken via ``torch.from_dlpack`` (no copy),
``torch.compile`` or CUDA graphs with one static input buffer per image shape (the
last batch is zero-padded to ``batch_size``).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import torch

from ..errors import BackendError, ModelError
from ..nn.record import WeightsRecord
from ._common import DTYPES, batches, check_images, output_dims, to_torch

__all__ = ["TorchEngine", "MODES"]

MODES = ("eager", "compiled", "cuda-graphs")


def _take(out: Any, n: int, *, clone: bool = False) -> Any:
    """The first ``n`` rows of a logits tensor or a ``(logits, features)`` pair, as float32."""
    if isinstance(out, tuple):
        return tuple(_take(o, n, clone=clone) for o in out)
    out = out[:n].float()
    return out.clone() if clone else out


class TorchEngine:
    """Batched inference with a private copy of the record's network.

    Parameters
    ----------
    record
        The model; its network is deep-copied (the record's own module is left as is).
    device
        A resolved :class:`torch.device`.
    precision
        ``"fp32"``, ``"fp16"`` or ``"bf16"`` (autocast for the latter two).
    batch_size
        Images per forward pass.
    mode
        ``"eager"``, ``"compiled"`` (``torch.compile``) or ``"cuda-graphs"`` (GPU only).
    channels_last
        Run in NHWC memory format (faster convolutions on most back ends).
    """

    def __init__(self, record: WeightsRecord, *, device: torch.device, precision: str = "fp32",
                 batch_size: int = 64, mode: str = "eager", channels_last: bool = True) -> None:
        if mode not in MODES:
            raise ModelError(f"unknown torch mode {mode!r}; choose one of {', '.join(MODES)}")
        if mode == "cuda-graphs" and device.type != "cuda":
            raise BackendError("kind='cuda-graphs' needs a CUDA device; use kind='torch' on the CPU")
        if batch_size < 1:
            raise ModelError(f"batch_size must be >= 1 (got {batch_size})")
        self.record, self.device, self.precision = record, device, precision
        self.batch_size, self.mode, self.channels_last = int(batch_size), mode, channels_last
        self.name = f"torch-{mode}{'-cl' if channels_last else ''}-{precision}-{device.type}"
        self._fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = copy.deepcopy(record.model).eval().to(device, memory_format=self._fmt)
        self._forward = torch.compile(self.model, dynamic=False) if mode == "compiled" else self.model
        self._graphs: dict[tuple, tuple[torch.Tensor, Any, Any]] = {}

    def _autocast(self, *, cache: bool = True) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision], cache_enabled=cache)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        return x.contiguous(memory_format=self._fmt)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n == self.batch_size:
            return x
        return torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))]).contiguous(memory_format=self._fmt)

    def _outputs(self, x: torch.Tensor, features: bool) -> Any:
        """Logits, or ``(logits, features)`` from the model's ``forward_with_features`` (mean logits and
        mean features for an :class:`~rescue_gpu.nn.ensemble.EnsembleNetwork`)."""
        if not features:
            return self._forward(x)
        return self.model.forward_with_features(x)

    def _capture(self, shape: tuple[int, ...], features: bool) -> tuple[torch.Tensor, Any, Any]:
        """Record a CUDA graph for a ``(batch_size, *shape)`` input (warm-up on a side stream first)."""
        static_in = torch.zeros((self.batch_size, *shape), device=self.device).contiguous(memory_format=self._fmt)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode(), self._autocast(cache=False):
            for _ in range(3):
                self._outputs(static_in, features)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), self._autocast(cache=False), torch.cuda.graph(graph):
            static_out = self._outputs(static_in, features)
        return static_in, static_out, graph

    def _graph_forward(self, x: torch.Tensor, features: bool) -> Any:
        key = (tuple(x.shape[1:]), features)
        if key not in self._graphs:
            self._graphs[key] = self._capture(key[0], features)
        static_in, static_out, graph = self._graphs[key]
        n = x.shape[0]
        static_in[:n].copy_(x)
        static_in[n:].zero_()
        graph.replay()
        return _take(static_out, n, clone=True)

    def _run(self, x: torch.Tensor, features: bool = False) -> Any:
        if self.mode == "cuda-graphs":
            return self._graph_forward(x, features)
        n = x.shape[0]
        if self.mode == "compiled":
            x = self._pad(x)  # one static shape: no recompilation for the last batch
        with self._autocast():
            return _take(self._outputs(x, features), n)

    def _infer(self, images: Any, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        t = to_torch(images)
        check_images(tuple(t.shape), in_channels=self.record.in_channels, image_size=self.record.image_size)
        dims = output_dims(self.record)
        if t.shape[0] == 0:
            width = getattr(self.model, "num_features", 0)
            return np.zeros((0, *dims)), (np.zeros((0, width), dtype=np.float32) if features else None)
        outs = []
        with torch.inference_mode():
            for sl in batches(t.shape[0], self.batch_size):
                outs.append(self._run(self._to_device(t[sl]), features))
            if not features:
                return torch.cat(outs).cpu().numpy().astype(np.float64), None
            logits = torch.cat([o[0] for o in outs]).cpu()  # the synchronisation points
            feats = torch.cat([o[1] for o in outs]).cpu()
        return logits.numpy().astype(np.float64), feats.numpy().astype(np.float32)

    def logits(self, images: Any) -> np.ndarray:
        """Raw logits (float64, before temperature): ``(N,)`` for an MRD model, ``(N, K)`` for a cell model."""
        return self._infer(images, False)[0]

    def logits_and_features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits and the penultimate-layer features (float32 ``(N, F)``) in one pass."""
        logits, feats = self._infer(images, True)
        assert feats is not None
        return logits, feats

    def predict(self, images: Any) -> np.ndarray:
        """Calibrated probabilities (temperature applied), float64 ``(N,)`` or ``(N, K)``.

        ``images`` is a float32 ``(N, C, H, W)`` numpy array, cupy array or torch tensor.
        """
        return self.record.probabilities(self.logits(images))
