"""Array-API helpers for the ``xp`` code (rasterisation; preprocessing where it is written to the standard).

The ``xp`` code is written against the Python array API standard, so that it runs on numpy
(CPU), cupy (GPU) and, in tests, on ``array_api_strict`` -- a namespace that refuses
numpy-only idioms (methods such as ``.astype``/``.copy``/``.max``, ``bincount``, implicit
conversions). That is how CI checks, without a GPU, that the GPU (cupy) path of that code
uses nothing beyond what cupy implements.

The reviewed calls that are NOT in the standard, and why each is safe on cupy:

``bincount`` (:func:`bincount`)
    The rasterisation scatter-add. numpy and cupy both implement
    ``bincount(x, weights=, minlength=)`` with the same semantics (cupy: atomic adds,
    float64 weights; the order of float64 additions may differ in the last bit from
    numpy's). A namespace without it (``array_api_strict``) goes through numpy by DLPack.
``astype`` / copies (:func:`astype`, :func:`copy`)
    The standard's ``xp.astype(x, dtype)`` and ``xp.asarray(x, copy=True)``; cupy before
    the array-API namespace merge lacks the functions, so the methods are used there.
Integer-array assignment ``out[:, cols] = ...`` (preprocessing: compensation, amplification)
    Not in the standard (only integer-array *reading* is); numpy and cupy both support
    it. Those functions are therefore run under numpy/cupy only (tests/test_xp_strict.py
    lists them).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .device import array_module, is_cupy

__all__ = ["namespace", "astype", "copy", "bincount", "NON_STANDARD_CALLS"]

NON_STANDARD_CALLS = ("bincount", "astype (method fallback)", "copy (method fallback)", "integer-array assignment")


def namespace(*arrays: Any) -> ModuleType:
    """The array namespace of ``arrays``: cupy, numpy, or any array-API library (``__array_namespace__``)."""
    for a in arrays:
        if is_cupy(a):
            return array_module(a)
        if not isinstance(a, np.ndarray) and hasattr(a, "__array_namespace__"):
            return a.__array_namespace__()
    return np


def astype(x: Any, dtype: Any, xp: ModuleType) -> Any:
    """``xp.astype(x, dtype)`` where the namespace has it, else the method (older cupy)."""
    fn = getattr(xp, "astype", None)
    return fn(x, dtype) if fn is not None else x.astype(dtype)


def copy(x: Any, xp: ModuleType) -> Any:
    """A copy of ``x`` in its namespace."""
    return x.copy() if hasattr(x, "copy") else xp.asarray(x, copy=True)


def bincount(flat: Any, weights: Any, minlength: int, xp: ModuleType) -> Any:
    """Scatter-add of ``weights`` into ``minlength`` bins (reviewed non-standard call)."""
    fn = getattr(xp, "bincount", None)
    if fn is not None:
        return fn(flat, weights=weights, minlength=minlength)
    out = np.bincount(np.from_dlpack(flat), weights=np.from_dlpack(weights), minlength=minlength)
    return xp.asarray(out, dtype=xp.float64)  # numpy returns int64 for empty weights
