"""Cohort throughput of ``rescue score``: samples/s and events/s, in-process vs an embedded LocalCluster.

For each sample size a cohort is simulated, then scored twice into fresh run folders:
in-process (no Dask) and on a LocalCluster of CPU worker processes. Reported per run:
the processing phase (first submission to last result written, after every worker has
loaded the reference and model) and the wall time of the whole call (manifest, checks,
cluster start, worker warm-up, outputs, cluster stop).

The reference's embedding is the pooled events' first two principal components scaled
to a UMAP-like spread, not a UMAP fit (the transform's cost depends on the number of
reference events, neighbours and epochs, not on how the embedding was made); the model
is an untrained flow network (inference cost is the same as a trained one's).

Usage::

    python benchmarks/bench_cohort.py --samples 8 --events 5000 20000 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _assets(base: Path, *, n_samples: int, n_events: int, ref_events: int, image: int) -> dict[str, Path]:
    from rescue_gpu.runner.manifest import read_manifest
    from rescue_gpu.config import load_pipeline
    from rescue_gpu.simulate import simulate_cohort
    from tests.test_cohort_fixtures import fast_reference, untrained_model

    pipe = load_pipeline("aml-mrd")
    pipe = dataclasses.replace(pipe, raster=dataclasses.replace(pipe.raster, size=image))
    simulate_cohort(base / "cohort", n_samples=n_samples, n_events=n_events, seed=11)
    rows = read_manifest(base / "cohort" / "manifest.csv")
    ref = fast_reference(rows, pipe, events_per_sample=max(1, ref_events // len(rows)))
    ref.save(base / "ref", overwrite=True)
    untrained_model(ref).save(base / "model", overwrite=True)
    return {"manifest": base / "cohort" / "manifest.csv", "ref": base / "ref", "model": base / "model", "pipe": pipe}


def _score(a: dict, out: Path, *, in_process: bool, workers: int, per_task: int) -> tuple[float, float, int, int]:
    from rescue_gpu.flow.assay import ScoreOptions, score_cohort
    from rescue_gpu.config import RuntimeConfig

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = score_cohort(a["manifest"], reference=a["ref"], model=a["model"], out=out,
                     options=ScoreOptions(pipeline=a["pipe"], samples_per_task=per_task, report=False),
                     runtime=RuntimeConfig(backend="cpu", workers=str(workers)), in_process=in_process,
                     dashboard_address=":0")
    return s.seconds, time.perf_counter() - t0, s.n_processed, s.events_processed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--events", type=int, nargs="+", default=[5000, 20000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples-per-task", type=int, default=2)
    ap.add_argument("--ref-events", type=int, default=5000)
    ap.add_argument("--image", type=int, default=128)
    args = ap.parse_args()
    print(f"# bench_cohort  {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; reference {args.ref_events} events, image {args.image}px, "
          f"{args.samples} samples/cohort, {args.samples_per_task} samples/task")
    print("| events/sample | mode | processing s | wall s | samples/s | events/s | vs in-process |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n_events in args.events:
            a = _assets(Path(tmp) / f"e{n_events}", n_samples=args.samples, n_events=n_events,
                        ref_events=args.ref_events, image=args.image)
            base = None
            for mode, in_proc in (("in-process", True), (f"LocalCluster {args.workers}x1", False)):
                proc_s, wall, n, ev = _score(a, Path(tmp) / "run", in_process=in_proc, workers=args.workers,
                                             per_task=args.samples_per_task)
                rate = ev / proc_s
                base = base or rate
                print(f"| {n_events:,} | {mode} | {proc_s:.1f} | {wall:.1f} | {n / proc_s:.2f} | {rate:,.0f} | "
                      f"{rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
