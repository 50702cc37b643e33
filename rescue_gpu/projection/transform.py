"""Project new events into a fixed reference UMAP: our own ``UMAP.transform``.

Semantics follow umap-learn 0.5's ``UMAP.transform`` step by step (exact instead of
approximate neighbours, and a counter-based RNG for negative sampling):

1. the ``n_neighbors`` nearest training events of each new event (exact, euclidean);
   neighbours at ``>= disconnection_distance`` are dropped;
2. ``smooth_knn_dist`` with ``local_connectivity = max(0, local_connectivity - 1)``;
3. membership weights and the weighted-average start (``init_graph_transform``);
4. ``n_epochs``: 100 for at most 10,000 events else 30 when unset, else
   ``n_epochs // 3``; edges below ``max weight / n_epochs`` pruned;
5. SGD against the fixed reference embedding with ``learning_rate / 4``.

Batch-wide quantities (the mean neighbour distance, the maximum weight, the epoch
count) are taken over the whole ``events`` array, so ``chunk_size`` (which only bounds
the neighbour search's working memory) never changes the result.
"""

from __future__ import annotations

import time

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..device import array_module, resolve_backend, to_numpy
from ..errors import ProjectionError, ReferenceDataError
from . import fuzzy, neighbors, sgd

__all__ = ["UmapParams", "ReferenceLike", "UmapReference", "transform", "transform_epochs"]

DEFAULT_CHUNK_SIZE = 262_144


@dataclass(frozen=True)
class UmapParams:
    """The UMAP settings that ``transform`` needs, as fitted (umap-learn's private values).

    Attributes mirror umap-learn: ``a``/``b`` are the fitted curve parameters
    (``_a``/``_b``), ``learning_rate`` is ``_initial_alpha``, ``repulsion_strength`` is
    gamma and ``n_epochs`` the fit-time setting (``None`` = umap-learn's default).
    """

    n_neighbors: int = 15
    metric: str = "euclidean"
    a: float = 1.576943460405378
    b: float = 0.8950608781227859
    min_dist: float = 0.1
    spread: float = 1.0
    local_connectivity: float = 1.0
    set_op_mix_ratio: float = 1.0
    disconnection_distance: float = float("inf")
    n_epochs: int | None = None
    learning_rate: float = 1.0
    negative_sample_rate: float = 5.0
    repulsion_strength: float = 1.0
    random_state: int | None = None

    @classmethod
    def from_umap(cls, model: Any) -> UmapParams:
        """Read the parameters of a fitted ``umap.UMAP`` model.

        Raises
        ------
        ReferenceDataError
            The model is not fitted, or uses a metric, output metric, output dimension
            or densMAP that this transform does not support.
        """
        if not hasattr(model, "_a") or not hasattr(model, "embedding_"):
            raise ReferenceDataError("the umap.UMAP model is not fitted; call fit() on the reference events first")
        _check_umap_supported(model)
        rs = model.random_state
        return cls(
            n_neighbors=int(getattr(model, "_n_neighbors", model.n_neighbors)), metric=str(model.metric),
            a=float(model._a), b=float(model._b), min_dist=float(model.min_dist), spread=float(model.spread),
            local_connectivity=float(model.local_connectivity), set_op_mix_ratio=float(model.set_op_mix_ratio),
            disconnection_distance=float(model._disconnection_distance),
            n_epochs=None if model.n_epochs is None else int(model.n_epochs),
            learning_rate=float(model._initial_alpha), negative_sample_rate=float(model.negative_sample_rate),
            repulsion_strength=float(model.repulsion_strength), random_state=rs if isinstance(rs, int) else None,
        )


def _check_umap_supported(model: Any) -> None:
    """Raise ReferenceDataError for umap-learn settings outside this transform's scope."""
    problems = []
    if model.metric != "euclidean":
        problems.append(f"metric={model.metric!r} (only 'euclidean')")
    if getattr(model, "output_metric", "euclidean") != "euclidean":
        problems.append(f"output_metric={model.output_metric!r} (only 'euclidean')")
    if model.embedding_.shape[1] != 2:
        problems.append(f"n_components={model.embedding_.shape[1]} (only 2)")
    if getattr(model, "densmap", False):
        problems.append("densmap=True")
    if problems:
        raise ReferenceDataError("unsupported UMAP model: " + ", ".join(problems) + "; refit the reference")


class ReferenceLike(Protocol):
    """What :func:`transform` needs of a reference."""

    train_events: Any
    embedding: Any
    params: UmapParams


@dataclass(frozen=True)
class UmapReference:
    """A minimal in-memory reference (training events, their embedding, UMAP parameters)."""

    train_events: np.ndarray
    embedding: np.ndarray
    params: UmapParams

    @classmethod
    def from_umap(cls, model: Any) -> UmapReference:
        """Wrap a fitted ``umap.UMAP`` model (its ``_raw_data`` and ``embedding_``)."""
        params = UmapParams.from_umap(model)
        train = np.ascontiguousarray(model._raw_data, dtype=np.float32)
        return cls(train, np.ascontiguousarray(model.embedding_, dtype=np.float32), params)


def transform_epochs(params: UmapParams, n_events: int) -> int:
    """Epochs umap-learn's ``transform`` runs for ``n_events`` new events."""
    if params.n_epochs is None:
        return 100 if n_events <= 10_000 else 30
    n = int(params.n_epochs // 3)
    if n < 1:
        raise ReferenceDataError(f"n_epochs={params.n_epochs} gives {n} transform epochs (n_epochs // 3); use n_epochs >= 3")
    return n


def _check_reference(reference: ReferenceLike) -> tuple[Any, Any, UmapParams]:
    """Validate a reference's shapes and parameters; return (train, embedding, params)."""
    p = reference.params
    train, emb = reference.train_events, reference.embedding
    if p.metric != "euclidean":
        raise ReferenceDataError(f"reference metric {p.metric!r} is not supported; only 'euclidean'")
    if train.ndim != 2 or emb.ndim != 2 or emb.shape[1] != 2 or emb.shape[0] != train.shape[0]:
        raise ReferenceDataError(
            f"reference shapes do not fit: train_events {tuple(train.shape)}, embedding {tuple(emb.shape)}; "
            "expected (N, d) and (N, 2)"
        )
    if train.shape[0] < p.n_neighbors:
        raise ReferenceDataError(
            f"reference has {train.shape[0]} training events, fewer than n_neighbors={p.n_neighbors}; "
            "build it from more events or lower n_neighbors"
        )
    if train.shape[0] >= 2**32:
        raise ReferenceDataError("reference has 2**32 or more training events; not supported")
    return train, emb, p


def _check_events(events: Any, n_dims: int, xp: Any) -> Any:
    """Validate the events array (2-d, right width, finite); return it as float32 C-order."""
    if events.ndim != 2 or events.shape[1] != n_dims:
        raise ProjectionError(
            f"events have shape {tuple(events.shape)} but the reference has {n_dims} dimensions; "
            "preprocess them with the reference's panel"
        )
    x = xp.ascontiguousarray(events, dtype=xp.float32)
    bad = int((~xp.isfinite(x).all(axis=1)).sum())
    if bad:
        raise ProjectionError(f"{bad} of {x.shape[0]} events have non-finite values (NaN/inf); drop them first")
    return x


def transform(
    reference: ReferenceLike,
    events: Any,
    *,
    seed: int = 0,
    backend: str = "auto",
    chunk_size: int | None = None,
    knn_method: neighbors.KnnMethod = "auto",
    timings: dict[str, float] | None = None,
) -> Any:
    """Project ``events`` into the reference's UMAP embedding (umap-learn's ``transform``).

    Parameters
    ----------
    reference
        Any object with ``train_events`` ``(N, d)``, ``embedding`` ``(N, 2)`` and
        ``params`` (:class:`UmapParams`).
    events
        ``(n, d)`` numpy or cupy array of events, all finite.
    seed
        Non-negative RNG seed; the output is a deterministic function of
        ``(reference, events, seed)`` on a given backend.
    backend
        ``"auto" | "cpu" | "gpu"``.
    chunk_size
        Events per neighbour-search block (default 262,144); does not change the result.
    knn_method
        CPU neighbour search (:func:`.neighbors.knn_cpu`): ``"auto"`` (the certified
        ``"tiled"`` scan unless the reference is tiny), ``"tiled"`` or ``"kdtree"`` (same
        neighbours, so the same coordinates, except on exact distance ties), or ``"brute"``
        (float32 ranking; may differ on near ties).
    timings
        A dict that the CPU path fills with the seconds of its steps (``check``, ``knn``,
        ``fuzzy``, ``init``, ``sgd``), for ``rescue bench``; ignored on the GPU.

    Returns
    -------
    numpy.ndarray or cupy.ndarray
        ``(n, 2)`` float32 coordinates, in the array module of the backend used (numpy
        for ``"cpu"``, cupy for ``"gpu"``), whatever module ``events`` came in. Events
        with no neighbour within ``disconnection_distance`` get NaN, as in umap-learn.

    Raises
    ------
    ProjectionError
        ``events`` has the wrong width or non-finite values, or ``seed`` is negative.
    ReferenceDataError
        The reference is inconsistent, too small, or uses an unsupported metric.
    """
    if int(seed) < 0:
        raise ProjectionError(f"seed must be a non-negative integer, got {seed}")
    chunk = DEFAULT_CHUNK_SIZE if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ProjectionError(f"chunk_size must be positive, got {chunk_size}")
    if resolve_backend(backend) == "gpu":
        return _transform_gpu(reference, events, seed=int(seed), chunk_size=chunk)
    return _transform_cpu(reference, events, seed=int(seed), chunk_size=chunk, knn_method=knn_method,
                          timings=timings)


def _transform_cpu(
    reference: ReferenceLike, events: Any, *, seed: int, chunk_size: int, knn_method: neighbors.KnnMethod,
    timings: dict[str, float] | None = None,
) -> np.ndarray:
    """The CPU pipeline: numba kernels on numpy arrays (step seconds into ``timings`` when given)."""
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        if timings is not None:
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - clock[0]
            clock[0] = now

    train, emb, p = _check_reference(reference)
    train = np.ascontiguousarray(to_numpy(train), dtype=np.float32)
    emb = np.ascontiguousarray(to_numpy(emb), dtype=np.float32)
    x = _check_events(to_numpy(events) if array_module(events) is not np else np.asarray(events), train.shape[1], np)
    if x.shape[0] == 0:
        return np.empty((0, 2), dtype=np.float32)
    lap("check")
    idx, dists = neighbors.knn_cpu(train, x, p.n_neighbors, chunk_size=chunk_size, method=knn_method)
    idx[dists >= p.disconnection_distance] = -1
    lap("knn")
    lc = max(0.0, p.local_connectivity - 1.0)
    sigmas, rhos = fuzzy.smooth_knn_dist(dists, float(p.n_neighbors), lc, float(np.mean(dists, dtype=np.float64)))
    weights = fuzzy.membership_strengths(idx, dists, sigmas, rhos)
    lap("fuzzy")
    init = fuzzy.init_embedding(idx, weights, emb)
    lap("init")
    n_epochs = transform_epochs(p, x.shape[0])
    eps = sgd.edge_schedule(weights, n_epochs)
    out = sgd.optimize_layout(
        init, emb, idx, eps, n_epochs=n_epochs, a=p.a, b=p.b, gamma=p.repulsion_strength,
        initial_alpha=p.learning_rate / 4.0, negative_sample_rate=p.negative_sample_rate, seed=seed,
    )
    lap("sgd")
    return out


def _transform_gpu(
    reference: ReferenceLike, events: Any, *, seed: int, chunk_size: int, xp: Any = None, launch: Any = None,
    tile: int = 8192,
) -> Any:
    """The GPU pipeline: cupy GEMMs and reductions, numba.cuda kernels for the per-event math.

    ``xp`` is cupy (the default) or numpy under ``NUMBA_ENABLE_CUDASIM=1``, where the
    kernels run in numba's CUDA simulator; ``launch`` (:class:`._cuda.Launch`) and
    ``tile`` only change how the work is cut, never the result.
    """
    from . import _cuda

    if xp is None:
        import cupy as xp
    train, emb, p = _check_reference(reference)
    train = xp.ascontiguousarray(xp.asarray(train), dtype=xp.float32)
    emb = xp.ascontiguousarray(xp.asarray(emb), dtype=xp.float32)
    x = _check_events(xp.asarray(events), train.shape[1], xp)
    if x.shape[0] == 0:
        return xp.empty((0, 2), dtype=xp.float32)
    idx, dists = neighbors.knn_gpu(train, x, p.n_neighbors, chunk_size=chunk_size, tile=tile, xp=xp, launch=launch)
    idx[dists >= p.disconnection_distance] = -1
    lc = max(0.0, p.local_connectivity - 1.0)
    mean_d = float(dists.mean(dtype=xp.float64))
    weights, init = _cuda.fuzzy_init(idx, dists, emb, float(p.n_neighbors), lc, mean_d, xp=xp, launch=launch)
    n_epochs = transform_epochs(p, x.shape[0])
    eps = sgd.edge_schedule(weights, n_epochs)
    return _cuda.layout(
        init, emb, idx, eps, n_epochs=n_epochs, a=p.a, b=p.b, gamma=p.repulsion_strength,
        initial_alpha=p.learning_rate / 4.0, negative_sample_rate=p.negative_sample_rate, seed=seed,
        xp=xp, launch=launch,
    )
