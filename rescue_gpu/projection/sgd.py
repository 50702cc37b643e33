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
from ._kernels import event_key, layout_event, rand_below

__all__ = ["event_key", "rand_below", "edge_schedule", "optimize_layout"]


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


@numba.njit(parallel=True, cache=True)
def _layout(
    pos: np.ndarray, idx: np.ndarray, eps: np.ndarray, ref: np.ndarray, seed: np.uint64, offset: np.uint64,
    n_epochs: int, a: float, b: float, gamma: float, alpha0: float, neg_rate: float,
) -> None:
    for i in numba.prange(pos.shape[0]):
        if np.isnan(pos[i, 0]):
            continue
        key = event_key(seed, offset + np.uint64(i))
        k = idx.shape[1]
        next_s = np.empty(k, dtype=np.float64)
        next_neg = np.empty(k, dtype=np.float64)
        layout_event(pos[i], idx[i], eps[i], ref, k, key, n_epochs, a, b, gamma, alpha0, neg_rate, next_s, next_neg)


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
