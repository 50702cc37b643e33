"""Tests of the exact CPU neighbour search (rescue_gpu.projection.neighbors) against independent peers.

Peers: scipy's cKDTree (float64 KD-tree), a numpy float64 distance matrix with a stable
argsort (ties broken by index, the rule of the ``"tiled"`` method), and scikit-learn's
brute-force search where it is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from rescue_gpu.errors import ProjectionError
from rescue_gpu.flow.bench import rare_mixture
from rescue_gpu.projection import neighbors

K = 15


def _float64_topk(train: np.ndarray, events: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by (float64 squared distance, index) from a full distance matrix."""
    d2 = ((events[:, None, :].astype(np.float64) - train[None, :, :].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d2, order, 1)


def _assert_same_as_kdtree(idx: np.ndarray, train: np.ndarray, events: np.ndarray, k: int) -> None:
    """Same neighbour sets as cKDTree in every row, except where the k-th and (k+1)-th distances tie."""
    dist, peer = cKDTree(train.astype(np.float64)).query(events.astype(np.float64), k=min(k + 1, len(train)))
    tied = dist[:, k - 1] == dist[:, k] if dist.shape[1] > k else np.zeros(len(events), bool)
    ours = np.sort(idx, axis=1)
    want = np.sort(peer[:, :k], axis=1)
    differ = (ours != want).any(axis=1)
    assert not (differ & ~tied).any(), f"rows {np.flatnonzero(differ & ~tied)[:10]} differ from cKDTree"
    d_ours = np.sqrt(((events[:, None, :].astype(np.float64) - train[idx].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_array_equal(np.sort(d_ours, axis=1)[tied], dist[tied, :k])  # tied rows: same distances


@pytest.mark.parametrize(
    ("dims", "n_ref", "n", "chunk"),
    [(12, 3000, 1001, 262_144), (10, 700, 333, 97), (15, 2000, 517, 200), (12, 20, 50, 7)],
)
def test_tiled_matches_kdtree_and_float64(dims: int, n_ref: int, n: int, chunk: int) -> None:
    train = rare_mixture(n_ref, dims=dims, seed=1)
    events = rare_mixture(n, dims=dims, seed=2)
    stats: dict[str, int] = {}
    idx, dist = neighbors.knn_cpu(train, events, K, method="tiled", chunk_size=chunk, stats=stats)
    assert stats["rows"] == n and idx.shape == (n, K) and idx.dtype == np.int32 and dist.dtype == np.float32
    _assert_same_as_kdtree(idx, train, events, K)
    peer, _ = _float64_topk(train, events, K)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(peer, 1))
    k_idx, k_dist = neighbors.knn_cpu(train, events, K, method="kdtree")
    np.testing.assert_array_equal(idx, k_idx)  # same neighbours, same (distance, index) order
    np.testing.assert_array_equal(dist, k_dist)


def test_tiled_matches_sklearn_brute() -> None:
    sk = pytest.importorskip("sklearn.neighbors")
    train = rare_mixture(2500, dims=12, seed=3)
    events = rare_mixture(600, dims=12, seed=4)
    idx, _ = neighbors.knn_cpu(train, events, K, method="tiled")
    _, peer = sk.NearestNeighbors(n_neighbors=K, algorithm="brute").fit(train.astype(np.float64)).kneighbors(
        events.astype(np.float64))
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(peer, 1))


def test_ties_and_duplicates_break_by_index() -> None:
    """Integer lattice events: exact duplicates and equal distances everywhere."""
    rng = np.random.default_rng(5)
    train = rng.integers(0, 3, (1500, 10)).astype(np.float32)
    train[700:900] = train[0]  # 200 copies of one event
    events = np.vstack([rng.integers(0, 3, (400, 10)), train[:5]]).astype(np.float32)
    stats: dict[str, int] = {}
    idx, dist = neighbors.knn_cpu(train, events, K, method="tiled", stats=stats)
    peer, d2 = _float64_topk(train, events, K)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(peer, 1))  # (distance, index): lowest index wins ties
    np.testing.assert_array_equal(dist, np.sqrt(d2).astype(np.float32))
    _assert_same_as_kdtree(idx, train, events, K)
    assert stats["fallback_rows"] > 0  # many-way ties cannot be certified: those rows went to float64


def test_near_duplicates_and_rare_cluster() -> None:
    """Events a few float32 ulps apart, and a 1% cluster far from the rest."""
    rng = np.random.default_rng(6)
    base = rare_mixture(2000, dims=12, seed=7, rare=0.01)
    jitter = base[:300] * (1 + rng.integers(-3, 4, (300, 12)) * np.float32(2.0**-23))
    train = np.vstack([base, jitter.astype(np.float32)])
    events = np.vstack([rare_mixture(500, dims=12, seed=8, rare=0.01), base[:50], jitter[:50]]).astype(np.float32)
    idx, _ = neighbors.knn_cpu(train, events, K, method="tiled")
    _assert_same_as_kdtree(idx, train, events, K)
    peer, _ = _float64_topk(train, events, K)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(peer, 1))


def test_certificate_refuses_rows_float32_cannot_rank() -> None:
    """Two tight clusters 2,000 apart: float32 ``||y||^2 - 2x.y`` cannot order neighbours ~1e-3 apart.

    The certificate must refuse every row (all are searched in float64) and the answer
    stays exact; a bound that ignored the float32 error would accept wrong neighbours.
    """
    rng = np.random.default_rng(9)
    side = np.where(rng.random(3000) < 0.5, -1000.0, 1000.0)
    train = rng.normal(0.0, 1e-3, (3000, 10))
    train[:, 0] += side
    events = rng.normal(0.0, 1e-3, (300, 10))
    events[:, 0] += np.where(rng.random(300) < 0.5, -1000.0, 1000.0)
    train, events = train.astype(np.float32), events.astype(np.float32)
    stats: dict[str, int] = {}
    idx, _ = neighbors.knn_cpu(train, events, K, method="tiled", stats=stats)
    peer, _ = _float64_topk(train, events, K)
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(peer, 1))
    _assert_same_as_kdtree(idx, train, events, K)
    assert stats["fallback_rows"] == 300


def test_auto_method_and_unknown_method() -> None:
    train = rare_mixture(1000, dims=12, seed=1)
    events = rare_mixture(200, dims=12, seed=2)
    assert neighbors.choose_method(12, 20_000, 200_000) == "tiled"
    assert neighbors.choose_method(12, neighbors.GRAPH_MIN_REF - 1, 10) == "tiled"
    assert neighbors.choose_method(12, neighbors.GRAPH_MIN_REF, 10) == "graph"  # by reference size alone
    assert neighbors.choose_method(12, 200, 10) == "kdtree"
    auto = neighbors.knn_cpu(train, events, K)
    tiled = neighbors.knn_cpu(train, events, K, method="tiled")
    assert all(np.array_equal(a, b) for a, b in zip(auto, tiled))
    with pytest.raises(ProjectionError, match="knn method must be"):
        neighbors.knn_cpu(train, events, K, method="ball")  # type: ignore[arg-type]


def _recall(idx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    return np.array([len(np.intersect1d(a, b)) for a, b in zip(idx, exact)]) / exact.shape[1]


def test_graph_search_recall_distances_and_order() -> None:
    """The approximate graph search against an exact float64 peer: recall, exact distances, row order."""
    train = rare_mixture(12_000, dims=10, seed=11)
    events = rare_mixture(1_500, dims=10, seed=12)
    idx, dist = neighbors.knn_cpu(train, events, K, method="graph")
    exact, _ = _float64_topk(train, events, K)
    rec = _recall(idx, exact)
    assert rec.mean() >= 0.99 and np.percentile(rec, 5) >= 0.9, (rec.mean(), np.percentile(rec, 5))
    d_ours = np.sqrt(((events[:, None, :].astype(np.float64) - train[idx].astype(np.float64)) ** 2).sum(-1))
    np.testing.assert_allclose(dist, d_ours, rtol=1e-6)  # the distances of the neighbours returned
    assert (np.diff(dist, axis=1) >= 0).all()  # sorted by distance
    assert all(len(set(row)) == K for row in idx)  # no neighbour twice


def test_graph_search_is_deterministic_across_threads_and_chunks() -> None:
    import numba

    train = rare_mixture(8_000, dims=12, seed=13)
    events = rare_mixture(3_000, dims=12, seed=14)
    ref = neighbors.knn_cpu(train, events, K, method="graph")
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = neighbors.knn_cpu(train, events, K, method="graph")
    finally:
        numba.set_num_threads(before)
    assert all(np.array_equal(a, b) for a, b in zip(ref, one))  # fixed query blocks: threads do not matter
    again = neighbors.knn_cpu(train, events, K, method="graph")
    assert all(np.array_equal(a, b) for a, b in zip(ref, again))


def test_search_structures_are_built_once_per_reference() -> None:
    train = rare_mixture(3_000, dims=8, seed=15)
    events = rare_mixture(500, dims=8, seed=16)
    start = neighbors.index_builds()
    for _ in range(2):
        neighbors.knn_cpu(train, events, K, method="graph")
        neighbors.knn_cpu(train, events, K, method="tiled")
    built = neighbors.index_builds()
    assert built.get("_GraphIndex", 0) - start.get("_GraphIndex", 0) == 1
    assert built.get("_TiledReference", 0) - start.get("_TiledReference", 0) == 1
    other = train.copy()  # another array: its own structures
    neighbors.knn_cpu(other, events, K, method="tiled")
    assert neighbors.index_builds()["_TiledReference"] - built["_TiledReference"] == 1


@pytest.mark.parametrize("n_far", [6, 40])
def test_graph_search_reaches_a_small_isolated_cluster(n_far: int) -> None:
    """Queries near a far cluster, smaller than a KD leaf: found from its own pivot.

    With 40 events the cluster's kNN graph has no edge to the bulk (nor the bulk to it), so
    only its pivot leads there; with 6 (fewer than k) its events' neighbour lists reach
    into the bulk, and the reverse edges lead back.
    """
    rng = np.random.default_rng(17)
    train = np.concatenate([rng.normal(0, 1, (5_000, 6)), rng.normal(40, 0.1, (n_far, 6))]).astype(np.float32)
    events = np.concatenate([rng.normal(0, 1, (50, 6)), rng.normal(40, 0.1, (20, 6))]).astype(np.float32)
    idx, _ = neighbors.knn_cpu(train, events, K, method="graph")
    exact, _ = _float64_topk(train, events, K)
    far = _recall(idx[50:], exact[50:])
    assert (far == 1.0).all(), far
