"""Patient-level AML subtype on a SIMULATED smear cohort: attention MIL vs per-cell baselines.

1. Simulate two cohorts of the five classes (control, PML_RARA, NPM1, CBFB_MYH11,
   RUNX1_RUNX1T1) with :func:`rescue_gpu.simulate.cells.subtype.simulate_subtype_cohort`:
   subtype patients carry 10-60 % subtype-specific abnormal cells among normal ones.
   A DEVELOPMENT cohort trains the cell network; the EVALUATION cohort (other patients,
   other styles) is used for everything below, so the cell network never saw its patients.
2. Train the cell network the way the smear pipeline does (every cell inherits its
   patient's class; patient-level split, early stopping, temperature) on the
   development cohort: ``pipelines/smear-aml-subtype.toml`` with a smaller network and
   crop (``--architecture``, ``--size``) for a CPU budget.
3. On the evaluation cohort: cell probabilities and penultimate features (the engine).
   - baseline "inherited label": a patient's call is the class of largest mean cell
     probability (the pipeline's class-fraction readout);
   - baseline "majority vote": the most frequent per-cell call;
   - attention MIL: ``--folds``-fold patient-level cross-validation of
     :func:`rescue_gpu.cells.mil.train_mil` on bags of the patients' cell features;
     out-of-fold calls.
4. Patient-level macro F1 with 95 % bootstrap intervals (patients resampled); attention
   ROC AUC of abnormal vs normal cells against the simulator truth (cells of subtype
   patients, attention times bag size pooled over patients, and the median per patient).

Simulated cells say nothing about real smears. Example::

    .venv/bin/python benchmarks/eval_mil.py --dev-per-class 6 --eval-per-class 12 --cells 32 --size 32 \\
        --epochs 8 --folds 5 --boot 1000 --out /tmp/eval-mil
    # only the MIL part again, on the cohorts and cell network of an earlier run:
    .venv/bin/python benchmarks/eval_mil.py --reuse /tmp/eval-mil --cells 32 --size 32 --out /tmp/eval-mil-2
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev-per-class", type=int, default=6, help="development patients per class (cell network)")
    ap.add_argument("--eval-per-class", type=int, default=12, help="evaluation patients per class (>= 12: 60)")
    ap.add_argument("--cells", type=int, default=48, help="cells per patient")
    ap.add_argument("--size", type=int, default=48, help="crop side, px")
    ap.add_argument("--architecture", default="resnet18")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--bag-size", type=int, default=32)
    ap.add_argument("--mil-epochs", type=int, default=80)
    ap.add_argument("--mil-hidden", type=int, default=64)
    ap.add_argument("--mil-dropout", type=float, default=0.5)
    ap.add_argument("--mil-weight-decay", type=float, default=1e-2)
    ap.add_argument("--mil-lr", type=float, default=5e-4)
    ap.add_argument("--mil-patience", type=int, default=20)
    ap.add_argument("--mil-pooling", default=None, help="attention or attention+mean (default: MilTrainSpec's)")
    ap.add_argument("--mil-instance-dropout", type=float, default=None, help="default: MilTrainSpec's")
    ap.add_argument("--mil-members", type=int, default=None, help="ensemble size (default: MilTrainSpec's)")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="an earlier --out: reuse its cohorts and trained cell network (only the MIL part runs)")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rescue_gpu.cells.io import read_tree
    from rescue_gpu.cells.mil import (MilTrainSpec, cell_features, cross_validate_mil, group_cells,
                                      macro_f1_interval, confusion_intervals)
    from rescue_gpu.cells.spec import load_cell_pipeline
    from rescue_gpu.cells.workflow import train_cell_model, with_overrides
    from rescue_gpu.nn.metrics import roc_auc
    from rescue_gpu.simulate.cells.subtype import SUBTYPES, simulate_subtype_cohort

    t0 = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    src = args.reuse or out
    if args.reuse is None:
        simulate_subtype_cohort(out / "dev", patients_per_class=args.dev_per_class, cells_per_patient=args.cells,
                                size=args.size, seed=args.seed + 101, prefix="D")
        simulate_subtype_cohort(out / "eval", patients_per_class=args.eval_per_class, cells_per_patient=args.cells,
                                size=args.size, seed=args.seed + 202, prefix="E")
    n_dev = len(list(csv.DictReader(open(src / "dev" / "patients.csv"))))
    _say(f"cohorts in {src}: {n_dev} development patients, evaluation patients in {src / 'eval'}")

    base = load_cell_pipeline("smear-aml-subtype")
    pipe = with_overrides(base, architecture=args.architecture, epochs=args.epochs, batch_size=64, seed=args.seed)
    pipe = dataclasses.replace(
        pipe, preprocess=dataclasses.replace(pipe.preprocess, size=args.size, resize=0),
        model=dataclasses.replace(pipe.model, train=dataclasses.replace(pipe.model.train, test_fraction=0.0,
                                                                        max_shift=3, patience=4)))
    t1 = time.perf_counter()
    if args.reuse is None:
        record, report = train_cell_model(out / "dev", pipeline=pipe, out=out / "cell-model", device="cpu",
                                          on_epoch=lambda h: _say(f"cell net epoch {h['epoch']}: train loss "
                                                                  f"{h['train_loss']:.3f}, val loss "
                                                                  f"{h['val_loss']:.3f}"))
        cell_info = {"epochs": report.epochs, "best_epoch": report.best_epoch}
    else:
        from rescue_gpu.cells.record import CellModelRecord

        record = CellModelRecord.load(src / "cell-model")
        cell_info = {"reused_from": str(src / "cell-model"), **{k: record.provenance.get(k)
                                                                for k in ("epochs", "best_epoch")}}
    cell_seconds = time.perf_counter() - t1
    _say(f"cell network ready in {cell_seconds:.0f} s")

    cells = read_tree(src / "eval", spec=pipe.input, classes=pipe.classes.names)
    probs, feats = cell_features(cells, record, device="cpu")
    pids, index = group_cells(feats, cells.patient_ids)
    classes = list(pipe.classes.names)
    y = np.array([classes.index(cells.labels[ix[0]]) for ix in index])
    truth = {r["cell_id"]: int(r["abnormal"]) for r in csv.DictReader(open(src / "eval" / "truth.csv"))}
    abnormal = [np.array([truth[c] for c in cells.cell_ids[ix]]) for ix in index]
    _say(f"features: {feats.shape} from {len(pids)} evaluation patients")

    inherited = np.array([probs[ix].mean(0).argmax() for ix in index])
    majority = np.array([np.bincount(probs[ix].argmax(1), minlength=len(classes)).argmax() for ix in index])

    t2 = time.perf_counter()
    spec = MilTrainSpec(bag_size=args.bag_size, max_epochs=args.mil_epochs, seed=args.seed, hidden=args.mil_hidden,
                        dropout=args.mil_dropout, weight_decay=args.mil_weight_decay,
                        learning_rate=args.mil_lr, patience=args.mil_patience)
    spec = dataclasses.replace(spec, **{k: v for k, v in (("pooling", args.mil_pooling),
                                                          ("instance_dropout", args.mil_instance_dropout),
                                                          ("members", args.mil_members)) if v is not None})
    mil_p, att, _ = cross_validate_mil([feats[ix] for ix in index], y, classes=classes, folds=args.folds, spec=spec,
                                       cell_model_sha256=record.sha256,
                                       on_fold=lambda f, r: _say(f"MIL fold {f + 1}: {r.epochs} epochs "
                                                                 f"(best {r.best_epoch}), T {r.temperature:.2f}"))
    mil_seconds = time.perf_counter() - t2
    mil = mil_p.argmax(1)

    k = len(classes)
    rows = {name: macro_f1_interval(y, calls, n_classes=k, n_boot=args.boot, seed=args.seed)
            for name, calls in (("attention MIL", mil), ("inherited label (mean cell probability)", inherited),
                                ("per-cell majority vote", majority))}
    sub = [i for i in range(len(pids)) if y[i] != 0]
    att_scaled = np.concatenate([att[i] * att[i].size for i in sub])
    truth_sub = np.concatenate([abnormal[i] for i in sub])
    cellp = np.concatenate([probs[index[i]][:, y[i]] for i in sub])
    per_patient = [roc_auc(abnormal[i], att[i]) for i in sub if 0 < abnormal[i].sum() < abnormal[i].size]
    auc = {"attention_pooled": roc_auc(truth_sub, att_scaled),
           "attention_median_per_patient": float(np.median(per_patient)),
           "cell_network_p_patient_class_pooled": roc_auc(truth_sub, cellp),
           "n_cells": int(truth_sub.size), "n_abnormal": int(truth_sub.sum()), "n_patients": len(sub)}
    cm = confusion_intervals(y, mil, n_classes=k, n_boot=args.boot, seed=args.seed)
    result = {"cohort": {"evaluation_patients": len(pids), "per_class": args.eval_per_class,
                         "development_patients": n_dev, "cells_per_patient": args.cells,
                         "image_size": args.size, "abnormal_share": [0.1, 0.6], "classes": classes},
              "cell_network": {"architecture": args.architecture, **cell_info, "seconds": round(cell_seconds, 1),
                               "sha256": record.sha256},
              "mil": {"folds": args.folds, "spec": dataclasses.asdict(spec), "seconds": round(mil_seconds, 1)},
              "macro_f1": rows, "attention_auc": auc,
              "mil_confusion": {kk: np.asarray(v).tolist() for kk, v in cm.items()},
              "targets": {"macro_f1>=0.9": rows["attention MIL"]["value"] >= 0.9,
                          "above_baseline": rows["attention MIL"]["value"] > max(
                              rows["inherited label (mean cell probability)"]["value"],
                              rows["per-cell majority vote"]["value"]),
                          "attention_auc>=0.85": auc["attention_pooled"] >= 0.85},
              "seconds": round(time.perf_counter() - t0, 1), "load": os.getloadavg()}
    (out / "eval_mil.json").write_text(json.dumps(result, indent=1, default=float))
    lines = ["| method | patient macro F1 | 95% CI |", "|---|---|---|"]
    lines += [f"| {n} | {r['value']:.3f} | {r['low']:.3f}-{r['high']:.3f} |" for n, r in rows.items()]
    lines += ["", f"attention ROC AUC (abnormal vs normal, {auc['n_cells']} cells of {auc['n_patients']} subtype "
              f"patients): pooled {auc['attention_pooled']:.3f}, median per patient "
              f"{auc['attention_median_per_patient']:.3f}; cell network p(patient class) "
              f"{auc['cell_network_p_patient_class_pooled']:.3f}"]
    (out / "eval_mil.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(result["targets"]), f"total {result['seconds']} s, load {result['load']}")


if __name__ == "__main__":
    main()
