"""The device, decided in one place: array module (numpy/cupy) and torch device.

Stage kernels take an array module ``xp`` and never import cupy themselves. The
backend is resolved once, at the edge, from ``"auto" | "cpu" | "gpu"``; a fall-back
from ``"auto"`` to the CPU is announced with a :class:`BackendFallbackWarning`, never
silent, and ``"gpu"`` without a usable GPU is a :class:`~rescue_gpu.errors.BackendError`.

Every "is there a GPU" question goes through one decision, :func:`choose_backend`:
:func:`resolve_backend` asks it about cupy (the array backend), :func:`torch_device`
about torch (the network's device, for training and inference alike), and
:func:`resolve_run_backend` about both, for a scoring run on this process or on the
workers of a cluster (:func:`device_probe` of each). A run's :class:`DevicePlan` (backend,
engine kind, precision) is composed by :func:`rescue_gpu.engine.plan_run_device`, which
adds the engine's choices to this module's; the workers are given the resolved values,
never ``"auto"``. This module imports neither torch nor cupy at import time and nothing
of rescue_gpu but :mod:`rescue_gpu.errors`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .errors import BackendError

Backend = Literal["auto", "cpu", "gpu"]
BACKENDS: tuple[str, ...] = ("auto", "cpu", "gpu")

__all__ = ["Backend", "BACKENDS", "BackendFallbackWarning", "DevicePlan", "is_available", "gpu_status",
           "torch_status", "choose_backend", "resolve_backend", "torch_device", "device_probe", "cluster_status",
           "resolve_run_backend", "get_xp", "array_module", "to_numpy", "is_cupy"]


class BackendFallbackWarning(RuntimeWarning):
    """``"auto"`` found no usable GPU and runs on the CPU (issued once per resolution, on the client)."""


@functools.cache
def gpu_status() -> tuple[bool, str]:
    """Whether cupy sees a CUDA device here, and why (or why not); cached per process.

    Returns
    -------
    tuple
        ``(available, reason)``, e.g. ``(False, "cupy is not importable (...)")``.
    """
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA install
        return False, f"cupy is not importable ({exc.__class__.__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"no CUDA device ({exc.__class__.__name__}: {exc})"
    if n < 1:
        return False, "no CUDA device"
    return True, f"{n} CUDA device(s)"


def is_available(backend: str) -> bool:
    """Whether ``backend`` (``"cpu"`` or ``"gpu"``) can be used in this process."""
    if backend == "cpu":
        return True
    if backend == "gpu":
        return gpu_status()[0]
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def choose_backend(requested: str, status: tuple[bool, str], *, what: str = "backend",
                   fix: str = "install the 'gpu' extra (pip install 'rescue_gpu[gpu]') on a CUDA machine, "
                              "or use backend='cpu'",
                   asked: str | None = None, stacklevel: int = 3) -> Literal["cpu", "gpu"]:
    """The one decision behind every backend and device choice.

    Parameters
    ----------
    requested
        ``"auto"``, ``"cpu"`` or ``"gpu"``.
    status
        ``(usable, reason)`` of the GPU as the caller sees it (cupy, torch, a cluster's workers).
    what
        The setting's name in messages (``"backend"``, ``"device"``).
    fix
        What to do when ``"gpu"`` cannot be honoured.
    asked
        The name as the user wrote it (e.g. ``"cuda:1"``), for messages; default ``requested``.
    stacklevel
        Passed to :func:`warnings.warn` for the fall-back warning.

    Returns
    -------
    str
        ``"gpu"`` or ``"cpu"``; ``"auto"`` without a usable GPU warns once
        (:class:`BackendFallbackWarning`) and gives ``"cpu"``.

    Raises
    ------
    BackendError
        ``"gpu"`` was asked for and no GPU is usable, or the name is unknown.
    """
    if requested not in BACKENDS:
        raise BackendError(f"unknown {what} {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "cpu":
        return "cpu"
    ok, reason = status
    if ok:
        return "gpu"
    if requested == "gpu":
        raise BackendError(f"{what}={asked or requested!r} was requested but {reason}; {fix}")
    warnings.warn(f"{what}='auto': using the CPU because {reason}", BackendFallbackWarning, stacklevel=stacklevel)
    return "cpu"


def resolve_backend(backend: str = "auto") -> Literal["cpu", "gpu"]:
    """Turn ``"auto" | "cpu" | "gpu"`` into the concrete array backend (cupy's view of the GPU).

    Raises
    ------
    BackendError
        ``"gpu"`` was asked for and no GPU is usable, or the name is unknown.
    """
    if backend not in BACKENDS:  # before probing cupy
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return choose_backend(backend, gpu_status() if backend != "cpu" else (False, ""))


def torch_status() -> tuple[bool, str]:
    """Whether torch sees a CUDA device here, and why (not cached: torch caches it itself).

    Returns
    -------
    tuple
        ``(available, reason)``.
    """
    import torch

    if torch.cuda.is_available():
        return True, f"torch sees {torch.cuda.device_count()} CUDA device(s)"
    return False, "torch sees no CUDA device (torch.cuda.is_available() is False)"


def torch_device(device: str = "auto") -> Any:
    """``"auto" | "cpu" | "gpu" | "cuda" | "cuda:N"`` to a :class:`torch.device` (torch's view of the GPU).

    ``"auto"`` takes torch's current CUDA device and warns (:class:`BackendFallbackWarning`)
    when it falls back to the CPU.

    Raises
    ------
    BackendError
        A GPU was requested and torch sees no CUDA device, or the name is unknown.
    """
    import torch

    if device in ("cuda", "gpu") or device.startswith("cuda:"):
        index = device.partition(":")[2]
        if index and not index.isdecimal():
            raise BackendError(f"unknown device {device!r}; choose 'auto', 'cpu', 'gpu', 'cuda' or 'cuda:N'")
        choose_backend("gpu", torch_status(), what="device", asked=device,
                       fix="use device='cpu' or install a CUDA build of torch on a CUDA machine")
        return torch.device("cuda", int(index) if index else torch.cuda.current_device())
    if device not in BACKENDS:
        raise BackendError(f"unknown device {device!r}; choose 'auto', 'cpu', 'gpu', 'cuda' or 'cuda:N'")
    if choose_backend(device, torch_status() if device == "auto" else (False, ""), what="device",
                      stacklevel=4) == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def device_probe() -> dict[str, Any]:
    """What this process can run a scoring job on: ``{"gpu": bool, "reason": str, "tensorrt": bool}``.

    ``gpu`` needs both cupy (projection, rasterisation) and torch (the network) to see a
    CUDA device. Module-level, so a Dask worker can run it (``client.run``).
    """
    import importlib.util

    ok, reason = gpu_status()
    if ok:
        ok, reason = torch_status()
    return {"gpu": ok, "reason": reason, "tensorrt": importlib.util.find_spec("tensorrt") is not None}


@dataclass(frozen=True, kw_only=True)
class DevicePlan:
    """Where and how a scoring run computes, resolved once on the client.

    Attributes
    ----------
    backend
        ``"cpu"`` or ``"gpu"``: the array backend of projection and rasterisation and the
        network's device.
    engine
        The inference engine kind (``"torch"``, ``"onnx"``, ``"tensorrt"``, ...), never ``"auto"``.
    precision
        ``"fp32"``, ``"fp16"`` or ``"bf16"``, never ``"auto"``.
    requested
        The backend asked for (``"auto" | "cpu" | "gpu"``).
    reason
        Why a GPU is or is not used (empty for an explicit ``"cpu"``).
    """

    backend: Literal["cpu", "gpu"]
    engine: str
    precision: str
    requested: str = "auto"
    reason: str = ""

    def record(self) -> dict[str, str]:
        """The resolved values for the resume identity and each sample's provenance."""
        return {"backend": self.backend, "engine": self.engine, "precision": self.precision}

    def describe(self) -> str:
        """One line for the console, e.g. ``"device: cpu (auto fell back: ...), engine torch, precision fp32"``."""
        how = ""
        if self.requested == "auto":
            how = f" (auto: {self.reason})" if self.backend == "gpu" else f" (auto fell back to the CPU: {self.reason})"
        return f"device: {self.backend}{how}, engine {self.engine}, precision {self.precision}"


def cluster_status(probes: Mapping[str, Mapping[str, Any]]) -> tuple[bool, str, bool]:
    """Whether a set of workers can run on a GPU: only if every worker has one.

    Parameters
    ----------
    probes
        :func:`device_probe` of each worker, keyed by worker address.

    Returns
    -------
    tuple
        ``(usable, reason, tensorrt)``; ``tensorrt`` is true when every worker can import it.

    Raises
    ------
    BackendError
        No workers.
    """
    if not probes:
        raise BackendError("the Dask cluster has no workers to run on; start 'dask worker' or 'dask cuda worker'")
    without = sorted(w for w, p in probes.items() if not p.get("gpu"))
    tensorrt = all(p.get("tensorrt") for p in probes.values())
    if not without:
        return True, f"all {len(probes)} worker(s) have a usable GPU", tensorrt
    if len(without) == len(probes):
        return False, f"no worker has a usable GPU ({probes[without[0]].get('reason', '')})", tensorrt
    return False, (f"{len(without)} of {len(probes)} workers have no usable GPU ({', '.join(without[:3])}"
                   f"{', ...' if len(without) > 3 else ''})"), tensorrt


def resolve_run_backend(backend: str = "auto", *, probes: Mapping[str, Mapping[str, Any]] | None = None
                        ) -> tuple[Literal["cpu", "gpu"], str, bool]:
    """Resolve a scoring run's array backend and network device once, on the client.

    Parameters
    ----------
    backend
        ``"auto" | "cpu" | "gpu"`` (the runtime config's ``backend``).
    probes
        :func:`device_probe` of every worker of an existing cluster, keyed by worker
        address; None: this process (an in-process run or an embedded cluster).

    Returns
    -------
    tuple
        ``(resolved, reason, tensorrt)``: ``"cpu"`` or ``"gpu"``, why (empty for an explicit
        ``"cpu"``), and whether TensorRT is importable where the run computes. ``"auto"``
        without a GPU warns once (:class:`BackendFallbackWarning`).

    Raises
    ------
    BackendError
        ``"gpu"`` without a usable GPU (on some worker of a cluster), ``"auto"`` on a
        cluster whose workers disagree, or an unknown name.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if probes is None:
        probe = device_probe() if backend != "cpu" else {"gpu": False, "reason": "", "tensorrt": False}
        ok, reason, tensorrt = bool(probe["gpu"]), str(probe["reason"]), bool(probe["tensorrt"])
    else:
        ok, reason, tensorrt = cluster_status(probes) if backend != "cpu" else (False, "", False)
        if backend == "auto" and not ok and any(p.get("gpu") for p in probes.values()):
            raise BackendError(f"backend='auto' cannot choose: {reason}; pass --backend cpu, or --backend gpu "
                               "after making every worker a GPU worker")
    resolved = choose_backend(backend, (ok, reason), stacklevel=4)
    return resolved, (reason if backend != "cpu" else ""), tensorrt


def get_xp(backend: str = "auto") -> ModuleType:
    """The array module for ``backend``: :mod:`numpy` or :mod:`cupy`."""
    if resolve_backend(backend) == "gpu":
        import cupy

        return cupy
    return np


def is_cupy(a: Any) -> bool:
    """Whether ``a`` is a cupy array (checked without importing cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(*arrays: Any) -> ModuleType:
    """The array module that owns ``arrays`` (cupy if any of them is a cupy array)."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def to_numpy(a: Any) -> np.ndarray:
    """Copy a numpy or cupy array to host memory (no copy for numpy input)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return np.asarray(a)
