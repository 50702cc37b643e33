"""The flow MRD assay on the shared runner: :class:`FlowAssay` and :func:`score_cohort`.

Per sample, on a worker (events stay on the GPU until the image exists)::

    sha256 of the FCS file -> read -> preprocess -> project into the reference (UMAP
    transform) -> rasterise; per batch: one engine.predict on its images -> p_mrd, call;
    for a positive sample, optionally the flagged FCS (Grad-CAM's driving events)

Stored per sample: the record (p_mrd, call, QC counts, warnings, provenance) and the
``image`` (C, H, W) float32 (plus ``coords`` (n, 2) with ``keep_coords``; with an MRD model
the packed bits ``mrd_dfn``/``mrd_laip`` and, for samples the report may show, ``mrd_view``,
see :mod:`.mrd_view`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Pipeline, RuntimeConfig
from ..errors import ConfigError
from ..fcs.reader import check_readable
from ..artifacts import software_versions
from ..runner.assay import OptionsAssay, RunContext, SampleResult, SampleTask
from ..runner.identity import file_digest, same_file
from ..runner.manifest import ManifestRow, read_manifest
from ..runner.run import RunSummary, run_cohort
from ..runner.store import RunStore, sample_key
from ..runner.worker import worker_engine, worker_error_text

if TYPE_CHECKING:
    import pandas as pd

    from ..device import DevicePlan

__all__ = ["ScoreOptions", "WorkerJob", "FlowState", "FlowAssay", "score_cohort", "settings_record",
           "IDENTIFYING_KEYWORDS", "PACKAGES"]

PACKAGES = ("rescue_gpu", "numpy", "torch", "zarr", "dask", "distributed", "cupy", "dask-cuda")
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
    mrd_model
        Directory of a DfN normal model (:class:`rescue_gpu.flow.mrd.NormalModel`): every
        sample gets its event-level MRD % (DfN, plus LAIP from the patient's diagnosis
        sample in the same manifest); None: no MRD %.
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
    mrd_model: str | None = None

    def __post_init__(self) -> None:
        if self.samples_per_task < 1 or self.window < 0 or self.seed < 0:
            raise ConfigError("samples_per_task must be >= 1, window >= 0 and seed >= 0")
        if not 0.0 < self.flag_mass <= 1.0:
            raise ConfigError(f"flag_mass must be in (0, 1] (got {self.flag_mass})")


@dataclass(frozen=True, kw_only=True)
class WorkerJob:
    """Everything a flow worker needs besides the samples (small and picklable; keyword arguments only).

    Implements :class:`rescue_gpu.runner.assay.AssayJob`.

    Attributes
    ----------
    reference_path, reference_fingerprint
        The reference directory (absolute) and the fingerprint the client loaded.
    model_path, model_sha256, model_checksum
        The model directory (absolute), its weights' sha256 and its record checksum
        (weights and every setting that changes a call).
    pipeline
        Panel and preprocessing.
    settings_hash
        sha256 of :func:`settings_record`.
    seed
        Seed of the UMAP transform.
    backend, engine, precision
        Resolved on the client (``"cpu"`` | ``"gpu"``, an engine kind, a precision); a
        worker refuses ``"auto"``.
    batch_size, chunk_events
        Images per forward pass; events per chunk of the projection's neighbour search.
    keep_coords, keep_identifiers
        See :class:`ScoreOptions`.
    flag_dir, flag_mass
        Folder of flagged FCS files (None: none written) and Grad-CAM mass.
    """

    reference_path: str
    reference_fingerprint: str
    model_path: str
    model_sha256: str
    pipeline: Pipeline
    settings_hash: str
    seed: int = 0
    backend: str = "auto"
    engine: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    chunk_events: int = 262144
    keep_coords: bool = False
    keep_identifiers: bool = False
    flag_dir: str | None = None
    flag_mass: float = 0.5
    model_checksum: str = ""
    mrd_model_path: str | None = None
    laips: dict[str, Any] | None = None

    def state_key(self) -> Hashable:
        """Paths, checksums and device of the reference, model and engine this job loads."""
        return ("flow", self.reference_path, self.reference_fingerprint, self.model_path, self.model_sha256,
                self.model_checksum, self.backend, self.engine, self.precision, self.batch_size, self.mrd_model_path)

    def load_state(self) -> FlowState:
        """Load the reference and model and build the engine (checked against the client's checksums).

        Raises
        ------
        ReferenceDataError, ModelError, BackendError
            A directory changed since the run started, or the device is not usable here.
        """
        from ..device import get_xp
        from ..errors import ReferenceDataError
        from ..flow.record import ModelRecord
        from ..reference import Reference

        ref = Reference.load(self.reference_path)
        if ref.fingerprint != self.reference_fingerprint:
            raise ReferenceDataError(f"{self.reference_path}: the reference changed since the run started "
                                     "(fingerprint differs)")
        rec = ModelRecord.load(self.model_path)
        engine, backend = worker_engine(rec, path=self.model_path, sha256=self.model_sha256, backend=self.backend,
                                        kind=self.engine, precision=self.precision, batch_size=self.batch_size,
                                        checksum=self.model_checksum)
        mrd_model = None
        if self.mrd_model_path is not None:
            from .mrd import NormalModel

            mrd_model = NormalModel.load(self.mrd_model_path)
        return FlowState(reference=ref, record=rec, engine=engine, backend=backend, xp=get_xp(backend), mrd=mrd_model)

    def process(self, tasks: Sequence[SampleTask], state: FlowState) -> list[SampleResult]:
        """Score a batch: prepare each sample, one engine call on the images, flag positives."""
        prepared = [_prepare(t, self, state) for t in tasks]
        results = [r for r, _ in prepared]
        _infer(results, state)
        for task, (res, coords) in zip(tasks, prepared):
            _flag(res, task, coords, self, state)
        return results

    def lost(self, task: SampleTask, text: str) -> SampleResult:
        """The failed result of a sample whose batch was lost."""
        return SampleResult({**_base_record(task, self), "error": text})


@dataclass
class FlowState:
    """A flow worker's loaded state: reference, model record, engine, resolved backend and array module."""

    reference: Any
    record: Any
    engine: Any
    backend: str
    xp: ModuleType
    mrd: Any = None


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
            "flag_events": options.flag_events, "flag_mass": options.flag_mass,
            **({"mrd_model": _mrd_identity(options.mrd_model)} if options.mrd_model else {})}


def _mrd_identity(path: str) -> str:
    """The DfN model's identity for the settings hash: sha256 of its ``normal.json``.

    ``normal.json`` holds the points' sha256 and every threshold, so a model rebuilt with
    other settings but the same points (``build-normal --overwrite --cluster-rule ...``)
    re-scores rather than resuming the old MRD %.
    """
    import hashlib
    import json

    try:
        meta = json.loads((Path(path) / "normal.json").read_text())
        return hashlib.sha256(json.dumps(meta, sort_keys=True).encode("utf-8")).hexdigest()
    except (OSError, ValueError) as exc:
        from ..errors import ReferenceDataError

        raise ReferenceDataError(f"{path}: no readable DfN normal model ({exc})") from exc


# ----------------------------------------------------------------------------- worker side


def _base_record(task: SampleTask, job: WorkerJob) -> dict[str, Any]:
    rec: dict[str, Any] = {"sample_id": task.sample_id, "status": "failed", "error": "", "warnings": [], "p_mrd": None,
                           "call": "", "n_events": None, "n_events_used": None, "qc": {},
                           "provenance": {"settings_hash": job.settings_hash,
                                          "reference_fingerprint": job.reference_fingerprint,
                                          "model_sha256": job.model_sha256, "model_checksum": job.model_checksum,
                                          "backend": job.backend, "engine": job.engine, "precision": job.precision,
                                          "software": software_versions(PACKAGES)}}
    if job.keep_identifiers:
        rec["provenance"]["input_path"] = task.path
    return rec


def _identifiers(path: str) -> dict[str, str]:
    from ..fcs import read_fcs

    kw = read_fcs(path, only_text=True).keywords
    return {k: v for k, v in kw.items() if k in IDENTIFYING_KEYWORDS or "NAME" in k or "PATIENT" in k}


def _prepare(task: SampleTask, job: WorkerJob, state: FlowState) -> tuple[SampleResult, Any]:
    """Read, preprocess, project and rasterise one sample; returns its result and coords (None when failed)."""
    from ..device import to_numpy
    from .stages import load_events, project, rasterise

    rec = _base_record(task, job)
    t0 = time.perf_counter()
    try:
        check_readable(task.path)  # a directory, FIFO or missing file: a clear FcsFormatError
        digest, size, mtime = file_digest(task.path)
        rec["provenance"].update(input_sha256=digest, input_size=size, input_mtime_ns=mtime)
        events = load_events(task.path, job.pipeline, xp=state.xp)
        t1 = time.perf_counter()
        coords = project(state.reference, events, seed=job.seed, backend=state.backend, chunk_events=job.chunk_events)
        t2 = time.perf_counter()
        image, outside = rasterise(state.reference, coords, events)
        image = to_numpy(image)
        t3 = time.perf_counter()
        mrd_rec, mrd_arrays = _mrd(events, coords, task, job, state)
        t_mrd = time.perf_counter() - t3
        if job.keep_identifiers:
            rec["provenance"]["identifiers"] = _identifiers(task.path)
    except Exception as exc:  # one bad sample never stops the cohort
        rec["error"] = worker_error_text(exc, task, job)
        return SampleResult(rec), None
    qc = {k: v for k, v in events.qc.items() if k != "n_events_in"}
    qc["n_outside"] = int(outside)
    rec.update(status="scored", n_events=int(events.qc["n_events_in"]), qc=qc,
               n_events_used=int(events.n_events - outside),
               warnings=_warning_texts([*events.warnings, *(mrd_rec or {}).get("notes", [])], task, job),
               seconds={"preprocess": round(t1 - t0, 4), "project": round(t2 - t1, 4),
                        "rasterise": round(t3 - t2, 4)})
    arrays = {"image": np.ascontiguousarray(image, dtype=np.float32)}
    if mrd_rec is not None:
        rec["mrd"] = mrd_rec
        rec["seconds"]["mrd"] = round(t_mrd, 4)
        arrays.update(mrd_arrays)
    if job.keep_coords:
        arrays["coords"] = np.ascontiguousarray(to_numpy(coords), dtype=np.float32)
    return SampleResult(record=rec, arrays=arrays), coords


def _mrd(events: Any, coords: Any, task: SampleTask, job: WorkerJob,
         state: FlowState) -> tuple[dict[str, Any] | None, dict]:
    """The sample's MRD numbers and per-event bits (``mrd_dfn``, ``mrd_laip``), or (None, {}) without a model.

    A sample the report may show (:func:`rescue_gpu.flow.mrd_view.needs_view`) also gets
    ``mrd_view``, a subsample of its aberrant and other CD45+ events with their UMAP
    coordinates and markers (record key ``view_markers``).
    """
    from .mrd import LaipModel, dfn_parts, laip_flags, leukocytes, mrd_numbers, pack_flags
    from .mrd_view import needs_view, view_sample

    model = state.mrd
    if model is None:
        return None, {}
    model.check_markers(events.markers)
    values = events.values
    xp = state.xp
    cluster, excess, gate = dfn_parts(model, values)
    dfn = cluster | excess
    laip_rec = (job.laips or {}).get(task.patient_id) if task.timepoint != "diagnosis" else None
    refused = laip_rec.get("refused") if laip_rec is not None else None
    if refused:
        laip_rec = None
    if laip_rec is not None:
        laip = laip_flags(model, LaipModel.from_record(laip_rec), values)
        aberrant, method = dfn | laip, "both"
    else:
        laip, aberrant, method = None, dfn, "dfn"
    n_cd45 = _count(leukocytes(gate, aberrant), xp)  # CD45-dim aberrant events are leukocytes too
    numbers = mrd_numbers(int(_count(aberrant, xp)), n_cd45, method)
    rec = {**numbers.record(), "dfn_events": int(_count(dfn, xp)), "excess_events": int(_count(excess, xp)),
           "laip_events": None if laip is None else int(_count(laip, xp)), "n_flag_events": int(values.shape[0])}
    if refused:
        rec["notes"] = [str(refused)]  # become the sample's warnings
    arrays = {"mrd_dfn": pack_flags(dfn)}
    if laip is not None:
        arrays["mrd_laip"] = pack_flags(laip)
    if needs_view(numbers.mrd_status, numbers.mrd_events):
        arrays["mrd_view"] = view_sample(values, coords, aberrant, gate)
        rec["view_markers"] = list(events.markers)
    return rec, arrays


def _count(flags: Any, xp: ModuleType) -> int:
    """Number of True entries of a boolean array (numpy or cupy)."""
    return int(xp.sum(flags))


def _warning_texts(warnings: Iterable[str], task: SampleTask, job: WorkerJob) -> list[str]:
    """A sample's warnings for its record; its file path is replaced unless identifiers are kept."""
    return [w if job.keep_identifiers else w.replace(task.path, f"[{task.sample_id}]") for w in warnings]


def _infer(results: list[SampleResult], state: FlowState) -> None:
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


def _flag(result: SampleResult, task: SampleTask, coords: Any, job: WorkerJob, state: FlowState) -> None:
    """Write the flagged FCS of a positive sample (a failure is recorded, not raised)."""
    from .flag import flag_sample

    mrd_positive = (result.record.get("mrd") or {}).get("mrd_status") == "positive"
    if job.flag_dir is None or result.failed or (result.record.get("call") != "positive" and not mrd_positive):
        return
    out = Path(job.flag_dir) / f"{sample_key(task.sample_id)}.fcs"
    try:
        n = flag_sample(task.path, out, pipeline=job.pipeline, reference=state.reference, network=state.record.model,
                        image=result.arrays["image"], coords=coords, mass=job.flag_mass,
                        keep_identifiers=job.keep_identifiers, mrd_bits=_mrd_bits(result))
        result.record["flagged"] = {"file": out.name, "n_flagged": int(n)}
    except Exception as exc:
        text = worker_error_text(exc, task, job)
        result.record["flagged"] = {"error": text}
        result.record.setdefault("warnings", []).append(f"flagged FCS file not written: {text}")


def _mrd_bits(result: SampleResult) -> np.ndarray | None:
    """The sample's aberrant events (DfN or LAIP) as booleans over its kept events, or None."""
    from .mrd import unpack_flags

    rec = result.record.get("mrd")
    if not rec or "mrd_dfn" not in result.arrays:
        return None
    n = int(rec["n_flag_events"])
    bits = unpack_flags(result.arrays["mrd_dfn"], n)
    if "mrd_laip" in result.arrays:
        bits = bits | unpack_flags(result.arrays["mrd_laip"], n)
    return bits


def diagnosis_laips(rows: Sequence[ManifestRow], pipeline: Pipeline, model_path: str | Path) -> dict[str, Any]:
    """``{patient_id: LAIP record}`` from each patient's diagnosis sample in ``rows`` (first one wins).

    A diagnosis sample that cannot be read or has no population different from normal
    gives no LAIP (that patient's follow-ups are scored with DfN alone). A LAIP that
    :func:`~rescue_gpu.flow.mrd.laip_refusal` refuses is stored as ``{"refused": reason}``:
    the follow-ups are scored with DfN alone and carry the reason as a warning.
    """
    from ..errors import RescueError
    from .mrd import NormalModel, fit_laip, laip_refusal
    from .stages import load_events

    model = NormalModel.load(model_path)
    out: dict[str, Any] = {}
    for row in rows:
        if row.timepoint != "diagnosis" or not row.patient_id or row.patient_id in out:
            continue
        try:
            ev = load_events(row.path, pipeline)
        except RescueError:
            continue
        model.check_markers(ev.markers)
        laip = fit_laip(model, np.asarray(ev.values))
        if laip is not None:
            reason = laip_refusal(laip)
            out[row.patient_id] = {"refused": reason} if reason else laip.record()
    return out


# ----------------------------------------------------------------------------- client side


def _check_fit(reference: Any, record: Any, pipeline: Pipeline) -> None:
    from ..preprocess import preprocess_fingerprint

    record.check_compatible(reference)
    fp = preprocess_fingerprint(pipeline.panel, pipeline.preprocess)
    if reference.preprocess_fingerprint and reference.preprocess_fingerprint != fp:
        raise ConfigError(f"pipeline '{pipeline.name}' preprocesses differently from the reference's build "
                          "(preprocessing fingerprints differ); pass the --pipeline the reference was built with")


@dataclass
class FlowAssay(OptionsAssay):
    """The flow MRD assay for :func:`rescue_gpu.runner.run.run_cohort` (implements its ``Assay`` protocol).

    Build it with :meth:`open`, which loads the reference and model and checks that they
    fit each other and the pipeline.

    Attributes
    ----------
    reference_path, model_path
        The directories as given.
    reference, record
        The loaded :class:`~rescue_gpu.reference.Reference` and :class:`~rescue_gpu.flow.record.ModelRecord`.
    options
        See :class:`ScoreOptions`.
    """

    reference_path: Path
    model_path: Path
    reference: Any
    record: Any
    options: ScoreOptions
    kind: str = "flow"
    unit: str = "events"
    packages: tuple[str, ...] = PACKAGES
    laips: dict[str, Any] | None = None

    @classmethod
    def open(cls, *, reference: str | Path, model: str | Path, options: ScoreOptions) -> FlowAssay:
        """Load and check the reference and model for ``options``.

        Raises
        ------
        ReferenceDataError, ModelError, ConfigError
            A directory is unreadable, or the reference, model and pipeline do not fit.
        """
        from ..flow.record import ModelRecord
        from ..reference import Reference

        ref, rec = Reference.load(reference), ModelRecord.load(model)
        _check_fit(ref, rec, options.pipeline)
        return cls(reference_path=Path(reference), model_path=Path(model), reference=ref, record=rec, options=options)

    @property
    def engine(self) -> str:
        """The engine kind asked for."""
        return self.options.engine

    def settings(self, device: DevicePlan) -> dict[str, Any]:
        """See :func:`settings_record`."""
        return settings_record(self.options, device)

    def worker_job(self, context: RunContext) -> WorkerJob:
        """The job of every worker (creates ``RUN_DIR/flagged`` when flagging events)."""
        flag_dir = None
        if self.options.flag_events:
            (context.run_dir / "flagged").mkdir(parents=True, exist_ok=True)
            flag_dir = str((context.run_dir / "flagged").resolve())
        o, d = self.options, context.device
        return WorkerJob(reference_path=str(self.reference_path.resolve()),
                         reference_fingerprint=self.reference.fingerprint,
                         model_path=str(self.model_path.resolve()), model_sha256=self.record.sha256,
                         model_checksum=self.record.checksum, pipeline=o.pipeline,
                         settings_hash=context.settings_hash, seed=o.seed, backend=d.backend, engine=d.engine,
                         precision=d.precision, batch_size=context.runtime.batch_size,
                         chunk_events=context.runtime.chunk_events, keep_coords=o.keep_coords,
                         keep_identifiers=o.keep_identifiers, flag_dir=flag_dir, flag_mass=o.flag_mass,
                         mrd_model_path=str(Path(o.mrd_model).resolve()) if o.mrd_model else None,
                         laips=self.laips)

    def identity(self, job: WorkerJob) -> dict[str, str]:
        """Settings hash, reference fingerprint, model sha256 and checksum."""
        return {"settings_hash": job.settings_hash, "reference_fingerprint": job.reference_fingerprint,
                "model_sha256": job.model_sha256, "model_checksum": job.model_checksum}

    def same_input(self, path: Path, provenance: dict[str, Any]) -> bool:
        """An FCS file is unchanged when its size and mtime, else its sha256, are equal."""
        return same_file(path, provenance)

    def run_record(self) -> dict[str, Any]:
        """The model's threshold."""
        return {"threshold": self.record.threshold}

    def write_outputs(self, rows: Sequence[ManifestRow], store: RunStore, run_dir: Path, *,
                      provenance: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Path]]:
        """``scores.csv``, ``scores.parquet`` and (with ``options.report``) ``report.html``."""
        from .outputs import score_table, write_outputs

        keep = self.options.keep_identifiers
        table = score_table(rows, store, threshold=self.record.threshold)
        paths = write_outputs(table, store, run_dir, report=self.options.report,
                              provenance={**provenance,
                                          "reference": str(self.reference_path) if keep else self.reference_path.name,
                                          "model": str(self.model_path) if keep else self.model_path.name,
                                          "model_metrics": self.record.metrics},
                              extent=self.reference.extent)
        return table, paths


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
        Run directory; running again resumes (see :func:`rescue_gpu.runner.identity.pending_rows`).
    options
        What to do; see :class:`ScoreOptions`.
    runtime, scheduler, in_process, dashboard_address, on_start, on_progress
        See :func:`rescue_gpu.runner.run.run_cohort` (``on_progress`` gets ``events_per_s``).

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
    rows = list(inputs) if not isinstance(inputs, (str, Path)) else read_manifest(inputs)
    assay = FlowAssay.open(reference=reference, model=model, options=options)
    if options.mrd_model:
        from ..preprocess import preprocess_fingerprint
        from .mrd import NormalModel

        NormalModel.load(options.mrd_model).check_preprocessing(
            preprocess_fingerprint(options.pipeline.panel, options.pipeline.preprocess),
            where=f"DfN model {options.mrd_model}")
        assay.laips = diagnosis_laips(rows, options.pipeline, options.mrd_model)
    return run_cohort(assay, rows, out=out, runtime=runtime, scheduler=scheduler, in_process=in_process,
                      dashboard_address=dashboard_address, on_start=on_start, on_progress=on_progress)
