"""``rescue cells score``: classify every cell of every sample and read out the leukaemic percentage.

The cells assay on the shared runner (:func:`rescue_gpu.runner.run.run_cohort`), as the flow assay:
samples are batched over Dask workers (or run in-process), each worker loads the cell
model and builds its engine once, the client is the single writer of
``RUN_DIR/store.zarr`` and a re-run resumes. Per sample, on the worker::

    read the cells (folder / channel TIFFs / stack) -> prepare (crop/pad, stretch)
    -> engine: logits + penultimate features in one pass -> calibrated probabilities
    -> readout (class fractions, leukaemic %, adjusted count, bootstrap CI, call)
    -> gallery: the most leukaemic-looking cells and their guided Grad-CAM maps

Stored per sample (arrays): ``probs`` (N, K) float32, cell ids (UTF-8 bytes + offsets),
``embeddings`` (N, F) float16 (unless turned off), ``gallery_images`` (G, C, S, S)
float16, ``gallery_saliency`` (G, S, S) float16, ``gallery_index`` (G,) and
``gallery_p`` (G,) float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import RuntimeConfig
from ..errors import ConfigError
from ..artifacts import software_versions
from ..runner.assay import OptionsAssay, RunContext, SampleResult, SampleTask
from ..runner.manifest import ManifestRow
from ..runner.run import RunSummary, run_cohort
from ..runner.store import RunStore, encode_strings
from ..runner.worker import worker_engine, worker_error_text
from .spec import CellPipeline

if TYPE_CHECKING:
    import pandas as pd

    from ..device import DevicePlan

__all__ = ["CellScoreOptions", "CellJob", "CellState", "CellsAssay", "score_cells", "settings_record",
           "CellRunSummary", "PACKAGES"]

PACKAGES = ("rescue_gpu", "numpy", "torch", "torchvision", "zarr", "dask", "distributed", "tifffile", "cupy")


@dataclass(frozen=True)
class CellScoreOptions:
    """What a cells scoring run does, apart from where it runs.

    Attributes
    ----------
    pipeline
        The assay (must be the one the model was trained with: checked).
    engine, precision
        Inference engine kind and precision (see :func:`rescue_gpu.engine.make_engine`);
        embeddings need a torch engine (``"torch"``, ``"compiled"``, ``"cuda-graphs"``).
    samples_per_task
        Samples one Dask task processes.
    window
        Tasks in flight at once (0: twice the number of workers).
    keep_embeddings
        Store every cell's penultimate-layer features (float16) and export them.
    gallery
        Most leukaemic-looking cells kept per sample, with saliency (None: the pipeline's).
    keep_identifiers
        Keep input paths in the store and error messages.
    seed
        Seed of the noise padding and the bootstrap.
    report
        Write ``report.html``.
    """

    pipeline: CellPipeline
    engine: str = "torch"
    precision: str = "auto"
    samples_per_task: int = 1
    window: int = 0
    keep_embeddings: bool = True
    gallery: int | None = None
    keep_identifiers: bool = False
    seed: int = 0
    report: bool = True

    def __post_init__(self) -> None:
        if self.samples_per_task < 1 or self.window < 0 or self.seed < 0 or (self.gallery or 0) < 0:
            raise ConfigError("samples_per_task must be >= 1, window, seed and gallery >= 0")
        if self.keep_embeddings and self.engine in ("onnx", "tensorrt"):
            raise ConfigError(f"engine {self.engine!r} gives logits only; embeddings need engine 'torch', "
                              "'compiled' or 'cuda-graphs' (or turn embeddings off)")

    @property
    def n_gallery(self) -> int:
        """Cells per sample kept for the gallery."""
        return self.pipeline.readout.gallery if self.gallery is None else self.gallery


@dataclass(frozen=True, kw_only=True)
class CellJob:
    """Everything a cells worker needs besides the samples (small and picklable; keyword arguments only).

    Implements :class:`rescue_gpu.runner.assay.AssayJob`.

    Attributes
    ----------
    model_path, model_sha256, model_checksum
        The model directory (absolute), its weights' sha256 and its record checksum.
    options
        The run's options; its engine and precision are the client's resolved values.
    settings_hash
        sha256 of :func:`settings_record`.
    backend
        Resolved on the client (``"cpu"`` | ``"gpu"``); a worker refuses ``"auto"``.
    batch_size
        Cells per forward pass.
    """

    model_path: str
    model_sha256: str
    options: CellScoreOptions
    settings_hash: str
    backend: str = "auto"
    batch_size: int = 256
    model_checksum: str = ""

    @property
    def keep_identifiers(self) -> bool:
        """Whether input paths may appear in records (see :func:`~rescue_gpu.runner.worker.worker_error_text`)."""
        return self.options.keep_identifiers

    def state_key(self) -> Hashable:
        """Paths, checksums and device of the model and engine this job loads."""
        return ("cells", self.model_path, self.model_sha256, self.model_checksum, self.backend, self.options.engine,
                self.options.precision, self.batch_size)

    def load_state(self) -> CellState:
        """Load the model (checked against the client's checksums), its engine and a CPU copy for Grad-CAM."""
        import copy

        from .record import CellModelRecord

        rec = CellModelRecord.load(self.model_path)
        engine, _ = worker_engine(rec, path=self.model_path, sha256=self.model_sha256, backend=self.backend,
                                  kind=self.options.engine, precision=self.options.precision,
                                  batch_size=self.batch_size, checksum=self.model_checksum)
        return CellState(record=rec, engine=engine, network=copy.deepcopy(rec.model).cpu().eval())

    def process(self, tasks: Sequence[SampleTask], state: CellState) -> list[SampleResult]:
        """Classify every cell of each sample; never raises for a bad sample."""
        return [_score_one(t, self, state) for t in tasks]

    def lost(self, task: SampleTask, text: str) -> SampleResult:
        """The failed result of a sample whose batch was lost."""
        return SampleResult({**_base(task, self), "error": text})


@dataclass
class CellState:
    """A cells worker's loaded state: model record, engine and a CPU network for Grad-CAM."""

    record: Any
    engine: Any
    network: Any


def settings_record(options: CellScoreOptions, device: DevicePlan | str) -> dict[str, Any]:
    """The settings that change a sample's stored result (hashed for resume).

    ``device`` is the run's :class:`~rescue_gpu.device.DevicePlan` (a backend name is
    resolved here): the resolved backend, engine kind and precision, never ``"auto"``.
    """
    from ..device import DevicePlan
    from ..engine import plan_run_device

    plan = device if isinstance(device, DevicePlan) else plan_run_device(
        str(device), engine=_engine_kind(options), precision=options.precision)
    p = options.pipeline
    science = {"classes": asdict(p.classes), "input": asdict(p.input), "preprocess": asdict(p.preprocess),
               "readout": asdict(p.readout)}
    return {"pipeline": science, **plan.record(),
            "keep_embeddings": options.keep_embeddings, "gallery": options.n_gallery, "seed": options.seed,
            "keep_identifiers": options.keep_identifiers}


def _engine_kind(options: CellScoreOptions) -> str:
    """The engine kind to resolve: ``"auto"`` means torch when embeddings are kept (TensorRT gives logits only)."""
    return "torch" if options.engine == "auto" and options.keep_embeddings else options.engine


def _base(task: SampleTask, job: CellJob) -> dict[str, Any]:
    rec: dict[str, Any] = {"sample_id": task.sample_id, "status": "failed", "error": "", "n_cells": None,
                           "provenance": {"settings_hash": job.settings_hash, "model_sha256": job.model_sha256,
                                          "model_checksum": job.model_checksum, "backend": job.backend,
                                          "engine": job.options.engine, "precision": job.options.precision,
                                          "software": software_versions(PACKAGES)}}
    if job.keep_identifiers:
        rec["provenance"]["input_path"] = task.path
    return rec


def _leukaemic_score(index: tuple[int, ...]) -> Callable[[Any], Any]:
    """log P(leukaemic) of each image from its logits: the Grad-CAM target of a cell model."""
    def score(logits: Any) -> Any:
        return logits[:, list(index)].logsumexp(dim=1) - logits.logsumexp(dim=1)
    return score


def _gallery(x: np.ndarray, p_leuk: np.ndarray, n: int, state: CellState) -> dict[str, np.ndarray]:
    from ..nn.saliency import grad_cam

    if n <= 0 or len(x) == 0:
        return {}
    top = np.argsort(-p_leuk, kind="stable")[:n]
    sal = grad_cam(state.network, x[top], score=_leukaemic_score(state.record.leukaemic_index))
    return {"gallery_index": top.astype(np.int64), "gallery_p": p_leuk[top].astype(np.float32),
            "gallery_images": x[top].astype(np.float16), "gallery_saliency": sal.astype(np.float16)}


def _rates(rates: dict[str, Any]) -> Any:
    """The model's validation TPR/FPR for the adjusted count, or None when it has none (raw share reported)."""
    from .readout import AccRates

    if not rates or any(rates.get(k) is None for k in ("tpr", "fpr", "n_pos", "n_neg")):
        return None
    return AccRates(**{k: rates[k] for k in ("tpr", "fpr", "n_pos", "n_neg")})


def _classify(task: SampleTask, job: CellJob, state: CellState) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from .io import read_sample
    from .manifest import input_digest
    from .preprocess import prepare_cells
    from .readout import leukaemic_probability, sample_readout

    pipe, times = job.options.pipeline, {}
    t0 = time.perf_counter()
    digest, size, mtime = input_digest(task.path)
    cells = read_sample(task.path, spec=pipe.input)
    index = [pipe.input.channels.index(c) for c in pipe.input.network_channels]
    x = prepare_cells(cells, spec=pipe.preprocess, channel_index=index, seed=job.options.seed)
    times["read_prepare"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if job.options.keep_embeddings:
        logits, feats = state.engine.logits_and_features(x)
    else:
        logits, feats = state.engine.logits(x), None
    probs = state.record.probabilities(logits)
    times["inference"] = time.perf_counter() - t1
    rates = _rates(state.record.rates) if pipe.readout.adjust else None
    readout = sample_readout(probs, classes=pipe.classes, readout=pipe.readout, rates=rates, seed=job.options.seed)
    p_leuk = leukaemic_probability(probs, leukaemic_index=state.record.leukaemic_index)
    t2 = time.perf_counter()
    arrays = {"probs": probs.astype(np.float32), **_gallery(x, p_leuk, job.options.n_gallery, state)}
    times["gallery"] = time.perf_counter() - t2
    arrays["cell_id_bytes"], arrays["cell_id_offsets"] = encode_strings(cells.cell_ids)
    if feats is not None:
        arrays["embeddings"] = feats.astype(np.float16)
    rec = {"status": "scored", "n_cells": len(cells), "readout": readout.as_dict(), "call": readout.call,
           "seconds": {k: round(v, 4) for k, v in times.items()},
           "input": {"input_sha256": digest, "input_size": size, "input_mtime_ns": mtime}}
    return rec, arrays


def _score_one(task: SampleTask, job: CellJob, state: CellState) -> SampleResult:
    rec = _base(task, job)
    try:
        got, arrays = _classify(task, job, state)
    except Exception as exc:  # one bad sample never stops the cohort
        rec["error"] = worker_error_text(exc, task, job)
        return SampleResult(rec)
    rec["provenance"].update(got.pop("input"))
    rec.update(got)
    return SampleResult(record=rec, arrays=arrays)


# ----------------------------------------------------------------------------- client side


class CellRunSummary(RunSummary):
    """The outcome of :func:`score_cells`: a :class:`RunSummary` whose processed units are cells."""

    @property
    def cells_processed(self) -> int:
        """Cells classified in the processing phase."""
        return self.events_processed

    @property
    def cells_per_s(self) -> float:
        """Cells classified per second of the processing phase."""
        return self.events_per_s


@dataclass
class CellsAssay(OptionsAssay):
    """The single-cell image assay for :func:`rescue_gpu.runner.run.run_cohort` (implements its ``Assay`` protocol).

    Build it with :meth:`open`, which loads the model and checks it against the pipeline.

    Attributes
    ----------
    model_path, record
        The model directory as given and the loaded :class:`~rescue_gpu.cells.record.CellModelRecord`.
    options
        See :class:`CellScoreOptions`.
    truth
        Known true leukaemic fractions by sample id (from the manifest).
    """

    model_path: Path
    record: Any
    options: CellScoreOptions
    truth: dict[str, float]
    kind: str = "cells"
    unit: str = "cells"
    packages: tuple[str, ...] = PACKAGES

    @classmethod
    def open(cls, *, model: str | Path, options: CellScoreOptions, truth: dict[str, float] | None = None) -> CellsAssay:
        """Load ``model`` and check it fits ``options.pipeline``.

        Raises
        ------
        ModelError
            The model directory is unreadable or was trained for another assay.
        """
        from .record import CellModelRecord

        rec = CellModelRecord.load(model)
        rec.check_pipeline(options.pipeline)
        return cls(model_path=Path(model), record=rec, options=options, truth=dict(truth or {}))

    @property
    def engine(self) -> str:
        """The engine kind to resolve: ``"auto"`` means torch when embeddings are kept (TensorRT gives logits only)."""
        return _engine_kind(self.options)

    def settings(self, device: DevicePlan) -> dict[str, Any]:
        """See :func:`settings_record`."""
        return settings_record(self.options, device)

    def worker_job(self, context: RunContext) -> CellJob:
        """The job of every worker (its options carry the resolved engine and precision: no ``"auto"``)."""
        d = context.device
        resolved = replace(self.options, engine=d.engine, precision=d.precision)
        return CellJob(model_path=str(self.model_path.resolve()), model_sha256=self.record.sha256, options=resolved,
                       settings_hash=context.settings_hash, backend=d.backend, batch_size=context.runtime.batch_size,
                       model_checksum=self.record.checksum)

    def identity(self, job: CellJob) -> dict[str, str]:
        """Settings hash, model sha256 and checksum."""
        return {"settings_hash": job.settings_hash, "model_sha256": job.model_sha256,
                "model_checksum": job.model_checksum}

    def same_input(self, path: Path, provenance: dict[str, Any]) -> bool:
        """A sample is unchanged when its files' relative paths, sizes and mtimes are (see :func:`~.manifest.input_digest`)."""
        from .manifest import same_input

        return same_input(path, provenance)

    def run_record(self) -> dict[str, Any]:
        """The assay's kind."""
        return {"kind": "cells"}

    def write_outputs(self, rows: Sequence[ManifestRow], store: RunStore, run_dir: Path, *,
                      provenance: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Path]]:
        """Score tables, ``cells.parquet``, ``embeddings.npz`` and ``report.html`` (see :mod:`.outputs`)."""
        from .outputs import write_cell_outputs

        model = str(self.model_path) if self.options.keep_identifiers else self.model_path.name
        return write_cell_outputs(rows, store, run_dir, record=self.record, options=self.options, truth=self.truth,
                                  provenance={**provenance, "model": model})


def score_cells(
    inputs: str | Path,
    *,
    model: str | Path,
    out: str | Path,
    options: CellScoreOptions,
    runtime: RuntimeConfig = RuntimeConfig(),
    scheduler: str | None = None,
    in_process: bool = False,
    dashboard_address: str = ":8787",
    on_start: Callable[[str, int, int], None] | None = None,
    on_progress: Callable[..., None] | None = None,
) -> CellRunSummary:
    """Score every sample of ``inputs`` into ``out`` (store, scores, cells table, embeddings, report).

    Parameters
    ----------
    inputs
        A manifest CSV (``sample_id,path[,patient_id,timepoint,label,true_fraction]``) or a
        folder whose sub-folders / ``.npy`` / ``.npz`` files are the samples.
    model
        A cell model directory (``rescue cells train``); checked against the pipeline.
    out
        Run directory; running again resumes.
    options
        See :class:`CellScoreOptions`.
    runtime, scheduler, in_process, dashboard_address, on_start, on_progress
        See :func:`rescue_gpu.runner.run.run_cohort` (``on_progress`` gets ``cells_per_s``).

    Raises
    ------
    ManifestError, ConfigError, ModelError, StoreError, BackendError
        Before any sample is processed.

    Warns
    -----
    BackendFallbackWarning
        Once, on the client, when ``runtime.backend = "auto"`` finds no GPU.
    """
    from .manifest import read_cell_manifest

    rows, truth = read_cell_manifest(inputs)
    assay = CellsAssay.open(model=model, options=options, truth=truth)
    summary = run_cohort(assay, rows, out=out, runtime=runtime, scheduler=scheduler, in_process=in_process,
                         dashboard_address=dashboard_address, on_start=on_start, on_progress=on_progress)
    return CellRunSummary(**vars(summary))
