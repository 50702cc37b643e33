"""End-to-end figure on a SIMULATED library: simulate -> reference -> train with K-fold CV.

Prints the pooled out-of-fold (CV) sensitivity, specificity, F1, ROC AUC and PR AUC with
patient-level bootstrap 95% intervals, per timepoint, beside the published ResCue
figures. The numbers are for simulated data and a deliberately small training budget
(small images, few epochs, CPU); they are not comparable with the published figures
and say nothing about real samples.

Usage::

    python benchmarks/eval_simulated.py --samples 300 --events 20000 --image-size 64 \
        --folds 5 --epochs 8 --out /tmp/eval_sim
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import time
import warnings
from pathlib import Path

import torch

from rescue_gpu.flow import stages
from rescue_gpu.runner.manifest import read_manifest
from rescue_gpu.config import Pipeline, load_pipeline
from rescue_gpu.flow.train import train_model
from rescue_gpu.simulate import simulate_cohort

PUBLISHED = {"sensitivity": 0.91, "specificity": 0.90, "f1": 0.94, "roc_auc": None, "pr_auc": None}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=300, help="simulated samples (library proportions)")
    ap.add_argument("--events", type=int, default=20_000, help="events per sample")
    ap.add_argument("--ref-samples", type=int, default=20, help="samples pooled into the reference")
    ap.add_argument("--ref-events", type=int, default=1000, help="events per reference sample")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8, help="max epochs per fold (early stopping may end sooner)")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--copies", type=int, default=1, help="bootstrap re-renders per sample and epoch")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap replicates of the intervals")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/eval_sim"))
    return ap.parse_args()


def _pipeline(a: argparse.Namespace) -> Pipeline:
    pipe = load_pipeline("aml-mrd")
    train = dataclasses.replace(pipe.model.train, folds=a.folds, max_epochs=a.epochs, patience=a.patience,
                                batch_size=a.batch_size, learning_rate=a.lr, augment_copies=a.copies, seed=a.seed)
    return dataclasses.replace(pipe, raster=dataclasses.replace(pipe.raster, size=a.image_size),
                               model=dataclasses.replace(pipe.model, train=train))


def _fmt(d: dict | None) -> str:
    if not d:
        return "n/a"
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]" if d.get("low") is not None else f"{d['estimate']:.3f}"


def _print_report(cv: dict, a: argparse.Namespace, times: dict[str, float], n_ref_events: int) -> None:
    print("\n=== SIMULATED library: pooled out-of-fold (CV) metrics — NOT real data ===")
    print(f"samples {cv['n']} ({cv['n_positive']} positive, {cv['n_negative']} negative), patients {cv['n_patients']}; "
          f"{a.events:,} events/sample simulated; reference {n_ref_events:,} events from {a.ref_samples} samples; "
          f"image {a.image_size}x{a.image_size}; {a.folds}-fold patient-level CV; max {a.epochs} epochs "
          f"(patience {a.patience}); threshold {cv['threshold']:.4f} ({cv['threshold_rule']}, chosen on the OOF predictions)")
    print(f"{'metric':<12} {'SIMULATED (95% patient bootstrap CI)':<40} {'published (real, 1,361 samples)':>32}")
    for k, v in cv["metrics"].items():
        pub = PUBLISHED.get(k)
        print(f"{k:<12} {_fmt(v):<40} {('%.2f' % pub) if pub is not None else 'not reported':>32}")
    print(f"confusion: {cv['confusion']}")
    print("\nper timepoint (SIMULATED):")
    for tp, row in cv["by_timepoint"].items():
        print(f"  {tp:<11} n={row['n']:<4} pos={row['n_positive']:<4} sens {_fmt(row['sensitivity']):<28} "
              f"spec {_fmt(row['specificity']):<28} AUC {_fmt(row['roc_auc'])}")
    print("\nwall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"machine: {platform.machine()} {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")


def main() -> None:
    a = _args()
    warnings.simplefilter("ignore", RuntimeWarning)
    if a.out.exists():
        shutil.rmtree(a.out)
    pipe = _pipeline(a)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    summary = simulate_cohort(a.out / "cohort", n_samples=a.samples, n_events=a.events, seed=a.seed)
    times["simulate"] = time.perf_counter() - t0
    print(f"simulated {summary.n_samples} samples x {a.events:,} events, {summary.n_patients} patients: {summary.counts}", flush=True)
    rows = read_manifest(summary.manifest)
    t0 = time.perf_counter()
    ref = stages.build_reference_from_rows(rows[:a.ref_samples], pipe, events_per_sample=a.ref_events, backend="cpu")
    times["reference"] = time.perf_counter() - t0
    print(f"reference: {ref.train_events.shape[0]} events, {times['reference']:.0f} s", flush=True)
    t0 = time.perf_counter()

    def log(rec: dict) -> None:
        print(f"  fold {rec['fold']} epoch {rec['epoch']}: train {rec['train_loss']:.4f} val {rec['val_loss']:.4f} "
              f"AUC {rec['val_auc']:.3f}  [{time.perf_counter() - t0:.0f} s]", flush=True)

    record = train_model(rows, ref, pipe, out=a.out / "model", folds=a.folds, cache_dir=a.out / "cache",
                         device="auto", on_epoch=log, n_boot=a.boot, show_progress=False)
    times["project+train"] = time.perf_counter() - t0
    cv = record.metrics["cv"]
    _print_report(cv, a, times, int(ref.train_events.shape[0]))
    print(f"model: ensemble of {record.n_members} fold models; temperature {record.temperature:.3f}; "
          f"failed samples {len(record.provenance['failed_samples'])}")
    (a.out / "summary.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "times": times,
                                                    "cv": {k: v for k, v in cv.items() if k != "oof"}}, indent=2))


if __name__ == "__main__":
    main()
