"""Our transform vs umap-learn's on the bench's 15-d shape, on a quiet machine and with one busy process.

Why ``rescue bench --peer`` ratios move between runs with no code change: our transform runs
one thread per core, umap-learn's (with ``random_state``) one thread. One busy process
elsewhere makes three runnable threads on two cores for our timing, two for theirs.

    python benchmarks/peer_contention.py [--reference-events 150000] [--events 20000] [--repeats 4]

Prints, for each condition (quiet; one spinning process), our transform and kNN seconds per
repeat, umap-learn's, the ratio of the fastest repeats and the machine's load measured by
:func:`rescue_gpu.flow.cpuload.measure_cpu`. Needs the dev install (umap-learn).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference-events", type=int, default=150_000)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--dims", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    import umap

    from rescue_gpu.flow.bench import rare_mixture
    from rescue_gpu.flow.cpuload import measure_cpu
    from rescue_gpu.projection import UmapReference, neighbors, transform

    ref = rare_mixture(a.reference_events, dims=a.dims, seed=1)
    new = rare_mixture(a.events, dims=a.dims, seed=2)
    t0 = time.perf_counter()
    model = umap.UMAP(n_neighbors=15, random_state=0).fit(ref)
    print(f"umap-learn fit on {len(ref):,} x {a.dims}: {time.perf_counter() - t0:.1f} s", flush=True)
    reference = UmapReference.from_umap(model)
    train = np.asarray(reference.train_events, np.float32)
    transform(reference, new[:200], backend="cpu")
    model.transform(new[:200])
    for spin in (False, True):
        child = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if spin else None
        try:
            time.sleep(0.3 if spin else 0.0)
            ours, knn, theirs, loads = [], [], [], []
            for _ in range(a.repeats):
                with measure_cpu() as use:
                    transform(reference, new, seed=0, backend="cpu")
                ours.append(use.wall_s)
                loads.append(use.other_cores)
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                neighbors.knn_cpu(train, new, 15)
                knn.append(time.perf_counter() - t0)
            for _ in range(max(2, a.repeats // 2)):
                with measure_cpu() as use:
                    model.transform(new)
                theirs.append(use.wall_s)
        finally:
            if child is not None:
                child.kill()
                child.wait()
        fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
        print(f"{'one busy process' if spin else 'quiet'}: ours {fmt(ours)} s (kNN {fmt(knn)}), umap-learn "
              f"{fmt(theirs)} s, ratio x{min(theirs) / min(ours):.2f}; other processes used "
              f"{fmt([x or 0.0 for x in loads])} cores during ours", flush=True)


if __name__ == "__main__":
    main()
