"""Dask cluster set-up for cohort runs (either assay): embedded on this machine, or an existing scheduler.

Choices, in order:

1. ``scheduler`` given: connect to it (``tcp://host:8786``, or a scheduler JSON file
   written by ``dask scheduler --scheduler-file``). Its workers may be GPU workers
   (``dask cuda worker``) or CPU workers (``dask worker``) on other nodes.
2. ``cluster.kind = "slurm"`` (``--cluster slurm``): workers as SLURM jobs through
   dask-jobqueue (:mod:`rescue_gpu.runner.slurm`), cancelled when the run ends.
3. GPUs present (cupy sees a device), ``dask_cuda`` importable and the backend is not
   ``"cpu"``: an embedded ``dask_cuda.LocalCUDACluster``, one worker process per GPU in
   ``CUDA_VISIBLE_DEVICES`` (:mod:`rescue_gpu.runner.gpus`; ``--workers-per-gpu`` task
   slots each). *Written against dask-cuda's documented API; run on the GPU machine by
   benchmarks/gpu_check.py only.*
4. Otherwise an embedded ``distributed.LocalCluster`` of CPU worker processes.

Running on SLURM by hand (without ``--cluster slurm``)
-----------------------------------------------------

With dask-jobqueue, from a login node or a small job (one worker per GPU job: SLURM sets
``CUDA_VISIBLE_DEVICES`` for the job, so a plain ``dask worker`` sees exactly its GPU)::

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    cluster = SLURMCluster(
        queue="gpu", account="my-project", walltime="04:00:00",
        cores=8, processes=1, memory="64GB",             # one worker process per job
        job_extra_directives=["--gres=gpu:1"],            # one GPU per job
        job_script_prologue=["source /path/to/rescue_gpu/.venv/bin/activate"],
        scheduler_options={"dashboard_address": ":8787"},
    )
    cluster.scale(jobs=8)                                 # 8 GPUs
    print(cluster.scheduler_address)                      # pass this to rescue score

    # in another shell (same environment), while the Python session above stays open:
    #   rescue score cohort.csv --reference REF --model MODEL --out RUN --scheduler tcp://...

Or a single sbatch script without dask-jobqueue (``dask cuda worker`` per node, RMM pools
and device spilling from dask-cuda)::

    #!/bin/bash
    #SBATCH --nodes=4 --gres=gpu:4 --ntasks-per-node=1 --time=04:00:00
    source /path/to/rescue_gpu/.venv/bin/activate
    SF=$PWD/scheduler-$SLURM_JOB_ID.json
    dask scheduler --scheduler-file "$SF" &
    srun dask cuda worker --scheduler-file "$SF" --rmm-pool-size 0.8 &
    sleep 30
    rescue score cohort.csv --reference REF --model MODEL --out RUN --scheduler "$SF"
    # a resumed run (same command) skips the samples already done

In both, RUN, REF, MODEL and the FCS files must be on a file system every node sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import RuntimeConfig, parse_memory
from ..errors import ConfigError

__all__ = ["ALLOWED_FAILURES", "ClusterInfo", "open_client", "is_scheduler_file", "plan_cluster", "gpu_cluster_available", "workers_of"]


ALLOWED_FAILURES = 2
"""Retries of a task whose worker died (distributed's ``allowed-failures``): set on the run's scheduler.

A task is run on at most ``ALLOWED_FAILURES + 1`` workers; when each of them dies running
it (killed, out of memory above ``--memory-limit``, a crash) it fails with ``KilledWorker``;
the runner then runs each of its samples again alone and fails only one that still kills
its workers (see :func:`~rescue_gpu.runner.executors.run_dask`). An embedded cluster's scheduler is made with it; on
an existing scheduler the run sets it for its duration and puts the old value back.
"""


def is_scheduler_file(scheduler: str) -> bool:
    """Whether ``scheduler`` names a scheduler JSON file (``dask scheduler --scheduler-file``), not an address."""
    if "://" in scheduler:
        return False
    return scheduler.endswith(".json") or os.path.isfile(scheduler)


def _set_allowed_failures(n: int, dask_scheduler: Any = None) -> int:
    """On the scheduler (``client.run_on_scheduler``): set ``allowed_failures`` to ``n``; return the old value."""
    old = int(dask_scheduler.allowed_failures)
    dask_scheduler.allowed_failures = int(n)
    return old


@dataclass(frozen=True)
class ClusterInfo:
    """What the run is computing on, for the console and the run record."""

    kind: str              # "LocalCluster", "LocalCUDACluster", "SLURMCluster" or "scheduler"
    address: str
    dashboard: str
    n_workers: int
    threads_per_worker: int
    gpu: bool
    planned_workers: int = 0  # SLURM: worker processes of every job submitted (jobs may start later)

    def describe(self) -> str:
        """One line for the console."""
        what = "GPU worker(s)" if self.gpu else "CPU worker process(es)"
        planned = f" ({self.planned_workers} in the SLURM jobs submitted)" if self.planned_workers else ""
        return (f"{self.kind} at {self.address}: {self.n_workers} {what}{planned} x {self.threads_per_worker} "
                f"thread(s); dashboard {self.dashboard or 'unavailable (pip install bokeh)'}")


def gpu_cluster_available() -> tuple[bool, str]:
    """Whether an embedded LocalCUDACluster can be made here, and why not."""
    from ..device import device_probe

    probe = device_probe()
    ok, reason = bool(probe["gpu"]), str(probe["reason"])
    if not ok:
        return False, reason
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        return False, "dask-cuda is not installed (pip install 'rescue_gpu[gpu]')"
    return True, reason


def plan_cluster(runtime: RuntimeConfig) -> tuple[str, int]:
    """``("cuda" | "cpu", n_workers)`` for an embedded cluster under ``runtime``.

    Raises
    ------
    ConfigError
        ``backend = "gpu"`` and no GPU cluster can be made.
    """
    gpu_ok, reason = (False, "backend is 'cpu'") if runtime.backend == "cpu" else gpu_cluster_available()
    if runtime.backend == "gpu" and not gpu_ok:
        raise ConfigError(f"backend 'gpu' was asked for but {reason}; use --backend cpu or install the gpu extra")
    if gpu_ok:
        n = 0 if runtime.workers == "auto" else int(runtime.workers)  # 0: one per visible GPU
        return "cuda", n
    n = (os.cpu_count() or 1) // max(1, runtime.threads_per_worker) if runtime.workers == "auto" else int(runtime.workers)
    return "cpu", max(1, n)


def _memory_limit(runtime: RuntimeConfig, n_workers: int) -> int | str:
    """Per-worker memory limit: "auto" stays dask's own split; fractions are of this worker's share."""
    if runtime.memory_limit.strip().lower() == "auto":
        return "auto"
    import psutil

    return parse_memory(runtime.memory_limit, total=psutil.virtual_memory().total // max(1, n_workers))


def _local_cpu(runtime: RuntimeConfig, n_workers: int, dashboard: str) -> Any:
    from distributed import LocalCluster

    return LocalCluster(n_workers=n_workers, threads_per_worker=runtime.threads_per_worker, processes=True,
                        memory_limit=_memory_limit(runtime, n_workers), dashboard_address=dashboard,
                        silence_logs=logging.ERROR, scheduler_kwargs={"allowed_failures": ALLOWED_FAILURES})


def _local_cuda(runtime: RuntimeConfig, n_workers: int, dashboard: str) -> Any:  # pragma: no cover - needs a GPU
    """One worker per visible GPU (``CUDA_VISIBLE_DEVICES``), ``workers_per_gpu`` threads each; RMM pool at half the device."""
    from .gpus import cuda_cluster_kwargs, gpu_count, visible_gpus

    devices = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), gpu_count())
    kwargs = cuda_cluster_kwargs(runtime, devices, dashboard_address=dashboard,
                                 memory_limit=_memory_limit(runtime, n_workers or len(devices)), rmm=_has_rmm(),
                                 allowed_failures=ALLOWED_FAILURES)
    from dask_cuda import LocalCUDACluster

    try:
        return LocalCUDACluster(silence_logs=logging.ERROR, **kwargs)
    except Exception as exc:  # pynvml NVMLError_*, ValueError (0 GPUs), CUDA initialisation
        raise ConfigError(f"LocalCUDACluster could not start: dask-cuda finds no usable GPU "
                          f"({exc.__class__.__name__}: {exc}); check nvidia-smi and CUDA_VISIBLE_DEVICES, "
                          "or use --backend cpu") from None


def _has_rmm() -> bool:
    try:
        import rmm  # noqa: F401
    except ImportError:
        return False
    return True


def workers_of(client: Any) -> dict[str, dict[str, Any]]:
    """Every worker of the cluster (recent distributed lists only 5 unless asked for all)."""
    import inspect

    if "n_workers" in inspect.signature(client.scheduler_info).parameters:
        return client.scheduler_info(n_workers=-1).get("workers", {})
    return client.scheduler_info().get("workers", {})


def _info(client: Any, kind: str, gpu: bool) -> ClusterInfo:
    workers = workers_of(client)
    threads = max((w.get("nthreads", 1) for w in workers.values()), default=1)
    if kind == "scheduler":
        gpu = any("gpu" in (w.get("resources") or {}) or "GPU" in (w.get("resources") or {}) for w in workers.values())
    return ClusterInfo(kind=kind, address=client.scheduler.address, dashboard=client.dashboard_link or "",
                       n_workers=len(workers), threads_per_worker=threads, gpu=gpu)


@contextlib.contextmanager
def open_client(runtime: RuntimeConfig, *, scheduler: str | None = None,
                dashboard_address: str = ":8787") -> Iterator[tuple[Any, ClusterInfo]]:
    """A ``distributed.Client`` on the chosen cluster, closed (and the cluster shut down) on exit.

    Parameters
    ----------
    runtime
        Backend, worker count, threads and memory of an embedded cluster.
    scheduler
        Address (``tcp://host:8786``) or scheduler JSON file of an existing cluster; without
        it, ``runtime.cluster`` chooses an embedded cluster or SLURM jobs.
    dashboard_address
        Where an embedded cluster serves its dashboard (``":0"`` for any free port).

    Raises
    ------
    ConfigError
        The scheduler cannot be reached, or ``backend = "gpu"`` cannot be honoured.
    """
    from distributed import Client

    if scheduler:
        if not is_scheduler_file(scheduler) and "://" not in scheduler and ":" not in scheduler:
            raise ConfigError(f"--scheduler {scheduler!r} is neither an address (tcp://host:8786) nor an existing "
                              "scheduler file (dask scheduler --scheduler-file FILE)")
        try:
            client = Client(scheduler_file=scheduler, timeout="20s") if is_scheduler_file(scheduler) \
                else Client(scheduler, timeout="20s")
        except FileNotFoundError:
            raise ConfigError(f"the scheduler file {scheduler!r} does not exist; start 'dask scheduler "
                              "--scheduler-file FILE' first (on a file system this machine sees)") from None
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler {scheduler!r} ({exc}); check the address "
                              "and that 'dask scheduler' is running") from None
        with client:
            try:
                client.wait_for_workers(1, timeout=60)
            except TimeoutError:
                raise ConfigError(f"the Dask scheduler {scheduler!r} has no workers after 60 s; start "
                                  "'dask cuda worker' (GPU) or 'dask worker' (CPU) against it") from None
            old = client.run_on_scheduler(_set_allowed_failures, ALLOWED_FAILURES)
            try:
                yield client, _info(client, "scheduler", False)
            finally:
                with contextlib.suppress(Exception):  # the scheduler may be gone (the run then fails with ClusterError)
                    if client.status == "running":
                        client.run_on_scheduler(_set_allowed_failures, old)
        return
    if runtime.cluster.kind == "slurm":
        from .slurm import open_slurm

        with open_slurm(runtime.cluster, allowed_failures=ALLOWED_FAILURES, dashboard_address=dashboard_address) as client:
            s = runtime.cluster.slurm
            info = _info(client, "SLURMCluster", s.gpus_per_worker > 0)
            per_job = runtime.cluster.workers_per_gpu if s.gpus_per_worker else 1
            yield client, dataclasses.replace(info, planned_workers=s.workers * per_job)
        return
    kind, n = plan_cluster(runtime)
    cluster = _local_cuda(runtime, n, dashboard_address) if kind == "cuda" else _local_cpu(runtime, n, dashboard_address)
    with cluster, Client(cluster) as client:
        yield client, _info(client, "LocalCUDACluster" if kind == "cuda" else "LocalCluster", kind == "cuda")
