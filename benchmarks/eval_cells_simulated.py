"""Accuracy of the single-cell path on a SIMULATED library, and the readout error against known fractions.

1. Simulate a library (:func:`rescue_gpu.simulate.cells.simulate_cell_library`): labelled
   training cells from ``--patients`` patients, plus ``--samples`` unlabelled samples from
   new patients with known leukaemic fractions.
2. Train with the assay's pipeline (patient-level train / validation / test split; the
   architecture, epochs, crop size can be overridden for a CPU budget).
3. Report per-class and grouped (leukaemic vs rest) metrics on the held-out TEST patients.
4. Score the samples with ``score_cells`` and report the readout error of the raw
   classify-and-count share and of the adjusted count, and the interval coverage.

Simulated cells say nothing about real marrow or smears. Example::

    .venv/bin/python benchmarks/eval_cells_simulated.py --assay ifc --patients 15 --cells-per-class 60 \\
        --samples 12 --cells-per-sample 1000 --epochs 15 --out /tmp/eval-ifc
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import pandas as pd
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assay", choices=("ifc", "smear"), default="ifc")
    ap.add_argument("--patients", type=int, default=15)
    ap.add_argument("--cells-per-class", type=int, default=60)
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--cells-per-sample", type=int, default=1000)
    ap.add_argument("--architecture", default=None, help="override the pipeline's network")
    ap.add_argument("--size", type=int, default=None, help="override crop size (smear: simulate and train at it)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from rescue_gpu.cells.assay import CellScoreOptions, score_cells
    from rescue_gpu.cells.spec import load_cell_pipeline
    from rescue_gpu.cells.workflow import train_cell_model, with_overrides
    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.report.cells import readout_errors
    from rescue_gpu.simulate.cells import simulate_cell_library

    if args.threads:
        torch.set_num_threads(args.threads)
    name = {"ifc": "ifc-labelfree", "smear": "smear-cytomorphology"}[args.assay]
    pipe = with_overrides(load_cell_pipeline(name), architecture=args.architecture, epochs=args.epochs,
                          batch_size=args.batch_size, seed=args.seed)
    if args.size:
        pre = dataclasses.replace(pipe.preprocess, size=args.size, resize=args.size if pipe.preprocess.resize else 0)
        pipe = dataclasses.replace(pipe, preprocess=pre)
    t0 = time.perf_counter()
    lib = simulate_cell_library(args.out / "library", assay=args.assay, layout="tree", n_train_patients=args.patients,
                                cells_per_class=args.cells_per_class, n_samples=args.samples,
                                cells_per_sample=args.cells_per_sample,
                                size=args.size if args.assay == "smear" else None, seed=args.seed)
    print(f"simulated in {time.perf_counter() - t0:.0f} s: {lib}", flush=True)
    t1 = time.perf_counter()
    record, report = train_cell_model(lib.train_dir, pipeline=pipe, out=args.out / "model", device="auto",
                                      on_epoch=lambda h: print(json.dumps(h), flush=True))
    train_s = time.perf_counter() - t1
    summary = report.summary()
    t2 = time.perf_counter()
    run = score_cells(lib.samples_manifest, model=args.out / "model", out=args.out / "run",
                      options=CellScoreOptions(pipeline=pipe, seed=args.seed), runtime=RuntimeConfig(backend="auto"),
                      in_process=True)
    score_s = time.perf_counter() - t2
    df = pd.read_parquet(run.outputs["parquet"])
    result = {"assay": args.assay, "pipeline": pipe.name, "architecture": pipe.model.architecture,
              "size": pipe.preprocess.size, "device": summary.get("device"), "split": summary.get("split"),
              "epochs_run": summary.get("epochs"), "best_epoch": summary.get("best_epoch"),
              "test": summary.get("test"), "rates": summary.get("rates"), "train_s": round(train_s, 1),
              "readout": readout_errors(df), "calls": _calls(df), "score_s": round(score_s, 1),
              "cells_per_s_scoring": round(run.cells_per_s, 1), "threads": torch.get_num_threads()}
    (args.out / "eval.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "test"}, indent=1, default=str))
    print(json.dumps(_headline(result["test"]), indent=1))
    cols = ["sample_id", "true_pct", "q_raw_pct", "leukaemic_pct", "ci_low_pct", "ci_high_pct", "call", "label"]
    print(df[cols].round(2).to_string(index=False))


def _calls(df: pd.DataFrame) -> dict[str, int]:
    lab = df[df["status"] == "scored"]
    return {"agree": int((lab["call"] == lab["label"]).sum()), "n": int(len(lab))}


def _headline(test: dict) -> dict:
    per, grouped = test.get("per_class", {}), test.get("grouped", {})
    out = {k: per.get(k) for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
    out.update({f"leukaemic_{k}": grouped.get(k) for k in ("sensitivity", "specificity", "roc_auc")})
    out["per_class_recall"] = {c: v.get("recall") for c, v in (per.get("per_class") or {}).items()}
    return out


if __name__ == "__main__":
    main()
