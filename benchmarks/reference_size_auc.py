"""Reference size vs classification on a held-out SIMULATED cohort (issue 15, part 3).

Simulates one cohort and splits its patients into training and held-out patients
(:func:`rescue_gpu.flow.demo.split_patients`: every third patient of each class is held
out, so the two sets share no patient). For each reference size of ``--sizes``, with the
same seeds: builds a reference of that many events from the training samples only
(``rescue reference build``'s path: ``max_events`` sampled evenly across samples and
balanced across timepoint/label strata), trains a model on the training samples
(CPU-sized: ``--image-size`` px, ``--folds``-fold patient CV, at most ``--epochs``
epochs, patience ``--patience``; aml-mrd otherwise), and scores the held-out samples
in-process (``rescue score``'s path). Reports, per size: held-out ROC AUC and the
sensitivity and specificity at the model's stored threshold with patient-level 95%
bootstrap intervals, the CV AUC, build time, train time (projecting the training
samples plus fitting the fold models) and score time per held-out sample.
``--seeds 0,1`` repeats everything (simulation fixed) with a second training seed.

Prints a markdown table; ``--json`` writes the figures (schema: :data:`ROW_KEYS`).

Usage::

    python benchmarks/reference_size_auc.py --samples 120 --events 20000 --sizes 10000,30000,100000 \
        --out /tmp/refauc --json /tmp/refauc.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rescue_gpu.config import Pipeline, RuntimeConfig, load_pipeline
from rescue_gpu.flow.assay import ScoreOptions, score_cohort
from rescue_gpu.flow.demo import split_patients
from rescue_gpu.flow.stages import build_reference_from_rows, load_events, project
from rescue_gpu.flow.train import train_model
from rescue_gpu.nn.metrics import bootstrap_intervals
from rescue_gpu.runner.manifest import ManifestRow, read_manifest
from rescue_gpu.simulate import simulate_cohort

#: Keys of one row of the output (one reference size and seed).
ROW_KEYS = ("seed", "reference_events", "build_s", "train_s", "score_s_per_sample", "n_scored", "threshold",
            "cv_roc_auc", "roc_auc", "sensitivity", "specificity")
#: Events of the warm-up reference (above umap-learn's 4,096-event switch to pynndescent).
WARM_UP_EVENTS = 5000
#: Keys of each interval in a row: point estimate and 95% patient-bootstrap interval.
INTERVAL_KEYS = ("estimate", "low", "high")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=120, help="simulated samples (training + held out)")
    ap.add_argument("--events", type=int, default=20_000, help="events per simulated sample")
    ap.add_argument("--sizes", default="10000,30000,100000", help="reference sizes (max_events), comma-separated")
    ap.add_argument("--seeds", default="0", help="training seeds (reference fit, projection, CNN), comma-separated")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=12, help="max epochs per fold (early stopping may end sooner)")
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--copies", type=int, default=2, help="bootstrap re-renders per sample and epoch")
    ap.add_argument("--boot", type=int, default=1000, help="patient-level bootstrap replicates")
    ap.add_argument("--sim-seed", type=int, default=0, help="seed of the simulated cohort")
    ap.add_argument("--out", type=Path, default=Path("/tmp/reference_size_auc"))
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def size_pipeline(a: argparse.Namespace, *, seed: int, events_per_sample: int) -> Pipeline:
    """aml-mrd with a CPU-sized raster and training schedule, and every event of a sample eligible for the reference."""
    pipe = load_pipeline("aml-mrd")
    train = dataclasses.replace(pipe.model.train, folds=a.folds, max_epochs=a.epochs, patience=a.patience,
                                augment_copies=a.copies, seed=seed)
    return dataclasses.replace(
        pipe, raster=dataclasses.replace(pipe.raster, size=a.image_size),
        reference=dataclasses.replace(pipe.reference, events_per_sample=events_per_sample, random_state=seed),
        model=dataclasses.replace(pipe.model, train=train))


def held_out_metrics(scores_csv: Path, held: Sequence[ManifestRow], *, n_boot: int, seed: int) -> dict[str, Any]:
    """ROC AUC, sensitivity and specificity (stored threshold) of the scored held-out samples, with patient-level CIs."""
    import pandas as pd

    df = pd.read_csv(scores_csv, dtype={"sample_id": str, "patient_id": str})
    df = df[df["status"] == "scored"]
    label = {r.sample_id: r.label for r in held}
    y = np.array([1 if label[s] == "positive" else 0 for s in df["sample_id"]])
    groups = [p or s for p, s in zip(df["patient_id"].fillna("").astype(str), df["sample_id"])]
    thr = float(df["threshold"].iloc[0])
    iv = bootstrap_intervals(y, df["p_mrd"].to_numpy(float), groups, threshold=thr, n_boot=n_boot, seed=seed,
                             metrics=("roc_auc", "sensitivity", "specificity"))
    out: dict[str, Any] = {"n_scored": int(len(df)), "threshold": thr}
    out.update({k: {q: float(v.as_dict()[q]) for q in INTERVAL_KEYS} for k, v in iv.items()})
    return out


def one_size(a: argparse.Namespace, train: list[ManifestRow], held: list[ManifestRow], held_csv: Path,
             *, size: int, seed: int) -> dict[str, Any]:
    """Build, train and score with one reference size and seed; return its row (see :data:`ROW_KEYS`)."""
    work = a.out / f"seed{seed}-ref{size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pipe = size_pipeline(a, seed=seed, events_per_sample=a.events)
    t = time.perf_counter()
    ref = build_reference_from_rows(train, pipe, max_events=size, backend="cpu")
    build_s = time.perf_counter() - t
    ref.save(work / "reference")
    t = time.perf_counter()
    record = train_model(train, ref, pipe, out=work / "model", cache_dir=work / "cache", device="cpu",
                         n_boot=a.boot, show_progress=False)
    train_s = time.perf_counter() - t
    shutil.rmtree(work / "cache", ignore_errors=True)
    t = time.perf_counter()
    summary = score_cohort(held_csv, reference=work / "reference", model=work / "model", out=work / "run",
                           options=ScoreOptions(pipeline=pipe, seed=seed, report=False),
                           runtime=RuntimeConfig(backend="cpu", progress=False), in_process=True)
    score_s = time.perf_counter() - t
    m = held_out_metrics(work / "run" / "scores.csv", held, n_boot=a.boot, seed=seed)
    cv_auc = record.metrics["cv"]["metrics"]["roc_auc"]
    row = {"seed": seed, "reference_events": int(ref.train_events.shape[0]), "build_s": build_s, "train_s": train_s,
           "score_s_per_sample": score_s / max(1, summary.n_scored), **m,
           "cv_roc_auc": float(cv_auc["estimate"]) if cv_auc else float("nan"),
           "load_avg": [float(x) for x in os.getloadavg()]}
    shutil.rmtree(work / "run", ignore_errors=True)
    return row


def warm_up(a: argparse.Namespace, train: Sequence[ManifestRow]) -> float:
    """Compile numba and start torch outside the timings: a small reference, one projection; return seconds.

    The warm-up reference has more than 4,096 events, so that umap-learn's approximate
    neighbour search (pynndescent, which it uses from that size on) is compiled here too.
    """
    t = time.perf_counter()
    pipe = size_pipeline(a, seed=0, events_per_sample=a.events)
    ref = build_reference_from_rows(train[:4], pipe, max_events=min(WARM_UP_EVENTS, 4 * a.events), backend="cpu")
    ev = load_events(train[0].path, pipe)
    project(ref, ev, seed=0, backend="cpu")
    torch.nn.functional.conv2d(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 3, 3))
    return time.perf_counter() - t


def _ci(d: dict[str, float]) -> str:
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the rows."""
    lines = ["| seed | reference events | build (s) | train (s) | score (s/sample) | CV AUC | held-out ROC AUC [95% CI] "
             "| sensitivity [95% CI] | specificity [95% CI] | load (1 min) |",
             "|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['reference_events']:,} | {r['build_s']:.1f} | {r['train_s']:.0f} | "
                     f"{r['score_s_per_sample']:.2f} | {r['cv_roc_auc']:.3f} | {_ci(r['roc_auc'])} | "
                     f"{_ci(r['sensitivity'])} | {_ci(r['specificity'])} | {r['load_avg'][0]:.1f} |")
    return "\n".join(lines)


def run(a: argparse.Namespace, *, say: Any = print) -> dict[str, Any]:
    """Simulate, split, and run every (seed, size); return the record that ``--json`` writes."""
    warnings.simplefilter("ignore", RuntimeWarning)
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(1)
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    shutil.rmtree(a.out, ignore_errors=True)
    t = time.perf_counter()
    simulate_cohort(a.out / "cohort", n_samples=a.samples, n_events=a.events, seed=a.sim_seed)
    train, held = split_patients(read_manifest(a.out / "cohort" / "manifest.csv"))
    held_csv = a.out / "held-out.csv"
    with open(held_csv, "w", encoding="utf-8") as fh:
        fh.write("sample_id,path,patient_id,timepoint,label\n")
        fh.writelines(f"{r.sample_id},{Path(r.path).resolve()},{r.patient_id},{r.timepoint},{r.label}\n" for r in held)

    def count(rows: list[ManifestRow]) -> dict[str, int]:
        return {"samples": len(rows), "patients": len({r.patient_id or r.sample_id for r in rows}),
                "positive": sum(r.label == "positive" for r in rows),
                "negative": sum(r.label == "negative" for r in rows)}

    cohort = {"train": count(train), "held_out": count(held), "simulate_s": time.perf_counter() - t}
    cohort["warm_up_s"] = warm_up(a, train)
    say(f"cohort: {json.dumps(cohort)}")
    rec: dict[str, Any] = {"args": {k: str(v) for k, v in vars(a).items()}, "cohort": cohort, "rows": [],
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                                      f"{torch.get_num_threads()} torch thread(s)"}
    for seed in seeds:
        for size in sizes:
            rec["rows"].append(one_size(a, train, held, held_csv, size=size, seed=seed))
            say(json.dumps(rec["rows"][-1]))
            if a.json:  # after every row, so that an interrupted run keeps what it measured
                a.json.write_text(json.dumps(rec, indent=2))
    return rec


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, print the table and write ``--json``."""
    a = parse_args(argv)
    rec = run(a)
    print(format_table(rec["rows"]))


if __name__ == "__main__":
    main()
