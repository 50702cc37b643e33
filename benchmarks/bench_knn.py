"""Benchmark the exact CPU kNN methods: the certified tiled scan vs the KD-tree, in one run.

Data are simulated: ``rescue_gpu.flow.bench.rare_mixture`` (six common gaussian clusters and
a 2% rare one) in 12 dimensions (a stand-in for the simulator's 12-marker panel), 10 and 15.
For each shape and reference size, both methods (``neighbors.knn_cpu(method=...)``, k = 15)
run ``--repeats`` times on the same queries; the script prints process CPU seconds (all
threads) and wall seconds (min and max over repeats), events/s, the kdtree/tiled ratios,
how many rows the certificate sent to the float64 fallback, and whether the neighbour
lists are identical. ``--peer-queries`` caps the KD-tree's queries (a prefix of the same
queries) where it would take minutes; its rates are then per event of that prefix.

``--transform`` instead times the whole ``projection.transform`` on ``--queries`` events
against a umap-learn reference fitted on ``--ref-sizes[0]`` events, once per ``--methods``
(default ``kdtree,auto``), and prints the step timings; with ``--fidelity-events N`` it also
transforms the first N events with umap-learn (seeds 0 and 7) and prints, per method, the
median and p95 displacement from umap-learn's coordinates against umap-learn's own
seed-to-seed displacement (``rescue bench --peer``'s fidelity ratio).

Examples::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_knn.py --ref-sizes 5000,30000 --queries 200000
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_knn.py --transform --ref-sizes 30000 --queries 200000
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_knn.py --transform --ref-sizes 150000 --queries 500000 \
        --methods tiled,graph --fidelity-events 20000
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from rescue_gpu.flow.bench import rare_mixture
from rescue_gpu.projection import neighbors

SHAPES = {"panel12_standin": 12, "mixture10_rare2": 10, "mixture15_rare2": 15}


def load() -> str:
    """The 1-minute load average, for the record."""
    return f"{os.getloadavg()[0]:.2f}"


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], list[float], Any]:
    """Process CPU seconds and wall seconds of each of ``repeats`` calls, and the last result."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return cpu, wall, out


def knn_table(args: argparse.Namespace) -> None:
    """kNN alone: kdtree vs tiled for every shape and reference size."""
    k = 15
    neighbors.knn_cpu(rare_mixture(1000, dims=12, seed=0), rare_mixture(10, dims=12, seed=0), k, method="tiled")
    print("| shape | N ref | queries (kdtree) | kdtree CPU s | kdtree wall s | tiled CPU s | tiled wall s | "
          "CPU ratio | wall ratio | tiled ev/s (wall) | fallback rows | identical | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        dims = SHAPES[shape]
        queries = rare_mixture(args.queries, dims=dims, seed=2)
        for n_ref in (int(v) for v in args.ref_sizes.split(",")):
            train = rare_mixture(n_ref, dims=dims, seed=1)
            n_peer = min(args.queries, args.peer_queries) if args.peer_queries else args.queries
            start_load = load()
            stats: dict[str, int] = {}
            t_cpu, t_wall, (t_idx, t_dist) = timed(
                lambda: neighbors.knn_cpu(train, queries, k, method="tiled", stats=stats), args.repeats)
            k_cpu, k_wall, (k_idx, k_dist) = timed(
                lambda: neighbors.knn_cpu(train, queries[:n_peer], k, method="kdtree"), args.repeats)
            same = np.array_equal(t_idx[:n_peer], k_idx) and np.array_equal(t_dist[:n_peer], k_dist)
            scale = args.queries / n_peer  # per-event rates when the peer ran on a prefix
            print(f"| {shape} | {n_ref:,} | {n_peer:,} | {min(k_cpu):.2f}-{max(k_cpu):.2f} | "
                  f"{min(k_wall):.2f}-{max(k_wall):.2f} | {min(t_cpu):.2f}-{max(t_cpu):.2f} | "
                  f"{min(t_wall):.2f}-{max(t_wall):.2f} | {min(k_cpu) * scale / min(t_cpu):.1f} | "
                  f"{min(k_wall) * scale / min(t_wall):.1f} | {args.queries / min(t_wall):,.0f} | "
                  f"{stats['fallback_rows'] // args.repeats} | {same} | {start_load}-{load()} |", flush=True)


def transform_table(args: argparse.Namespace) -> None:
    """The whole transform per ``--methods`` (same reference and events), and the fidelity to umap-learn."""
    import warnings

    import umap

    from rescue_gpu.projection import UmapReference, transform

    n_ref = int(args.ref_sizes.split(",")[0])
    train = rare_mixture(n_ref, dims=12, seed=1)
    events = rare_mixture(args.queries, dims=12, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        reference_model = [umap.UMAP(n_neighbors=15, random_state=0).fit(train)]
        reference = UmapReference.from_umap(reference_model[0])
        print(f"umap-learn fit on {n_ref:,} events: {time.perf_counter() - t:.0f} s")
    methods = args.methods.split(",")
    for method in methods:  # compilation and per-reference structures outside the timings
        transform(reference, events[:500], seed=0, backend="cpu", knn_method=method)
    outs = {}
    print("| knn_method | repeat | CPU s | wall s | events/s (wall) | check | knn | fuzzy | init | sgd | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        for r in range(args.repeats):
            steps: dict[str, float] = {}
            start_load = load()
            cpu, wall, outs[method] = timed(
                lambda: transform(reference, events, seed=0, backend="cpu", knn_method=method, timings=steps), 1)
            cols = " | ".join(f"{steps.get(s, 0.0):.2f}" for s in ("check", "knn", "fuzzy", "init", "sgd"))
            print(f"| {method} | {r + 1} | {cpu[0]:.2f} | {wall[0]:.2f} | {args.queries / wall[0]:,.0f} | {cols} | "
                  f"{start_load}-{load()} |", flush=True)
    a, b = methods[0], methods[-1]
    print(f"coordinates identical ({a} vs {b}): {np.array_equal(outs[a], outs[b], equal_nan=True)}")
    if args.fidelity_events:
        from rescue_gpu.flow.bench import displacement

        new = events[: args.fidelity_events]
        model = reference_model[0]
        u1 = model.transform(new)
        model.transform_seed = 7
        u2 = model.transform(new)
        mu, pu = displacement(u2, u1)
        print(f"umap-learn seed-to-seed displacement on {len(new):,} events: median {mu:.3f}, p95 {pu:.3f}")
        for method in methods:
            mo, po = displacement(outs[method][: len(new)], u1)
            print(f"{method}: vs umap-learn median {mo:.3f} (ratio {mo / mu:.2f}), p95 {po:.3f} (ratio {po / pu:.2f})")


def main() -> None:
    """Parse the options and run the chosen table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--ref-sizes", default="5000,30000,150000")
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--peer-queries", type=int, default=0, help="cap on the KD-tree's queries (0: all)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--transform", action="store_true")
    ap.add_argument("--methods", default="kdtree,auto", help="knn methods of --transform, comma-separated")
    ap.add_argument("--fidelity-events", type=int, default=0, help="--transform: events compared with umap-learn")
    args = ap.parse_args()
    print(f"bench_knn: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, {os.cpu_count()} CPUs, "
          f"numba threads {numba.get_num_threads()}, load {load()}")
    (transform_table if args.transform else knn_table)(args)


if __name__ == "__main__":
    main()
