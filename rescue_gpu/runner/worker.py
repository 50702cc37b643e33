"""The worker side of a run: per-process state, the task function, engines checked against the client.

:func:`process_batch` is what an executor runs for a batch of tasks (in this process or as
a Dask task): it loads the job's state once per process (:func:`cached_state`; the Dask
executor's worker plugin loads it before the first task) and hands the batch to the
assay's :meth:`~rescue_gpu.runner.assay.AssayJob.process`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ..errors import RescueError
from .assay import AssayJob, SampleResult, SampleTask

__all__ = ["cached_state", "job_state", "cached_keys", "state_stats", "process_batch", "warm", "worker_engine", "worker_error_text",
           "limit_threads"]

_STATE: dict[Hashable, Any] = {}
_STATE_LOCK = threading.Lock()
_STATS = {"loads": 0, "batches": 0, "samples": 0}  # this process's state loads and batches processed


def state_stats() -> dict[str, int]:
    """How often this process loaded a run's state, and the batches and samples it processed.

    On a Dask worker the state is loaded once by the worker plugin, also on a worker that
    joins mid-run; ``client.run(state_stats)`` shows it for every worker.
    """
    with _STATE_LOCK:
        return dict(_STATS)


def cached_state(key: Hashable, load: Callable[[], Any]) -> Any:
    """This process's state for ``key`` (model, engine, ...), loaded on first use; one run's at a time."""
    with _STATE_LOCK:
        if key not in _STATE:
            _STATE.clear()
            _STATE[key] = load()
            _STATS["loads"] += 1
        return _STATE[key]


def cached_keys() -> list[Hashable]:
    """The keys of the state this process holds (at most one)."""
    with _STATE_LOCK:
        return list(_STATE)


def job_state(job: AssayJob) -> Any:
    """The per-process state of ``job`` (see :meth:`AssayJob.load_state`), loaded on first use."""
    return cached_state(job.state_key(), job.load_state)


def worker_error_text(exc: BaseException, task: SampleTask, job: Any) -> str:
    """The message of a sample's failure; its file path is replaced unless ``job.keep_identifiers``."""
    if isinstance(exc, FileNotFoundError):
        text = f"{task.path}: file not found"
    elif isinstance(exc, RescueError):
        text = str(exc)
    else:
        text = f"unexpected {exc.__class__.__name__}: {exc}"
    return text if job.keep_identifiers else text.replace(task.path, f"[{task.sample_id}]")


def limit_threads() -> None:
    """On a Dask worker, let numba's parallel kernels use the worker's threads, not every core.

    A LocalCluster has one worker process per core (or per ``threads_per_worker``
    cores); numba would otherwise start a thread per core in each of them. numba's
    setting is per calling thread, so this runs at the start of every task.
    """
    try:
        from distributed import get_worker

        nthreads = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return  # not on a worker: in-process runs keep numba's default
    import numba

    numba.set_num_threads(max(1, min(int(nthreads), numba.config.NUMBA_NUM_THREADS)))


def process_batch(tasks: Sequence[SampleTask], job: AssayJob) -> list[SampleResult]:
    """Process a batch of tasks on this worker (the task function of every executor).

    Never raises for a bad sample: each failure is in its result, as is a state (reference,
    model, engine) that cannot be loaded on this worker.
    """
    limit_threads()
    try:
        state = job_state(job)
    except Exception as exc:
        return [job.lost(t, worker_error_text(exc, t, job)) for t in tasks]
    results = job.process(list(tasks), state)
    with _STATE_LOCK:
        _STATS["batches"] += 1
        _STATS["samples"] += len(results)
    return results


def warm(job: AssayJob) -> str:
    """Load ``job``'s state in this process; return the error text ("" when it loaded)."""
    try:
        job_state(job)
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return ""


def worker_engine(record: Any, *, path: str, sha256: str, backend: str, kind: str, precision: str,
                  batch_size: int, checksum: str = "") -> tuple[Any, str]:
    """Check a model loaded on a worker against the client's checksums and build its engine.

    ``backend``, ``kind`` and ``precision`` are the client's resolved values. Returns
    ``(engine, backend)``.

    Raises
    ------
    ModelError
        The model directory changed since the run started (weights sha256 or checksum differ).
    BackendError
        ``backend`` is not resolved (``"auto"``), or is ``"gpu"`` on a worker without one.
    """
    from ..device import resolve_backend
    from ..engine import make_engine
    from ..errors import BackendError, ModelError

    if record.sha256 != sha256 or (checksum and record.checksum != checksum):
        raise ModelError(f"{path}: the model changed since the run started (its checksum differs); run again")
    if backend not in ("cpu", "gpu"):
        raise BackendError(f"a worker was given backend {backend!r}; the client resolves it to 'cpu' or 'gpu' "
                           "(resolve_run_device) before the run")
    resolved = resolve_backend(backend)
    engine = make_engine(record, kind=kind, device="cuda" if resolved == "gpu" else "cpu", precision=precision,
                         batch_size=batch_size)
    return engine, resolved
