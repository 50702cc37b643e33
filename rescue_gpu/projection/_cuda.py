"""numba.cuda kernels of the GPU transform (one thread per event, grid-stride loops).

The kernels are thin: index arithmetic, per-thread local copies, and calls to the shared
per-event math of :mod:`._kernels` compiled as device functions -- the very code the CPU
path runs through ``numba.njit``. Arrays may be cupy arrays (passed without a copy
through the CUDA array interface) or, under ``NUMBA_ENABLE_CUDASIM=1``, numpy arrays:
the simulator runs these kernels on the CPU, which is how CI executes them.

Every kernel loops ``for i in range(cuda.grid(1), n, cuda.gridsize(1))``, so any launch
shape (threads per block, block count) gives the same result; :class:`Launch` chooses it.
Imported only by the GPU path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import cuda

from ._kernels import MAX_K, device_functions

__all__ = ["Launch", "topk_merge", "exact_distances", "resort", "fuzzy_init", "layout"]

_D = device_functions()
merge_tile_row = _D["merge_tile_row"]
pair_distance = _D["pair_distance"]
resort_row = _D["resort_row"]
smooth_row = _D["smooth_row"]
edge_weight = _D["edge_weight"]
init_row = _D["init_row"]
event_key = _D["event_key"]
layout_event = _D["layout_event"]


@dataclass(frozen=True)
class Launch:
    """Launch shape: ``threads`` per block; at most ``max_blocks`` blocks (``None``: enough for one item per thread)."""

    threads: int = 128
    max_blocks: int | None = None

    def grid(self, n_items: int) -> tuple[int, int]:
        """``(blocks, threads)`` for ``n_items`` items (grid-stride loops cover the rest)."""
        blocks = max(1, (n_items + self.threads - 1) // self.threads)
        if self.max_blocks is not None:
            blocks = min(blocks, self.max_blocks)
        return blocks, self.threads


def _go(kernel: Any, n_items: int, launch: Launch | None, *args: Any) -> None:
    """Launch ``kernel`` over ``n_items`` items (nothing to do for 0)."""
    if n_items > 0:
        blocks, threads = (launch or Launch()).grid(n_items)
        kernel[blocks, threads](*args)


def _check_k(k: int) -> None:
    if k > MAX_K:
        raise ValueError(f"the GPU kernels support n_neighbors <= {MAX_K}, got {k}")


@cuda.jit
def _topk_merge(dot_t, xx, yy, m, col0, k, best_d, best_i):  # noqa: ANN001, ANN202 - kernel
    bd = cuda.local.array(MAX_K, numba.float32)
    bi = cuda.local.array(MAX_K, numba.int32)
    for i in range(cuda.grid(1), best_d.shape[0], cuda.gridsize(1)):
        for p in range(k):
            bd[p] = best_d[i, p]
            bi[p] = best_i[i, p]
        merge_tile_row(dot_t, i, xx[i], yy, m, col0, bd, bi, k)
        for p in range(k):
            best_d[i, p] = bd[p]
            best_i[i, p] = bi[p]


@cuda.jit
def _exact_distances(x, y, idx, out):  # noqa: ANN001, ANN202
    k = idx.shape[1]
    for t in range(cuda.grid(1), idx.shape[0] * k, cuda.gridsize(1)):
        i = t // k
        j = t - i * k
        out[i, j] = pair_distance(x, i, y, idx[i, j])


@cuda.jit
def _resort(dist, idx):  # noqa: ANN001, ANN202
    for i in range(cuda.grid(1), dist.shape[0], cuda.gridsize(1)):
        resort_row(dist[i], idx[i], dist.shape[1])


@cuda.jit
def _fuzzy_init(idx, dists, emb, target, lc, n_iter, mean_distances, weights, init):  # noqa: ANN001, ANN202
    k = idx.shape[1]
    for i in range(cuda.grid(1), idx.shape[0], cuda.gridsize(1)):
        sig, rho = smooth_row(dists[i], k, lc, target, n_iter, mean_distances)
        for j in range(k):
            weights[i, j] = edge_weight(idx[i, j], dists[i, j], rho, sig)
        init_row(idx[i], weights[i], k, emb, init[i])


@cuda.jit
def _layout(pos, idx, eps, ref, seed, offset, n_epochs, a, b, gamma, alpha0, neg_rate):  # noqa: ANN001, ANN202
    next_s = cuda.local.array(MAX_K, numba.float64)
    next_neg = cuda.local.array(MAX_K, numba.float64)
    k = idx.shape[1]
    for i in range(cuda.grid(1), pos.shape[0], cuda.gridsize(1)):
        if math.isnan(pos[i, 0]):
            continue
        key = event_key(seed, offset + np.uint64(i))
        layout_event(pos[i], idx[i], eps[i], ref, k, key, n_epochs, a, b, gamma, alpha0, neg_rate, next_s, next_neg)


def topk_merge(dot_t: Any, xx: Any, yy: Any, col0: int, best_d: Any, best_i: Any, *, launch: Launch | None = None) -> None:
    """Merge a ``(tile, rows)`` block of dot products into running sorted top-k lists (in place)."""
    rows, k = best_d.shape
    _check_k(k)
    _go(_topk_merge, rows, launch, dot_t, xx, yy, int(dot_t.shape[0]), int(col0), int(k), best_d, best_i)


def exact_distances(x: Any, y: Any, idx: Any, *, xp: Any, launch: Launch | None = None) -> Any:
    """``||x[i] - y[idx[i, j]]||`` for all ``(i, j)``, float64 sums, float32 out."""
    out = xp.empty(idx.shape, dtype=xp.float32)
    _go(_exact_distances, int(idx.size), launch, x, y, idx, out)
    return out


def resort(dist: Any, idx: Any, *, launch: Launch | None = None) -> None:
    """Sort each row by (distance, index) in place."""
    _go(_resort, int(dist.shape[0]), launch, dist, idx)


def fuzzy_init(
    idx: Any, dists: Any, emb: Any, k: float, local_connectivity: float, mean_distances: float, *,
    xp: Any, launch: Launch | None = None, n_iter: int = 64,
) -> tuple[Any, Any]:
    """Membership weights ``(n, k)`` and initial coordinates ``(n, 2)`` (see :mod:`.fuzzy`)."""
    n, kk = idx.shape
    _check_k(kk)
    weights = xp.empty((n, kk), dtype=xp.float32)
    init = xp.empty((n, emb.shape[1]), dtype=xp.float32)
    _go(_fuzzy_init, n, launch, idx, dists, emb, np.float64(np.log2(k)), np.float64(local_connectivity),
        int(n_iter), np.float64(mean_distances), weights, init)
    return weights, init


def layout(
    init: Any, ref: Any, idx: Any, eps: Any, *, n_epochs: int, a: float, b: float, gamma: float,
    initial_alpha: float, negative_sample_rate: float, seed: int, event_offset: int = 0,
    xp: Any, launch: Launch | None = None,
) -> Any:
    """SGD of new events against the fixed reference embedding (see :func:`.sgd.optimize_layout`)."""
    _check_k(idx.shape[1])
    pos = xp.array(init, dtype=xp.float32, order="C", copy=True)
    _go(_layout, int(pos.shape[0]), launch, pos, idx, eps, ref, np.uint64(seed), np.uint64(event_offset),
        int(n_epochs), np.float64(a), np.float64(b), np.float64(gamma), np.float64(initial_alpha),
        np.float64(negative_sample_rate))
    return pos
