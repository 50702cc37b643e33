"""Time the flow report with its MRD views on a small simulated cohort.

Simulates ``--samples`` samples of ``--events`` events (``rescue simulate``'s cohort), builds a
PCA reference and an untrained model (as ``rescue bench``), the DfN model from the cohort's
negative samples (``k=3``, false-flag rate 1e-3: the tiny cohort has few normal events), scores
the cohort in-process on the CPU with ``--mrd-model`` and the truth in the manifest, then
times, from the run store: the score tables alone, loading the MRD views, and the whole
``report.html`` (tables + report), each ``--repeats`` times (median).

    python benchmarks/time_mrd_report.py --samples 24 --events 20000 --out /tmp/mrd_report
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any


def _score(a: argparse.Namespace, out: Path, cohort: Path, pipe: Any) -> tuple[list, Any, float | None]:
    """Simulate, build the assets, score with the MRD model; return (manifest rows, reference, scoring seconds)."""
    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.flow import mrd
    from rescue_gpu.flow.assay import ScoreOptions, score_cohort
    from rescue_gpu.flow.bench import pca_reference, untrained_model
    from rescue_gpu.flow.stages import load_events
    from rescue_gpu.runner.manifest import read_manifest
    from rescue_gpu.simulate import simulate_cohort

    simulate_cohort(cohort, n_samples=a.samples, n_events=a.events, seed=a.seed)
    truth = {r["sample_id"]: r["true_mrd_pct"] for r in csv.DictReader(open(cohort / "truth.csv"))}
    recs = list(csv.DictReader(open(cohort / "manifest.csv")))
    manifest = cohort / "manifest-truth.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*recs[0], "true_mrd_pct"])
        w.writeheader()
        w.writerows({**r, "true_mrd_pct": truth[r["sample_id"]]} for r in recs)
    rows = read_manifest(manifest)
    ev = [load_events(r.path, pipe) for r in rows]
    ref = pca_reference([e.values[:400] for e in ev], ev[0].markers, pipe)
    ref.save(out / "ref", overwrite=True)
    untrained_model(ref).save(out / "model", overwrite=True)
    normal = mrd.normal_model_from_rows(rows, pipe, k=3, false_flag_rate=1e-3, loose_rate=0.05).save(out / "normal")
    t0 = time.perf_counter()
    score_cohort(manifest, reference=out / "ref", model=out / "model", out=out / "run",
                 options=ScoreOptions(pipeline=pipe, mrd_model=str(normal), report=False),
                 runtime=RuntimeConfig(backend="cpu"), in_process=True)
    return rows, ref, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reuse", action="store_true", help="time the report of the run already in --out "
                    "(skip simulating and scoring)")
    a = ap.parse_args()

    from rescue_gpu.config import load_pipeline
    from rescue_gpu.flow.outputs import mrd_views, score_table, write_outputs
    from rescue_gpu.reference import Reference
    from rescue_gpu.report.mrd import shown_samples
    from rescue_gpu.runner.manifest import read_manifest
    from rescue_gpu.runner.store import RunStore

    out, cohort = a.out, a.out / "cohort"
    if a.reuse:
        rows, ref, t_score = read_manifest(cohort / "manifest-truth.csv"), Reference.load(out / "ref"), None
    else:
        rows, ref, t_score = _score(a, out, cohort, load_pipeline("aml-mrd"))
    store = RunStore(out / "run" / "store.zarr")

    def timed(fn: Any) -> float:
        runs = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    table = score_table(rows, store, threshold=0.5)
    rep = out / "report-dir"
    rep.mkdir(exist_ok=True)
    cpu = time.process_time()
    t_tables = timed(lambda: write_outputs(table, store, rep, report=False))
    t_views = timed(lambda: mrd_views(table, store))
    t_report = timed(lambda: write_outputs(table, store, rep, report=True, extent=ref.extent))
    result = {"samples": len(rows), "shown_samples": int(len(shown_samples(table))),
              "score_s": None if t_score is None else round(t_score, 2), "tables_s": round(t_tables, 3), "load_views_s": round(t_views, 3),
              "tables_plus_report_s": round(t_report, 3), "cpu_s_all_repeats": round(time.process_time() - cpu, 2),
              "report_mb": round((rep / "report.html").stat().st_size / 1e6, 2),
              "mrd_status": table["mrd_status"].value_counts().to_dict(), "load_avg": os.getloadavg(),
              "repeats": a.repeats}
    print(json.dumps(result, indent=1))
    (out / "time_mrd_report.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
