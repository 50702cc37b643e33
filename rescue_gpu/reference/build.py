"""Building a reference UMAP from preprocessed samples, and importing fitted umap-learn models."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import resolve_backend
from ..config import RasterSpec, ReferenceSpec
from ..errors import ReferenceDataError
from ..projection.transform import UmapParams
from .store import Reference

__all__ = ["pool_events", "fit_umap", "extent_of", "build_reference", "from_umap_learn", "import_umap_pickle"]


def pool_events(
    samples: Iterable[tuple[str, np.ndarray]], *, events_per_sample: int, seed: int = 0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pool an even random subsample of each sample's events; drop and count non-finite rows.

    Each sample's draw depends only on ``seed`` and its position, so the pool is
    reproducible. Returns the pooled float32 events and a record of what was taken.
    """
    parts, taken, dropped = [], {}, 0
    for i, (sample_id, events) in enumerate(samples):
        ev = np.asarray(events, dtype=np.float32)
        finite = np.isfinite(ev).all(axis=1)
        dropped += int((~finite).sum())
        ev = ev[finite]
        rng = np.random.default_rng([seed, i])
        k = min(events_per_sample, ev.shape[0])
        parts.append(ev[np.sort(rng.choice(ev.shape[0], size=k, replace=False))])
        taken[sample_id] = k
    if not parts:
        raise ReferenceDataError("no samples to build a reference from")
    widths = {p.shape[1] for p in parts}
    if len(widths) != 1:
        raise ReferenceDataError(f"samples have different numbers of markers {sorted(widths)}; preprocess them with one pipeline")
    return np.concatenate(parts), {"events_per_sample": taken, "non_finite_rows_dropped": dropped}


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

    Raises
    ------
    ReferenceDataError
        Fewer pooled events than ``spec.min_events``, or inconsistent widths.
    """
    t0 = time.time()
    pooled, record = pool_events(samples, events_per_sample=spec.events_per_sample, seed=spec.random_state)
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
