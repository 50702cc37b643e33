"""Many GPUs on one machine: which devices an embedded ``LocalCUDACluster`` uses, and its arguments.

One worker process per GPU in ``CUDA_VISIBLE_DEVICES`` (all GPUs when it is unset),
each seeing only its own device; ``workers_per_gpu = K`` gives each GPU's worker K task
slots (threads), so K samples are in flight per GPU (reading and preprocessing one while
another is on the device) with one copy of the model per GPU. dask-cuda names its
workers by device and cannot start two worker processes on one GPU, hence threads.

:func:`visible_gpus` and :func:`cuda_cluster_kwargs` are pure (tested without a device);
:func:`~rescue_gpu.runner.cluster.open_client` hands the result to ``LocalCUDACluster``.
"""

from __future__ import annotations

import re
from typing import Any

from ..config import RuntimeConfig
from ..errors import ConfigError

__all__ = ["visible_gpus", "cuda_cluster_kwargs", "gpu_count"]

_INDEX = re.compile(r"^\d+$")
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+(/\d+/\d+)?$")


def visible_gpus(cuda_visible_devices: str | None, n_physical: int) -> list[str]:
    """The devices a run may use, in order: ``CUDA_VISIBLE_DEVICES`` parsed, or all ``n_physical`` when unset.

    ``n_physical`` is the machine's GPU count (:func:`gpu_count`; -1: unknown, indices unchecked).

    Entries are indices (``"0,2"``) or UUIDs (``"GPU-8e2c..."``, ``"MIG-..."``), spaces allowed.

    Raises
    ------
    ConfigError
        The variable hides every GPU (``""``, ``"-1"``, ``"NoDevFiles"``), names a device
        twice, has an entry that is neither an index nor a UUID, or an index that this
        machine does not have.
    """
    if cuda_visible_devices is None:
        if n_physical < 1:
            raise ConfigError("LocalCUDACluster cannot start: no GPU could be found or counted on this machine "
                              "(check nvidia-smi), or use --backend cpu")
        return [str(i) for i in range(n_physical)]
    entries = [e.strip() for e in cuda_visible_devices.split(",")]
    if entries in ([""], ["-1"], ["NoDevFiles"]):
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} hides every GPU: unset it, "
                          "list the GPUs to use (CUDA_VISIBLE_DEVICES=0,1), or use --backend cpu")
    for e in entries:
        if not (_INDEX.match(e) or _UUID.match(e)):
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}: {e!r} is neither a GPU index "
                              "nor a GPU-/MIG- UUID; write it like 0,1 or GPU-<uuid>")
        if _INDEX.match(e) and n_physical >= 0 and int(e) >= n_physical:
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}: GPU {e} does not exist here "
                              f"({n_physical} GPU(s); nvidia-smi -L lists them)")
    dupes = sorted({e for e in entries if entries.count(e) > 1})
    if dupes:
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} names {', '.join(dupes)} twice; "
                          "for several samples in flight per GPU use --workers-per-gpu")
    return entries


def cuda_cluster_kwargs(runtime: RuntimeConfig, devices: list[str], *, dashboard_address: str,
                        memory_limit: int | str, rmm: bool, allowed_failures: int) -> dict[str, Any]:
    """``LocalCUDACluster`` keyword arguments: one worker per device in ``devices`` (or ``runtime.workers`` of them).

    Each worker has ``threads_per_worker * workers_per_gpu`` threads; with RMM, each
    worker's pool starts at half its device.

    Raises
    ------
    ConfigError
        ``runtime.workers`` asks for more workers than there are visible GPUs.
    """
    if runtime.workers != "auto":
        n = int(runtime.workers)
        if n > len(devices):
            raise ConfigError(f"--workers {n} asks for more GPU workers than the {len(devices)} visible GPU(s) "
                              f"({','.join(devices)}): a GPU worker is one GPU; use --workers-per-gpu for more "
                              "samples in flight per GPU")
        devices = devices[:n]
    return {"CUDA_VISIBLE_DEVICES": list(devices), "n_workers": len(devices),
            "threads_per_worker": runtime.threads_per_worker * runtime.cluster.workers_per_gpu,
            "memory_limit": memory_limit, "dashboard_address": dashboard_address,
            "rmm_pool_size": 0.5 if rmm else None,
            "scheduler_kwargs": {"allowed_failures": allowed_failures}}


def gpu_count() -> int:
    """Physical CUDA devices (NVML's count, whatever ``CUDA_VISIBLE_DEVICES`` says; else cupy's); -1 when unknown."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml (dask-cuda brings it) or no driver: ask CUDA
        pass
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no cupy, no driver
        return -1
