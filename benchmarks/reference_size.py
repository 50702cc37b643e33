"""Reference size vs build time and per-sample transform time (issue 15, part 3).

Fits a reference (umap-learn, as ``rescue reference build`` does on the CPU) on a
``--dims``-dimensional Gaussian mixture with a 2 % rare population at each size of
``--sizes``, then times ``rescue_gpu.projection.transform`` of one ``--events``-event
sample against it (best of ``--repeats``, after a warm-up). Prints a markdown table
and, with ``--json``, writes the figures.

Example::

    .venv/bin/python benchmarks/reference_size.py --sizes 10000,30000,100000 --events 20000
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from rescue_gpu.config import RasterSpec, ReferenceSpec
from rescue_gpu.flow.bench import rare_mixture
from rescue_gpu.projection import transform
from rescue_gpu.reference import build_reference


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--dims", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    sample = rare_mixture(a.events, dims=a.dims, seed=99)
    markers = [f"m{i}" for i in range(a.dims)]
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        pool = rare_mixture(size, dims=a.dims, seed=1)
        spec = ReferenceSpec(events_per_sample=size, max_events=0, min_events=100)
        t = time.perf_counter()
        ref = build_reference([("pool", pool)], markers=markers, spec=spec, raster=RasterSpec(size=64))
        build_s = time.perf_counter() - t
        transform(ref, sample[:2000], seed=0, backend="cpu")  # warm-up (numba compilation)
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            transform(ref, sample, seed=0, backend="cpu")
            times.append(time.perf_counter() - t)
        rows.append({"reference_events": size, "build_s": round(build_s, 2), "transform_s": [round(x, 3) for x in times],
                     "events_per_s": round(a.events / min(times))})
        print(rows[-1], flush=True)
    print(f"\n| reference events | build (s) | transform of {a.events:,} events (s, each repeat) | events/s (best) |")
    print("|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['reference_events']:,} | {r['build_s']} | {', '.join(map(str, r['transform_s']))} | {r['events_per_s']:,} |")
    if a.json:
        a.json.write_text(json.dumps({"dims": a.dims, "events": a.events, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
