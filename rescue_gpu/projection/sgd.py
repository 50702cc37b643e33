"""Edge schedule and SGD layout of new events against a fixed reference embedding.

A port of umap-learn's ``optimize_layout_euclidean`` with ``move_other=False`` as
used by ``UMAP.transform``: same epoch schedule, gradients, clipping and learning-rate
decay. Each event owns its edges and only its own coordinates move, so events are
optimised independently (one ``prange`` iteration per event, all epochs inside).

The one deliberate difference is the random number generator for negative samples:
a counter-based hash of ``(seed, event index, epoch, edge, sample)``, so results do
not depend on chunking, thread count or launch shape, and the CUDA kernel in
:mod:`._cupy_kernels` draws the very same numbers.
"""

from __future__ import annotations

import numba
import numpy as np

from ..device import array_module

__all__ = ["event_key", "rand_below", "edge_schedule", "optimize_layout"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_S20, _S40 = np.uint64(20), np.uint64(40)


@numba.njit(inline="always", cache=True)
def _mix64(z: np.uint64) -> np.uint64:
    """splitmix64 finaliser: a bijective avalanche of 64 bits."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(inline="always", cache=True)
def event_key(seed: np.uint64, event: np.uint64) -> np.uint64:
    """Per-event RNG key from the seed and the event's global index."""
    return _mix64(_mix64(seed * _GOLDEN + _GOLDEN) ^ event)


@numba.njit(inline="always", cache=True)
def rand_below(key: np.uint64, epoch: np.uint64, edge: np.uint64, sample: np.uint64, n: np.uint64) -> np.int64:
    """Uniform integer in ``[0, n)`` from ``(key, epoch, edge, sample)``; ``n < 2**32``.

    The counter packs epoch (24 bits), edge (20) and sample (20); the top 32 bits of the
    hash are mapped to the range by a multiply-shift (Lemire), no division.
    """
    h = _mix64(key ^ ((epoch << _S40) | (edge << _S20) | sample))
    return np.int64(((h >> _S32) * n) >> _S32)


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


@numba.njit(inline="always", cache=True)
def _clip(v: float) -> float:
    return 4.0 if v > 4.0 else (-4.0 if v < -4.0 else v)


@numba.njit(cache=True)
def _attract(cx, cy, ox, oy, a, b, alpha):  # noqa: ANN001, ANN202 - numba scalars
    dx, dy = np.float32(cx - ox), np.float32(cy - oy)
    d2 = dx * dx + dy * dy
    g = 0.0
    if d2 > 0.0:
        g = -2.0 * a * b * d2 ** (b - 1.0) / (a * d2**b + 1.0)
    cx = np.float32(cx + _clip(g * dx) * alpha)
    cy = np.float32(cy + _clip(g * dy) * alpha)
    return cx, cy


@numba.njit(cache=True)
def _repel(cx, cy, ox, oy, a, b, gamma, alpha):  # noqa: ANN001, ANN202 - numba scalars
    dx, dy = np.float32(cx - ox), np.float32(cy - oy)
    d2 = dx * dx + dy * dy
    if d2 > 0.0:
        g = 2.0 * gamma * b / ((0.001 + d2) * (a * d2**b + 1.0))
        if g > 0.0:
            cx = np.float32(cx + _clip(g * dx) * alpha)
            cy = np.float32(cy + _clip(g * dy) * alpha)
    return cx, cy


@numba.njit(cache=True)
def _layout_event(
    pos: np.ndarray, idx: np.ndarray, eps: np.ndarray, ref: np.ndarray, key: np.uint64,
    n_epochs: int, a: float, b: float, gamma: float, alpha0: float, neg_rate: float,
) -> None:
    """All epochs for one event (2-d output); edges in neighbour order within each epoch."""
    k = idx.shape[0]
    n_ref = np.uint64(ref.shape[0])
    next_s = eps.copy()
    eps_neg = eps / neg_rate
    next_neg = eps_neg.copy()
    cx, cy = pos[0], pos[1]
    alpha = alpha0
    for n in range(n_epochs):
        for e in range(k):
            if eps[e] <= 0.0 or next_s[e] > n:
                continue
            t = idx[e]
            cx, cy = _attract(cx, cy, ref[t, 0], ref[t, 1], a, b, alpha)
            next_s[e] += eps[e]
            n_neg = int((n - next_neg[e]) / eps_neg[e])
            for p in range(n_neg):
                r = rand_below(key, np.uint64(n), np.uint64(e), np.uint64(p), n_ref)
                cx, cy = _repel(cx, cy, ref[r, 0], ref[r, 1], a, b, gamma, alpha)
            next_neg[e] += n_neg * eps_neg[e]
        alpha = alpha0 * (1.0 - float(n) / float(n_epochs))
    pos[0], pos[1] = cx, cy


@numba.njit(parallel=True, cache=True)
def _layout(
    pos: np.ndarray, idx: np.ndarray, eps: np.ndarray, ref: np.ndarray, seed: np.uint64, offset: np.uint64,
    n_epochs: int, a: float, b: float, gamma: float, alpha0: float, neg_rate: float,
) -> None:
    for i in numba.prange(pos.shape[0]):
        if np.isnan(pos[i, 0]):
            continue
        key = event_key(seed, offset + np.uint64(i))
        _layout_event(pos[i], idx[i], eps[i], ref, key, n_epochs, a, b, gamma, alpha0, neg_rate)


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
