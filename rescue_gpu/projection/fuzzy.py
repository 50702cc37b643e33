"""Fuzzy membership weights of new events' neighbours and the weighted-average start.

Numba ports of umap-learn's ``smooth_knn_dist``, ``compute_membership_strengths``
(``bipartite=True``) and ``init_graph_transform``, one event per loop iteration so
that the result of an event never depends on which other events share its batch
(the one batch-wide quantity, ``mean_distances``, is passed in).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["SMOOTH_K_TOLERANCE", "MIN_K_DIST_SCALE", "smooth_knn_dist", "membership_strengths", "init_embedding"]

SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
_FLOATMAX = np.finfo(np.float32).max


@numba.njit(cache=True)
def _rho(row: np.ndarray, local_connectivity: float) -> np.float32:
    """Distance to the ``local_connectivity``-th nearest non-zero neighbour (interpolated)."""
    nz = row[row > 0.0]
    rho = np.float32(0.0)
    if nz.shape[0] >= local_connectivity:
        index = int(np.floor(local_connectivity))
        interpolation = local_connectivity - index
        if index > 0:
            rho = nz[index - 1]
            if interpolation > SMOOTH_K_TOLERANCE:
                rho += np.float32(interpolation * (nz[index] - nz[index - 1]))
        elif nz.shape[0] > 0:
            rho = np.float32(interpolation * nz[0])
    elif nz.shape[0] > 0:
        rho = np.max(nz)
    return rho


@numba.njit(cache=True)
def _sigma(row: np.ndarray, rho: np.float32, target: float, n_iter: int) -> float:
    """Binary search for the bandwidth whose membership sum (from the 2nd neighbour) is ``target``."""
    lo, hi, mid = 0.0, np.inf, 1.0
    for _ in range(n_iter):
        psum = 0.0
        for j in range(1, row.shape[0]):
            d = row[j] - rho
            psum += np.exp(-(d / mid)) if d > 0 else 1.0
        if np.fabs(psum - target) < SMOOTH_K_TOLERANCE:
            break
        if psum > target:
            hi = mid
            mid = (lo + hi) / 2.0
        else:
            lo = mid
            mid = mid * 2 if hi >= _FLOATMAX else (lo + hi) / 2.0
    return mid


@numba.njit(parallel=True, cache=True)
def smooth_knn_dist(
    dists: np.ndarray, k: float, local_connectivity: float, mean_distances: float, n_iter: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Per-event bandwidth ``sigma`` and offset ``rho`` (umap-learn's ``smooth_knn_dist``).

    Parameters
    ----------
    dists
        ``(n, k)`` float32 neighbour distances, rows sorted ascending.
    k
        The target cardinality (umap-learn passes ``n_neighbors``).
    local_connectivity
        As given to umap-learn's function (``transform`` passes ``max(0, lc - 1)``).
    mean_distances
        Mean of all distances of the whole batch (umap-learn's floor for ``rho == 0``).
    n_iter
        Binary-search iterations.

    Returns
    -------
    sigmas, rhos
        ``(n,)`` float32 each.
    """
    target = np.log2(k)
    n = dists.shape[0]
    sigmas = np.zeros(n, dtype=np.float32)
    rhos = np.zeros(n, dtype=np.float32)
    for i in numba.prange(n):
        row = dists[i]
        rho = _rho(row, local_connectivity)
        sig = np.float32(_sigma(row, rho, target, n_iter))
        floor = MIN_K_DIST_SCALE * (np.mean(row) if rho > 0.0 else mean_distances)
        if sig < floor:
            sig = np.float32(floor)
        rhos[i] = rho
        sigmas[i] = sig
    return sigmas, rhos


@numba.njit(parallel=True, cache=True)
def membership_strengths(idx: np.ndarray, dists: np.ndarray, sigmas: np.ndarray, rhos: np.ndarray) -> np.ndarray:
    """Edge weights ``exp(-(d - rho) / sigma)`` (1 where ``d <= rho``); 0 where ``idx == -1``.

    Parameters
    ----------
    idx, dists
        ``(n, k)`` neighbour indices (``-1`` = disconnected) and float32 distances.
    sigmas, rhos
        From :func:`smooth_knn_dist`.

    Returns
    -------
    numpy.ndarray
        ``(n, k)`` float32 weights.
    """
    n, k = idx.shape
    w = np.zeros((n, k), dtype=np.float32)
    for i in numba.prange(n):
        for j in range(k):
            if idx[i, j] < 0:
                continue
            d = dists[i, j] - rhos[i]
            if d <= 0.0 or sigmas[i] == 0.0:
                w[i, j] = 1.0
            else:
                w[i, j] = np.exp(-(d / sigmas[i]))
    return w


@numba.njit(cache=True)
def _init_row(idx_row: np.ndarray, w_row: np.ndarray, embedding: np.ndarray, out: np.ndarray) -> None:
    """Weighted mean of the neighbours' coordinates; a weight of exactly 1 snaps to that neighbour.

    Among several weight-1 neighbours umap-learn takes the lowest reference index
    (its CSR row is sorted by column); no usable neighbour gives NaN.
    """
    total = np.float32(0.0)
    snap = -1
    for j in range(idx_row.shape[0]):
        if idx_row[j] >= 0 and w_row[j] > 0.0:
            total += w_row[j]
            if w_row[j] == 1.0 and (snap < 0 or idx_row[j] < snap):
                snap = idx_row[j]
    if snap >= 0:
        out[:] = embedding[snap]
        return
    if total == 0.0:
        out[:] = np.nan
        return
    out[:] = 0.0
    for j in range(idx_row.shape[0]):
        if idx_row[j] >= 0 and w_row[j] > 0.0:
            for c in range(out.shape[0]):
                out[c] += w_row[j] / total * embedding[idx_row[j], c]


@numba.njit(parallel=True, cache=True)
def init_embedding(idx: np.ndarray, weights: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """Initial coordinates of new events (umap-learn's ``init_graph_transform``).

    Parameters
    ----------
    idx, weights
        ``(n, k)`` neighbour indices and membership weights.
    embedding
        ``(N, 2)`` float32 reference embedding.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` float32; NaN rows for events with no connected neighbour.
    """
    out = np.empty((idx.shape[0], embedding.shape[1]), dtype=np.float32)
    for i in numba.prange(idx.shape[0]):
        _init_row(idx[i], weights[i], embedding, out[i])
    return out
