"""The cells demo's training curve with and without BatchNorm statistics recomputation (issue 17).

Trains the demo's classifier (ifc-labelfree pipeline, ResNet-18, 8 epochs, batch 64, seed 7,
CPU) on a cell library's training tree, with ``train.recompute_bn`` on or off, and prints
one line per epoch (train loss, validation loss, validation accuracy) plus the warnings.

Usage::

    rescue cells demo --out /tmp/cellsdemo              # makes /tmp/cellsdemo/library (and the "on" run)
    python benchmarks/cells_demo_curves.py /tmp/cellsdemo/library/train --out /tmp/cells_off --recompute-bn off
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.cells.workflow import train_cell_model, with_overrides


def main() -> None:
    """Train once and print the curve."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", type=Path, help="training tree of a cell library (class/patient/images)")
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    ap.add_argument("--recompute-bn", choices=("on", "off"), default="on")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    pipe = with_overrides(load_cell_pipeline("ifc-labelfree"), architecture="resnet18", epochs=a.epochs,
                          batch_size=64, seed=a.seed)
    train = dataclasses.replace(pipe.model.train, recompute_bn=a.recompute_bn == "on")
    pipe = dataclasses.replace(pipe, model=dataclasses.replace(pipe.model, train=train))
    t0 = time.perf_counter()
    _, report = train_cell_model(a.train, pipeline=pipe, out=a.out, device="cpu", on_epoch=lambda h: print(
        f"epoch {h['epoch']}: train loss {h['train_loss']:.3f}, val loss {h['val_loss']:.3f}, "
        f"val accuracy {h['val_accuracy']:.3f}", flush=True))
    for text in report.warnings:
        print(f"warning: {text}")
    print(json.dumps({"recompute_bn": a.recompute_bn, "best_epoch": report.best_epoch, "split": report.split,
                      "seconds": round(time.perf_counter() - t0)}))


if __name__ == "__main__":
    main()
