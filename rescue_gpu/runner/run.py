"""One cohort run for any assay: :func:`run_cohort`.

Flow::

    client                                   worker (one per GPU, or a CPU process)
    ------                                   ------
    resolve the device once (recorded)       StatePlugin: load the assay's state once
    open RUN_DIR/store.zarr (flock)            (reference, model, engine; also on
    resume: skip samples stored as scored      workers that join later)
      with equal identity and input
    submit batches, a window at a time   ->  assay job: process a batch
    write each result (single writer)    <-  results: record + arrays
    the assay writes its tables and report

A sample that fails anywhere gets ``status = "failed"`` and its error; the cohort goes
on. A whole batch fails together only when its worker dies or its state cannot load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RuntimeConfig
from ..errors import ConfigError
from ..artifacts import software_versions
from .assay import Assay, RunContext
from .executors import run_batches, task_batches
from .identity import pending_rows, settings_hash
from .manifest import ManifestRow
from .store import RunStore, run_lock

if TYPE_CHECKING:
    from ..device import DevicePlan

__all__ = ["RunSummary", "run_cohort", "resolve_run_device", "announce_device"]


@dataclass
class RunSummary:
    """The outcome of :func:`run_cohort`.

    Attributes
    ----------
    run_dir
        The run directory.
    n_samples, n_scored, n_failed, n_skipped, n_processed
        Manifest samples; of them scored and failed (after the run); skipped as already
        done; processed in this run.
    events_processed
        Units (events, cells) of the processed samples.
    seconds
        The processing phase (after the workers loaded their state).
    cluster
        Where the run went (and the resolved device).
    outputs
        Output kind -> path (``csv``, ``parquet``, ``report``, ...).
    """

    run_dir: Path
    n_samples: int
    n_scored: int
    n_failed: int
    n_skipped: int
    n_processed: int
    events_processed: int
    seconds: float
    cluster: str
    outputs: dict[str, Path]

    @property
    def samples_per_s(self) -> float:
        """Samples processed (not skipped) per second of the processing phase."""
        return self.n_processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        """Input events (or cells) processed per second of the processing phase."""
        return self.events_processed / self.seconds if self.seconds > 0 else 0.0


def resolve_run_device(runtime: RuntimeConfig, *, engine: str = "auto", precision: str = "auto",
                       scheduler: str | None = None) -> DevicePlan:
    """Resolve a run's backend, engine kind and precision once, on the client (a :class:`~rescue_gpu.device.DevicePlan`).

    An in-process run or an embedded cluster runs on this machine, so this process is
    asked; with ``scheduler`` (an existing cluster) every worker is asked
    (:func:`~rescue_gpu.device.device_probe`). ``"auto"`` without a GPU warns once.

    Raises
    ------
    BackendError, ModelError
        See :func:`~rescue_gpu.engine.plan_run_device`.
    ConfigError
        The scheduler cannot be reached.
    """
    from ..device import device_probe
    from ..engine import plan_run_device

    probes = None
    if not scheduler and runtime.cluster.kind == "slurm" and runtime.backend != "cpu":
        from .slurm import slurm_probes

        probes = slurm_probes(runtime.cluster)  # the jobs' GPU request: they start only after this
    elif scheduler and runtime.backend != "cpu":
        from .cluster import open_client

        with open_client(runtime, scheduler=scheduler) as (client, _):
            probes = client.run(device_probe)
    return plan_run_device(runtime.backend, engine=engine, precision=precision, probes=probes)


def announce_device(on_start: Callable[[str, int, int], None] | None,
                    plan: DevicePlan) -> Callable[[str, int, int], None] | None:
    """``on_start`` with the resolved device appended to the cluster description (shown by the CLI)."""
    if on_start is None:
        return None

    def start(cluster: str, n_todo: int, n_skipped: int) -> None:
        on_start(f"{cluster}; {plan.describe()}", n_todo, n_skipped)
    return start


def run_cohort(
    assay: Assay,
    rows: Sequence[ManifestRow],
    *,
    out: str | Path,
    runtime: RuntimeConfig = RuntimeConfig(),
    scheduler: str | None = None,
    in_process: bool = False,
    dashboard_address: str = ":8787",
    on_start: Callable[[str, int, int], None] | None = None,
    on_progress: Callable[..., None] | None = None,
) -> RunSummary:
    """Process every row of a manifest with ``assay`` into the run directory ``out``; running again resumes.

    Parameters
    ----------
    assay
        The assay, with its inputs already loaded and checked (see :class:`~.assay.Assay`).
    rows
        The manifest.
    out
        Run directory (``store.zarr``, ``.lock`` and the assay's outputs).
    runtime
        Backend, workers, threads, memory and inference batch size.
    scheduler
        Address or scheduler file of an existing Dask cluster (default: ``runtime.cluster``,
        an embedded cluster or SLURM jobs).
    in_process
        Run in this process without Dask (debugging, benchmarks).
    dashboard_address
        Dashboard of an embedded cluster.
    on_start
        Called once with ``(cluster description, samples to do, samples skipped)``.
    on_progress
        Called after every sample as ``(i, n, failed=..., <unit>_per_s=...)``.

    Raises
    ------
    ConfigError, BackendError, StoreError, OutputError
        Before any sample is processed (the device, the store, the lock).

    Warns
    -----
    BackendFallbackWarning
        Once, on the client, when ``runtime.backend = "auto"`` finds no GPU.
    """
    rows = list(rows)
    if runtime.cluster.kind == "slurm" and scheduler and not in_process:
        raise ConfigError("--scheduler (an existing cluster) and --cluster slurm (new SLURM jobs) exclude each "
                          "other: give one of them")
    local = dataclasses.replace(runtime, cluster=dataclasses.replace(runtime.cluster, kind="local"))
    device = resolve_run_device(local if in_process else runtime, engine=assay.engine, precision=assay.precision,
                                scheduler=None if in_process else scheduler)
    run_dir = Path(out)
    settings = assay.settings(device)
    software = software_versions(assay.packages)
    with run_lock(run_dir):
        store = RunStore(run_dir / "store.zarr")
        job = assay.worker_job(RunContext(run_dir=run_dir, device=device, runtime=runtime,
                                          settings_hash=settings_hash(settings)))
        identity = assay.identity(job)
        todo, skipped = pending_rows(rows, store, identity, same_input=assay.same_input)
        store.set_run({**identity, **assay.run_record(), "settings": settings, "software": software,
                       "n_samples": len(rows)})
        cluster, progress = run_batches(task_batches(todo, assay.samples_per_task), job, store=store, skipped=skipped,
                                        runtime=runtime, unit=assay.unit, window=assay.window, scheduler=scheduler,
                                        in_process=in_process, dashboard=dashboard_address,
                                        on_start=announce_device(on_start, device), on_progress=on_progress)
        provenance: dict[str, Any] = {**identity, "settings": settings, "cluster": cluster, "software": software}
        table, outputs = assay.write_outputs(rows, store, run_dir, provenance=provenance)
    n_failed = int((table["status"] != "scored").sum())
    return RunSummary(run_dir=run_dir, n_samples=len(rows), n_scored=len(rows) - n_failed, n_failed=n_failed,
                      n_skipped=skipped, n_processed=progress.done, events_processed=progress.events,
                      seconds=progress.elapsed, cluster=cluster, outputs=outputs)
