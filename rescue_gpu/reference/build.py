"""Building a reference UMAP from preprocessed samples, and importing fitted umap-learn models."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import resolve_backend
from ..config import RasterSpec, ReferenceSpec
from ..errors import ReferenceDataError
from ..projection.transform import UmapParams
from .store import Reference

__all__ = ["water_fill", "balanced_quota", "pool_events", "fit_umap", "extent_of", "build_reference", "from_umap_learn", "import_umap_pickle"]


def water_fill(capacities: Sequence[int], budget: int) -> list[int]:
    """Split ``budget`` as evenly as possible over bins of the given ``capacities``.

    Every bin gets ``min(capacity, level)`` for the one level that uses the budget
    (or everything, when the capacities sum to less); the integer remainder goes one
    each to the first bins that still have room, so the result is deterministic.
    """
    caps = [max(0, int(c)) for c in capacities]
    if sum(caps) <= budget:
        return caps
    alloc = [0] * len(caps)
    left, open_bins = budget, [i for i, c in enumerate(caps) if c > 0]
    while open_bins and left > 0:
        share = left // len(open_bins)
        if share == 0:
            for i in open_bins[:left]:
                alloc[i] += 1
            break
        still = []
        for i in open_bins:
            give = min(share, caps[i] - alloc[i])
            alloc[i] += give
            left -= give
            if alloc[i] < caps[i]:
                still.append(i)
        open_bins = still
    return alloc


def balanced_quota(counts: Sequence[int], strata: Sequence[str], *, max_events: int) -> list[int]:
    """Events to keep per sample under a total ``max_events``: even across strata, then across samples.

    ``counts`` are the events each sample can give; ``strata`` their groups (e.g.
    ``timepoint/label``). Each stratum gets an even share of the budget (a stratum
    that cannot fill its share passes the rest on), and within a stratum each sample
    an even share, so a rare group (diagnosis samples, MRD-positive follow-ups) keeps
    its place in the reference however many samples the other groups have.
    """
    names = sorted(set(strata))
    members = {s: [i for i, g in enumerate(strata) if g == s] for s in names}
    per_stratum = water_fill([sum(counts[i] for i in members[s]) for s in names], max_events)
    quota = [0] * len(counts)
    for s, budget in zip(names, per_stratum):
        for i, q in zip(members[s], water_fill([counts[i] for i in members[s]], budget)):
            quota[i] = q
    return quota


def pool_events(
    samples: Iterable[tuple[str, np.ndarray]], *, events_per_sample: int, seed: int = 0, max_events: int = 0,
    strata: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pool an even random subsample of each sample's events under a total budget; drop non-finite rows.

    Each sample gives at most ``events_per_sample`` events. With ``max_events > 0`` the
    pool is then cut to that total by :func:`balanced_quota`: an even share per stratum
    (``strata`` maps sample id to a group such as ``"follow-up/positive"``; samples not in
    it share one group), then per sample. Each sample's draw depends only on ``seed`` and
    its position; a cut keeps a prefix of one random order of the sample's draw, so a
    smaller budget keeps a subset of a larger one, and a pool under the budget is
    exactly the uncapped pool. Returns the pooled float32 events and
    a record of what was taken.
    """
    picked, ids, dropped = [], [], 0
    for i, (sample_id, events) in enumerate(samples):
        ev = np.asarray(events, dtype=np.float32)
        finite = np.isfinite(ev).all(axis=1)
        dropped += int((~finite).sum())
        ev = ev[finite]
        rng = np.random.default_rng([seed, i])
        k = min(events_per_sample, ev.shape[0])
        picked.append(ev[np.sort(rng.choice(ev.shape[0], size=k, replace=False))])
        ids.append(sample_id)
    if not picked:
        raise ReferenceDataError("no samples to build a reference from")
    widths = {p.shape[1] for p in picked}
    if len(widths) != 1:
        raise ReferenceDataError(f"samples have different numbers of markers {sorted(widths)}; preprocess them with one pipeline")
    counts = [p.shape[0] for p in picked]
    groups = [(strata or {}).get(sid, "") for sid in ids]
    quota = balanced_quota(counts, groups, max_events=max_events) if max_events > 0 else counts
    parts = [p if q == p.shape[0] else p[np.sort(np.random.default_rng([seed, i, 1]).permutation(p.shape[0])[:q])]
             for i, (p, q) in enumerate(zip(picked, quota))]
    record: dict[str, Any] = {"events_per_sample": dict(zip(ids, quota)), "non_finite_rows_dropped": dropped,
                              "max_events": int(max_events), "events_available": int(sum(counts))}
    if strata:
        record["events_per_stratum"] = {g: int(sum(q for q, h in zip(quota, groups) if h == g)) for g in sorted(set(groups))}
    return np.concatenate(parts), record


def fit_umap(events: np.ndarray, *, spec: ReferenceSpec, backend: str = "cpu") -> tuple[np.ndarray, UmapParams]:
    """Fit UMAP on ``events`` with umap-learn (CPU) or cuML (GPU, when installed).

    Returns the ``(N, 2)`` embedding and the parameters the transform needs.
    """
    kwargs = dict(n_neighbors=spec.n_neighbors, min_dist=spec.min_dist, spread=spec.spread, metric=spec.metric,
                  random_state=spec.random_state, n_epochs=spec.n_epochs or None)
    if resolve_backend(backend) == "gpu":
        from ._cuml import fit_cuml, cuml_available

        if cuml_available():
            return fit_cuml(events, **kwargs)
    import warnings

    import umap

    with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": intended, reproducible fit
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        model = umap.UMAP(n_components=2, **kwargs).fit(events)
    return np.asarray(model.embedding_, dtype=np.float32), UmapParams.from_umap(model)


def extent_of(embedding: np.ndarray, *, padding: float) -> tuple[float, float, float, float]:
    """Bounding box of ``embedding`` widened by ``padding`` (a fraction of each side's span)."""
    lo, hi = embedding.min(axis=0).astype(float), embedding.max(axis=0).astype(float)
    span = np.maximum(hi - lo, 1e-6)
    lo, hi = lo - padding * span, hi + padding * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def build_reference(
    samples: Iterable[tuple[str, np.ndarray]],
    *,
    markers: Sequence[str],
    spec: ReferenceSpec,
    raster: RasterSpec,
    preprocess_fingerprint: str = "",
    settings: dict[str, Any] | None = None,
    backend: str = "cpu",
    pipeline: dict[str, Any] | None = None,
    strata: Mapping[str, str] | None = None,
) -> Reference:
    """Pool events from preprocessed samples and fit the reference UMAP.

    Parameters
    ----------
    samples
        ``(sample_id, events)`` pairs; events are ``(n, d)`` preprocessed values whose
        columns are ``markers``.
    spec, raster
        Reference and raster settings (from the pipeline file).
    preprocess_fingerprint, settings
        Recorded so that loading can check samples were preprocessed the same way.
    backend
        ``"cpu"`` (umap-learn) or ``"gpu"``/``"auto"`` (cuML when installed).
    pipeline
        The whole pipeline the samples were preprocessed with
        (:func:`rescue_gpu.config.pipeline_record`), stored so that ``rescue train`` and
        ``rescue score`` take it from the reference.
    strata
        Sample id -> group (e.g. ``timepoint/label``) over which ``spec.max_events`` is
        balanced (:func:`pool_events`).

    Raises
    ------
    ReferenceDataError
        Fewer pooled events than ``spec.min_events``, or inconsistent widths.
    """
    t0 = time.time()
    pooled, record = pool_events(samples, events_per_sample=spec.events_per_sample, seed=spec.random_state,
                                 max_events=spec.max_events, strata=strata)
    if pooled.shape[0] < spec.min_events:
        raise ReferenceDataError(
            f"only {pooled.shape[0]} events pooled from {len(record['events_per_sample'])} sample(s); "
            f"a reference needs at least {spec.min_events}: add samples or raise --events-per-sample"
        )
    if pooled.shape[1] != len(markers):
        raise ReferenceDataError(f"events have {pooled.shape[1]} columns but {len(markers)} markers were named")
    embedding, params = fit_umap(pooled, spec=spec, backend=backend)
    record.update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), fit_seconds=round(time.time() - t0, 2))
    return Reference(train_events=pooled, embedding=embedding, params=params, markers=tuple(markers),
                     preprocess_fingerprint=preprocess_fingerprint, raster=raster,
                     extent=extent_of(embedding, padding=raster.padding), settings=settings or {}, provenance=record,
                     pipeline=pipeline)


def from_umap_learn(model: Any, *, markers: Sequence[str], raster: RasterSpec | None = None,
                    preprocess_fingerprint: str = "") -> Reference:
    """Wrap a fitted ``umap.UMAP`` (2-D, euclidean) as a :class:`Reference`."""
    raw = getattr(model, "_raw_data", None)
    emb = getattr(model, "embedding_", None)
    if raw is None or emb is None:
        raise ReferenceDataError("the UMAP model is not fitted (no _raw_data / embedding_); fit it first")
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[1] != 2:
        raise ReferenceDataError(f"the UMAP model embeds into {emb.shape[1:]} dimensions; rescue_gpu needs 2")
    raster = raster or RasterSpec()
    return Reference(train_events=np.asarray(raw, dtype=np.float32), embedding=emb, params=UmapParams.from_umap(model),
                     markers=tuple(markers), preprocess_fingerprint=preprocess_fingerprint, raster=raster,
                     extent=extent_of(emb, padding=raster.padding), provenance={"imported_from": "umap-learn"})


def import_umap_pickle(path: str | Path, *, markers: Sequence[str], trust: bool = False,
                       raster: RasterSpec | None = None) -> Reference:
    """Load a pickled, fitted ``umap.UMAP`` (the published pipeline's format) as a Reference.

    Unpickling runs arbitrary code from the file, so it only happens with ``trust=True``.
    """
    p = Path(path)
    if not trust:
        raise ReferenceDataError(
            f"{p}: a pickle can run arbitrary code when loaded; pass --trust (trust=True) only for a file "
            "from a source you trust, e.g. the published pipeline's own model"
        )
    try:
        with open(p, "rb") as fh:
            model = _load_pickle(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as exc:
        raise ReferenceDataError(f"{p}: cannot unpickle a UMAP model ({exc.__class__.__name__}: {exc})") from None
    if type(model).__name__ != "UMAP":
        raise ReferenceDataError(f"{p}: holds a {type(model).__name__}, not a fitted umap.UMAP")
    ref = from_umap_learn(model, markers=markers, raster=raster)
    ref.provenance["imported_from"] = str(p)
    return ref


def _load_pickle(fh: Any) -> Any:
    try:
        import joblib

        return joblib.load(fh)
    except ImportError:  # pragma: no cover - joblib comes with scikit-learn
        return pickle.load(fh)
