"""Fuzzy membership weights of new events' neighbours and the weighted-average start.

Numba ports of umap-learn's ``smooth_knn_dist``, ``compute_membership_strengths``
(``bipartite=True``) and ``init_graph_transform``, one event per loop iteration so
that the result of an event never depends on which other events share its batch
(the one batch-wide quantity, ``mean_distances``, is passed in).
"""

from __future__ import annotations

import numba
import numpy as np

from ._kernels import MIN_K_DIST_SCALE, SMOOTH_K_TOLERANCE, edge_weight, init_row, smooth_row

__all__ = ["SMOOTH_K_TOLERANCE", "MIN_K_DIST_SCALE", "smooth_knn_dist", "membership_strengths", "init_embedding"]



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
    kk = dists.shape[1]
    for i in numba.prange(n):
        sig, rho = smooth_row(dists[i], kk, local_connectivity, target, n_iter, mean_distances)
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
            w[i, j] = edge_weight(idx[i, j], dists[i, j], rhos[i], sigmas[i])
    return w


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
        init_row(idx[i], weights[i], idx.shape[1], embedding, out[i])
    return out
