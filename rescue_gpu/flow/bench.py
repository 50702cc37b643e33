"""``rescue bench``: per-stage throughput of the flow path, for sizing hardware.

Simulates a cohort (or takes the user's manifest, reference and model), warms up outside
the timings (numba compilation, torch/CUDA start-up), then times each stage per sample with
the functions the scoring workers call (:func:`rescue_gpu.fcs.read_fcs`,
:func:`rescue_gpu.preprocess.preprocess`, :func:`rescue_gpu.flow.stages.project`,
:func:`rescue_gpu.flow.stages.rasterise`, the engine's ``predict`` and
:meth:`rescue_gpu.runner.store.RunStore.write`). It reports seconds per sample per stage
(median, min and max over the repeats), events/s, samples/s, peak host memory (and device
memory on a GPU), the extrapolation to a named library with its assumptions, optionally a
LocalCluster run of ``rescue score`` (``workers > 0``), umap-learn's ``transform`` as a peer
(speed ratio and fidelity) and the build/transform time against reference size.

The JSON it writes follows :data:`BENCH_SCHEMA` (version :data:`BENCH_VERSION`); check a
record with :func:`check_bench_record`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from ..errors import ConfigError
from .cpuload import CpuUsage, measure_cpu

__all__ = ["STAGES", "BENCH_VERSION", "BENCH_SCHEMA", "BenchOptions", "parse_stages", "parse_library",
           "run_bench", "check_bench_record", "format_table", "plot_stages", "displacement", "register"]

STAGES: tuple[str, ...] = ("read", "preprocess", "project", "raster", "infer", "store")
#: Stages whose cost does not grow with the events of a sample (one image per sample).
PER_SAMPLE_STAGES: tuple[str, ...] = ("infer", "store")
BENCH_VERSION = 1

#: The JSON record's layout: field -> type name (nested dicts are sub-schemas; ``[x]`` a list of x).
BENCH_SCHEMA: dict[str, Any] = {
    "version": "int",
    "created": "str (ISO 8601, UTC)",
    "machine": {"platform": "str", "cpu_count": "int", "load_avg": "[float] (1, 5, 15 min)", "python": "str",
                "during_timing": "{cores: int, wall_s: float, own_cores: float, other_cores: null or float, "
                                 "steal_cores: null or float, contention: null or float, quiet: null or bool} "
                                 "(rescue_gpu.flow.cpuload.CpuUsage over the timed repeats; null: no /proc/stat)"},
    "settings": {"samples": "int", "events": "int", "reference_events": "int", "stages": "[str]",
                 "backend": "str", "workers": "int", "repeats": "int", "seed": "int", "source": "str",
                 "knn_method": "str (--knn-method; 'auto' resolves by reference size)"},
    "stages": {"<stage>": {"median_s": "float", "min_s": "float", "max_s": "float", "runs": "[float]"}},
    "end_to_end": {"in_process": {"seconds_per_sample": "float", "events_per_s": "float", "samples_per_s": "float",
                                  "runs": "[float] (seconds per sample, each repeat)"},
                   "cluster": "null or {workers: int, seconds: float, events_per_s: float, samples_per_s: float}"},
    "events_per_sample": "float (events handed to the stages, mean)",
    "memory": {"peak_host_mb": "float", "peak_device_mb": "null or float"},
    "extrapolation": {"library": "str (NxE)", "samples": "int", "events": "int", "per_sample_s": "float",
                      "per_event_s": "float", "speedup": "float", "events_per_s": "float",
                      "seconds": "float", "hours": "float", "assumptions": "[str]"},
    "peer": "null or {<shape>: {events: int, dims: int, reference_events: int, ours_s: float, umap_learn_s: float, ratio: float, "
            "ours_vs_umap: {median, p95}, umap_seed_vs_seed: {median, p95}, fidelity_ratio: {median, p95}, "
            "ours_cpu, umap_learn_cpu: CpuUsage of the fastest repeat (as machine.during_timing), "
            "quiet: null or bool (both timings below cpuload.QUIET_SHARE contention), "
            "umap_knn_recall: null or float (umap-learn's own neighbour search against the exact one, mean), "
            "where_umap_knn_exact: null or {events: int, fidelity_ratio: {median, p95}} (the events whose "
            "umap-learn neighbours are >= 90% exact), umap_exact_knn: null or {ours_vs_umap, umap_seed_vs_seed, "
            "fidelity_ratio: {median, p95}} (against umap-learn's own transform fed the exact neighbours, "
            "umap_transform_exact_knn)}} for shapes panel, mixture10_rare2, mixture15_rare2",
    "project_steps": "null or {check, knn, fuzzy, init, sgd: float} (seconds, one extra CPU projection of sample 1)",
    "reference_sizes": "null or [{reference_events: int, build_s: float, transform_s: float, events: int, "
                       "events_per_s: float}]",
    "mrd": "null or {median_s, min_s, max_s: float, runs: [float] (event-level MRD step, seconds per sample), "
           "without_mrd_s: float (median end-to-end seconds per sample less the MRD step), overhead: float "
           "(median_s / without_mrd_s), model_points: int, laip: bool} (with --mrd)",
}


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """What to benchmark; see ``rescue bench --help`` for each field."""

    samples: int = 3
    events: int = 50_000
    reference_events: int = 5_000
    stages: tuple[str, ...] = STAGES
    backend: str = "cpu"
    workers: int = 0
    repeats: int = 2
    seed: int = 0
    peer: bool = False
    peer_events: int = 20_000
    library: tuple[int, int] = (1361, 500_000)
    image_size: int = 128
    reference_sizes: tuple[int, ...] = ()
    manifest: Path | None = None
    reference: Path | None = None
    model: Path | None = None
    mrd: bool = False
    mrd_points: int = 20_000
    knn_method: str = "auto"


def parse_stages(text: str) -> tuple[str, ...]:
    """``"read,project"`` -> the stages in pipeline order; an unknown name is a one-line ConfigError."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad or not names:
        raise ConfigError(f"--stages: unknown stage(s) {', '.join(bad) or '(none given)'}; "
                          f"choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


def parse_library(text: str) -> tuple[int, int]:
    """``"1361x500000"`` -> (1361, 500000); anything else is a one-line ConfigError."""
    parts = text.lower().replace(",", "").replace("_", "").split("x")
    try:
        n, e = (int(p) for p in parts)
    except ValueError:
        n = e = 0
    if len(parts) != 2 or n <= 0 or e <= 0:
        raise ConfigError(f"--library {text!r}: write SAMPLESxEVENTS with two positive integers, e.g. 1361x500000")
    return n, e


def displacement(p: Any, q: Any) -> tuple[float, float]:
    """Median and 95th percentile of the per-event euclidean displacement between two embeddings."""
    d = np.linalg.norm(np.asarray(p, np.float64) - np.asarray(q, np.float64), axis=1)
    return float(np.median(d)), float(np.percentile(d, 95))


def _peak_host_mb() -> float:
    """Peak resident set size of this process (ru_maxrss: kB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(r / (1024 * 1024) if sys.platform == "darwin" else r / 1024)


def _peak_device_mb(backend: str) -> float | None:
    if backend != "gpu":
        return None
    try:
        import torch

        torch_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    except Exception:
        torch_mb = 0.0
    try:
        import cupy

        pool_mb = cupy.get_default_memory_pool().total_bytes() / 2**20
    except Exception:
        pool_mb = 0.0
    return float(torch_mb + pool_mb)


# ----------------------------------------------------------------------------- assets


def pca_reference(values: Sequence[np.ndarray], markers: Sequence[str], pipeline: Any) -> Any:
    """A Reference over pooled events whose embedding is their first two principal components.

    The transform's cost depends on the reference's events, neighbours and epochs, not on how
    the embedding was made, so timing does not need a UMAP fit (``--reference-sizes`` times the
    real fit).
    """
    from ..preprocess import preprocess_fingerprint
    from ..projection.transform import UmapParams
    from ..reference import Reference
    from ..reference.build import extent_of
    from .stages import pipeline_settings

    x = np.ascontiguousarray(np.concatenate(list(values)), dtype=np.float32)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    emb = centred @ vt[:2].T
    emb = (emb * (4.0 / emb.std())).astype(np.float32)
    return Reference(train_events=x, embedding=emb, params=UmapParams(random_state=0), markers=list(markers),
                     preprocess_fingerprint=preprocess_fingerprint(pipeline.panel, pipeline.preprocess),
                     raster=pipeline.raster, extent=extent_of(emb, padding=pipeline.raster.padding),
                     settings=pipeline_settings(pipeline), provenance={"note": "rescue bench: PCA embedding"})


def untrained_model(reference: Any, *, seed: int = 0) -> Any:
    """An untrained flow network fitting ``reference`` (inference costs what a trained one's does)."""
    import torch

    from ..config import HeadSpec
    from .record import ModelRecord, build_model, expected_channels

    torch.manual_seed(seed)
    c = expected_channels(reference.raster, reference.markers)
    head = HeadSpec(hidden=(16,), dropout=0.0)
    net = build_model(in_channels=c, head=head).eval()
    return ModelRecord(model=net, in_channels=c, image_size=reference.raster.size, head=head,
                       raster=reference.raster, reference_fingerprint=reference.fingerprint, threshold=0.5)


@dataclasses.dataclass
class _Assets:
    rows: list
    pipeline: Any
    reference: Any
    record: Any
    reference_dir: Path | None
    model_dir: Path | None
    manifest: Path | None
    source: str
    warmup_path: str


#: Events each simulated reference sample gives the bench's reference (its own cohort, not the timed samples).
REFERENCE_EVENTS_PER_SAMPLE = 5_000


def _assets(opts: BenchOptions, work: Path, say: Callable[[str], None]) -> _Assets:
    from ..config import load_pipeline
    from ..runner.manifest import read_manifest
    from .stages import load_events

    if opts.manifest is not None:
        from ..reference import Reference
        from ..reference.pipeline import resolve_pipeline
        from .record import ModelRecord

        if opts.reference is None or opts.model is None:
            raise ConfigError("--manifest needs --reference and --model too (the files to benchmark on)")
        rows = read_manifest(opts.manifest)[: opts.samples]
        ref = Reference.load(opts.reference)
        resolved = resolve_pipeline(opts.reference)  # the reference's own pipeline, as `rescue score` takes it
        if resolved.note:
            say(resolved.note)
        pipe = resolved.pipeline
        return _Assets(rows, pipe, ref, ModelRecord.load(opts.model), Path(opts.reference), Path(opts.model),
                       Path(opts.manifest), "user files", rows[0].path)
    from ..simulate import simulate_cohort

    pipe = load_pipeline("aml-mrd")
    pipe = dataclasses.replace(pipe, raster=dataclasses.replace(pipe.raster, size=opts.image_size))
    say(f"simulating {opts.samples} samples x {opts.events:,} events")
    simulate_cohort(work / "cohort", n_samples=opts.samples, n_events=opts.events, seed=opts.seed + 11)
    rows = read_manifest(work / "cohort" / "manifest.csv")
    # the warm-up sample: small, so that compiling and starting up do not cost a whole large sample
    simulate_cohort(work / "warmup", n_samples=1, n_events=min(opts.events, 2000), seed=opts.seed + 12)
    warm = read_manifest(work / "warmup" / "manifest.csv")[0].path
    # the reference pools other samples than the timed ones (5,000 events each, as `rescue reference build`
    # pools a cohort): a timed sample's own events in the reference would be free exact neighbours
    n_ref = max(2, -(-opts.reference_events // REFERENCE_EVENTS_PER_SAMPLE))
    simulate_cohort(work / "refcohort", n_samples=n_ref, n_events=int(REFERENCE_EVENTS_PER_SAMPLE * 1.2),
                    seed=opts.seed + 13)
    per = max(1, -(-opts.reference_events // n_ref))
    pooled, markers = [], None
    for row in read_manifest(work / "refcohort" / "manifest.csv"):
        ev = load_events(row.path, pipe)
        markers = ev.markers
        pooled.append(ev.values[:per])
    x = np.concatenate(pooled)[: opts.reference_events]
    ref = pca_reference([x], markers, pipe)
    rec = untrained_model(ref, seed=opts.seed)
    ref.save(work / "ref", overwrite=True)
    rec.save(work / "model", overwrite=True)
    return _Assets(rows, pipe, ref, rec, work / "ref", work / "model", work / "cohort" / "manifest.csv", "simulated",
                   warm)


# ----------------------------------------------------------------------------- stage timing


def _mrd_models(assets: _Assets, opts: BenchOptions) -> tuple[Any, Any]:
    """The DfN model (from the samples labelled negative, or all of them when none is) and a diagnosis LAIP or None."""
    from .mrd import fit_laip, fit_normal_model, laip_refusal
    from .stages import load_events

    events = [(row, load_events(row.path, assets.pipeline)) for row in assets.rows]
    normal = [np.asarray(e.values) for row, e in events if row.label == "negative"] or \
        [np.asarray(e.values) for _, e in events]
    model = fit_normal_model(normal, events[0][1].markers, max_points=opts.mrd_points, seed=opts.seed)
    diag = [e for row, e in events if row.timepoint == "diagnosis"]
    laip = fit_laip(model, np.asarray(diag[0].values)) if diag else None
    return model, (laip if laip is not None and laip_refusal(laip) is None else None)  # as rescue score tracks it


def _mrd_step(models: tuple[Any, Any], values: Any) -> tuple[int, int]:
    """The event-level MRD step of ``rescue score``: DfN and (with a LAIP) LAIP flags; (aberrant, leukocyte) counts."""
    from .mrd import dfn_flags, laip_flags, leukocytes

    model, laip = models
    dfn, gate = dfn_flags(model, values)
    aberrant = dfn | laip_flags(model, laip, values) if laip is not None else dfn
    return int(aberrant.sum()), int(leukocytes(gate, aberrant).sum())


def _chain(path: str, assets: _Assets, engine: Any, store: Any, sid: str, stages: tuple[str, ...],
           backend: str, seed: int, mrd: tuple[Any, Any] | None = None,
           knn_method: str = "auto") -> tuple[dict[str, float], float, int]:
    """Run one sample through the stages up to the last one asked for; return (stage seconds, wall, events).

    With ``mrd`` (:func:`_mrd_models`) the event-level MRD step runs after preprocessing,
    timed as ``"mrd"`` (it is part of the wall time).
    """
    from ..device import get_xp, to_numpy
    from ..fcs import read_fcs
    from ..preprocess import preprocess
    from .stages import project, rasterise

    last = max(STAGES.index(s) for s in stages)
    need = STAGES[: last + 1]
    xp = get_xp(backend)
    t: dict[str, float] = {}
    start = time.perf_counter()

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        if backend == "gpu":
            _sync()
        t[name] = time.perf_counter() - t0
        return out

    fcs = timed("read", lambda: read_fcs(path))
    n = int(fcs.n_events) if hasattr(fcs, "n_events") else 0
    if "preprocess" in need:
        events = timed("preprocess", lambda: preprocess(fcs, panel=assets.pipeline.panel,
                                                        spec=assets.pipeline.preprocess, xp=xp))
        n = int(events.n_events)
        if mrd is not None:
            timed("mrd", lambda: _mrd_step(mrd, events.values))
    if "project" in need:
        coords = timed("project", lambda: project(assets.reference, events, seed=seed, backend=backend,
                                                  knn_method=knn_method))
    if "raster" in need:
        image = timed("raster", lambda: np.ascontiguousarray(to_numpy(rasterise(assets.reference, coords, events)[0]),
                                                             dtype=np.float32))
    if "infer" in need:
        p = timed("infer", lambda: np.asarray(engine.predict(image[None]), dtype=np.float64))
    if "store" in need:
        rec = {"sample_id": sid, "status": "scored", "error": "", "warnings": [], "p_mrd": float(p[0]),
               "call": "", "n_events": n, "n_events_used": n, "qc": {}, "provenance": {}}
        timed("store", lambda: store.write(rec, {"image": image}))
    wall = time.perf_counter() - start
    return {k: v for k, v in t.items() if k in stages or k == "mrd"}, wall, n


def _sync() -> None:
    try:
        import cupy

        cupy.cuda.Device().synchronize()
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception:
        pass


def _summary(runs: list[float]) -> dict[str, Any]:
    return {"median_s": float(statistics.median(runs)), "min_s": float(min(runs)), "max_s": float(max(runs)),
            "runs": [float(r) for r in runs]}


def _cluster(assets: _Assets, opts: BenchOptions, work: Path) -> dict[str, Any]:
    """Score the cohort on a LocalCluster of ``opts.workers`` processes with ``rescue score``'s code."""
    from ..config import RuntimeConfig
    from .assay import ScoreOptions, score_cohort

    out = work / "cluster-run"
    shutil.rmtree(out, ignore_errors=True)
    s = score_cohort(assets.manifest, reference=assets.reference_dir, model=assets.model_dir, out=out,
                     options=ScoreOptions(pipeline=assets.pipeline, report=False),
                     runtime=RuntimeConfig(backend=opts.backend, workers=str(opts.workers)),
                     dashboard_address=":0")
    return {"workers": opts.workers, "seconds": float(s.seconds), "events_per_s": float(s.events_processed / s.seconds),
            "samples_per_s": float(s.n_processed / s.seconds)}


def rare_mixture(n: int, *, dims: int, seed: int, rare: float = 0.02) -> np.ndarray:
    """Six common Gaussian clusters plus one rare one (``rare`` of the events); centres fixed (seed 11)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(11).normal(0.0, 4.0, (7, dims))
    p = np.r_[np.full(6, (1 - rare) / 6), rare]
    lab = rng.choice(7, size=n, p=p)
    return (centres[lab] + rng.normal(0.0, 1.0, (n, dims))).astype(np.float32)


#: The data shapes ``--peer`` compares on: the simulator's panel and two rare-population mixtures.
PEER_SHAPES: tuple[str, ...] = ("panel", "mixture10_rare2", "mixture15_rare2")


def _peer(assets: _Assets, opts: BenchOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """umap-learn's transform vs ours on each of :data:`PEER_SHAPES` (same fitted umap-learn model)."""
    from .stages import load_events

    n_ref = min(opts.reference_events, int(assets.reference.train_events.shape[0]))
    panel_new = load_events(assets.rows[0].path, assets.pipeline).values[: opts.peer_events]
    data = {"panel": (np.asarray(assets.reference.train_events, np.float32)[:n_ref], panel_new)}
    for name, dims in (("mixture10_rare2", 10), ("mixture15_rare2", 15)):
        data[name] = (rare_mixture(n_ref, dims=dims, seed=1), rare_mixture(opts.peer_events, dims=dims, seed=2))
    return {name: _peer_one(ref_x, new, opts, say, name) for name, (ref_x, new) in data.items()}


def _peer_one(ref_x: np.ndarray, new: np.ndarray, opts: BenchOptions, say: Callable[[str], None],
              name: str) -> dict[str, Any]:
    import umap

    from ..device import to_numpy
    from ..projection import UmapReference, neighbors, transform

    new = np.ascontiguousarray(new, dtype=np.float32)
    say(f"peer {name}: fitting umap-learn on {len(ref_x):,} x {ref_x.shape[1]}, transforming {len(new):,} events")
    model = umap.UMAP(n_neighbors=15, random_state=0).fit(ref_x)
    reference = UmapReference.from_umap(model)
    model.transform(new[:200])
    transform(reference, new[:200], backend=opts.backend)
    t_u: list[CpuUsage] = []
    for _ in range(opts.repeats):
        with measure_cpu() as use:
            u1 = model.transform(new)
        t_u.append(use)
    model.transform_seed = 7
    u2 = model.transform(new)
    t_o: list[CpuUsage] = []
    for _ in range(opts.repeats):
        with measure_cpu() as use:
            mine = to_numpy(transform(reference, new, seed=0, backend=opts.backend))
        t_o.append(use)
    best_u, best_o = min(t_u, key=lambda u: u.wall_s), min(t_o, key=lambda u: u.wall_s)
    (mo, po), (mu, pu) = displacement(mine, u1), displacement(u2, u1)
    train = np.asarray(reference.train_events, np.float32)
    exact_nn = neighbors.knn_cpu(train, new, int(model.n_neighbors), method="tiled")
    recall = umap_knn_recall(model, reference, new, exact=exact_nn[0])
    fed = _fidelity_vs_exact_umap(model, new, mine, exact_nn)
    exact = None
    if recall is not None and int((recall >= 0.9).sum()) >= 100:
        ok = recall >= 0.9
        (eo, ep), (eu, epu) = displacement(mine[ok], u1[ok]), displacement(u2[ok], u1[ok])
        exact = {"events": int(ok.sum()), "fidelity_ratio": {"median": _ratio(eo, eu), "p95": _ratio(ep, epu)}}
    return {"events": int(len(new)), "dims": int(new.shape[1]), "reference_events": int(len(ref_x)),
            "ours_s": float(best_o.wall_s), "umap_learn_s": float(best_u.wall_s),
            "ratio": float(best_u.wall_s / best_o.wall_s),
            "ours_cpu": best_o.as_dict(), "umap_learn_cpu": best_u.as_dict(),
            "quiet": None if best_o.quiet is None or best_u.quiet is None else bool(best_o.quiet and best_u.quiet),
            "ours_vs_umap": {"median": mo, "p95": po}, "umap_seed_vs_seed": {"median": mu, "p95": pu},
            "fidelity_ratio": {"median": _ratio(mo, mu), "p95": _ratio(po, pu)},
            "umap_knn_recall": None if recall is None else float(recall.mean()), "where_umap_knn_exact": exact,
            "umap_exact_knn": fed}


def _ratio(a: float, b: float) -> float:
    """``a / b``, infinite where ``b`` is 0."""
    return a / b if b > 0 else float("inf")


class _ExactIndex:
    """Stands in for umap-learn's pynndescent index: ``query`` returns given exact neighbours."""

    _angular_trees = False

    def __init__(self, idx: np.ndarray, dist: np.ndarray) -> None:
        self._idx, self._dist = idx, dist

    def query(self, x: np.ndarray, k: int, epsilon: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        if len(x) != len(self._idx) or k != self._idx.shape[1]:
            raise ValueError("the exact neighbours were computed for other events or another k")
        return self._idx.copy(), self._dist.copy()


def umap_transform_exact_knn(model: Any, new: np.ndarray, idx: np.ndarray, dist: np.ndarray,
                             seed: int | None = None) -> np.ndarray | None:
    """umap-learn's own ``transform`` of ``new`` with its approximate neighbour search replaced by ``idx``/``dist``.

    Everything after the search (fuzzy weights, initialisation, SGD) is umap-learn's. None
    where umap-learn has no search index (small data: it already searches exactly).
    ``seed`` sets ``transform_seed`` for this call (restored afterwards).
    """
    index = getattr(model, "_knn_search_index", None)
    if index is None:
        return None
    old_seed = model.transform_seed
    model._knn_search_index = _ExactIndex(idx, dist)
    try:
        if seed is not None:
            model.transform_seed = seed
        return np.asarray(model.transform(new))
    finally:
        model._knn_search_index, model.transform_seed = index, old_seed


def _fidelity_vs_exact_umap(model: Any, new: np.ndarray, mine: np.ndarray,
                            exact_nn: tuple[np.ndarray, np.ndarray]) -> dict[str, Any] | None:
    """Our displacement from umap-learn fed exact neighbours, over its own seed-to-seed spread so fed."""
    a = umap_transform_exact_knn(model, new, *exact_nn, seed=42)
    b = umap_transform_exact_knn(model, new, *exact_nn, seed=7)
    if a is None or b is None:
        return None
    (mo, po), (mu, pu) = displacement(mine, a), displacement(b, a)
    return {"ours_vs_umap": {"median": mo, "p95": po}, "umap_seed_vs_seed": {"median": mu, "p95": pu},
            "fidelity_ratio": {"median": _ratio(mo, mu), "p95": _ratio(po, pu)}}


def umap_knn_recall(model: Any, reference: Any, new: np.ndarray, exact: np.ndarray | None = None) -> np.ndarray | None:
    """Per event, the share of umap-learn's transform-time neighbours that are exact (None where it has no index).

    umap-learn's transform searches its pynndescent index approximately (``epsilon = 0.12``);
    where that search misses, umap-learn's placement is wrong, and a fidelity figure against it
    measures umap-learn's miss, not our error. Reads umap-learn's ``_knn_search_index``.
    ``exact``: our exact neighbour indices of ``new`` where already computed.
    """
    from ..projection import neighbors

    index = getattr(model, "_knn_search_index", None)
    if index is None:  # small data: umap-learn searched exactly
        return None
    k = int(model.n_neighbors)
    theirs, _ = index.query(new, k=k, epsilon=0.12)
    ours = exact if exact is not None else neighbors.knn_cpu(np.asarray(reference.train_events, np.float32), new, k,
                                                             method="tiled")[0]
    return np.array([np.intersect1d(a, b).size / k for a, b in zip(theirs, ours)])


def _reference_sizes(assets: _Assets, opts: BenchOptions, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Build a reference (umap-learn fit, as ``rescue reference build``) per size; time one sample's transform."""
    from ..config import ReferenceSpec
    from ..preprocess import preprocess_fingerprint
    from ..reference import build_reference
    from .stages import load_events, project

    evs = [load_events(r.path, assets.pipeline) for r in assets.rows]
    sample = evs[0]
    rows = []
    # umap-learn switches to NN-descent above 4,096 events: warm up on more than that, so that
    # pynndescent's compilation is not counted in the first size's build time
    n_warm = min(5000, len(sample.values))
    say(f"reference sizes: warm-up fit on {n_warm:,} events (umap-learn's numba compilation, not timed)")
    build_reference([(assets.rows[0].sample_id, sample.values[:n_warm])], markers=sample.markers,
                    spec=dataclasses.replace(assets.pipeline.reference, events_per_sample=n_warm, max_events=n_warm,
                                             min_events=min(100, assets.pipeline.reference.min_events)),
                    raster=assets.pipeline.raster, backend=opts.backend)
    for size in opts.reference_sizes:
        per = -(-size // len(evs))
        pooled = [(r.sample_id, e.values[:per]) for r, e in zip(assets.rows, evs)]
        have = sum(len(v) for _, v in pooled)
        if have < size:
            say(f"reference size {size:,}: only {have:,} events simulated; skipped (raise --samples or --events)")
            continue
        spec = dataclasses.replace(assets.pipeline.reference, events_per_sample=per, max_events=size)
        say(f"reference size {size:,}: fitting")
        t0 = time.perf_counter()
        ref = build_reference(pooled, markers=sample.markers, spec=spec, raster=assets.pipeline.raster,
                              preprocess_fingerprint=preprocess_fingerprint(assets.pipeline.panel,
                                                                            assets.pipeline.preprocess),
                              backend=opts.backend)
        build_s = time.perf_counter() - t0
        project(ref, dataclasses.replace(sample, values=sample.values[:500]) if _replaceable(sample) else sample,
                seed=opts.seed, backend=opts.backend)
        t0 = time.perf_counter()
        project(ref, sample, seed=opts.seed, backend=opts.backend)
        tr = time.perf_counter() - t0
        rows.append({"reference_events": int(ref.train_events.shape[0]), "build_s": float(build_s),
                     "transform_s": float(tr), "events": int(sample.n_events),
                     "events_per_s": float(sample.n_events / tr)})
    return rows


def _project_steps(assets: _Assets, opts: BenchOptions) -> dict[str, float]:
    """Seconds of the CPU transform's steps (kNN, fuzzy weights, init, SGD) on the first sample, one run."""
    from ..projection import transform
    from .stages import load_events

    ev = load_events(assets.rows[0].path, assets.pipeline)
    steps: dict[str, float] = {}
    transform(assets.reference, ev.values, seed=opts.seed, backend="cpu", timings=steps, knn_method=opts.knn_method)
    return {k: float(v) for k, v in steps.items()}


def _replaceable(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj)


# ----------------------------------------------------------------------------- the run


def run_bench(opts: BenchOptions, *, say: Callable[[str], None] = lambda s: None,
              advance: Callable[[], None] | None = None, work_dir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark and return its record (see :data:`BENCH_SCHEMA`)."""
    from ..engine import make_engine
    from ..runner.store import RunStore

    if opts.samples < 1 or opts.events < 1 or opts.repeats < 1:
        raise ConfigError("--samples, --events and --repeats must be at least 1")
    warnings.filterwarnings("ignore", category=UserWarning)
    tmp = Path(tempfile.mkdtemp(prefix="rescue-bench-", dir=work_dir))
    try:
        assets = _assets(opts, tmp, say)
        engine = make_engine(assets.record, kind="torch", device=opts.backend, batch_size=1)
        store = RunStore(tmp / "store")
        mrd = _mrd_models(assets, opts) if opts.mrd else None
        say("warm-up (numba compilation, torch start-up)")
        _chain(assets.warmup_path, assets, engine, store, "warmup", STAGES, opts.backend, opts.seed, mrd,
               opts.knn_method)
        per_stage: dict[str, list[float]] = {s: [] for s in opts.stages}
        mrd_runs: list[float] = []
        e2e: list[float] = []
        n_events: list[int] = []
        with measure_cpu() as during:
            for rep in range(opts.repeats):
                stage_tot = {s: 0.0 for s in opts.stages}
                wall_tot = mrd_tot = 0.0
                for i, row in enumerate(assets.rows):
                    t, wall, n = _chain(row.path, assets, engine, store, f"r{rep}-{row.sample_id}", opts.stages,
                                        opts.backend, opts.seed, mrd, opts.knn_method)
                    for s in opts.stages:
                        stage_tot[s] += t[s]
                    mrd_tot += t.get("mrd", 0.0)
                    wall_tot += wall
                    n_events.append(n)
                    if advance is not None:
                        advance()
                k = len(assets.rows)
                for s in opts.stages:
                    per_stage[s].append(stage_tot[s] / k)
                e2e.append(wall_tot / k)
                mrd_runs.append(mrd_tot / k)
        ev = float(np.mean(n_events))
        med = float(statistics.median(e2e))
        steps = _project_steps(assets, opts) if "project" in opts.stages and opts.backend == "cpu" else None
        cluster = _cluster(assets, opts, tmp) if opts.workers > 0 and assets.manifest is not None else None
        peer = _peer(assets, opts, say) if opts.peer else None
        ref_sizes = _reference_sizes(assets, opts, say) if opts.reference_sizes else None
        eps = ev / med
        n_lib, e_lib = opts.library
        fixed = float(sum(statistics.median(per_stage[s]) for s in PER_SAMPLE_STAGES if s in per_stage))
        per_event = (med - fixed) / ev
        speedup = cluster["events_per_s"] / eps if cluster else 1.0
        lib_sample_s = (fixed + per_event * e_lib) / speedup
        lib_s = n_lib * lib_sample_s
        record = {
            "version": BENCH_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count() or 0,
                        "load_avg": [float(x) for x in os.getloadavg()], "python": platform.python_version(),
                        "during_timing": during.as_dict()},
            "settings": {"samples": len(assets.rows), "events": opts.events, "reference_events":
                         int(assets.reference.train_events.shape[0]), "stages": list(opts.stages),
                         "backend": opts.backend, "workers": opts.workers, "repeats": opts.repeats,
                         "seed": opts.seed, "source": assets.source, "knn_method": opts.knn_method},
            "stages": {s: _summary(per_stage[s]) for s in opts.stages},
            "end_to_end": {"in_process": {"seconds_per_sample": med, "events_per_s": eps, "samples_per_s": 1.0 / med,
                                          "runs": [float(x) for x in e2e]},
                           "cluster": cluster},
            "events_per_sample": ev,
            "memory": {"peak_host_mb": _peak_host_mb(), "peak_device_mb": _peak_device_mb(opts.backend)},
            "extrapolation": {
                "library": f"{n_lib}x{e_lib}", "samples": n_lib, "events": e_lib,
                "per_sample_s": fixed, "per_event_s": float(per_event), "speedup": float(speedup),
                "events_per_s": float(n_lib * e_lib / lib_s), "seconds": float(lib_s), "hours": float(lib_s / 3600.0),
                "assumptions": [
                    "seconds per library sample = (per_sample_s + per_event_s x events) / speedup: inference and "
                    "store are per sample, everything else (read, preprocess, neighbour search, SGD, raster, "
                    "time between stages) grows linearly with events",
                    "speedup = cluster events/s over in-process events/s (1 without --workers)",
                    f"the measured rate ({'cluster of %d workers' % opts.workers if cluster else 'one in-process worker'}, "
                    f"{ev:,.0f}-event samples, {int(assets.reference.train_events.shape[0]):,}-event reference, "
                    f"backend {opts.backend}) holds for the library's samples",
                    "the machine's load stays as it was during the run (load_avg above)",
                    "start-up, warm-up and report writing are not counted"]},
            "peer": peer,
            "project_steps": steps,
            "reference_sizes": ref_sizes,
            "mrd": _mrd_record(mrd, mrd_runs, e2e),
        }
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _mrd_record(mrd: tuple[Any, Any] | None, runs: list[float], e2e: list[float]) -> dict[str, Any] | None:
    """The ``mrd`` entry of the record: the MRD step per sample and its share of the rest of the sample's time."""
    if mrd is None:
        return None
    without = float(statistics.median([w - m for w, m in zip(e2e, runs)]))
    med = float(statistics.median(runs))
    return {**_summary(runs), "without_mrd_s": without, "overhead": med / without if without > 0 else math.nan,
            "model_points": int(mrd[0].points.shape[0]), "laip": mrd[1] is not None}


def check_bench_record(rec: dict[str, Any]) -> list[str]:
    """Problems with a bench record against :data:`BENCH_SCHEMA` (empty: it fits)."""
    problems = []
    for key, sub in BENCH_SCHEMA.items():
        if key not in rec:
            problems.append(f"missing {key}")
        elif isinstance(sub, dict) and key != "stages":
            for k in sub:
                if k not in rec[key]:
                    problems.append(f"missing {key}.{k}")
    if rec.get("version") != BENCH_VERSION:
        problems.append(f"version {rec.get('version')!r} is not {BENCH_VERSION}")
    for s, v in rec.get("stages", {}).items():
        if s not in STAGES:
            problems.append(f"unknown stage {s}")
        for k in ("median_s", "min_s", "max_s", "runs"):
            if k not in v:
                problems.append(f"missing stages.{s}.{k}")
    return problems


# ----------------------------------------------------------------------------- output


def format_table(rec: dict[str, Any]) -> str:
    """A readable plain-text summary of a bench record."""
    st, s = rec["settings"], rec["stages"]
    e = rec["end_to_end"]["in_process"]
    lines = [f"rescue bench: {st['samples']} samples x {st['events']:,} events, reference {st['reference_events']:,}, "
             f"backend {st['backend']}, {st['repeats']} repeats, load {rec['machine']['load_avg'][0]:.1f} "
             f"on {rec['machine']['cpu_count']} cores" + _quiet_text(rec["machine"].get("during_timing")),
             f"{'stage':<12}{'median s/sample':>16}{'min':>10}{'max':>10}{'share':>8}"]
    for name, v in s.items():
        lines.append(f"{name:<12}{v['median_s']:>16.4f}{v['min_s']:>10.4f}{v['max_s']:>10.4f}"
                     f"{100 * v['median_s'] / e['seconds_per_sample']:>7.1f}%")
    lines.append(f"{'end to end':<12}{e['seconds_per_sample']:>16.4f}{min(e['runs']):>10.4f}{max(e['runs']):>10.4f}")
    lines.append(f"in-process: {e['events_per_s']:,.0f} events/s, {e['samples_per_s']:.3f} samples/s")
    c = rec["end_to_end"]["cluster"]
    if c:
        lines.append(f"cluster ({c['workers']} workers): {c['events_per_s']:,.0f} events/s, "
                     f"{c['samples_per_s']:.3f} samples/s ({c['seconds']:.1f} s, includes scheduling)")
    m = rec["memory"]
    lines.append(f"peak host memory {m['peak_host_mb']:,.0f} MB"
                 + (f", device {m['peak_device_mb']:,.0f} MB" if m["peak_device_mb"] is not None else ""))
    x = rec["extrapolation"]
    lines.append(f"library {x['library']}: {x['hours']:,.1f} h at {x['events_per_s']:,.0f} events/s, assuming:")
    lines += [f"  - {a}" for a in x["assumptions"]]
    for shape, p in (rec.get("peer") or {}).items():
        lines.append(f"peer {shape} (umap-learn transform, {p['events']:,} x {p['dims']} events vs {p['reference_events']:,}): "
                     f"umap-learn {p['umap_learn_s']:.2f} s, ours {p['ours_s']:.2f} s, ratio x{p['ratio']:.2f}; "
                     f"fidelity median {p['ours_vs_umap']['median']:.4f} (umap seed-to-seed "
                     f"{p['umap_seed_vs_seed']['median']:.4f}, ratio {p['fidelity_ratio']['median']:.2f}), "
                     f"p95 {p['ours_vs_umap']['p95']:.4f} ({p['umap_seed_vs_seed']['p95']:.4f}, "
                     f"ratio {p['fidelity_ratio']['p95']:.2f})"
                     + (f"; umap-learn's own kNN recall {p['umap_knn_recall']:.3f}" if p.get("umap_knn_recall") is not None
                        else "")
                     + (f"; where it is >= 90% exact ({p['where_umap_knn_exact']['events']:,} events): fidelity ratio "
                        f"median {p['where_umap_knn_exact']['fidelity_ratio']['median']:.2f}, p95 "
                        f"{p['where_umap_knn_exact']['fidelity_ratio']['p95']:.2f}" if p.get("where_umap_knn_exact")
                        else "")
                     + (f"; against umap-learn fed the exact neighbours: fidelity ratio median "
                        f"{p['umap_exact_knn']['fidelity_ratio']['median']:.2f}, p95 "
                        f"{p['umap_exact_knn']['fidelity_ratio']['p95']:.2f}" if p.get("umap_exact_knn") else "")
                     + _quiet_text(p.get("ours_cpu"), " during our timing"))
    if rec.get("mrd"):
        m = rec["mrd"]
        lines.append(f"MRD step: {m['median_s']:.4f} s/sample (DfN, {m['model_points']:,} model points"
                     f"{', LAIP' if m['laip'] else ''}) against {m['without_mrd_s']:.4f} s for the rest: "
                     f"overhead {100 * m['overhead']:.1f}%")
    if rec.get("project_steps"):
        lines.append("project steps (one run): " + ", ".join(f"{k} {v:.3f} s" for k, v in rec["project_steps"].items()))
    for r in rec.get("reference_sizes") or []:
        lines.append(f"reference {r['reference_events']:,}: build {r['build_s']:.1f} s, transform of "
                     f"{r['events']:,} events {r['transform_s']:.2f} s ({r['events_per_s']:,.0f} events/s)")
    return "\n".join(lines)


def _quiet_text(usage: dict[str, Any] | None, where: str = "") -> str:
    """``; other processes used X of N cores<where> (quiet / NOT QUIET ...)`` from a CpuUsage dict ('' if unknown)."""
    if not usage or usage.get("other_cores") is None:
        return ""
    other = usage["other_cores"] + (usage.get("steal_cores") or 0.0)
    verdict = ("quiet" if usage.get("quiet") else
               "NOT QUIET: a multi-threaded timing loses cores to them, so speed figures understate ours")
    return f"; other processes and steal used {other:.2f} of {usage['cores']} cores{where} ({verdict})"


def plot_stages(rec: dict[str, Any], path: Path) -> Path:
    """A PNG bar chart of the median seconds per sample per stage (and the end-to-end bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rec["stages"]) + ["end to end"]
    med = [rec["stages"][s]["median_s"] for s in rec["stages"]] + [rec["end_to_end"]["in_process"]["seconds_per_sample"]]
    lo = [m - (rec["stages"][s]["min_s"] if s in rec["stages"] else min(rec["end_to_end"]["in_process"]["runs"]))
          for s, m in zip(names, med)]
    hi = [(rec["stages"][s]["max_s"] if s in rec["stages"] else max(rec["end_to_end"]["in_process"]["runs"])) - m
          for s, m in zip(names, med)]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh(names, med, xerr=[lo, hi], color=["tab:blue"] * (len(names) - 1) + ["tab:gray"])
    ax.invert_yaxis()
    st = rec["settings"]
    ax.set_xlabel("seconds per sample (median; bars: min-max over repeats)")
    ax.set_title(f"{st['events']:,} events/sample, reference {st['reference_events']:,}, {st['backend']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI


def bench(
    samples: Annotated[int, typer.Option("--samples", help="Samples to simulate (or take from --manifest).")] = 3,
    events: Annotated[int, typer.Option("--events", help="Events per simulated sample.")] = 50_000,
    reference_events: Annotated[int, typer.Option("--reference-events", help="Reference size (simulated).")] = 5_000,
    stages: Annotated[str, typer.Option("--stages", help="Stages to time, comma-separated.")] = ",".join(STAGES),
    backend: Annotated[str, typer.Option("--backend", help="cpu or gpu.")] = "cpu",
    workers: Annotated[int, typer.Option("--workers", help="Also score on a LocalCluster of W workers (0: no).")] = 0,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed passes over the samples (spread).")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Simulation and projection seed.")] = 0,
    peer: Annotated[bool, typer.Option("--peer", help="Time umap-learn's transform on a subset too.")] = False,
    peer_events: Annotated[int, typer.Option("--peer-events", help="Events in the --peer subset.")] = 20_000,
    library: Annotated[str, typer.Option("--library", help="Library to extrapolate to, SAMPLESxEVENTS.")] = "1361x500000",
    reference_sizes: Annotated[str, typer.Option("--reference-sizes",
                                                 help="Reference sizes to fit and time, e.g. 10000,30000.")] = "",
    image_size: Annotated[int, typer.Option("--image-size", help="Raster size of the simulated reference.")] = 128,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Benchmark on these samples.")] = None,
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Reference directory (with --manifest).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Model directory (with --manifest).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the record as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a PNG bar chart of the stages here.")] = None,
    mrd: Annotated[bool, typer.Option("--mrd", help="Also time the event-level MRD step (DfN, LAIP) and its "
                                                     "overhead on the per-sample time.")] = False,
    mrd_points: Annotated[int, typer.Option("--mrd-points", help="DfN model points with --mrd.")] = 20_000,
    knn_method: Annotated[str, typer.Option("--knn-method", help="CPU neighbour search: auto (graph from 30,000 "
                                                               "reference events, else tiled), tiled, graph, kdtree.")
                          ] = "auto",
) -> None:
    """Time each stage of the flow path per sample; events/s, memory, library extrapolation, umap-learn peer."""
    from ..cliutil import console, progress

    if backend not in ("cpu", "gpu"):
        raise ConfigError(f"--backend {backend!r}: choose cpu or gpu")
    if knn_method not in ("auto", "tiled", "graph", "kdtree"):
        raise ConfigError(f"--knn-method {knn_method!r}: choose auto, tiled, graph or kdtree")
    try:
        sizes = tuple(int(s) for s in reference_sizes.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--reference-sizes {reference_sizes!r}: write comma-separated integers, e.g. 10000,30000")
    opts = BenchOptions(samples=samples, events=events, reference_events=reference_events, stages=parse_stages(stages),
                        backend=backend, workers=workers, repeats=repeats, seed=seed, peer=peer,
                        peer_events=peer_events, library=parse_library(library), image_size=image_size,
                        reference_sizes=sizes, manifest=manifest, reference=reference, model=model, mrd=mrd,
                        mrd_points=mrd_points, knn_method=knn_method)
    total = opts.samples * opts.repeats
    done = [0]
    with progress("timing samples", total) as advance:
        def step() -> None:
            advance(done[0], total)
            done[0] += 1

        rec = run_bench(opts, say=lambda s: console.print(s, markup=False, highlight=False), advance=step)
    console.print(format_table(rec), markup=False, highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rec, indent=2))
        console.print(f"wrote {json_out}")
    if plot is not None:
        console.print(f"wrote {plot_stages(rec, plot)}")


def register(app: typer.Typer) -> None:
    """Add ``bench`` to ``app`` (the main ``rescue`` command line)."""
    app.command("bench")(bench)
