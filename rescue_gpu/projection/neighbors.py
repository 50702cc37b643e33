"""Exact euclidean k-nearest neighbours of new events among a reference's training events.

Two CPU methods (a KD-tree and a fused brute-force scan with a streaming top-k) and one GPU
method (tiled cupy GEMM with a streaming top-k raw kernel). All return the neighbours
of each event sorted by increasing distance, distances recomputed directly as
``||x - y||`` in float64 and stored as float32 (the GEMM identity
``||x||^2 + ||y||^2 - 2 x.y`` only selects candidates).
"""

from __future__ import annotations

from typing import Any, Literal

import numba
import numpy as np
from scipy.spatial import cKDTree

KnnMethod = Literal["kdtree", "brute"]

__all__ = ["KnnMethod", "knn_cpu", "knn_gpu", "exact_distances"]


@numba.njit(parallel=True, cache=True)
def exact_distances(events: np.ndarray, train: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Euclidean distances ``||events[i] - train[idx[i, j]]||`` (float64 sums, float32 out).

    Parameters
    ----------
    events
        ``(n, d)`` query events.
    train
        ``(N, d)`` reference events.
    idx
        ``(n, k)`` neighbour indices into ``train``.

    Returns
    -------
    numpy.ndarray
        ``(n, k)`` float32 distances.
    """
    n, k = idx.shape
    out = np.empty((n, k), dtype=np.float32)
    for i in numba.prange(n):
        for j in range(k):
            s = 0.0
            for c in range(events.shape[1]):
                diff = np.float64(events[i, c]) - np.float64(train[idx[i, j], c])
                s += diff * diff
            out[i, j] = np.float32(np.sqrt(s))
    return out


@numba.njit(inline="always", cache=True)
def _insert(best_d: np.ndarray, best_i: np.ndarray, v: float, j: int) -> None:
    """Insert ``(v, j)`` into a sorted top-k list whose last entry ``v`` beats."""
    p = best_d.shape[0] - 1
    while p > 0 and best_d[p - 1] > v:
        best_d[p] = best_d[p - 1]
        best_i[p] = best_i[p - 1]
        p -= 1
    best_d[p] = v
    best_i[p] = j


@numba.njit(parallel=True, fastmath=True, cache=True)
def _knn_brute_kernel(x: np.ndarray, train_t: np.ndarray, yy: np.ndarray, k: int, tile: int) -> np.ndarray:
    """Fused top-k over ``||y||^2 - 2 x.y`` (the ranking part of ``||x - y||^2``), tile by tile.

    ``train_t`` is the ``(d, N)`` transposed, centred reference, so the inner loop runs
    over contiguous reference events and vectorises into FMAs. Only candidates are
    chosen here; distances are recomputed exactly afterwards.
    """
    d, n_ref = train_t.shape
    out = np.empty((x.shape[0], k), dtype=np.int32)
    for i in numba.prange(x.shape[0]):
        best_d = np.full(k, np.inf, dtype=np.float32)
        best_i = np.zeros(k, dtype=np.int32)
        acc = np.empty(tile, dtype=np.float32)
        for c0 in range(0, n_ref, tile):
            m = min(tile, n_ref - c0)
            acc[:m] = yy[c0 : c0 + m]
            for c in range(d):
                xc = np.float32(-2.0) * x[i, c]
                row = train_t[c, c0 : c0 + m]
                for j in range(m):
                    acc[j] += xc * row[j]
            for j in range(m):
                if acc[j] < best_d[k - 1]:
                    _insert(best_d, best_i, acc[j], c0 + j)
        out[i] = best_i
    return out


@numba.njit(parallel=True, cache=True)
def _resort(dist: np.ndarray, idx: np.ndarray) -> None:
    """Sort each row by (distance, index) in place: stable insertion sort, rows are short."""
    for i in numba.prange(dist.shape[0]):
        for j in range(1, dist.shape[1]):
            dv, iv = dist[i, j], idx[i, j]
            p = j
            while p > 0 and (dist[i, p - 1] > dv or (dist[i, p - 1] == dv and idx[i, p - 1] > iv)):
                dist[i, p], idx[i, p] = dist[i, p - 1], idx[i, p - 1]
                p -= 1
            dist[i, p], idx[i, p] = dv, iv


def _knn_brute(train: np.ndarray, events: np.ndarray, k: int, tile: int = 2048) -> np.ndarray:
    """Candidate indices by a fused brute-force scan (one event chunk; both sides centred)."""
    mu = train.mean(axis=0, dtype=np.float64)
    y = (train - mu).astype(np.float32)
    x = (events - mu).astype(np.float32)
    yy = np.einsum("ij,ij->i", y, y)
    return _knn_brute_kernel(x, np.ascontiguousarray(y.T), yy, k, tile)


def _knn_kdtree(tree: cKDTree, events: np.ndarray, k: int) -> np.ndarray:
    """Candidate indices from a KD-tree query (all cores)."""
    _, idx = tree.query(events, k=k, workers=-1)
    return np.ascontiguousarray(idx.reshape(events.shape[0], k), dtype=np.int32)


def knn_cpu(
    train: np.ndarray,
    events: np.ndarray,
    k: int,
    *,
    chunk_size: int = 262_144,
    method: KnnMethod = "kdtree",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact euclidean k-nearest neighbours on the CPU.

    Parameters
    ----------
    train
        ``(N, d)`` float32 reference events.
    events
        ``(n, d)`` float32 events to query.
    k
        Number of neighbours (``k <= N``).
    chunk_size
        Events per block; bounds the working memory of the ``"brute"`` method.
    method
        ``"kdtree"`` (scipy cKDTree, all cores) or ``"brute"`` (fused scan + top-k).

    Returns
    -------
    indices, distances
        ``(n, k)`` int32 and float32, each row sorted by increasing distance.
    """
    tree = cKDTree(train, leafsize=64) if method == "kdtree" else None  # 64: ~15% faster queries in 10-20 dims than 16
    idx = np.empty((events.shape[0], k), dtype=np.int32)
    for s in range(0, events.shape[0], chunk_size):
        block = events[s : s + chunk_size]
        idx[s : s + len(block)] = _knn_kdtree(tree, block, k) if tree is not None else _knn_brute(train, block, k)
    dist = exact_distances(events, train, idx)
    _resort(dist, idx)
    return idx, dist


def knn_gpu(
    train: Any,
    events: Any,
    k: int,
    *,
    chunk_size: int = 262_144,
    tile: int = 8192,
) -> tuple[Any, Any]:
    """Exact euclidean k-nearest neighbours on the GPU (cupy; unverified without a device).

    Distances come from tiled GEMMs (``||x||^2 + ||y||^2 - 2 x.y``, one reference tile
    at a time, never an ``n x N`` matrix) merged into running top-k lists by a raw
    kernel, then recomputed exactly for the chosen neighbours and sorted.

    Parameters
    ----------
    train, events
        cupy float32 arrays ``(N, d)`` and ``(n, d)``.
    k
        Number of neighbours.
    chunk_size, tile
        Events per block and reference events per tile.

    Returns
    -------
    indices, distances
        cupy ``(n, k)`` int32 and float32, each row sorted by increasing distance.
    """
    import cupy as cp

    from . import _cupy_kernels as ck

    n = events.shape[0]
    idx = cp.empty((n, k), dtype=cp.int32)
    mu = train.mean(axis=0, dtype=cp.float64)
    y = (train - mu).astype(cp.float32)
    yy = cp.einsum("ij,ij->i", y, y)
    for s in range(0, n, chunk_size):
        x = (events[s : s + chunk_size] - mu).astype(cp.float32)
        best_d = cp.full((x.shape[0], k), cp.inf, dtype=cp.float32)
        best_i = cp.zeros((x.shape[0], k), dtype=cp.int32)
        xx = cp.einsum("ij,ij->i", x, x)
        for c0 in range(0, y.shape[0], tile):
            dot_t = cp.ascontiguousarray(y[c0 : c0 + tile] @ x.T)  # (tile, rows): coalesced reads
            ck.topk_merge(dot_t, xx, cp.ascontiguousarray(yy[c0 : c0 + tile]), c0, best_d, best_i)
        idx[s : s + x.shape[0]] = best_i
    dist = ck.exact_distances(events, train, idx)
    ck.resort(dist, idx)
    return idx, dist
