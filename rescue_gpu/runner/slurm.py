"""Workers as SLURM jobs: ``rescue score --cluster slurm`` (dask-jobqueue's ``SLURMCluster``).

The client (``rescue score``, on a login node or inside a small job) starts a Dask
scheduler in its own process and submits ``slurm.workers`` jobs with ``sbatch``; each
job runs one ``dask worker`` (or ``workers_per_gpu`` of them on a GPU job) that connects
back. The jobs are cancelled (``scancel``) when the run ends, also when it fails.

Addresses: the scheduler listens on ``cluster.host`` (default ``127.0.0.1``: jobs on
this node only); for jobs on other nodes give this node's address that they can reach.
Workers on a loopback ``host`` listen on it too; otherwise they pick their node's
address that routes to the scheduler.

:func:`slurm_cluster_kwargs` maps the validated config to ``SLURMCluster``'s keyword
arguments (pure, tested everywhere); :func:`open_slurm` makes the cluster.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
import sys
from collections.abc import Iterator
from typing import Any

from ..config import ClusterConfig, parse_memory
from ..errors import ConfigError

__all__ = ["slurm_cluster_kwargs", "slurm_probes", "open_slurm", "job_script", "JOB_NAME"]

JOB_NAME = "rescue-worker"
logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dashboard(host: str, dashboard_address: str) -> str:
    """The scheduler's dashboard address on ``host`` (``":8787"`` -> ``"127.0.0.1:8787"``)."""
    port = dashboard_address.rsplit(":", 1)[-1] if ":" in dashboard_address else dashboard_address
    if not port.isdigit():
        raise ConfigError(f"--dashboard-address {dashboard_address!r} needs a port, like ':8787' (':0' for any free one)")
    return f"{host}:{port}"


def slurm_cluster_kwargs(cluster: ClusterConfig, *, allowed_failures: int, dashboard_address: str = ":0",
                         python: str | None = None) -> dict[str, Any]:
    """``SLURMCluster`` keyword arguments for ``cluster`` (its ``slurm`` table).

    One job is one worker process (``processes=1``), or ``workers_per_gpu`` processes
    sharing the job's GPU; a job's ``cores`` are split among its processes (threads) and
    its ``memory`` is both ``--mem`` and, divided by the processes, each worker's
    ``--memory-limit``.

    Raises
    ------
    ConfigError
        ``workers_per_gpu`` is more than the job's cores, or the dashboard address has no port.
    """
    s = cluster.slurm
    processes = cluster.workers_per_gpu if s.gpus_per_worker else 1
    if processes > s.cores:
        raise ConfigError(f"workers_per_gpu = {processes} needs at least as many cores per job "
                          f"(slurm cores = {s.cores}): raise --slurm-cores")
    directives = [f"--gres=gpu:{s.gpus_per_worker}"] if s.gpus_per_worker else []
    kwargs: dict[str, Any] = {
        "cores": s.cores,
        "processes": processes,
        "memory": f"{parse_memory(s.memory, total=0)}B",
        "walltime": s.walltime,
        "job_name": JOB_NAME,
        "queue": s.partition or None,
        "account": s.account or None,
        "python": s.python or python or sys.executable,
        "job_extra_directives": [*directives, *s.directives],
        "job_script_prologue": list(s.prologue),
        "log_directory": s.log_directory or None,
        "scheduler_options": {"host": cluster.host, "dashboard_address": _dashboard(cluster.host, dashboard_address),
                              "allowed_failures": allowed_failures},
        "worker_extra_args": ["--host", cluster.host] if _is_loopback(cluster.host) else [],
    }
    return kwargs


def slurm_probes(cluster: ClusterConfig) -> dict[str, dict[str, Any]]:
    """What the jobs will compute on, as :func:`~rescue_gpu.device.device_probe` results, from the request.

    The device is resolved before any job starts: a job asks for a GPU
    (``gpus_per_worker = 1``) or not. A GPU job whose worker then finds no usable GPU
    fails its samples with the reason (see :func:`~rescue_gpu.runner.worker.worker_engine`).
    """
    import importlib.util

    gpu = cluster.slurm.gpus_per_worker > 0
    reason = (f"SLURM jobs with --gres=gpu:{cluster.slurm.gpus_per_worker}" if gpu
              else "SLURM jobs without GPUs (slurm gpus_per_worker = 0)")
    return {"slurm": {"gpu": gpu, "reason": reason, "tensorrt": importlib.util.find_spec("tensorrt") is not None}}


def _slurm_cluster_class() -> type:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ConfigError("--cluster slurm needs dask-jobqueue (pip install dask-jobqueue)") from None
    return SLURMCluster


def job_script(cluster: ClusterConfig, *, allowed_failures: int, dashboard_address: str = ":0") -> str:
    """The ``sbatch`` script each worker job would run (a scheduler is started to fill in its address, then closed)."""
    cls = _slurm_cluster_class()
    with cls(**slurm_cluster_kwargs(cluster, allowed_failures=allowed_failures,
                                    dashboard_address=dashboard_address)) as slurm:
        return str(slurm.job_script())


@contextlib.contextmanager
def open_slurm(cluster: ClusterConfig, *, allowed_failures: int, dashboard_address: str = ":0") -> Iterator[Any]:
    """A ``SLURMCluster`` with ``slurm.workers`` jobs submitted; closed (jobs cancelled) on exit.

    The job script is logged at INFO (``rescue score --verbose`` prints it).

    Raises
    ------
    ConfigError
        No ``sbatch`` here, dask-jobqueue is missing, or no job started a worker within
        ``slurm.start_timeout`` seconds (the message says what to check).
    """
    from distributed import Client

    if shutil.which("sbatch") is None:
        raise ConfigError("--cluster slurm: 'sbatch' is not on PATH; run on a SLURM login node "
                          "(or load the site's slurm module)")
    cls = _slurm_cluster_class()
    slurm = cls(**slurm_cluster_kwargs(cluster, allowed_failures=allowed_failures,
                                       dashboard_address=dashboard_address))
    try:
        logger.info("SLURM worker job script (%d job(s)):\n%s", cluster.slurm.workers, slurm.job_script())
        slurm.scale(jobs=cluster.slurm.workers)
        with Client(slurm) as client:
            try:
                client.wait_for_workers(1, timeout=cluster.slurm.start_timeout)
            except TimeoutError:
                raise ConfigError(
                    f"no SLURM worker job connected to {slurm.scheduler_address} within "
                    f"{cluster.slurm.start_timeout:g} s: check 'squeue --name {JOB_NAME}' (pending: partition, "
                    "walltime, memory or GPUs the site cannot give), the jobs' output "
                    f"({cluster.slurm.log_directory or 'slurm-*.out in this directory'}), and that the compute "
                    f"nodes can reach {cluster.host} (cluster host)") from None
            yield client
    finally:
        slurm.close()
