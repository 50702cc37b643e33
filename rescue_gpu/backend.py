"""Array-module and device choice: one code path for numpy (CPU) and cupy (GPU).

Stage kernels take an array module ``xp`` and never import cupy themselves. The
backend is resolved once, at the edge, from ``"auto" | "cpu" | "gpu"``; a fall-back
from ``"auto"`` to the CPU is announced with a warning, never silent.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import Any, Literal

import numpy as np

from .errors import BackendError

Backend = Literal["auto", "cpu", "gpu"]
BACKENDS: tuple[str, ...] = ("auto", "cpu", "gpu")

__all__ = ["Backend", "BACKENDS", "is_available", "resolve_backend", "get_xp", "array_module", "to_numpy"]


@functools.cache
def _gpu_status() -> tuple[bool, str]:
    """Return (available, reason) for the cupy GPU backend; cached per process."""
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
        return _gpu_status()[0]
    raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def resolve_backend(backend: str = "auto") -> Literal["cpu", "gpu"]:
    """Turn ``"auto" | "cpu" | "gpu"`` into the concrete backend to use.

    Raises
    ------
    BackendError
        ``"gpu"`` was asked for and no GPU is usable, or the name is unknown.
    """
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "cpu":
        return "cpu"
    ok, reason = _gpu_status()
    if backend == "gpu":
        if not ok:
            raise BackendError(
                f"backend='gpu' was requested but {reason}; install the 'gpu' extra "
                "(pip install 'rescue_gpu[gpu]') on a CUDA machine, or use backend='cpu'"
            )
        return "gpu"
    if not ok:
        warnings.warn(f"backend='auto': using the CPU because {reason}", RuntimeWarning, stacklevel=2)
        return "cpu"
    return "gpu"


def get_xp(backend: str = "auto") -> ModuleType:
    """The array module for ``backend``: :mod:`numpy` or :mod:`cupy`."""
    if resolve_backend(backend) == "gpu":
        import cupy

        return cupy
    return np


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
