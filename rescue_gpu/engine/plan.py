"""Engine kind and precision: the engine's part of a run's device plan.

:func:`plan_engine` and :func:`plan_precision` are pure rules over a resolved device
type; :func:`plan_run_device` composes them with
:func:`rescue_gpu.device.resolve_run_backend` into the :class:`~rescue_gpu.device.DevicePlan`
a scoring run records (resolved once on the client, never ``"auto"`` on a worker).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from ..device import DevicePlan, resolve_run_backend
from ..errors import BackendError, ModelError

__all__ = ["PRECISIONS", "KINDS", "GPU_KINDS", "tensorrt_importable", "plan_engine", "plan_precision",
           "resolve_precision", "plan_run_device"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
KINDS = ("auto", "torch", "compiled", "cuda-graphs", "onnx", "tensorrt")
GPU_KINDS = ("cuda-graphs", "tensorrt")


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
    if kind in GPU_KINDS and device_type != "cuda":
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


def resolve_precision(precision: str, device: Any) -> str:
    """The concrete precision on a resolved :class:`torch.device`, checked against this machine.

    ``"auto"`` is ``"fp32"`` on the CPU and ``"fp16"`` on a GPU (:func:`plan_precision`);
    bf16 is refused on a GPU without bf16 support.

    Raises
    ------
    ModelError
        As :func:`plan_precision`.
    BackendError
        bf16 on a GPU without bf16 support.
    """
    import torch

    prec = plan_precision(precision, device.type)
    if prec == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BackendError(f"{torch.cuda.get_device_name(device)} has no bf16 support; use precision='fp16'")
    return prec




def plan_run_device(backend: str = "auto", *, engine: str = "auto", precision: str = "auto",
                    probes: Mapping[str, Mapping[str, Any]] | None = None) -> DevicePlan:
    """Resolve a scoring run's backend, engine kind and precision once, on the client.

    Parameters
    ----------
    backend
        ``"auto" | "cpu" | "gpu"`` (the runtime config's ``backend``).
    engine, precision
        The requested engine kind and precision (see :func:`rescue_gpu.engine.make_engine`).
    probes
        :func:`~rescue_gpu.device.device_probe` of every worker of an existing cluster,
        keyed by worker address; None: this process.

    Returns
    -------
    DevicePlan
        Concrete values; ``"auto"`` without a GPU warns once (``BackendFallbackWarning``).

    Raises
    ------
    BackendError
        As :func:`~rescue_gpu.device.resolve_run_backend`, or an engine kind that needs a GPU.
    ModelError
        An unknown engine kind or precision, or a precision the device or engine cannot run.
    """
    resolved, reason, tensorrt = resolve_run_backend(backend, probes=probes)
    device_type = "cuda" if resolved == "gpu" else "cpu"
    kind = plan_engine(engine, device_type, tensorrt=tensorrt)
    return DevicePlan(backend=resolved, engine=kind, precision=plan_precision(precision, device_type, kind),
                      requested=backend, reason=reason)
