"""Tests of rescue_gpu.projection: our UMAP transform against umap-learn's."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse

from rescue_gpu.errors import ProjectionError, ReferenceDataError
from rescue_gpu.projection import UmapParams, UmapReference, transform, transform_epochs
from rescue_gpu.projection import fuzzy, neighbors, sgd

umap = pytest.importorskip("umap")
umap_ = pytest.importorskip("umap.umap_")


def mixture(n: int, *, dims: int = 10, seed: int, centers: int = 5) -> np.ndarray:
    """Well-separated gaussian clusters (centres fixed, draws from ``seed``)."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(42).normal(0.0, 5.0, (centers, dims))
    return (c[rng.integers(0, centers, n)] + rng.normal(0.0, 1.0, (n, dims))).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> "umap.UMAP":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return umap.UMAP(n_neighbors=15, n_epochs=200, random_state=0).fit(mixture(2000, seed=1))


@pytest.fixture(scope="module")
def reference(model: "umap.UMAP") -> UmapReference:
    return UmapReference.from_umap(model)


@pytest.fixture(scope="module")
def new_events() -> np.ndarray:
    return mixture(800, seed=2)


@pytest.fixture(scope="module")
def ours(reference: UmapReference, new_events: np.ndarray) -> np.ndarray:
    return transform(reference, new_events, seed=0, backend="cpu")


def _disp(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(p, np.float64) - np.asarray(q, np.float64), axis=1)


def test_params_from_umap(model: "umap.UMAP", reference: UmapReference) -> None:
    p = reference.params
    assert (p.a, p.b, p.n_neighbors, p.learning_rate) == (model._a, model._b, 15, model._initial_alpha)
    assert p.disconnection_distance == np.inf and p.metric == "euclidean"
    assert reference.train_events.shape == (2000, 10) and reference.embedding.dtype == np.float32


def test_fidelity_against_umap_learn(model: "umap.UMAP", ours: np.ndarray, new_events: np.ndarray) -> None:
    """Ours vs umap-learn moves events no more than 1.5x umap-learn's own seed-to-seed spread."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.transform_seed = 1
        u1 = model.transform(new_events)
        model.transform_seed = 2
        u2 = model.transform(new_events)
    d_ours, d_self = _disp(ours, u1), _disp(u2, u1)
    assert np.median(d_ours) <= 1.5 * np.median(d_self)
    assert np.percentile(d_ours, 95) <= 1.5 * np.percentile(d_self, 95)


def test_output_shape_and_dtype(ours: np.ndarray, new_events: np.ndarray) -> None:
    assert ours.shape == (len(new_events), 2) and ours.dtype == np.float32 and np.isfinite(ours).all()


def test_same_seed_is_bit_identical(reference: UmapReference, new_events: np.ndarray, ours: np.ndarray) -> None:
    again = transform(reference, new_events, seed=0, backend="cpu")
    assert np.array_equal(again, ours)


def test_chunk_size_does_not_change_result(reference: UmapReference, new_events: np.ndarray, ours: np.ndarray) -> None:
    assert np.array_equal(transform(reference, new_events, seed=0, backend="cpu", chunk_size=97), ours)


def test_brute_and_kdtree_agree(reference: UmapReference, new_events: np.ndarray, ours: np.ndarray) -> None:
    brute = transform(reference, new_events, seed=0, backend="cpu", knn_method="brute", chunk_size=300)
    assert np.array_equal(brute, ours)


def test_tiled_and_kdtree_agree(reference: UmapReference, new_events: np.ndarray, ours: np.ndarray) -> None:
    """The default (auto -> certified tiled scan) gives kdtree's coordinates bit for bit."""
    assert neighbors.choose_method(10, len(reference.train_events), len(new_events)) == "tiled"
    kdtree = transform(reference, new_events, seed=0, backend="cpu", knn_method="kdtree")
    tiled = transform(reference, new_events, seed=0, backend="cpu", knn_method="tiled", chunk_size=300)
    assert np.array_equal(kdtree, ours) and np.array_equal(tiled, ours)


def test_other_seed_differs(reference: UmapReference, new_events: np.ndarray, ours: np.ndarray) -> None:
    other = transform(reference, new_events, seed=1, backend="cpu")
    assert not np.array_equal(other, ours)
    assert np.median(_disp(other, ours)) < 1.0  # same neighbourhood, different noise


def test_knn_is_exact(reference: UmapReference, new_events: np.ndarray) -> None:
    x, y = new_events[:200], reference.train_events
    d = np.sqrt(((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1))
    want = np.sort(d, axis=1)[:, :15]
    for method in ("kdtree", "brute", "tiled"):
        idx, dist = neighbors.knn_cpu(y, x, 15, method=method, chunk_size=64)
        np.testing.assert_allclose(dist, want, rtol=1e-5)
        np.testing.assert_allclose(np.take_along_axis(d, idx.astype(np.int64), 1), want, rtol=1e-5)


def test_fuzzy_matches_umap_learn(reference: UmapReference, new_events: np.ndarray) -> None:
    idx, dist = neighbors.knn_cpu(reference.train_events, new_events, 15)
    for lc in (0.0, 1.0, 1.5):
        s_u, r_u = umap_.smooth_knn_dist(dist, 15.0, local_connectivity=lc)
        s, r = fuzzy.smooth_knn_dist(dist, 15.0, lc, float(np.mean(dist)))
        np.testing.assert_allclose(r, r_u, rtol=1e-6)
        np.testing.assert_allclose(s, s_u, rtol=1e-5)
    s, r = fuzzy.smooth_knn_dist(dist, 15.0, 0.0, float(np.mean(dist)))
    _, _, vals, _ = umap_.compute_membership_strengths(idx, dist, s, r, bipartite=True)
    np.testing.assert_allclose(fuzzy.membership_strengths(idx, dist, s, r).ravel(), vals, rtol=1e-6)


def test_init_matches_umap_learn(reference: UmapReference, new_events: np.ndarray) -> None:
    idx, dist = neighbors.knn_cpu(reference.train_events, new_events, 15)
    idx[:, 10:][dist[:, 10:] > np.median(dist)] = -1  # some disconnected neighbours
    idx[0, :] = -1  # an event with none left
    s, r = fuzzy.smooth_knn_dist(dist, 15.0, 0.0, float(np.mean(dist)))
    w = fuzzy.membership_strengths(idx, dist, s, r)
    w[1, 3] = 1.0  # a snapping weight
    rows, cols = np.nonzero(idx >= 0)
    graph = scipy.sparse.csr_matrix((w[rows, cols], (rows, idx[rows, cols])), shape=(len(idx), 2000))
    graph.eliminate_zeros()
    want = umap_.init_graph_transform(graph, reference.embedding)
    got = fuzzy.init_embedding(idx, w, reference.embedding)
    assert np.isnan(got[0]).all() and np.isnan(want[0]).all()
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[1], reference.embedding[idx[1, 3]])


def test_edge_schedule_matches_umap_learn() -> None:
    w = np.random.default_rng(0).uniform(0, 1, (50, 15)).astype(np.float32)
    w[w < 0.05] = 0.0
    eps = sgd.edge_schedule(w, 30)
    data = w[w > 0].copy()
    data[data < data.max() / 30.0] = 0.0
    kept = data[data > 0]
    np.testing.assert_array_equal(eps[eps > 0], umap_.make_epochs_per_sample(kept, 30))
    assert ((eps > 0) == (w >= w.max() / np.float32(30))).all()


def test_transform_epochs_rule() -> None:
    p = UmapParams()
    assert transform_epochs(p, 10_000) == 100 and transform_epochs(p, 10_001) == 30
    assert transform_epochs(replace(p, n_epochs=200), 5) == 66
    with pytest.raises(ReferenceDataError):
        transform_epochs(replace(p, n_epochs=2), 5)


def test_rng_uniform_and_in_range() -> None:
    key = sgd.event_key(np.uint64(5), np.uint64(17))
    draws = np.array([sgd.rand_below(key, np.uint64(e), np.uint64(j), np.uint64(s), np.uint64(7))
                      for e in range(40) for j in range(5) for s in range(10)])
    assert draws.min() == 0 and draws.max() == 6
    assert np.abs(np.bincount(draws, minlength=7) / len(draws) - 1 / 7).max() < 0.03
    assert sgd.event_key(np.uint64(5), np.uint64(17)) != sgd.event_key(np.uint64(6), np.uint64(17))


def test_empty_events(reference: UmapReference) -> None:
    assert transform(reference, np.empty((0, 10), np.float32), backend="cpu").shape == (0, 2)


def test_wrong_width_raises(reference: UmapReference) -> None:
    with pytest.raises(ProjectionError, match="10 dimensions"):
        transform(reference, np.zeros((5, 9), np.float32), backend="cpu")


def test_non_finite_rows_raise_with_count(reference: UmapReference, new_events: np.ndarray) -> None:
    x = new_events[:20].copy()
    x[3, 1], x[7, 0], x[7, 2], x[9, 4] = np.nan, np.inf, np.nan, -np.inf
    with pytest.raises(ProjectionError, match="3 of 20 events"):
        transform(reference, x, backend="cpu")


def test_too_few_reference_events_raise(reference: UmapReference) -> None:
    small = UmapReference(reference.train_events[:10], reference.embedding[:10], reference.params)
    with pytest.raises(ReferenceDataError, match="fewer than n_neighbors=15"):
        transform(small, reference.train_events[:5], backend="cpu")


def test_bad_reference_and_arguments_raise(reference: UmapReference, new_events: np.ndarray) -> None:
    with pytest.raises(ReferenceDataError, match="metric"):
        transform(replace(reference, params=replace(reference.params, metric="cosine")), new_events, backend="cpu")
    with pytest.raises(ReferenceDataError, match="shapes"):
        transform(replace(reference, embedding=reference.embedding[:-1]), new_events, backend="cpu")
    with pytest.raises(ProjectionError, match="seed"):
        transform(reference, new_events, seed=-1, backend="cpu")
    with pytest.raises(ReferenceDataError, match="not fitted"):
        UmapParams.from_umap(umap.UMAP())


@pytest.mark.gpu
def test_gpu_matches_cpu(reference: UmapReference, new_events: np.ndarray, ours: np.ndarray) -> None:
    """GPU vs CPU: same neighbours and RNG; libm vs CUDA exp/pow differ in the last bits."""
    import cupy as cp

    idx_c, dist_c = neighbors.knn_cpu(reference.train_events, new_events, 15)
    idx_g, dist_g = neighbors.knn_gpu(cp.asarray(reference.train_events), cp.asarray(new_events), 15, chunk_size=300)
    assert (cp.asnumpy(idx_g) == idx_c).mean() > 0.999
    np.testing.assert_allclose(cp.asnumpy(dist_g), dist_c, rtol=1e-5)
    gpu = transform(reference, cp.asarray(new_events), seed=0, backend="gpu")
    assert isinstance(gpu, cp.ndarray) and gpu.dtype == cp.float32
    d = _disp(cp.asnumpy(gpu), ours)
    assert np.median(d) < 1e-3 and np.percentile(d, 99) < 0.1


@pytest.mark.gpu
def test_gpu_deterministic_and_chunk_invariant(reference: UmapReference, new_events: np.ndarray) -> None:
    import cupy as cp

    a = transform(reference, new_events, seed=0, backend="gpu")
    b = transform(reference, new_events, seed=0, backend="gpu", chunk_size=101)
    assert cp.array_equal(a, b)


def test_lanes_equal_one_event_at_a_time(reference: UmapReference, new_events: np.ndarray) -> None:
    """The CPU driver interleaves LANES events; each must get exactly layout_event's result."""
    from rescue_gpu.projection import fuzzy, neighbors, sgd

    x = new_events[: sgd.LANES * 3 + 5]
    idx, d = neighbors.knn_cpu(reference.train_events, x, 15)
    sig, rho = fuzzy.smooth_knn_dist(d, 15.0, 0.0, float(d.mean(dtype=np.float64)))
    w = fuzzy.membership_strengths(idx, d, sig, rho)
    init = fuzzy.init_embedding(idx, w, reference.embedding)
    eps = sgd.edge_schedule(w, 30)
    kw = dict(n_epochs=30, a=1.58, b=0.9, gamma=1.0, initial_alpha=0.25, negative_sample_rate=5.0, seed=3)
    lanes = sgd.optimize_layout(init, reference.embedding, idx, eps, **kw)
    one = init.copy()
    emb = np.ascontiguousarray(reference.embedding, np.float32)
    for i in range(len(x)):
        key = np.uint64(sgd.event_key(np.uint64(3), np.uint64(i)))
        sgd.layout_event(one[i], np.ascontiguousarray(idx[i], np.int32), eps[i], emb, 15, key, 30,
                         1.58, 0.9, 1.0, 0.25, 5.0, np.empty(15), np.empty(15))
    np.testing.assert_array_equal(lanes, one)
