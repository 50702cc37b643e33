"""Edge schedule and SGD layout of new events against a fixed reference embedding.

A port of umap-learn's ``optimize_layout_euclidean`` with ``move_other=False`` as
used by ``UMAP.transform``: same epoch schedule, gradients, clipping and learning-rate
decay. Each event owns its edges and only its own coordinates move, so events are
optimised independently (one ``prange`` iteration per event, all epochs inside).

The one deliberate difference is the random number generator for negative samples:
a counter-based hash of ``(seed, event index, epoch, edge, sample)``, so results do
not depend on chunking, thread count or launch shape. The per-event math lives in
:mod:`._kernels`, compiled by numba.njit here and by numba.cuda for the GPU kernel in
:mod:`._cuda`, so both draw the very same numbers.
"""

from __future__ import annotations

import numba
import numpy as np

from ..device import array_module
from ._kernels import attract, event_key, layout_event, rand_below, repel

__all__ = ["LANES", "event_key", "rand_below", "edge_schedule", "layout_lanes", "layout_event", "optimize_layout"]


def edge_schedule(weights: np.ndarray, n_epochs: int) -> np.ndarray:
    """Epochs per sample of each edge after umap-learn's transform-time pruning.

    Weights below ``max / n_epochs`` (the max over the whole batch) are dropped, as are
    zero weights (disconnected neighbours); their entries are ``-1``.

    Parameters
    ----------
    weights
        ``(n, k)`` float32 membership weights (numpy or cupy).
    n_epochs
        Number of epochs.

    Returns
    -------
    numpy.ndarray
        ``(n, k)`` float64 epochs per sample, ``-1`` for dropped edges.
    """
    xp = array_module(weights)
    wmax = weights.max() if weights.size else xp.float32(0.0)
    keep = (weights > 0) & ~(weights < wmax / xp.float32(n_epochs))
    out = xp.full(weights.shape, -1.0, dtype=xp.float64)
    n_samples = xp.float32(n_epochs) * (weights[keep] / wmax)
    out[keep] = float(n_epochs) / n_samples.astype(xp.float64)
    return out


#: Events one CPU thread optimises in lock-step (see :func:`layout_lanes`).
LANES = 8


@numba.njit(cache=True)
def layout_lanes(
    pos: np.ndarray, idx: np.ndarray, eps: np.ndarray, ref: np.ndarray, rows: np.ndarray, count: int,
    seed: np.uint64, offset: np.uint64, n_epochs: int, a: float, b: float, gamma: float, alpha0: float,
    neg_rate: float,
) -> None:
    """:func:`._kernels.layout_event` for ``count`` events at once, interleaved step by step.

    One event's SGD is a serial chain (each step needs the previous coordinates, and a
    step is a ``pow`` and two divisions long), so a CPU core running one event at a time
    waits on latency. Here the steps of up to :data:`LANES` independent events alternate,
    so the core overlaps their chains. Each event still sees exactly the steps of
    :func:`~._kernels.layout_event`, in the same order and with the same random numbers
    (they are keyed by event, epoch, edge and sample), so the result is bit-identical.
    Each round of negative samples is gathered for all lanes before any lane steps, so the
    cache misses of the random reference rows overlap (a 500,000-event sample's SGD against a
    150,000-event reference: 8.95 -> 7.7 s on our 2-core CPU, `benchmarks/RESULTS.md`).
    """
    k = idx.shape[1]
    n_ref = np.uint64(ref.shape[0])
    a32, b32, g32 = np.float32(a), np.float32(b), np.float32(gamma)
    next_s = np.empty((LANES, k), dtype=np.float64)
    next_neg = np.empty((LANES, k), dtype=np.float64)
    keys = np.empty(LANES, dtype=np.uint64)
    cx = np.empty(LANES, dtype=np.float32)
    cy = np.empty(LANES, dtype=np.float32)
    n_neg = np.empty(LANES, dtype=np.int64)
    gx = np.empty(LANES, dtype=np.float32)
    gy = np.empty(LANES, dtype=np.float32)
    for lane in range(count):
        i = rows[lane]
        keys[lane] = event_key(seed, offset + np.uint64(i))
        cx[lane] = pos[i, 0]
        cy[lane] = pos[i, 1]
        for e in range(k):
            next_s[lane, e] = eps[i, e]
            next_neg[lane, e] = eps[i, e] / np.float64(neg_rate)
    alpha = np.float32(alpha0)
    for n in range(n_epochs):
        for e in range(k):
            most = 0
            for lane in range(count):
                i = rows[lane]
                w = eps[i, e]
                n_neg[lane] = 0
                if w <= 0.0 or next_s[lane, e] > n:
                    continue
                t = idx[i, e]
                cx[lane], cy[lane] = attract(cx[lane], cy[lane], ref[t, 0], ref[t, 1], a32, b32, alpha)
                next_s[lane, e] += w
                eps_neg = w / np.float64(neg_rate)
                m = int((np.float64(n) - next_neg[lane, e]) / eps_neg)
                n_neg[lane] = m
                next_neg[lane, e] += np.float64(m) * eps_neg
                most = max(most, m)
            for p in range(most):
                # gather the lanes' negative samples first, then step: the loads (random rows of
                # the reference embedding, which outgrows the L2 cache from ~60k events) are
                # issued back to back and their misses overlap; the steps are unchanged
                for lane in range(count):
                    if p < n_neg[lane]:
                        r = rand_below(keys[lane], np.uint64(n), np.uint64(e), np.uint64(p), n_ref)
                        gx[lane] = ref[r, 0]
                        gy[lane] = ref[r, 1]
                for lane in range(count):
                    if p < n_neg[lane]:
                        cx[lane], cy[lane] = repel(cx[lane], cy[lane], gx[lane], gy[lane], a32, b32, g32, alpha)
        alpha = np.float32(np.float64(alpha0) * (1.0 - np.float64(n) / np.float64(n_epochs)))
    for lane in range(count):
        pos[rows[lane], 0] = cx[lane]
        pos[rows[lane], 1] = cy[lane]


@numba.njit(parallel=True, cache=True)
def _layout(
    pos: np.ndarray, idx: np.ndarray, eps: np.ndarray, ref: np.ndarray, seed: np.uint64, offset: np.uint64,
    n_epochs: int, a: float, b: float, gamma: float, alpha0: float, neg_rate: float,
) -> None:
    n = pos.shape[0]
    for g in numba.prange((n + LANES - 1) // LANES):
        rows = np.empty(LANES, dtype=np.int64)
        count = 0
        for i in range(g * LANES, min(n, (g + 1) * LANES)):
            if not np.isnan(pos[i, 0]):
                rows[count] = i
                count += 1
        layout_lanes(pos, idx, eps, ref, rows, count, seed, offset, n_epochs, a, b, gamma, alpha0, neg_rate)


def optimize_layout(
    init: np.ndarray,
    reference_embedding: np.ndarray,
    idx: np.ndarray,
    epochs_per_sample: np.ndarray,
    *,
    n_epochs: int,
    a: float,
    b: float,
    gamma: float,
    initial_alpha: float,
    negative_sample_rate: float,
    seed: int,
    event_offset: int = 0,
) -> np.ndarray:
    """Optimise new events' 2-d coordinates against the fixed reference embedding (CPU).

    Parameters
    ----------
    init
        ``(n, 2)`` float32 starting coordinates (NaN rows are left alone).
    reference_embedding
        ``(N, 2)`` float32; also the pool of negative samples.
    idx, epochs_per_sample
        ``(n, k)`` neighbour indices and :func:`edge_schedule` output.
    n_epochs, a, b, gamma, initial_alpha, negative_sample_rate
        As umap-learn's ``optimize_layout_euclidean`` (transform passes
        ``initial_alpha = learning_rate / 4``).
    seed
        RNG seed (non-negative).
    event_offset
        Global index of ``init[0]``: the RNG is keyed by global event index.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` float32 optimised coordinates (a new array).
    """
    if init.shape[1] != 2:
        raise ValueError("optimize_layout supports 2-d embeddings only")
    pos = np.array(init, dtype=np.float32, order="C", copy=True)
    ref = np.ascontiguousarray(reference_embedding, dtype=np.float32)
    _layout(
        pos, np.ascontiguousarray(idx, dtype=np.int32), np.ascontiguousarray(epochs_per_sample), ref,
        np.uint64(seed), np.uint64(event_offset), int(n_epochs), float(a), float(b), float(gamma),
        float(initial_alpha), float(negative_sample_rate),
    )
    return pos
