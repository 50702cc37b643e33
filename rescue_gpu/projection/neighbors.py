"""Euclidean k-nearest neighbours of new events among a reference's training events.

Four CPU methods (a KD-tree; a certified tiled scan with pruning; a fused brute-force scan
with a streaming top-k, all exact; and, for large references, an approximate graph search
like umap-learn's) and one GPU method (tiled cupy GEMM with a streaming top-k numba.cuda kernel). All return the neighbours
of each event sorted by increasing distance, distances recomputed directly as
``||x - y||`` in float64 and stored as float32 (the GEMM identity
``||x||^2 + ||y||^2 - 2 x.y`` only selects candidates).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numba
import numpy as np
from scipy.spatial import cKDTree

from ..errors import ProjectionError
from ._kernels import insert_sorted, pair_distance, resort_row

KnnMethod = Literal["auto", "tiled", "graph", "kdtree", "brute"]

__all__ = ["KnnMethod", "knn_cpu", "knn_gpu", "exact_distances", "choose_method", "TILE", "EXTRA_CANDIDATES",
           "GRAPH_MIN_REF", "GRAPH_EPS", "index_builds"]

TILE = 128  # reference events per tile of the "tiled" method (KD-tree leaf order)
_N_FIRST = 4  # tiles of smallest lower bound scanned first, for a tight threshold early
EXTRA_CANDIDATES = 8  # candidates beyond k taken by the float32 ranking, re-ranked exactly
_FMAX = np.float32(np.finfo(np.float32).max)
_PAD = np.float32(3.0e38)  # ||y||^2 of padding slots: finite (no inf under fastmath), never kept
_U32 = 2.0**-24  # unit roundoff of float32
_SLACK = 1e-12  # relative slack for float64 evaluation of the bounds (errors ~1e-16)
_FAST = {"contract", "reassoc", "nsz", "arcp"}  # fastmath without nnan/ninf: comparisons stay IEEE


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
            out[i, j] = pair_distance(events, i, train, idx[i, j])
    return out


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
                    insert_sorted(best_d, best_i, k, acc[j], c0 + j)
        out[i] = best_i
    return out


@numba.njit(parallel=True, cache=True)
def _resort(dist: np.ndarray, idx: np.ndarray) -> None:
    """Sort each row by (distance, index) in place."""
    for i in numba.prange(dist.shape[0]):
        resort_row(dist[i], idx[i], dist.shape[1])


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



# ---------------------------------------------------------------- per-reference structures

_T = TypeVar("_T")
_CACHE: dict[tuple[int, str], tuple[weakref.ref, Any]] = {}
_BUILDS: dict[str, int] = {}


def _cached(train: np.ndarray, build: Callable[[np.ndarray], _T]) -> _T:
    """``build(train)``, computed once per reference array (while it lives) and per ``build``.

    The search structures of a reference (tile layout, graph) are rebuilt only for a new
    array: a worker scoring many samples against one reference builds them once. Keyed on
    the array object, so a reference must not be changed in place.
    """
    key = (id(train), getattr(build, "__name__", repr(build)))
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is train:
        return hit[1]
    value = build(train)
    _BUILDS[key[1]] = _BUILDS.get(key[1], 0) + 1
    _CACHE[key] = (weakref.ref(train, lambda _ref, key=key: _CACHE.pop(key, None)), value)
    return value


def index_builds() -> dict[str, int]:
    """How many times each per-reference structure was built in this process (for tests and ``rescue bench``)."""
    return dict(_BUILDS)


# ---------------------------------------------------------------- certified tiled scan


class _TiledReference:
    """The reference laid out for :func:`_tiled_kernel` (built once per reference array, :func:`_cached`).

    Reference events are centred on their float64 mean, rounded to float32 (``y'``), put in
    KD-tree leaf order and cut into tiles of :data:`TILE` consecutive events, each stored
    transposed ``(D, TILE)`` so the scan over a tile vectorises. Each tile has a float64
    centre and radius (an upper bound on ``||y' - centre||``), from which a query gets a lower
    bound on its distance to every event in the tile.
    """

    def __init__(self, train: np.ndarray, tile: int = TILE) -> None:
        n_ref, d = train.shape
        self.mu = train.mean(axis=0, dtype=np.float64)
        y = (train - self.mu).astype(np.float32)
        perm = cKDTree(y, leafsize=tile).indices.astype(np.int64)
        n_tiles = -(-n_ref // tile)
        pad = n_tiles * tile - n_ref
        self.perm = np.concatenate([perm, np.full(pad, -1, np.int64)]).astype(np.int32)
        yp = np.zeros((n_tiles * tile, d), np.float32)
        yp[:n_ref] = y[perm]
        yy = np.full(n_tiles * tile, _PAD, np.float32)
        yy[:n_ref] = np.einsum("ij,ij->i", yp[:n_ref].astype(np.float64), yp[:n_ref].astype(np.float64))
        self.yy = yy.reshape(n_tiles, tile)
        self.yt = np.ascontiguousarray(yp.reshape(n_tiles, tile, d).transpose(0, 2, 1))
        blocks = yp.reshape(n_tiles, tile, d).astype(np.float64)
        valid = (self.perm >= 0).reshape(n_tiles, tile)
        self.centres = (blocks * valid[..., None]).sum(axis=1) / valid.sum(axis=1)[:, None]
        spread = np.where(valid, ((blocks - self.centres[:, None, :]) ** 2).sum(axis=2), 0.0)
        self.radii = np.sqrt(spread.max(axis=1)) * (1 + _SLACK) + 1e-300  # float64 rounding covered
        self.y_max = float(np.sqrt(yy[:n_ref].astype(np.float64).max())) * (1 + 1e-6)  # yy is rounded


@numba.njit(parallel=True, fastmath=_FAST, cache=True)
def _tiled_kernel(
    x: np.ndarray, events: np.ndarray, train: np.ndarray, yt: np.ndarray, yy: np.ndarray,
    centres: np.ndarray, radii: np.ndarray, perm: np.ndarray, y_max: float, k: int, kk: int,
    gamma: float, u1: float, n_first: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates by a pruned float32 scan, exact re-ranking, and a per-row certificate.

    For each query ``x'`` (centred float32) the tiles are visited in increasing order of the
    lower bound ``||x' - centre|| - radius`` (the ``n_first`` smallest first, then all others
    in layout order); the ``kk = k + m`` smallest float32 values of
    ``r = ||y'||^2 - 2 x'.y'`` are kept; a tile is skipped (and so are all later ones) once
    its bound alone shows that none of its events can beat the current ``kk``-th value.
    The candidates' distances are then recomputed in float64 from the original events,
    sorted by (distance, index), and the first ``k`` kept.

    Certificate: with ``r*`` the largest kept value, every other reference event ``j`` has
    ``||x' - y'_j||^2 >= ||x'||^2 + r* - E_j``, ``E_j = 2 gamma (||y'_j||^2 + ||x'|| ||y'_j||)``
    bounding the float32 error of ``r`` (any summation order, ``gamma = gamma_{D+2}``),
    and centring moves a distance by at most ``u1 (||x'|| + ||y'_j||)``. Events with
    ``||y'_j|| > T`` are at least ``T (1 - u1) - ||x'|| (1 + u1)`` away, so with ``T`` set to
    make that the k-th exact distance ``L``, the row is certified when
    ``sqrt(||x'||^2 + r* - E(T)) - u1 (||x'|| + T) > L``: no event outside the candidates
    is as close as the k-th neighbour. Rows that fail get ``ok = False``.
    """
    n, d = x.shape
    n_tiles, dpad, w_tile = yt.shape
    out = np.empty((n, k), dtype=np.int32)
    ok = np.empty(n, dtype=np.bool_)
    for i in numba.prange(n):
        lb = np.empty(n_tiles, dtype=np.float64)
        xx = 0.0
        for c in range(d):
            xx += np.float64(x[i, c]) * np.float64(x[i, c])
        for t in range(n_tiles):
            s = 0.0
            for c in range(d):
                diff = np.float64(x[i, c]) - centres[t, c]
                s += diff * diff
            lb[t] = math.sqrt(s) * (1.0 - _SLACK) - radii[t]
        first = np.full(n_first, -1, dtype=np.int64)  # the n_first tiles of smallest bound, sorted
        first_lb = np.full(n_first, np.inf, dtype=np.float64)
        for t in range(n_tiles):
            if lb[t] < first_lb[n_first - 1]:
                p = n_first - 1
                while p > 0 and first_lb[p - 1] > lb[t]:
                    first_lb[p] = first_lb[p - 1]
                    first[p] = first[p - 1]
                    p -= 1
                first_lb[p] = lb[t]
                first[p] = t
        xm2 = np.empty(dpad, dtype=np.float32)
        for c in range(dpad):
            xm2[c] = np.float32(-2.0) * x[i, c] if c < d else np.float32(0.0)
        best_d = np.full(kk, _FMAX, dtype=np.float32)
        best_i = np.zeros(kk, dtype=np.int32)
        acc = np.empty(w_tile, dtype=np.float32)
        for o in range(n_first + n_tiles):  # the nearest tiles first (a tight threshold), then the rest in order
            if o < n_first:
                t = first[o]
                if t < 0:
                    continue
            else:
                t = o - n_first
                seen = False
                for f in range(n_first):
                    seen |= first[f] == t
                if seen:
                    continue
            b = lb[t]
            if b > 0.0 and b * b * (1.0 - _SLACK) >= (xx + np.float64(best_d[kk - 1])) * (1.0 + _SLACK):
                continue  # no event of this tile can beat the current kk-th value
            tt = yt[t]
            acc[:] = yy[t]
            for c in range(dpad):
                xc = xm2[c]
                row = tt[c]
                for w in range(w_tile):
                    acc[w] += xc * row[w]
            thr = best_d[kk - 1]
            hits = 0
            for w in range(w_tile):  # a vectorised count first: most tiles hold no new candidate
                hits += acc[w] < thr
            if hits:
                for w in range(w_tile):
                    if acc[w] < best_d[kk - 1]:
                        insert_sorted(best_d, best_i, kk, acc[w], t * w_tile + w)
        r_star = np.float64(best_d[kk - 1])
        cand_d = np.empty(kk, dtype=np.float64)
        cand_i = np.empty(kk, dtype=np.int32)
        sound = True
        for j in range(kk):
            jj = perm[best_i[j]]
            if jj < 0:  # a padding slot (cannot happen with kk <= N; refuse rather than trust)
                sound = False
                jj = 0
            s = 0.0
            for c in range(d):
                diff = np.float64(events[i, c]) - np.float64(train[jj, c])
                s += diff * diff
            cand_d[j] = s
            cand_i[j] = jj
        resort_row(cand_d, cand_i, kk)  # sort by (distance, index)
        out[i] = cand_i[:k]
        nx = math.sqrt(xx) * (1.0 + _SLACK)
        big_l = math.sqrt(cand_d[k - 1]) * (1.0 + _SLACK)
        big_t = min((big_l + nx * (1.0 + u1)) / (1.0 - u1), y_max)
        err = 2.0 * gamma * (big_t * big_t + nx * big_t)
        inner = xx + r_star - err
        inner -= _SLACK * (xx + abs(r_star) + err)
        ok[i] = sound and inner > 0.0 and math.sqrt(inner) - u1 * (nx + big_t) > big_l
    return out, ok


@numba.njit(parallel=True, cache=True)
def _exhaustive_float64(events: np.ndarray, train: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Top-k by (float64 distance, index) over every reference event, for the given rows."""
    out = np.empty((rows.shape[0], k), dtype=np.int32)
    for r in numba.prange(rows.shape[0]):
        i = rows[r]
        best_d = np.full(k, np.inf, dtype=np.float64)
        best_i = np.zeros(k, dtype=np.int32)
        for j in range(train.shape[0]):
            s = 0.0
            for c in range(train.shape[1]):
                diff = np.float64(events[i, c]) - np.float64(train[j, c])
                s += diff * diff
            if s < best_d[k - 1]:  # strict: among equal distances the lower index stays
                insert_sorted(best_d, best_i, k, s, j)
        out[r] = best_i
    return out


def _float32_gamma(n_terms: int) -> float:
    """``gamma_n = n u / (1 - n u)`` for float32 (Higham's bound on an n-term dot product)."""
    return n_terms * _U32 / (1.0 - n_terms * _U32)


def _knn_tiled(layout: _TiledReference, train: np.ndarray, events: np.ndarray, k: int,
               stats: dict[str, int] | None) -> np.ndarray:
    """Exact neighbour indices of one event block by the certified tiled scan (+ fallback)."""
    kk = min(k + EXTRA_CANDIDATES, train.shape[0])
    x = (events - layout.mu).astype(np.float32)
    gamma = _float32_gamma(layout.yt.shape[1] + 2)
    u1 = _U32 * (1.0 + 1e-6)
    # queries in KD-tree leaf order: neighbouring queries on one thread scan the same tiles (cache)
    order = cKDTree(x, leafsize=TILE).indices if len(x) > TILE else np.arange(len(x))
    idx_sorted, ok_sorted = _tiled_kernel(
        np.ascontiguousarray(x[order]), np.ascontiguousarray(events[order]), train, layout.yt, layout.yy,
        layout.centres, layout.radii, layout.perm, layout.y_max, k, kk, gamma, u1, _N_FIRST)
    idx = np.empty_like(idx_sorted)
    idx[order] = idx_sorted
    ok = np.empty_like(ok_sorted)
    ok[order] = ok_sorted
    bad = np.flatnonzero(~ok).astype(np.int64)
    if bad.size:
        idx[bad] = _exhaustive_float64(events, train, bad, k)
    if stats is not None:
        stats["rows"] = stats.get("rows", 0) + int(events.shape[0])
        stats["fallback_rows"] = stats.get("fallback_rows", 0) + int(bad.size)
    return idx


# ---------------------------------------------------------------- graph search (large references)

GRAPH_MIN_REF = 30_000  # "auto" uses the graph search from this many reference events (choose_method)
GRAPH_K = 16  # exact neighbours per reference event in the search graph (plus reverse edges)
GRAPH_DEGREE = 32  # edges kept per reference event, nearest first
GRAPH_EPS = 0.12  # search slack on squared distances, umap-learn's transform setting (pynndescent epsilon)
_GRAPH_BLOCK = 512  # queries per warm-start block (fixed, so the result does not depend on threads)
_GRAPH_PIVOTS = 256  # about this many reference events, one per KD-tree leaf, start every query's search
_HEAP = 4096  # capacity of a query's candidate heap (a push beyond it is dropped)


def _leaf_pivots(y: np.ndarray, leafsize: int) -> np.ndarray:
    """The first event of every leaf of a sliding-midpoint KD-tree of ``y`` (indices into ``y``).

    Sliding-midpoint splits cut an isolated cluster off early, so even a cluster smaller
    than a leaf has its own leaf, and its pivot: the graph (whose edges rarely leave such a
    cluster) is entered from the pivot nearest the query.
    """
    tree = cKDTree(y, leafsize=leafsize)
    stack, starts = [tree.tree], []
    while stack:
        node = stack.pop()
        if node.lesser is None:
            starts.append(node.start_idx)
        else:
            stack += [node.greater, node.lesser]
    return np.ascontiguousarray(tree.indices[np.sort(np.asarray(starts, dtype=np.int64))], dtype=np.int32)


class _GraphIndex:
    """The reference's search graph (built once per reference array, see :func:`_cached`).

    The reference events are renumbered in KD-tree leaf order (``y = train[perm]``), so
    that graph neighbours, and the events consecutive queries visit, sit close in memory
    (the search is bound by memory latency, not arithmetic). ``indptr``/``nbrs``: CSR
    adjacency, in that order, of each event's :data:`GRAPH_K` exact neighbours (the tiled
    scan of the reference against itself) plus the events that have it among theirs
    (reverse edges), at most :data:`GRAPH_DEGREE`, nearest first, ties by index.
    ``pivots``: one event per KD-tree leaf (:func:`_leaf_pivots`, about :data:`_GRAPH_PIVOTS`),
    also stored transposed, the start of every query's search.
    """

    def __init__(self, train: np.ndarray) -> None:
        n = train.shape[0]
        kg = min(GRAPH_K, n - 1)
        self.perm = np.ascontiguousarray(cKDTree(train, leafsize=TILE).indices, dtype=np.int32)
        y = np.ascontiguousarray(train[self.perm])
        self.y = y
        idx = _knn_tiled(_TiledReference(y), y, y, kg + 1, None)
        dist = exact_distances(y, y, idx)
        _resort(dist, idx)
        self_col = idx == np.arange(n, dtype=np.int32)[:, None]
        drop = np.where(self_col.any(axis=1), self_col.argmax(axis=1), kg)  # the event itself (or the last)
        keep = np.ones_like(self_col)
        keep[np.arange(n), drop] = False
        fwd_i, fwd_d = idx[keep].reshape(n, kg), dist[keep].reshape(n, kg)
        src = np.concatenate([np.repeat(np.arange(n, dtype=np.int32), kg), fwd_i.ravel()])
        dst = np.concatenate([fwd_i.ravel(), np.repeat(np.arange(n, dtype=np.int32), kg)])
        d = np.concatenate([fwd_d.ravel(), fwd_d.ravel()])
        order = np.lexsort((dst, d, src))  # by source, then distance, then index
        src, dst = src[order], dst[order]
        first = np.ones(src.size, dtype=bool)
        first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])  # an edge both ways once
        src, dst = src[first], dst[first]
        starts = np.searchsorted(src, np.arange(n + 1))
        rank = np.arange(src.size) - starts[src]
        src, dst = src[rank < GRAPH_DEGREE], dst[rank < GRAPH_DEGREE]
        self.indptr = np.searchsorted(src, np.arange(n + 1)).astype(np.int64)
        self.nbrs = np.ascontiguousarray(dst, dtype=np.int32)
        self.pivots = _leaf_pivots(y, max(1, 2 * n // _GRAPH_PIVOTS))
        self.pivots_t = np.ascontiguousarray(y[self.pivots].T, dtype=np.float32)


@numba.njit(inline="always")
def _heap_push(hd: np.ndarray, hi: np.ndarray, n: int, v: float, j: int) -> int:
    """Push ``(v, j)`` on a binary min-heap of size ``n``; returns the new size (dropped when full)."""
    if n >= hd.shape[0]:
        return n
    p = n
    while p > 0:
        q = (p - 1) // 2
        if hd[q] <= v:
            break
        hd[p] = hd[q]
        hi[p] = hi[q]
        p = q
    hd[p] = v
    hi[p] = j
    return n + 1


@numba.njit(inline="always")
def _heap_pop(hd: np.ndarray, hi: np.ndarray, n: int) -> int:
    """Remove the root of a binary min-heap of size ``n`` (read it first); returns the new size."""
    n -= 1
    v, j = hd[n], hi[n]
    p = 0
    while True:
        c = 2 * p + 1
        if c >= n:
            break
        if c + 1 < n and hd[c + 1] < hd[c]:
            c += 1
        if hd[c] >= v:
            break
        hd[p] = hd[c]
        hi[p] = hi[c]
        p = c
    if n > 0:
        hd[p] = v
        hi[p] = j
    return n


@numba.njit(inline="always")
def _d2_f32(x: np.ndarray, i: int, train: np.ndarray, j: int) -> float:
    s = np.float32(0.0)
    for c in range(x.shape[1]):
        diff = x[i, c] - train[j, c]
        s += diff * diff
    return s


@numba.njit(inline="always")
def _d2_f64(x: np.ndarray, i: int, train: np.ndarray, j: int) -> float:
    s = 0.0
    for c in range(x.shape[1]):
        diff = np.float64(x[i, c]) - np.float64(train[j, c])
        s += diff * diff
    return s


@numba.njit(parallel=True, cache=True)
def _graph_kernel(x: np.ndarray, train: np.ndarray, indptr: np.ndarray, nbrs: np.ndarray, pivots: np.ndarray,
                  pivots_t: np.ndarray, k: int, kk: int, eps: float, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first search of the reference graph per query (pynndescent's query), top ``k`` re-ranked in float64.

    Each query starts from its nearest pivot and, within a block of ``block`` consecutive
    queries (in spatial order), from the previous query's ``kk`` results; the candidate
    nearest to the query is expanded while its squared distance lies within ``(1 + eps)``
    times the current ``kk``-th one (float32 search distances; pynndescent's rule, which
    umap-learn's transform runs with ``epsilon = 0.12``). The ``kk`` found are re-ranked by float64
    distance, ties by index, and the first ``k`` returned; ``ok`` is False for a query that
    found fewer than ``k`` events.
    """
    n, d = x.shape
    n_ref = train.shape[0]
    out = np.empty((n, k), dtype=np.int32)
    ok = np.empty(n, dtype=np.bool_)
    scale = np.float32(1.0 + eps)  # on squared distances, as pynndescent's euclidean search
    n_blocks = (n + block - 1) // block
    for b in numba.prange(n_blocks):
        stamp = np.zeros(n_ref, dtype=np.int32)  # stamp[j] == query + 1: j seen by that query
        hd = np.empty(_HEAP, dtype=np.float32)
        hi = np.empty(_HEAP, dtype=np.int32)
        res_d = np.empty(kk, dtype=np.float32)
        res_i = np.empty(kk, dtype=np.int32)
        prev = np.full(kk, -1, dtype=np.int32)
        cand_d = np.empty(kk, dtype=np.float64)
        cand_i = np.empty(kk, dtype=np.int32)
        for i in range(b * block, min(n, (b + 1) * block)):
            tag = i - b * block + 1
            res_d[:] = np.inf
            res_i[:] = -1
            best, bp = np.float32(np.inf), 0
            for p in range(pivots.shape[0]):
                s = np.float32(0.0)
                for c in range(d):
                    diff = x[i, c] - pivots_t[c, p]
                    s += diff * diff
                if s < best:
                    best, bp = s, p
            hn = 0
            for s_ in range(kk + 1):
                j = pivots[bp] if s_ == kk else prev[s_]
                if j < 0 or stamp[j] == tag:
                    continue
                stamp[j] = tag
                v = _d2_f32(x, i, train, j)
                hn = _heap_push(hd, hi, hn, v, j)
                if v < res_d[kk - 1]:
                    insert_sorted(res_d, res_i, kk, v, j)
            while hn > 0:
                dc, c = hd[0], hi[0]
                hn = _heap_pop(hd, hi, hn)
                if dc > scale * res_d[kk - 1]:
                    break
                for e in range(indptr[c], indptr[c + 1]):
                    j = nbrs[e]
                    if stamp[j] == tag:
                        continue
                    stamp[j] = tag
                    v = _d2_f32(x, i, train, j)
                    if v < scale * res_d[kk - 1]:
                        hn = _heap_push(hd, hi, hn, v, j)
                        if v < res_d[kk - 1]:
                            insert_sorted(res_d, res_i, kk, v, j)
            m = 0
            for j in range(kk):
                if res_i[j] >= 0:
                    cand_i[m] = res_i[j]
                    cand_d[m] = _d2_f64(x, i, train, res_i[j])
                    m += 1
            resort_row(cand_d, cand_i, m)
            ok[i] = m >= k  # fewer found (a component smaller than k): searched exhaustively instead
            for j in range(k):
                out[i, j] = cand_i[min(j, m - 1)] if m > 0 else 0
            prev[:] = res_i
    return out, ok


def _knn_graph(index: _GraphIndex, train: np.ndarray, events: np.ndarray, k: int) -> np.ndarray:
    """Neighbour indices of one event block by the graph search (queries in KD-tree leaf order).

    The search keeps ``k`` results (no extra candidates: it is approximate by design, and
    :data:`EXTRA_CANDIDATES` only serve the tiled scan's exact float32 re-ranking).
    """
    kk = min(k, train.shape[0])
    order = cKDTree(events, leafsize=TILE).indices if len(events) > TILE else np.arange(len(events))
    idx_sorted, ok_sorted = _graph_kernel(np.ascontiguousarray(events[order]), index.y, index.indptr, index.nbrs,
                                          index.pivots, index.pivots_t, k, kk, GRAPH_EPS, _GRAPH_BLOCK)
    idx = np.empty_like(idx_sorted)
    idx[order] = index.perm[idx_sorted]
    bad = np.flatnonzero(~ok_sorted)
    if bad.size:
        rows = np.asarray(order, dtype=np.int64)[bad]
        idx[rows] = _exhaustive_float64(events, train, rows, k)
    return idx


def choose_method(n_dims: int, n_ref: int, n_events: int) -> KnnMethod:
    """The CPU method ``"auto"`` resolves to: a function of the reference size alone.

    The tiled scan needed less CPU than the KD-tree in every shape measured (d = 10-15,
    N = 5,000-150,000, n = 200,000-500,000; benchmarks/RESULTS.md, issue 15); a reference
    of under two tiles gets the KD-tree. From :data:`GRAPH_MIN_REF` events the graph
    search wins: on the simulator's panel, 500,000 events, its kNN step took 6.1 s
    against 11.1 s at 30,000 reference events and 7.9 s against 34.0 s at 150,000
    (``rescue bench``, issue 15, session 7). The number of events does not enter, so a
    sample's coordinates do not depend on what else was scored.
    """
    del n_dims, n_events
    if n_ref >= GRAPH_MIN_REF:
        return "graph"
    return "tiled" if n_ref >= 2 * TILE else "kdtree"


def knn_cpu(
    train: np.ndarray,
    events: np.ndarray,
    k: int,
    *,
    chunk_size: int = 262_144,
    method: KnnMethod = "auto",
    stats: dict[str, int] | None = None,
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
        ``"tiled"`` (certified tiled scan: a pruned float32 scan picks ``k + 8``
        candidates, float64 re-ranking, a per-row error bound proves no other event is
        as close, rows it cannot prove are searched exhaustively in float64),
        ``"graph"`` (approximate, like umap-learn's transform: best-first search of the
        reference's neighbour graph, built once per reference array; :func:`_graph_kernel`),
        ``"kdtree"`` (scipy cKDTree, all cores), ``"brute"`` (fused float32 scan + top-k;
        may differ from the others on near ties), or ``"auto"`` (:func:`choose_method`).
        ``"tiled"`` and ``"kdtree"`` return the same neighbours except where two
        reference events are at exactly the same float64 distance.
    stats
        A dict that the ``"tiled"`` method fills with ``rows`` and ``fallback_rows``.

    Returns
    -------
    indices, distances
        ``(n, k)`` int32 and float32, each row sorted by (distance, index).
    """
    if method == "auto":
        method = choose_method(train.shape[1], train.shape[0], events.shape[0])
    if method not in ("tiled", "graph", "kdtree", "brute"):
        raise ProjectionError(f"knn method must be 'auto', 'tiled', 'graph', 'kdtree' or 'brute', got {method!r}")
    tree = cKDTree(train, leafsize=64) if method == "kdtree" else None  # 64: ~15% faster queries in 10-20 dims than 16
    layout = _cached(train, _TiledReference) if method == "tiled" else None
    graph = _cached(train, _GraphIndex) if method == "graph" else None
    idx = np.empty((events.shape[0], k), dtype=np.int32)
    for s in range(0, events.shape[0], chunk_size):
        block = events[s : s + chunk_size]
        if tree is not None:
            idx[s : s + len(block)] = _knn_kdtree(tree, block, k)
        elif layout is not None:
            idx[s : s + len(block)] = _knn_tiled(layout, train, block, k, stats)
        elif graph is not None:
            idx[s : s + len(block)] = _knn_graph(graph, train, block, k)
        else:
            idx[s : s + len(block)] = _knn_brute(train, block, k)
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
    xp: Any = None,
    launch: Any = None,
) -> tuple[Any, Any]:
    """Exact euclidean k-nearest neighbours on the GPU (cupy GEMMs, numba.cuda kernels).

    Distances come from tiled GEMMs (``||x||^2 + ||y||^2 - 2 x.y``, one reference tile
    at a time, never an ``n x N`` matrix) merged into running top-k lists by a kernel,
    then recomputed exactly for the chosen neighbours and sorted.

    Parameters
    ----------
    train, events
        float32 arrays ``(N, d)`` and ``(n, d)`` of ``xp``.
    k
        Number of neighbours.
    chunk_size, tile
        Events per block and reference events per tile (neither changes the result).
    xp
        Array module for the GEMMs: cupy (default) or numpy under the CUDA simulator.
    launch
        :class:`._cuda.Launch` (threads per block, block cap); default one thread per item.

    Returns
    -------
    indices, distances
        ``(n, k)`` int32 and float32 of ``xp``, each row sorted by increasing distance.
    """
    from . import _cuda

    if xp is None:
        import cupy as xp
    n = events.shape[0]
    idx = xp.empty((n, k), dtype=xp.int32)
    mu = train.mean(axis=0, dtype=xp.float64)
    y = (train - mu).astype(xp.float32)
    yy = xp.einsum("ij,ij->i", y, y)
    for s in range(0, n, chunk_size):
        x = (events[s : s + chunk_size] - mu).astype(xp.float32)
        best_d = xp.full((x.shape[0], k), xp.inf, dtype=xp.float32)
        best_i = xp.zeros((x.shape[0], k), dtype=xp.int32)
        xx = xp.einsum("ij,ij->i", x, x)
        for c0 in range(0, y.shape[0], tile):
            dot_t = xp.ascontiguousarray(y[c0 : c0 + tile] @ x.T)  # (tile, rows): coalesced reads
            _cuda.topk_merge(dot_t, xx, xp.ascontiguousarray(yy[c0 : c0 + tile]), c0, best_d, best_i, launch=launch)
        idx[s : s + x.shape[0]] = best_i
    dist = _cuda.exact_distances(events, train, idx, xp=xp, launch=launch)
    _cuda.resort(dist, idx, launch=launch)
    return idx, dist
