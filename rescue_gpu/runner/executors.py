"""Executors: run batches of tasks in this process or on Dask, writing each result as it arrives.

The client is the single writer of the run store. On Dask, a
:class:`StatePlugin` (a ``distributed.WorkerPlugin``) loads every worker's state
(reference, model, engine) once when it is registered, and on every worker that joins
later, before that worker's first task; then at most ``window`` tasks are in flight and
one more is submitted as each completes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from .assay import AssayJob, SampleResult, SampleTask
from .manifest import ManifestRow
from .progress import Progress
from .store import RunStore
from .worker import process_batch, warm

if TYPE_CHECKING:
    from ..config import RuntimeConfig

__all__ = ["task_batches", "run_in_process", "run_dask", "run_on_client", "StatePlugin", "drain", "run_batches",
           "PLUGIN_NAME"]

PLUGIN_NAME = "rescue-gpu-state"


def task_batches(rows: Sequence[ManifestRow], size: int) -> list[list[SampleTask]]:
    """The manifest rows as tasks, ``size`` to a batch (the last may be shorter)."""
    tasks = [SampleTask(sample_id=r.sample_id, path=str(r.path), patient_id=r.patient_id, timepoint=r.timepoint,
                        label=r.label) for r in rows]
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def run_in_process(batches: Iterable[list[SampleTask]], job: AssayJob) -> Iterator[SampleResult]:
    """Process the batches one after another in this process; yield each result."""
    for batch in batches:
        yield from process_batch(batch, job)


def _plugin_base() -> type:
    from distributed import WorkerPlugin

    return WorkerPlugin


try:  # a real WorkerPlugin subclass when distributed is installed; a plain class otherwise (no Dask)
    _Base: type = _plugin_base()
except ImportError:  # pragma: no cover - distributed is a dependency
    _Base = object


class StatePlugin(_Base):  # type: ignore[misc,valid-type]
    """A worker plugin that loads a job's state on each worker once, also on workers that join later.

    A state that cannot load is not an error here: the worker's tasks then fail their
    samples with the message (see :func:`~rescue_gpu.runner.worker.process_batch`).
    """

    name = PLUGIN_NAME

    def __init__(self, job: AssayJob) -> None:
        self.job = job
        self.error = ""

    def setup(self, worker: Any) -> None:
        """Load the state on ``worker`` (called by distributed on registration and on every new worker)."""
        self.error = warm(self.job)


def _scheduler_lost(client: Any, exc: BaseException) -> bool:
    """Whether ``exc`` (a future's error) means the client lost its scheduler, not that the task failed."""
    return getattr(exc, "reason", "") == "scheduler-connection-lost" or client.status not in ("running", "newly-created")


def _killed_text(exc: Any) -> str:
    """The reason stored on a sample whose task's workers kept dying (a ``KilledWorker``)."""
    tries = int(getattr(exc, "allowed_failures", 0)) + 1
    last = getattr(getattr(exc, "last_worker", None), "address", "?")
    return (f"worker died: every worker that ran this sample died ({tries} tries, allowed-failures = {tries - 1}; "
            f"last {last}): killed, out of memory above its --memory-limit, or a crash; see the worker logs")


def run_dask(client: Any, batches: list[list[SampleTask]], job: AssayJob, window: int) -> Iterator[SampleResult]:
    """Submit ``window`` batches, then one more as each completes; yield results as they come.

    Worker deaths. When a worker dies, the scheduler counts a death against every task
    it had been given, the one running and those queued behind it (distributed's
    ``worker-saturation`` sends a one-thread worker two); after ``allowed-failures`` + 1
    deaths (see :data:`~rescue_gpu.runner.cluster.ALLOWED_FAILURES`) the task fails with
    ``KilledWorker``. Such a task's samples are therefore only suspects: once every other
    batch is done, each suspect is run again alone, one sample in one task with nothing
    else of this run in flight, so only the sample that kills its worker by itself (out
    of memory above ``--memory-limit``, a crash) fails, with the reason ("worker died:
    ..."); a good sample that shared a task or a worker with it is scored. A batch that
    fails otherwise yields a lost result per sample (:meth:`AssayJob.lost`).

    Raises
    ------
    ClusterError
        The scheduler went away mid-run (results already yielded stay written).
    """
    from distributed import as_completed

    pending = iter(batches)
    owner: dict[str, list[SampleTask]] = {}
    suspects: list[SampleTask] = []

    def submit(batch: list[SampleTask]) -> Any:
        # the job (small) travels with each task: a scattered copy is lost with the workers holding it, and
        # the scheduler then forgets every task that needs it (a worker killed for memory took the run down)
        fut = client.submit(process_batch, batch, job, pure=False)
        owner[fut.key] = batch
        return fut

    ac = as_completed([submit(b) for _, b in zip(range(max(1, window)), pending)])  # range first: zip must not consume a batch it drops
    for fut in ac:
        batch = owner.pop(fut.key)
        results = _batch_results(client, fut, batch, job, isolated=False)
        if results is None:
            suspects.extend(batch)
        nxt = next(pending, None)
        if nxt is not None:
            ac.add(submit(nxt))
        yield from results or ()
    for task in suspects:  # alone: nothing else of this run can be queued on its worker
        fut = submit([task])  # (its result is awaited before the next one is submitted)
        yield from _batch_results(client, fut, owner.pop(fut.key), job, isolated=True) or ()


def _batch_results(client: Any, fut: Any, batch: list[SampleTask], job: AssayJob, *,
                   isolated: bool) -> list[SampleResult] | None:
    """The results of a finished future; ``None`` when its batch is a suspect to run again alone.

    Raises
    ------
    ClusterError
        The future failed because the client lost its scheduler.
    """
    from distributed import KilledWorker

    from ..errors import ClusterError

    try:
        return fut.result()
    except (Exception, CancelledError) as exc:  # a worker died (KilledWorker), the task could not run, no scheduler
        if _scheduler_lost(client, exc):
            raise ClusterError(f"lost the Dask scheduler {client.scheduler.address} mid-run ({exc.__class__.__name__}); "
                               "the samples scored so far are kept: restart the scheduler and its workers "
                               "and run the same command again to resume") from None
        if isinstance(exc, KilledWorker) and not isolated:
            return None
        text = _killed_text(exc) if isinstance(exc, KilledWorker) else f"worker failure: {exc.__class__.__name__}: {exc}"
        return [job.lost(t, text) for t in batch]
    finally:
        fut.release()


def run_on_client(client: Any, batches: list[list[SampleTask]], job: AssayJob, *, window: int,
                  on_ready: Callable[[], None] | None = None) -> Iterator[SampleResult]:
    """Run ``batches`` on ``client``'s workers: register the :class:`StatePlugin`, then :func:`run_dask`.

    Registering waits until every current worker has loaded its state; a worker that
    joins later loads it when it starts. ``on_ready`` is called once that is done (the
    processing phase starts). The plugin is removed when the generator ends or is closed.
    """
    _register(client, job)
    try:
        if on_ready is not None:
            on_ready()
        yield from run_dask(client, batches, job, window)
    finally:
        _unregister(client)


def drain(results: Iterable[SampleResult], store: RunStore, progress: Progress) -> None:
    """Write each result as it arrives (the client is the single writer of the store).

    A write that fails (an :class:`OutputError` on a full disk, ...) stops the run: no
    more work is taken (the executor's generator is closed) and every sample written
    before it stays complete, so the same command run again resumes from there.
    """
    try:
        for res in results:
            store.write(res.record, res.arrays)
            progress.add(res)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def run_batches(batches: list[list[SampleTask]], job: AssayJob, *, store: RunStore, skipped: int,
                runtime: RuntimeConfig, unit: str = "events", window: int = 0, scheduler: str | None = None,
                in_process: bool = False, dashboard: str = ":8787",
                on_start: Callable[[str, int, int], None] | None = None,
                on_progress: Callable[..., None] | None = None) -> tuple[str, Progress]:
    """Process batches in this process or on Dask, writing each result to ``store`` as it arrives.

    Returns the executor's description and the progress counters (whose ``elapsed`` is
    the processing phase, after the workers loaded their state).
    """
    n_todo = sum(len(b) for b in batches)
    progress = Progress(total=n_todo, on_progress=on_progress, unit=unit)
    if in_process or not n_todo:
        desc = "in-process (no Dask)" if in_process else "nothing to do"
        if on_start is not None:
            on_start(desc, n_todo, skipped)
        progress.restart()
        drain(run_in_process(batches, job), store, progress)
        return desc, progress.stop()
    from .cluster import open_client

    with open_client(runtime, scheduler=scheduler, dashboard_address=dashboard) as (client, info):
        if on_start is not None:
            on_start(info.describe(), n_todo, skipped)
        results = run_on_client(client, batches, job, window=window or 2 * max(1, info.n_workers, info.planned_workers),
                                on_ready=progress.restart)
        drain(results, store, progress)
        return info.describe(), progress.stop()


def _register(client: Any, job: AssayJob, tries: int = 2) -> None:
    """Register the :class:`StatePlugin`; a worker dying meanwhile (its connection closes) is not fatal.

    Registration is tried ``tries`` times; if it still fails while the scheduler is up, the
    run goes on without it (each worker then loads the state before its first task, in
    :func:`~rescue_gpu.runner.worker.process_batch`).

    Raises
    ------
    ClusterError
        The scheduler went away.
    """
    from ..errors import ClusterError

    for _ in range(max(1, tries)):
        try:
            client.register_plugin(StatePlugin(job), name=PLUGIN_NAME)
            return
        except OSError as exc:  # distributed's CommClosedError: a worker or the connection went away
            if client.status not in ("running", "newly-created"):
                raise ClusterError(f"lost the Dask scheduler {client.scheduler.address} while the workers loaded "
                                   f"their state ({exc.__class__.__name__}); start it again and run the same "
                                   "command") from None


def _unregister(client: Any) -> None:
    """Remove the state plugin (a shared scheduler's later runs must not load this run's state)."""
    try:
        client.unregister_worker_plugin(PLUGIN_NAME)
    except Exception:  # the cluster is going away, or the plugin was never registered
        pass

