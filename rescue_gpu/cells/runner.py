"""``rescue cells score``: classify every cell of every sample and read out the leukaemic percentage.

The same runner, run store and outputs as the flow path (:mod:`rescue_gpu.cohort.runner`):
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cohort.runner import (RunSummary, SampleResult, SampleTask, Work, announce_device, cached_state, pending_rows,
                             resolve_run_device, run_batches, settings_hash, task_batches, worker_engine,
                             worker_error_text)
from ..config import RuntimeConfig
from ..errors import ConfigError
from ..artifacts import software_versions
from .spec import CellPipeline

if TYPE_CHECKING:
    from ..device import DevicePlan

__all__ = ["CellScoreOptions", "CellJob", "score_cells", "score_cell_tasks", "CELLS", "encode_strings",
           "decode_strings", "CellRunSummary"]

_PACKAGES = ("rescue_gpu", "numpy", "torch", "torchvision", "zarr", "dask", "distributed", "tifffile", "cupy")


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


@dataclass(frozen=True)
class CellJob:
    """Everything a worker needs besides the samples (small and picklable)."""

    model_path: str
    model_sha256: str
    options: CellScoreOptions  # its engine and precision are the client's resolved values
    settings_hash: str
    backend: str = "auto"  # resolved on the client ("cpu" | "gpu"); a worker refuses "auto"
    batch_size: int = 256
    model_checksum: str = ""  # CellModelRecord.checksum

    @property
    def keep_identifiers(self) -> bool:
        """Whether input paths may appear in records (see :func:`worker_error_text`)."""
        return self.options.keep_identifiers


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


def encode_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as UTF-8 bytes (uint8) and offsets (int64, ``n + 1``): a portable Zarr layout."""
    raw = [str(v).encode("utf-8") for v in values]
    offsets = np.zeros(len(raw) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in raw])
    return np.frombuffer(b"".join(raw), dtype=np.uint8).copy(), offsets


def decode_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_strings`."""
    buf = np.asarray(data, dtype=np.uint8).tobytes()
    return [buf[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]


# ----------------------------------------------------------------------------- worker side

@dataclass
class _CellState:
    record: Any
    engine: Any
    network: Any  # a CPU copy for Grad-CAM


def _load(job: CellJob) -> _CellState:
    import copy

    from .record import CellModelRecord

    rec = CellModelRecord.load(job.model_path)
    engine, _ = worker_engine(rec, path=job.model_path, sha256=job.model_sha256, backend=job.backend,
                              kind=job.options.engine, precision=job.options.precision, batch_size=job.batch_size,
                              checksum=job.model_checksum)
    return _CellState(rec, engine, copy.deepcopy(rec.model).cpu().eval())


def cell_state(job: CellJob) -> _CellState:
    """The per-process model, engine and Grad-CAM network for ``job``, loaded on first use."""
    key = (job.model_path, job.model_sha256, job.model_checksum, job.backend, job.options.engine,
           job.options.precision, job.batch_size)
    return cached_state(key, lambda: _load(job))


def _base(task: SampleTask, job: CellJob) -> dict[str, Any]:
    rec: dict[str, Any] = {"sample_id": task.sample_id, "status": "failed", "error": "", "n_cells": None,
                           "provenance": {"settings_hash": job.settings_hash, "model_sha256": job.model_sha256,
                                          "model_checksum": job.model_checksum, "backend": job.backend,
                                          "engine": job.options.engine, "precision": job.options.precision,
                                          "software": software_versions(_PACKAGES)}}
    if job.keep_identifiers:
        rec["provenance"]["input_path"] = task.path
    return rec


def _lost(task: SampleTask, job: CellJob, text: str) -> SampleResult:
    return SampleResult({**_base(task, job), "error": text})


def _leukaemic_score(index: tuple[int, ...]) -> Callable[[Any], Any]:
    """log P(leukaemic) of each image from its logits: the Grad-CAM target of a cell model."""
    def score(logits: Any) -> Any:
        return logits[:, list(index)].logsumexp(dim=1) - logits.logsumexp(dim=1)
    return score


def _gallery(x: np.ndarray, p_leuk: np.ndarray, n: int, state: _CellState) -> dict[str, np.ndarray]:
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


def _classify(task: SampleTask, job: CellJob, state: _CellState) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
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


def _score_one(task: SampleTask, job: CellJob, state: _CellState) -> SampleResult:
    rec = _base(task, job)
    try:
        got, arrays = _classify(task, job, state)
    except Exception as exc:  # one bad sample never stops the cohort
        rec["error"] = worker_error_text(exc, task, job)
        return SampleResult(rec)
    rec["provenance"].update(got.pop("input"))
    rec.update(got)
    return SampleResult(rec, arrays)


def score_cell_tasks(tasks: Sequence[SampleTask], job: CellJob) -> list[SampleResult]:
    """Score a batch of cell samples on this worker (the Dask task function); never raises for a bad sample."""
    try:
        state = cell_state(job)
    except Exception as exc:
        return [SampleResult({**_base(t, job), "error": worker_error_text(exc, t, job)}) for t in tasks]
    return [_score_one(t, job, state) for t in tasks]


def _warm(job: CellJob) -> str:
    try:
        cell_state(job)
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return ""


CELLS = Work(run=score_cell_tasks, fail=_lost, warm=_warm, unit="cells")


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
    options, runtime, scheduler, in_process, dashboard_address, on_start, on_progress
        As for :func:`rescue_gpu.cohort.runner.score_cohort`.

    Raises
    ------
    ManifestError, ConfigError, ModelError, StoreError, BackendError
        Before any sample is processed.

    Warns
    -----
    BackendFallbackWarning
        Once, on the client, when ``runtime.backend = "auto"`` finds no GPU.
    """
    from ..cohort.store import RunStore, run_lock
    from .manifest import read_cell_manifest, same_input
    from .outputs import write_cell_outputs
    from .record import CellModelRecord

    rows, truth = read_cell_manifest(inputs)
    rec = CellModelRecord.load(model)
    rec.check_pipeline(options.pipeline)
    run_dir = Path(out)
    device = resolve_run_device(runtime, engine=_engine_kind(options), precision=options.precision,
                                scheduler=None if in_process else scheduler)
    settings = settings_record(options, device)
    with run_lock(run_dir):
        store = RunStore(run_dir / "store.zarr")
        resolved = replace(options, engine=device.engine, precision=device.precision)  # workers get no "auto"
        job = CellJob(str(Path(model).resolve()), rec.sha256, resolved, settings_hash(settings), device.backend,
                      runtime.batch_size, model_checksum=rec.checksum)
        identity = {"settings_hash": job.settings_hash, "model_sha256": job.model_sha256,
                    "model_checksum": job.model_checksum}
        todo, skipped = pending_rows(rows, store, identity, same_input=same_input)
        store.set_run({**identity, "kind": "cells", "settings": settings, "software": software_versions(_PACKAGES),
                       "n_samples": len(rows)})
        cluster, progress, seconds = run_batches(
            task_batches(todo, options.samples_per_task), job, work=CELLS, store=store, skipped=skipped,
            runtime=runtime, window=options.window, scheduler=scheduler, in_process=in_process,
            dashboard=dashboard_address, on_start=announce_device(on_start, device), on_progress=on_progress)
        provenance = {**identity, "cluster": cluster, "settings": settings, "software": software_versions(_PACKAGES),
                      "model": str(model) if options.keep_identifiers else Path(model).name}
        table, outputs = write_cell_outputs(rows, store, run_dir, record=rec, options=options, truth=truth,
                                            provenance=provenance)
    n_failed = int((table["status"] != "scored").sum())
    return CellRunSummary(run_dir, len(rows), len(rows) - n_failed, n_failed, skipped, progress.done,
                          progress.events, seconds, cluster, outputs)
