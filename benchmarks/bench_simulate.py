"""Benchmark the cohort simulator: events/s for simulate_sample alone and simulate + write.

Single-threaded (BLAS/OpenMP threads pinned to 1; numba kernels are serial). Prints wall
and CPU (process) time rates, each the best of ``--repeats`` runs: on a shared machine
the CPU rate is the steadier figure.

    .venv/bin/python benchmarks/bench_simulate.py --samples 10 --events 500000 --repeats 3
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from rescue_gpu.simulate import plan_cohort, simulate_sample, write_sample  # noqa: E402


def _rate(n: int, wall: float, cpu: float) -> str:
    return f"{n / wall / 1e6:6.2f} M events/s wall, {n / cpu / 1e6:6.2f} M events/s CPU"


def _best(run: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Best wall and best CPU (process) seconds of ``repeats`` calls of ``run``."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    """Run the benchmark and print the rates."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="report the best of this many runs")
    args = ap.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    t0 = time.perf_counter()
    simulate_sample(n_events=1_000, seed=0)  # JIT compile / load the numba cache
    print(f"warm-up (compile or cache load): {time.perf_counter() - t0:.2f} s")
    plan = plan_cohort(args.samples, seed=args.seed)
    total = args.samples * args.events

    def simulate() -> None:
        for s in plan.samples:
            simulate_sample(plan.patients[s.patient_index], kind=s.kind, n_events=args.events, seed=s.seed,
                            visit=s.visit, sample_id=s.sample_id)

    wall, cpu = _best(simulate, args.repeats)
    print(f"simulate_sample  {args.samples} x {args.events:,}: {_rate(total, wall, cpu)}"
          f"  (best of {args.repeats}; {cpu / total * 1e9:.0f} ns CPU/event)")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "fcs").mkdir()

        def write() -> None:
            for i in range(len(plan.samples)):
                write_sample(plan, i, out, n_events=args.events)

        wall, cpu = _best(write, args.repeats)
        print(f"simulate + write {args.samples} x {args.events:,}: {_rate(total, wall, cpu)}"
              f"  (best of {args.repeats}; {cpu / total * 1e9:.0f} ns CPU/event)")


if __name__ == "__main__":
    main()
