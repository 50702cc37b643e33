"""Benchmark our UMAP transform against umap-learn's on the same fitted model.

Fits umap-learn on a simulated reference (a gaussian mixture in ``--dims`` dimensions),
warms up numba on both sides, then times ``UMAP.transform`` and
``rescue_gpu.projection.transform`` on ``--events`` new events (best of ``--repeats``)
and prints the speed ratio and the fidelity figures: per-event displacement of ours vs
umap-learn, and of umap-learn vs itself with another ``transform_seed``.

Example::

    .venv/bin/python benchmarks/bench_projection.py --events 100000 --ref-events 30000
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from rescue_gpu.flow.bench import displacement  # shared with `rescue bench --peer`


def mixture(n: int, *, dims: int, seed: int, centers: int = 8) -> np.ndarray:
    """Gaussian-mixture events: fixed centres (seed 42), ``n`` draws from ``seed``."""
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(42).normal(0.0, 5.0, (centers, dims))
    scale = np.random.default_rng(43).uniform(0.5, 1.5, centers)
    lab = rng.integers(0, centers, n)
    return (c[lab] + rng.normal(0.0, 1.0, (n, dims)) * scale[lab, None]).astype(np.float32)


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls, and the last result."""
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--ref-events", type=int, default=30_000)
    ap.add_argument("--dims", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backend", default="cpu", choices=["cpu", "gpu", "auto"])
    ap.add_argument("--knn-method", default="auto", choices=["auto", "tiled", "kdtree", "brute"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    import umap

    from rescue_gpu.projection import UmapReference, transform
    from rescue_gpu.device import to_numpy

    ref, new = mixture(args.ref_events, dims=args.dims, seed=1), mixture(args.events, dims=args.dims, seed=2)
    t = time.perf_counter()
    model = umap.UMAP(n_neighbors=15, random_state=0).fit(ref)
    print(f"fit umap-learn on {args.ref_events} x {args.dims}: {time.perf_counter() - t:.1f} s")
    reference = UmapReference.from_umap(model)
    model.transform(new[:200])  # numba warm-up, both sides
    transform(reference, new[:200], backend=args.backend, knn_method=args.knn_method)

    def ours() -> np.ndarray:
        return to_numpy(transform(reference, new, seed=0, backend=args.backend, knn_method=args.knn_method))

    t_umap, u1 = best_time(lambda: model.transform(new), args.repeats)
    model.transform_seed = 7
    u2 = model.transform(new)
    t_ours, mine = best_time(ours, args.repeats)
    print(f"transform {args.events} events against {args.ref_events} (backend={args.backend}, knn={args.knn_method})")
    print(f"  umap-learn {t_umap:.2f} s   ours {t_ours:.2f} s   speed-up x{t_umap / t_ours:.2f}  (best of {args.repeats})")
    (m_o, p_o), (m_u, p_u) = displacement(mine, u1), displacement(u2, u1)
    print(f"  ours vs umap-learn:        median {m_o:.4f}  p95 {p_o:.4f}")
    print(f"  umap-learn seed vs seed:   median {m_u:.4f}  p95 {p_u:.4f}")
    print(f"  ratios (target <= 1.5):    median {m_o / m_u:.3f}  p95 {p_o / p_u:.3f}")


if __name__ == "__main__":
    main()
