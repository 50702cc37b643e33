"""The GPU transform's numba.cuda kernels, end to end, against the CPU path.

Marker ``gpusim``: the main ``pytest`` run deselects these tests; ``make test`` runs them
in a second process with ``NUMBA_ENABLE_CUDASIM=1``, where numba's CUDA simulator
executes the kernels on the CPU and numpy stands in for cupy. On a GPU machine
(``make gpu-check``, no simulator) the same tests run the real kernels on cupy arrays.

Under the simulator the kernels run the same Python source that numba.njit compiles
for the CPU, with the same casts, so results are expected bit-identical; on a device
``exp``/``pow`` may differ in the last bits, hence the 1e-5 tolerance on coordinates.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rescue_gpu.projection import UmapParams, UmapReference, fuzzy, neighbors, sgd, transform
from rescue_gpu.projection._kernels import MAX_K

pytestmark = [
    pytest.mark.gpusim,
    # splitmix64 wraps uint64 products on purpose; numpy scalars warn about it in the simulator.
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*[Gg]rid size"),
]

COORD_TOL = 1e-5


def _array_module():
    """numpy under the simulator, cupy on a real device; skip otherwise."""
    from numba import config

    if config.ENABLE_CUDASIM:
        return np
    try:
        import cupy
        from numba import cuda

        if cuda.is_available() and cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # noqa: BLE001 - any failure means no usable device
        pass
    pytest.skip("gpusim tests need NUMBA_ENABLE_CUDASIM=1 (run by `make test`) or a CUDA device")


@pytest.fixture(scope="module")
def xp():
    """The array module the kernels run on."""
    return _array_module()


@pytest.fixture(scope="module")
def cuda_mod():
    """The kernel module (imports numba.cuda)."""
    _array_module()
    from rescue_gpu.projection import _cuda

    return _cuda


def _np(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _mixture(n: int, seed: int, dims: int = 9) -> np.ndarray:
    c = np.random.default_rng(42).normal(0.0, 4.0, (6, dims))
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 6, n)
    return (c[lab] + rng.normal(0.0, 1.0, (n, dims))).astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> UmapReference:
    """3,000 reference events in 9 dimensions with a clustered 2-d embedding."""
    train = _mixture(3000, 1)
    emb = (train[:, :2] * 0.7 + np.random.default_rng(3).normal(0.0, 0.3, (3000, 2))).astype(np.float32)
    return UmapReference(train, emb, UmapParams(random_state=0))


@pytest.fixture(scope="module")
def events() -> np.ndarray:
    """300 new events; a few exact copies of reference events (weight-1 snaps)."""
    x = _mixture(300, 2)
    x[:5] = _mixture(3000, 1)[[7, 70, 700, 1700, 2999]]
    return x


def _gpu(reference, events, xp, **kw):
    from rescue_gpu.projection.transform import _transform_gpu

    warnings.simplefilter("ignore")
    kw.setdefault("chunk_size", 262_144)
    return _transform_gpu(reference, xp.asarray(events), seed=kw.pop("seed", 0), xp=xp, **kw)


@pytest.fixture(scope="module")
def cpu_result(reference, events) -> np.ndarray:
    return transform(reference, events, seed=0, backend="cpu")


@pytest.fixture(scope="module")
def gpu_result(reference, events, xp, cuda_mod) -> np.ndarray:
    return _np(_gpu(reference, events, xp))


@pytest.fixture(scope="module")
def quick(reference, events, xp, cuda_mod):
    """A 10-epoch reference (n_epochs=30) and its default-launch GPU result on 150 events, checked against the CPU."""
    ref = UmapReference(reference.train_events, reference.embedding, UmapParams(random_state=0, n_epochs=30))
    base = _np(_gpu(ref, events[:150], xp))
    assert np.abs(base.astype(np.float64) - transform(ref, events[:150], seed=0, backend="cpu")).max() <= COORD_TOL
    return ref, base


def test_knn_matches_cpu(reference, events, xp, cuda_mod) -> None:
    idx_c, d_c = neighbors.knn_cpu(reference.train_events, events, 15)
    idx_g, d_g = neighbors.knn_gpu(xp.asarray(reference.train_events), xp.asarray(events), 15, chunk_size=128, tile=700, xp=xp)
    np.testing.assert_array_equal(_np(idx_g), idx_c)
    np.testing.assert_array_equal(_np(d_g), d_c)


def test_transform_matches_cpu(gpu_result, cpu_result) -> None:
    """End to end (default 100 epochs): same shape, coordinates within 1e-5 (bit-identical in the simulator)."""
    assert gpu_result.shape == cpu_result.shape and gpu_result.dtype == np.float32
    diff = np.abs(gpu_result.astype(np.float64) - cpu_result)
    print(f"\nGPU-vs-CPU transform: max |d| = {diff.max():.3g}, identical = {np.array_equal(gpu_result, cpu_result)}")
    assert diff.max() <= COORD_TOL


@pytest.mark.parametrize(
    ("threads", "max_blocks", "chunk", "tile"),
    [(1, None, 262_144, 8192), (32, 3, 97, 1000), (64, 1, 300, 3000), (256, None, 41, 512)],
    ids=["1-thread-blocks", "32x3-grid-stride", "one-block", "256-threads-small-chunks"],
)
def test_launch_shape_and_chunk_do_not_change_result(reference, events, xp, quick, threads, max_blocks, chunk, tile) -> None:
    """Bit-identical for any launch shape, chunk and tile (10 epochs, 150 events to keep it short)."""
    from rescue_gpu.projection._cuda import Launch

    ref, base = quick
    out = _np(_gpu(ref, events[:150], xp, launch=Launch(threads, max_blocks), chunk_size=chunk, tile=tile))
    np.testing.assert_array_equal(out, base)


def test_disconnected_events_get_nan_like_cpu(reference, events, xp, cuda_mod) -> None:
    """disconnection_distance drops neighbours; fully disconnected events are NaN on both paths."""
    d = neighbors.knn_cpu(reference.train_events, events[:120], 15)[1]
    cut = float(np.percentile(d[:, 0], 20))
    p = UmapParams(random_state=0, disconnection_distance=cut, n_epochs=30)
    ref = UmapReference(reference.train_events, reference.embedding, p)
    cpu = transform(ref, events[:120], seed=5, backend="cpu")
    gpu = _np(_gpu(ref, events[:120], xp, seed=5))
    assert np.isnan(cpu).any()
    np.testing.assert_array_equal(np.isnan(gpu), np.isnan(cpu))
    assert np.nanmax(np.abs(gpu.astype(np.float64) - cpu)) <= COORD_TOL


def test_exact_distances_and_resort_kernels(reference, events, xp, cuda_mod) -> None:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 3000, (200, 15)).astype(np.int32)
    idx[:, 3] = idx[:, 5]  # ties in distance: resort breaks them by index
    d_c = neighbors.exact_distances(events[:200], reference.train_events, idx)
    d_g = cuda_mod.exact_distances(xp.asarray(events[:200]), xp.asarray(reference.train_events), xp.asarray(idx), xp=xp)
    np.testing.assert_array_equal(_np(d_g), d_c)
    i_c, i_g = idx.copy(), xp.asarray(idx)
    neighbors._resort(d_c, i_c)
    cuda_mod.resort(d_g, i_g, launch=cuda_mod.Launch(16, 2))
    np.testing.assert_array_equal(_np(d_g), d_c)
    np.testing.assert_array_equal(_np(i_g), i_c)


@pytest.mark.parametrize("local_connectivity", [1.0, 2.5, 0.3])
def test_fuzzy_init_kernel(reference, events, xp, cuda_mod, local_connectivity) -> None:
    idx, d = neighbors.knn_cpu(reference.train_events, events, 15)
    idx[:, 12:][d[:, 12:] > np.median(d[:, 12])] = -1  # some disconnected edges
    lc, mean_d = max(0.0, local_connectivity - 1.0), float(np.mean(d, dtype=np.float64))
    sig, rho = fuzzy.smooth_knn_dist(d, 15.0, lc, mean_d)
    w_c = fuzzy.membership_strengths(idx, d, sig, rho)
    init_c = fuzzy.init_embedding(idx, w_c, reference.embedding)
    w_g, init_g = cuda_mod.fuzzy_init(xp.asarray(idx), xp.asarray(d), xp.asarray(reference.embedding), 15.0, lc, mean_d, xp=xp)
    np.testing.assert_allclose(_np(w_g), w_c, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_np(init_g), init_c, rtol=0, atol=COORD_TOL)
    print(f"\nfuzzy lc={local_connectivity}: max |dw| = {np.abs(_np(w_g) - w_c).max():.3g}, "
          f"max |dinit| = {np.nanmax(np.abs(_np(init_g) - init_c)):.3g}")


def test_layout_kernel_with_event_offset(reference, events, xp, cuda_mod) -> None:
    """The SGD kernel with its counter-based RNG keyed by global event index."""
    idx, d = neighbors.knn_cpu(reference.train_events, events[:150], 15)
    sig, rho = fuzzy.smooth_knn_dist(d, 15.0, 0.0, float(d.mean(dtype=np.float64)))
    w = fuzzy.membership_strengths(idx, d, sig, rho)
    init = fuzzy.init_embedding(idx, w, reference.embedding)
    eps = sgd.edge_schedule(w, 40)
    kw = dict(n_epochs=40, a=1.58, b=0.9, gamma=1.0, initial_alpha=0.25, negative_sample_rate=5.0, seed=11, event_offset=1000)
    cpu = sgd.optimize_layout(init, reference.embedding, idx, eps, **kw)
    gpu = cuda_mod.layout(xp.asarray(init), xp.asarray(reference.embedding), xp.asarray(idx), xp.asarray(eps), xp=xp, **kw)
    assert np.abs(_np(gpu).astype(np.float64) - cpu).max() <= COORD_TOL


def test_topk_merge_kernel_matches_brute_force(xp, cuda_mod) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 5)).astype(np.float32), rng.normal(size=(400, 5)).astype(np.float32)
    k = 7
    best_d = xp.full((50, k), np.inf, dtype=np.float32)
    best_i = xp.zeros((50, k), dtype=np.int32)
    xx, yy = (x * x).sum(1), (y * y).sum(1)
    for c0 in range(0, 400, 128):
        dot_t = np.ascontiguousarray(y[c0 : c0 + 128] @ x.T)
        cuda_mod.topk_merge(xp.asarray(dot_t), xp.asarray(xx), xp.asarray(yy[c0 : c0 + 128]), c0, best_d, best_i)
    want = np.argsort(((x[:, None, :] - y[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(_np(best_i), want)
    assert (np.diff(_np(best_d), axis=1) >= 0).all()


def test_too_many_neighbours_raise(xp, cuda_mod) -> None:
    with pytest.raises(ValueError, match="n_neighbors <= 128"):
        cuda_mod.layout(xp.zeros((1, 2), np.float32), xp.zeros((4, 2), np.float32), xp.zeros((1, MAX_K + 1), np.int32),
                        xp.zeros((1, MAX_K + 1)), n_epochs=1, a=1.0, b=1.0, gamma=1.0, initial_alpha=1.0,
                        negative_sample_rate=5.0, seed=0, xp=xp)


def test_empty_events(reference, xp, cuda_mod) -> None:
    out = _gpu(reference, np.empty((0, 9), np.float32), xp)
    assert out.shape == (0, 2)


def test_device_functions_are_the_cpu_source(cuda_mod) -> None:
    """Each device function runs the very code object numba.njit compiles for the CPU."""
    from rescue_gpu.projection import _kernels

    dev = _kernels.device_functions()
    assert set(dev) == set(_kernels.SOURCES)
    for name, fn in dev.items():
        py = getattr(fn, "py_func", None) or getattr(fn, "fn", None) or getattr(fn, "_func", None)
        assert py is not None and py.__code__ is _kernels.SOURCES[name].__code__, name
