"""Per-event math of the transform: one source for the CPU (numba.njit) and the GPU (numba.cuda).

Every function here is plain Python on scalars and array rows, allocates nothing, and is
compiled twice (DESIGN.md principle 11):

* at import, by ``numba.njit`` -- the module names below are those CPU dispatchers, which
  the CPU drivers in :mod:`.neighbors`, :mod:`.fuzzy` and :mod:`.sgd` call from ``prange``
  loops;
* on demand, by ``numba.cuda.jit(device=True)`` -- :func:`device_functions` re-binds the
  same code objects to a namespace of device functions, which the kernels in
  :mod:`._cuda` call (one thread per event). Under ``NUMBA_ENABLE_CUDASIM=1`` those
  kernels run on the CPU, so CI executes the GPU path and checks it against the CPU path.

Arithmetic is written with explicit ``np.float32``/``np.float64`` casts wherever a
float32 value meets a float64 one: numba promotes to float64 there, and the casts make
the simulator (numpy scalars, NEP 50 promotion) do the same, so the two paths agree to the
last bit except where ``exp`` of a float32 differs between ``expf`` and a rounded double
``exp``. Only ``math`` functions are used (they exist on both targets).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

__all__ = ["MAX_K", "device_functions", "SOURCES"]

MAX_K = 128  # largest n_neighbors of the GPU kernels (per-thread local arrays)
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
_FLOATMAX = np.finfo(np.float32).max

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_S20, _S40 = np.uint64(20), np.uint64(40)

SOURCES: dict[str, Callable[..., Any]] = {}


def _per_event(inline: bool = False) -> Callable[[Callable[..., Any]], Any]:
    """Register ``fn`` as shared per-event math and return its CPU (njit) dispatcher."""

    def wrap(fn: Callable[..., Any]) -> Any:
        SOURCES[fn.__name__] = fn
        return numba.njit(cache=True, inline="always" if inline else "never")(fn)

    return wrap


# ---------------------------------------------------------------- counter-based RNG


@_per_event(inline=True)
def mix64(z):  # noqa: ANN001, ANN201 - numba scalars
    """splitmix64 finaliser: a bijective avalanche of 64 bits."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@_per_event(inline=True)
def event_key(seed, event):  # noqa: ANN001, ANN201
    """Per-event RNG key from the seed and the event's global index."""
    return mix64(mix64(seed * _GOLDEN + _GOLDEN) ^ event)


@_per_event(inline=True)
def rand_below(key, epoch, edge, sample, n):  # noqa: ANN001, ANN201
    """Uniform integer in ``[0, n)`` from ``(key, epoch, edge, sample)``; ``n < 2**32``.

    The counter packs epoch (24 bits), edge (20) and sample (20); the top 32 bits of the
    hash are mapped to the range by a multiply-shift (Lemire), no division.
    """
    h = mix64(key ^ ((epoch << _S40) | (edge << _S20) | sample))
    return np.int64(((h >> _S32) * n) >> _S32)


# ---------------------------------------------------------------- neighbours


@_per_event(inline=True)
def insert_sorted(best_d, best_i, k, v, j):  # noqa: ANN001, ANN201
    """Insert ``(v, j)`` into a sorted top-k list (length ``k``) whose last entry ``v`` beats."""
    p = k - 1
    while p > 0 and best_d[p - 1] > v:
        best_d[p] = best_d[p - 1]
        best_i[p] = best_i[p - 1]
        p -= 1
    best_d[p] = v
    best_i[p] = j


@_per_event()
def merge_tile_row(dot_t, i, xi, yy, m, col0, best_d, best_i, k):  # noqa: ANN001, ANN201
    """Merge column ``i`` of a ``(tile, rows)`` dot-product block into one event's top-k list.

    Candidate key ``||x||^2 + ||y||^2 - 2 x.y`` in float32 (ranking only; distances are
    recomputed exactly afterwards).
    """
    for j in range(m):
        v = xi + yy[j] - np.float32(2.0) * dot_t[j, i]
        if v < best_d[k - 1]:
            insert_sorted(best_d, best_i, k, v, col0 + j)


@_per_event()
def pair_distance(x, i, y, j):  # noqa: ANN001, ANN201
    """``||x[i] - y[j]||``: float64 sum of squares, float32 result."""
    s = np.float64(0.0)
    for c in range(x.shape[1]):
        diff = np.float64(x[i, c]) - np.float64(y[j, c])
        s += diff * diff
    return np.float32(math.sqrt(s))


@_per_event()
def resort_row(dist, idx, k):  # noqa: ANN001, ANN201
    """Sort one row by (distance, index) in place: stable insertion sort, rows are short."""
    for j in range(1, k):
        dv = dist[j]
        iv = idx[j]
        p = j
        while p > 0 and (dist[p - 1] > dv or (dist[p - 1] == dv and idx[p - 1] > iv)):
            dist[p] = dist[p - 1]
            idx[p] = idx[p - 1]
            p -= 1
        dist[p] = dv
        idx[p] = iv


# ---------------------------------------------------------------- fuzzy weights and start


@_per_event()
def nth_positive(row, k, n):  # noqa: ANN001, ANN201
    """The ``n``-th (0-based) strictly positive entry of ``row[:k]`` (0 when there is none)."""
    seen = 0
    for j in range(k):
        if row[j] > 0.0:
            if seen == n:
                return row[j]
            seen += 1
    return np.float32(0.0)


@_per_event()
def rho_of(row, k, local_connectivity):  # noqa: ANN001, ANN201
    """Distance to the ``local_connectivity``-th nearest non-zero neighbour (interpolated)."""
    nnz = 0
    top = np.float32(0.0)
    for j in range(k):
        if row[j] > 0.0:
            nnz += 1
            if nnz == 1 or row[j] > top:
                top = row[j]
    rho = np.float32(0.0)
    if nnz >= local_connectivity:
        index = int(math.floor(local_connectivity))
        interpolation = np.float64(local_connectivity) - np.float64(index)
        if index > 0:
            prev = nth_positive(row, k, index - 1)
            rho = prev
            if interpolation > SMOOTH_K_TOLERANCE:
                cur = nth_positive(row, k, index)
                rho += np.float32(interpolation * np.float64(cur - prev))
        elif nnz > 0:
            rho = np.float32(interpolation * np.float64(nth_positive(row, k, 0)))
    elif nnz > 0:
        rho = top
    return rho


@_per_event()
def sigma_of(row, k, rho, target, n_iter):  # noqa: ANN001, ANN201
    """Binary search for the bandwidth whose membership sum (from the 2nd neighbour) is ``target``."""
    lo = np.float64(0.0)
    hi = np.float64(np.inf)
    mid = np.float64(1.0)
    for _ in range(n_iter):
        psum = np.float64(0.0)
        for j in range(1, k):
            d = row[j] - rho
            if d > 0:
                psum += math.exp(-(np.float64(d) / mid))
            else:
                psum += 1.0
        if math.fabs(psum - target) < SMOOTH_K_TOLERANCE:
            break
        if psum > target:
            hi = mid
            mid = (lo + hi) / 2.0
        else:
            lo = mid
            mid = mid * 2 if hi >= _FLOATMAX else (lo + hi) / 2.0
    return mid


@_per_event()
def row_mean(row, k):  # noqa: ANN001, ANN201
    """Mean of ``row[:k]`` exactly as numba's ``np.mean`` of a float32 row (float32 sum)."""
    s = np.float32(0.0)
    for j in range(k):
        s += row[j]
    return np.float32(np.float64(s) / np.float64(k))


@_per_event()
def smooth_row(row, k, local_connectivity, target, n_iter, mean_distances):  # noqa: ANN001, ANN201
    """``(sigma, rho)`` of one event (umap-learn's ``smooth_knn_dist`` for one row)."""
    rho = rho_of(row, k, local_connectivity)
    sig = np.float32(sigma_of(row, k, rho, target, n_iter))
    if rho > 0.0:
        floor = np.float64(MIN_K_DIST_SCALE) * np.float64(row_mean(row, k))
    else:
        floor = np.float64(MIN_K_DIST_SCALE) * np.float64(mean_distances)
    if sig < floor:
        sig = np.float32(floor)
    return sig, rho


@_per_event()
def edge_weight(idx_j, d_j, rho, sigma):  # noqa: ANN001, ANN201
    """Membership ``exp(-(d - rho) / sigma)`` (1 where ``d <= rho``); 0 for a disconnected edge."""
    if idx_j < 0:
        return np.float32(0.0)
    d = d_j - rho
    if d <= 0.0 or sigma == 0.0:
        return np.float32(1.0)
    return np.float32(math.exp(-(d / sigma)))


@_per_event()
def init_row(idx_row, w_row, k, embedding, out):  # noqa: ANN001, ANN201
    """Weighted mean of the neighbours' coordinates; a weight of exactly 1 snaps to that neighbour.

    Among several weight-1 neighbours umap-learn takes the lowest reference index
    (its CSR row is sorted by column); no usable neighbour gives NaN.
    """
    total = np.float32(0.0)
    snap = -1
    for j in range(k):
        if idx_row[j] >= 0 and w_row[j] > 0.0:
            total += w_row[j]
            if w_row[j] == 1.0 and (snap < 0 or idx_row[j] < snap):
                snap = idx_row[j]
    if snap >= 0:
        for c in range(out.shape[0]):
            out[c] = embedding[snap, c]
        return
    if total == 0.0:
        for c in range(out.shape[0]):
            out[c] = np.nan
        return
    for c in range(out.shape[0]):
        out[c] = 0.0
    for j in range(k):
        if idx_row[j] >= 0 and w_row[j] > 0.0:
            for c in range(out.shape[0]):
                out[c] += w_row[j] / total * embedding[idx_row[j], c]


# ---------------------------------------------------------------- SGD


@_per_event(inline=True)
def clip4(v):  # noqa: ANN001, ANN201
    """Clip a gradient step to [-4, 4] (float32)."""
    return np.float32(4.0) if v > np.float32(4.0) else (np.float32(-4.0) if v < np.float32(-4.0) else v)


@_per_event(inline=True)
def attract(cx, cy, ox, oy, a, b, alpha):  # noqa: ANN001, ANN201
    """One attractive step of ``(cx, cy)`` towards a neighbour at ``(ox, oy)`` (float32 math)."""
    dx = np.float32(cx - ox)
    dy = np.float32(cy - oy)
    d2 = dx * dx + dy * dy
    if d2 > np.float32(0.0):
        pb = d2 ** b
        g = np.float32(-2.0) * a * b * (pb / d2) / (a * pb + np.float32(1.0))
        cx = cx + clip4(g * dx) * alpha
        cy = cy + clip4(g * dy) * alpha
    return cx, cy


@_per_event(inline=True)
def repel(cx, cy, ox, oy, a, b, gamma, alpha):  # noqa: ANN001, ANN201
    """One repulsive step of ``(cx, cy)`` away from a negative sample at ``(ox, oy)`` (float32 math)."""
    dx = np.float32(cx - ox)
    dy = np.float32(cy - oy)
    d2 = dx * dx + dy * dy
    if d2 > np.float32(0.0):
        g = np.float32(2.0) * gamma * b / ((np.float32(0.001) + d2) * (a * d2 ** b + np.float32(1.0)))
        if g > np.float32(0.0):
            cx = cx + clip4(g * dx) * alpha
            cy = cy + clip4(g * dy) * alpha
    return cx, cy


@_per_event()
def layout_event(pos, idx, eps, ref, k, key, n_epochs, a, b, gamma, alpha0, neg_rate, next_s, next_neg):  # noqa: ANN001, ANN201, PLR0913
    """All epochs for one event (2-d output); edges in neighbour order within each epoch.

    ``next_s``/``next_neg`` are float64 scratch rows of length >= ``k``.
    """
    n_ref = np.uint64(ref.shape[0])
    a = np.float32(a)
    b = np.float32(b)
    gamma = np.float32(gamma)
    alpha0f = np.float64(alpha0)
    neg_rate = np.float64(neg_rate)
    for e in range(k):
        next_s[e] = eps[e]
        next_neg[e] = eps[e] / neg_rate
    cx = pos[0]
    cy = pos[1]
    alpha = np.float32(alpha0f)
    for n in range(n_epochs):
        for e in range(k):
            if eps[e] <= 0.0 or next_s[e] > n:
                continue
            t = idx[e]
            cx, cy = attract(cx, cy, ref[t, 0], ref[t, 1], a, b, alpha)
            next_s[e] += eps[e]
            eps_neg = eps[e] / neg_rate
            n_neg = int((np.float64(n) - next_neg[e]) / eps_neg)
            for p in range(n_neg):
                r = rand_below(key, np.uint64(n), np.uint64(e), np.uint64(p), n_ref)
                cx, cy = repel(cx, cy, ref[r, 0], ref[r, 1], a, b, gamma, alpha)
            next_neg[e] += np.float64(n_neg) * eps_neg
        alpha = np.float32(alpha0f * (1.0 - np.float64(n) / np.float64(n_epochs)))
    pos[0] = cx
    pos[1] = cy


def device_functions() -> dict[str, Any]:
    """The functions above compiled by ``numba.cuda.jit(device=True)``, by name.

    The same code objects, re-bound to a namespace in which every shared name is the
    device version, so a device function calls device functions. Compiled lazily (at
    the first kernel launch), cached for the process.
    """
    global _DEVICE
    if _DEVICE is None:
        from numba import cuda

        ns: dict[str, Any] = {k: v for k, v in globals().items() if k not in SOURCES}
        for name, fn in SOURCES.items():
            clone = types.FunctionType(fn.__code__, ns, name, fn.__defaults__, fn.__closure__)
            ns[name] = cuda.jit(device=True)(clone)
        _DEVICE = {name: ns[name] for name in SOURCES}
    return _DEVICE


_DEVICE: dict[str, Any] | None = None
