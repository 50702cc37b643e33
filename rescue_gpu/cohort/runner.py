"""The cohort runner: score every sample of a manifest on Dask workers into a Zarr run store.

Flow::

    client                                   worker (one per GPU, or a CPU process)
    ------                                   ------
    read manifest, load reference + model    (once per worker, cached by path + checksum)
    open RUN_DIR/store.zarr (flock)
    resume: skip samples done with equal
      input sha256, settings hash,
      reference fingerprint, model sha256
    submit batches of samples, a window  ->  per sample: sha256, read, preprocess,
      at a time (as_completed)                project, rasterise (events stay on the GPU)
                                             per batch: one engine.predict on its images
    write each sample's result (the      <-  results: record + image (+ coords)
      single writer), progress bar
    scores.csv / scores.parquet / report.html

A sample that fails anywhere gets ``status = "failed"`` and its error; the cohort goes
on. A whole batch fails together only when its worker dies or the model cannot load.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Pipeline, RuntimeConfig
from ..errors import ConfigError, RescueError
from ..artifacts import software_versions
from .manifest import ManifestRow, read_manifest
from .store import RunStore, run_lock, sample_key

if TYPE_CHECKING:
    from ..device import DevicePlan

__all__ = [
    "ScoreOptions", "WorkerJob", "SampleTask", "SampleResult", "RunSummary",
    "score_cohort", "score_tasks", "file_digest", "pending_rows", "IDENTIFYING_KEYWORDS", "Work", "FLOW",
    "run_batches", "task_batches", "worker_error_text", "worker_engine", "cached_state", "settings_hash",
    "settings_record", "resolve_run_device", "announce_device",
]

QC_FIELDS = ("non_finite", "saturated", "debris", "doublets", "n_events_out", "n_outside")
IDENTIFYING_KEYWORDS = ("$SRC", "$FIL", "$SMNO", "$OP", "$INST", "$COM", "$CELLS", "$PROJ", "$EXP",
                        "$DATE", "$BTIM", "$ETIM", "$LAST_MODIFIER", "$PLATEID", "$WELLID", "$ORIGINALITY")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ScoreOptions:
    """What a scoring run does, apart from where it runs.

    Attributes
    ----------
    pipeline
        Panel and preprocessing (must be the ones the reference was built with).
    seed
        Seed of the UMAP transform (the same for every sample).
    engine, precision
        Inference engine kind and precision (see :func:`rescue_gpu.engine.make_engine`).
    samples_per_task
        Samples one Dask task processes; its images go through the network as one batch.
    window
        Tasks in flight at once (0: twice the number of workers).
    keep_coords
        Store every sample's projected coordinates (n x 2 float32) in the run store.
    keep_identifiers
        Copy identifying FCS keywords (``$SRC``, ``$FIL``, names, dates) and input paths
        into the store and flagged files; off by default.
    flag_events
        Write ``RUN_DIR/flagged/<sample>.fcs`` for positive samples (see :mod:`.flag`).
    flag_mass
        Share of the Grad-CAM attribution whose pixels count as the driving region.
    report
        Write ``report.html``.
    """

    pipeline: Pipeline
    seed: int = 0
    engine: str = "auto"
    precision: str = "auto"
    samples_per_task: int = 4
    window: int = 0
    keep_coords: bool = False
    keep_identifiers: bool = False
    flag_events: bool = False
    flag_mass: float = 0.5
    report: bool = True

    def __post_init__(self) -> None:
        if self.samples_per_task < 1 or self.window < 0 or self.seed < 0:
            raise ConfigError("samples_per_task must be >= 1, window >= 0 and seed >= 0")
        if not 0.0 < self.flag_mass <= 1.0:
            raise ConfigError(f"flag_mass must be in (0, 1] (got {self.flag_mass})")


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs besides the samples (small and picklable)."""

    reference_path: str
    reference_fingerprint: str
    model_path: str
    model_sha256: str
    pipeline: Pipeline
    settings_hash: str
    seed: int = 0
    backend: str = "auto"  # resolved on the client ("cpu" | "gpu"); a worker refuses "auto"
    engine: str = "auto"  # resolved engine kind
    precision: str = "auto"  # resolved precision
    batch_size: int = 64
    keep_coords: bool = False
    keep_identifiers: bool = False
    flag_dir: str | None = None
    flag_mass: float = 0.5
    model_checksum: str = ""  # ModelRecord.checksum: weights and every setting that changes a call


@dataclass(frozen=True)
class SampleTask:
    """One sample to score."""

    sample_id: str
    path: str
    patient_id: str = ""
    timepoint: str = ""
    label: str = ""


@dataclass
class SampleResult:
    """What a worker returns for one sample: the store record and its arrays."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether the sample failed."""
        return self.record.get("status") != "scored"

    @property
    def warnings(self) -> list[str]:
        """The sample's non-fatal warnings (record field ``warnings``; empty when none)."""
        return list(self.record.get("warnings") or [])


@dataclass
class RunSummary:
    """The outcome of :func:`score_cohort`."""

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
        """Input events processed per second of the processing phase."""
        return self.events_processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Work:
    """What the executors run for one kind of sample (flow cytometry, single-cell images).

    All three are module-level functions (Dask pickles them by reference).

    Attributes
    ----------
    run
        ``run(tasks, job) -> [SampleResult]``: process a batch on a worker; never raises
        for a bad sample.
    fail
        ``fail(task, job, text) -> SampleResult``: the result of a sample whose batch was
        lost (worker died, task could not run).
    warm
        ``warm(job) -> error text or ""``: load the worker's caches.
    unit
        What a sample's ``n_<unit>`` record field counts, for the progress rate.
    """

    run: Callable[[list[SampleTask], Any], list[SampleResult]]
    fail: Callable[[SampleTask, Any, str], SampleResult]
    warm: Callable[[Any], str]
    unit: str = "events"


_PACKAGES = ("rescue_gpu", "numpy", "torch", "zarr", "dask", "distributed", "cupy", "dask-cuda")


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
    if scheduler and runtime.backend != "cpu":
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


def _device_record(device: DevicePlan | str, engine: str, precision: str) -> dict[str, str]:
    """Resolved ``backend``, ``engine``, ``precision``: from a DevicePlan, or resolved here from a backend name."""
    from ..device import DevicePlan
    from ..engine import plan_run_device

    plan = device if isinstance(device, DevicePlan) else plan_run_device(str(device), engine=engine, precision=precision)
    return plan.record()


def settings_record(options: ScoreOptions, device: DevicePlan | str) -> dict[str, Any]:
    """The settings that change what a sample's stored result is (hashed for resume).

    ``device`` is the run's :class:`~rescue_gpu.device.DevicePlan` (a backend name is
    resolved here), so the record holds the resolved backend, engine kind and precision,
    never ``"auto"``: a run resumed on another machine re-scores rather than mixing GPU-
    and CPU-projected samples.
    """
    from ..preprocess import preprocess_fingerprint

    return {"preprocess_fingerprint": preprocess_fingerprint(options.pipeline.panel, options.pipeline.preprocess),
            "seed": options.seed, **_device_record(device, options.engine, options.precision),
            "keep_coords": options.keep_coords, "keep_identifiers": options.keep_identifiers,
            "flag_events": options.flag_events, "flag_mass": options.flag_mass}


def settings_hash(settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of :func:`settings_record`."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- worker side

_STATE: dict[tuple, Any] = {}
_STATE_LOCK = threading.Lock()


@dataclass
class _WorkerState:
    reference: Any
    record: Any
    engine: Any
    backend: str
    xp: ModuleType


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


def cached_state(key: tuple, load: Callable[[], Any]) -> Any:
    """This process's state for ``key`` (model, engine, ...), loaded on first use; one run's at a time."""
    with _STATE_LOCK:
        if key not in _STATE:
            _STATE.clear()
            _STATE[key] = load()
        return _STATE[key]


def _load_state(job: WorkerJob) -> _WorkerState:
    """Load the reference and model and build the engine (checked against the client's checksums)."""
    from ..device import get_xp
    from ..errors import ReferenceDataError
    from ..flow.record import ModelRecord
    from ..reference import Reference

    ref = Reference.load(job.reference_path)
    if ref.fingerprint != job.reference_fingerprint:
        raise ReferenceDataError(f"{job.reference_path}: the reference changed since the run started (fingerprint differs)")
    rec = ModelRecord.load(job.model_path)
    engine, backend = worker_engine(rec, path=job.model_path, sha256=job.model_sha256, backend=job.backend,
                                    kind=job.engine, precision=job.precision, batch_size=job.batch_size,
                                    checksum=job.model_checksum)
    return _WorkerState(ref, rec, engine, backend, get_xp(backend))


def worker_state(job: WorkerJob) -> _WorkerState:
    """The per-process reference, model and engine for ``job``, loaded on first use."""
    key = (job.reference_path, job.reference_fingerprint, job.model_path, job.model_sha256, job.model_checksum,
           job.backend, job.engine, job.precision, job.batch_size)
    return cached_state(key, lambda: _load_state(job))


def file_digest(path: str | Path, *, chunk: int = 1 << 22) -> tuple[str, int, int]:
    """``(sha256 hex, size in bytes, mtime in ns)`` of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest(), int(st.st_size), int(st.st_mtime_ns)


def _base_record(task: SampleTask, job: WorkerJob) -> dict[str, Any]:
    rec: dict[str, Any] = {"sample_id": task.sample_id, "status": "failed", "error": "", "warnings": [], "p_mrd": None,
                           "call": "", "n_events": None, "n_events_used": None, "qc": {},
                           "provenance": {"settings_hash": job.settings_hash,
                                          "reference_fingerprint": job.reference_fingerprint,
                                          "model_sha256": job.model_sha256, "model_checksum": job.model_checksum,
                                          "backend": job.backend, "engine": job.engine, "precision": job.precision,
                                          "software": software_versions(_PACKAGES)}}
    if job.keep_identifiers:
        rec["provenance"]["input_path"] = task.path
    return rec


def worker_error_text(exc: BaseException, task: SampleTask, job: WorkerJob) -> str:
    """The message of a sample's failure; its file path is replaced unless identifiers are kept."""
    if isinstance(exc, FileNotFoundError):
        text = f"{task.path}: file not found"
    elif isinstance(exc, RescueError):
        text = str(exc)
    else:
        text = f"unexpected {exc.__class__.__name__}: {exc}"
    return text if job.keep_identifiers else text.replace(task.path, f"[{task.sample_id}]")


def _identifiers(path: str) -> dict[str, str]:
    from ..fcs import read_fcs

    kw = read_fcs(path, only_text=True).keywords
    return {k: v for k, v in kw.items() if k in IDENTIFYING_KEYWORDS or "NAME" in k or "PATIENT" in k}


def _prepare(task: SampleTask, job: WorkerJob, state: _WorkerState) -> tuple[SampleResult, Any]:
    """Read, preprocess, project and rasterise one sample; returns its result and coords (None when failed)."""
    from ..device import to_numpy
    from .stages import load_events, project, rasterise

    rec = _base_record(task, job)
    t0 = time.perf_counter()
    try:
        digest, size, mtime = file_digest(task.path)
        rec["provenance"].update(input_sha256=digest, input_size=size, input_mtime_ns=mtime)
        events = load_events(task.path, job.pipeline, xp=state.xp)
        t1 = time.perf_counter()
        coords = project(state.reference, events, seed=job.seed, backend=state.backend)
        t2 = time.perf_counter()
        image, outside = rasterise(state.reference, coords, events)
        image = to_numpy(image)
        if job.keep_identifiers:
            rec["provenance"]["identifiers"] = _identifiers(task.path)
    except Exception as exc:  # one bad sample never stops the cohort
        rec["error"] = worker_error_text(exc, task, job)
        return SampleResult(rec), None
    qc = {k: v for k, v in events.qc.items() if k != "n_events_in"}
    qc["n_outside"] = int(outside)
    rec.update(status="scored", n_events=int(events.qc["n_events_in"]), qc=qc,
               n_events_used=int(events.n_events - outside), warnings=_warning_texts(events.warnings, task, job),
               seconds={"preprocess": round(t1 - t0, 4), "project": round(t2 - t1, 4),
                        "rasterise": round(time.perf_counter() - t2, 4)})
    arrays = {"image": np.ascontiguousarray(image, dtype=np.float32)}
    if job.keep_coords:
        arrays["coords"] = np.ascontiguousarray(to_numpy(coords), dtype=np.float32)
    return SampleResult(rec, arrays), coords


def _warning_texts(warnings: Iterable[str], task: SampleTask, job: WorkerJob) -> list[str]:
    """A sample's warnings for its record; its file path is replaced unless identifiers are kept."""
    return [w if job.keep_identifiers else w.replace(task.path, f"[{task.sample_id}]") for w in warnings]


def _infer(results: list[SampleResult], state: _WorkerState) -> None:
    """One engine call on the images of the batch's scored samples; fills p_mrd and call."""
    ok = [r for r in results if not r.failed]
    if not ok:
        return
    t0 = time.perf_counter()
    try:
        p = np.asarray(state.engine.predict(np.stack([r.arrays["image"] for r in ok])), dtype=np.float64)
        calls = state.record.calls(p)
    except Exception as exc:
        for r in ok:
            r.record.update(status="failed", error=f"inference failed: {exc.__class__.__name__}: {exc}")
            r.arrays.clear()
        return
    dt = (time.perf_counter() - t0) / len(ok)
    for r, pi, ci in zip(ok, p, calls):
        r.record.update(p_mrd=float(pi), call=str(ci), threshold=float(state.record.threshold))
        r.record["seconds"]["inference"] = round(dt, 4)


def _flag(result: SampleResult, task: SampleTask, coords: Any, job: WorkerJob, state: _WorkerState) -> None:
    """Write the flagged FCS of a positive sample (a failure is recorded, not raised)."""
    from .flag import flag_sample

    if job.flag_dir is None or result.failed or result.record.get("call") != "positive":
        return
    out = Path(job.flag_dir) / f"{sample_key(task.sample_id)}.fcs"
    try:
        n = flag_sample(task.path, out, pipeline=job.pipeline, reference=state.reference, network=state.record.model,
                        image=result.arrays["image"], coords=coords, mass=job.flag_mass,
                        keep_identifiers=job.keep_identifiers)
        result.record["flagged"] = {"file": out.name, "n_flagged": int(n)}
    except Exception as exc:
        text = worker_error_text(exc, task, job)
        result.record["flagged"] = {"error": text}
        result.record.setdefault("warnings", []).append(f"flagged FCS file not written: {text}")


def _limit_threads() -> None:
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


def score_tasks(tasks: Sequence[SampleTask], job: WorkerJob) -> list[SampleResult]:
    """Score a batch of samples on this worker (the Dask task function).

    Never raises for a bad sample: each failure is in its result, as does a reference or
    model that cannot be loaded on this worker.
    """
    _limit_threads()
    try:
        state = worker_state(job)
    except Exception as exc:
        return [SampleResult({**_base_record(t, job), "error": worker_error_text(exc, t, job)}) for t in tasks]
    prepared = [_prepare(t, job, state) for t in tasks]
    results = [r for r, _ in prepared]
    _infer(results, state)
    for task, (res, coords) in zip(tasks, prepared):
        _flag(res, task, coords, job, state)
    return results


# ----------------------------------------------------------------------------- client side


def _same_input(path: Path, prov: dict[str, Any]) -> bool:
    """Whether ``path`` still holds the stored input: size and mtime equal, else its sha256 equal."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != prov.get("input_size"):
        return False
    if st.st_mtime_ns == prov.get("input_mtime_ns"):
        return True
    return file_digest(path)[0] == prov.get("input_sha256")


def pending_rows(rows: Sequence[ManifestRow], store: RunStore, identity: dict[str, str],
                 same_input: Callable[[Path, dict[str, Any]], bool] | None = None) -> tuple[list[ManifestRow], int]:
    """Rows to (re)do and the number skipped: a scored sample with equal identity and input is skipped.

    ``same_input(path, provenance)`` says whether the input is unchanged (default: an
    FCS file's size and mtime, else its sha256).
    """
    same_input = same_input or _same_input
    todo, skipped = [], 0
    for row in rows:
        got = store.read(row.sample_id)
        prov = got.record.get("provenance", {}) if got is not None else {}
        same = got is not None and got.record.get("status") == "scored" and \
            all(prov.get(k) == v for k, v in identity.items()) and same_input(row.path, prov)
        if same:
            skipped += 1
        else:
            todo.append(row)
    return todo, skipped


def task_batches(rows: Sequence[ManifestRow], size: int) -> list[list[SampleTask]]:
    tasks = [SampleTask(r.sample_id, str(r.path), r.patient_id, r.timepoint, r.label) for r in rows]
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def _lost(task: SampleTask, job: WorkerJob, text: str) -> SampleResult:
    """The result of a flow sample whose batch was lost."""
    return SampleResult({**_base_record(task, job), "error": text})


def _run_in_process(batches: list[list[SampleTask]], job: Any, work: Work) -> Iterator[SampleResult]:
    for batch in batches:
        yield from work.run(batch, job)


def _run_dask(client: Any, batches: list[list[SampleTask]], job: Any, window: int, work: Work) -> Iterator[SampleResult]:
    """Submit ``window`` batches, then one more as each completes; yield results as they come."""
    from distributed import as_completed

    pending = iter(batches)
    job_future = client.scatter(job, broadcast=True)
    owner: dict[str, list[SampleTask]] = {}

    def submit(batch: list[SampleTask]) -> Any:
        fut = client.submit(work.run, batch, job_future, pure=False)
        owner[fut.key] = batch
        return fut

    ac = as_completed([submit(b) for _, b in zip(range(max(1, window)), pending)])  # range first: zip must not consume a batch it drops
    for fut in ac:
        batch = owner.pop(fut.key)
        try:
            results = fut.result()
        except Exception as exc:  # a worker died (KilledWorker) or the task could not run
            results = [work.fail(t, job, f"worker failure: {exc.__class__.__name__}: {exc}") for t in batch]
        fut.release()
        nxt = next(pending, None)
        if nxt is not None:
            ac.add(submit(nxt))
        yield from results


def _check_fit(reference: Any, record: Any, pipeline: Pipeline) -> None:
    from ..preprocess import preprocess_fingerprint

    record.check_compatible(reference)
    fp = preprocess_fingerprint(pipeline.panel, pipeline.preprocess)
    if reference.preprocess_fingerprint and reference.preprocess_fingerprint != fp:
        raise ConfigError(f"pipeline '{pipeline.name}' preprocesses differently from the reference's build "
                          "(preprocessing fingerprints differ); pass the --pipeline the reference was built with")


@dataclass
class _Progress:
    total: int
    on_progress: Callable[..., None] | None
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    failed: int = 0
    events: int = 0
    unit: str = "events"

    def add(self, res: SampleResult) -> None:
        self.done += 1
        self.failed += int(res.failed)
        self.events += int(res.record.get(f"n_{self.unit}") or 0)
        if self.on_progress is not None:
            rate = self.events / max(time.perf_counter() - self.started, 1e-9)
            self.on_progress(self.done - 1, self.total, failed=self.failed, **{f"{self.unit}_per_s": f"{rate:,.0f}"})


def score_cohort(
    inputs: str | Path | Sequence[ManifestRow],
    *,
    reference: str | Path,
    model: str | Path,
    out: str | Path,
    options: ScoreOptions,
    runtime: RuntimeConfig = RuntimeConfig(),
    scheduler: str | None = None,
    in_process: bool = False,
    dashboard_address: str = ":8787",
    on_start: Callable[[str, int, int], None] | None = None,
    on_progress: Callable[..., None] | None = None,
) -> RunSummary:
    """Score a cohort into ``out`` (``store.zarr``, ``scores.csv``, ``scores.parquet``, ``report.html``).

    Parameters
    ----------
    inputs
        Manifest CSV, folder of FCS files, or manifest rows.
    reference, model
        Reference and model directories (checked against each other and the pipeline).
    out
        Run directory; running again resumes (see :func:`pending_rows`).
    options
        What to do; see :class:`ScoreOptions`.
    runtime
        Backend, workers, threads, memory and inference batch size.
    scheduler
        Address or scheduler file of an existing Dask cluster (default: an embedded one).
    in_process
        Run in this process without Dask (debugging, benchmarks).
    dashboard_address
        Dashboard of an embedded cluster.
    on_start
        Called once with ``(cluster description, samples to do, samples skipped)``.
    on_progress
        Called after every sample as ``(i, n, failed=..., events_per_s=...)``.

    Raises
    ------
    ManifestError, ConfigError, ModelError, ReferenceDataError, StoreError, BackendError
        Before any sample is processed.

    Warns
    -----
    BackendFallbackWarning
        Once, on the client, when ``runtime.backend = "auto"`` finds no GPU (the device is
        also shown in the ``on_start`` description).
    """
    from ..flow.record import ModelRecord
    from ..reference import Reference

    rows = list(inputs) if not isinstance(inputs, (str, Path)) else read_manifest(inputs)
    ref, rec = Reference.load(reference), ModelRecord.load(model)
    _check_fit(ref, rec, options.pipeline)
    device = resolve_run_device(runtime, engine=options.engine, precision=options.precision,
                                scheduler=None if in_process else scheduler)
    run_dir = Path(out)
    with run_lock(run_dir):
        store = RunStore(run_dir / "store.zarr")
        job = _make_job(reference, ref, model, rec, options, runtime, run_dir, device)
        identity = {"settings_hash": job.settings_hash, "reference_fingerprint": job.reference_fingerprint,
                    "model_sha256": job.model_sha256, "model_checksum": job.model_checksum}
        todo, skipped = pending_rows(rows, store, identity)
        store.set_run({**identity, "settings": settings_record(options, device), "software": software_versions(_PACKAGES),
                       "threshold": rec.threshold, "n_samples": len(rows)})
        batches = task_batches(todo, options.samples_per_task)
        cluster, progress, seconds = run_batches(batches, job, work=FLOW, store=store, skipped=skipped,
                                                 runtime=runtime, window=options.window, scheduler=scheduler,
                                                 in_process=in_process, dashboard=dashboard_address,
                                                 on_start=announce_device(on_start, device), on_progress=on_progress)
        from .outputs import score_table, write_outputs

        table = score_table(rows, store, threshold=rec.threshold)
        outputs = write_outputs(table, store, run_dir, report=options.report,
                                provenance={**identity, "settings": settings_record(options, device),
                                            "cluster": cluster, "software": software_versions(_PACKAGES),
                                            "reference": str(reference) if options.keep_identifiers else Path(reference).name,
                                            "model": str(model) if options.keep_identifiers else Path(model).name,
                                            "model_metrics": rec.metrics})
    n_failed = int((table["status"] != "scored").sum())
    return RunSummary(run_dir, len(rows), len(rows) - n_failed, n_failed, skipped, progress.done, progress.events,
                      seconds, cluster, outputs)


def _make_job(ref_path: str | Path, ref: Any, model_path: str | Path, rec: Any, options: ScoreOptions,
              runtime: RuntimeConfig, run_dir: Path, device: DevicePlan) -> WorkerJob:
    flag_dir = None
    if options.flag_events:
        (run_dir / "flagged").mkdir(parents=True, exist_ok=True)
        flag_dir = str((run_dir / "flagged").resolve())
    return WorkerJob(str(Path(ref_path).resolve()), ref.fingerprint, str(Path(model_path).resolve()), rec.sha256,
                     options.pipeline, settings_hash(settings_record(options, device)), options.seed,
                     device.backend, device.engine, device.precision, runtime.batch_size, options.keep_coords,
                     options.keep_identifiers, flag_dir, options.flag_mass, model_checksum=rec.checksum)


def run_batches(batches: list[list[SampleTask]], job: Any, *, work: Work, store: RunStore, skipped: int,
                runtime: RuntimeConfig, window: int = 0, scheduler: str | None = None, in_process: bool = False,
                dashboard: str = ":8787", on_start: Callable[[str, int, int], None] | None = None,
                on_progress: Callable[..., None] | None = None) -> tuple[str, _Progress, float]:
    """Process batches of tasks in this process or on Dask, writing each result to ``store`` as it arrives.

    Returns the executor's description, the progress counters and the seconds of the
    processing phase (after workers loaded their caches).
    """
    n_todo = sum(len(b) for b in batches)
    progress = _Progress(n_todo, on_progress, unit=work.unit)
    if in_process or not n_todo:
        desc = "in-process (no Dask)" if in_process else "nothing to do"
        if on_start is not None:
            on_start(desc, n_todo, skipped)
        progress.started = time.perf_counter()
        _drain(_run_in_process(batches, job, work), store, progress)
        return desc, progress, time.perf_counter() - progress.started
    from .cluster import open_client

    with open_client(runtime, scheduler=scheduler, dashboard_address=dashboard) as (client, info):
        if on_start is not None:
            on_start(info.describe(), n_todo, skipped)
        _warm_workers(client, job, work)
        progress.started = time.perf_counter()
        _drain(_run_dask(client, batches, job, window or 2 * max(1, info.n_workers), work), store, progress)
        return info.describe(), progress, time.perf_counter() - progress.started


def _warm(job: WorkerJob) -> str:
    """Load the reference, model and engine on this worker; return the error text, if any."""
    try:
        worker_state(job)
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return ""


def _warm_workers(client: Any, job: Any, work: Work) -> None:
    """One warm-up task per worker, so every worker loads its caches at once (errors surface per sample later)."""
    from .cluster import workers_of

    futures = [client.submit(work.warm, job, workers=[a], allow_other_workers=False, pure=False)
               for a in workers_of(client)]
    client.gather(futures, errors="skip")


def _drain(results: Iterable[SampleResult], store: RunStore, progress: _Progress) -> None:
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


FLOW = Work(run=score_tasks, fail=_lost, warm=_warm, unit="events")
