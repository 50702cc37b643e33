"""``report.html`` of a patient-level (attention MIL) subtype run: one self-contained file.

Sections: summary; per patient the call, the calibrated class probabilities and the
most-attended cells (each tile: the network input, then guided Grad-CAM of the cell
network's logit of the patient's call), with their attention weights; with known
classes, the patient confusion matrix with row shares and 95 % bootstrap intervals
(patients resampled); the model.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .cells import cell_tile
from .page import kv, png_data_uri, pyplot, table, write_page

__all__ = ["write_patient_report", "confusion_html"]


def _png(tile: np.ndarray) -> str:
    import io

    buf = io.BytesIO()
    pyplot().imsave(buf, np.clip(tile, 0.0, 1.0), format="png")
    return png_data_uri(buf.getvalue())


def confusion_html(confusion: Mapping[str, np.ndarray], classes: Sequence[str]) -> str:
    """A table: rows = true class, columns = call; each cell ``count (share, 95 % low-high)``."""
    counts, share, low, high = (np.asarray(confusion[k]) for k in ("counts", "share", "low", "high"))
    head = "<th>truth \\ call</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    body = []
    for i, c in enumerate(classes):
        cells = []
        for j in range(len(classes)):
            if np.isnan(share[i, j]):
                cells.append(f"<td>{int(counts[i, j])}</td>")
            else:
                cells.append(f"<td>{int(counts[i, j])} ({share[i, j]:.2f}, {low[i, j]:.2f}-{high[i, j]:.2f})</td>")
        body.append(f"<tr><th>{html.escape(c)}</th>{''.join(cells)}</tr>")
    return (f"<p>Count of patients (share of the true class, 95 % bootstrap interval over patients).</p>"
            f"<table><tr>{head}</tr>{''.join(body)}</table>")


def _patient_block(row: Mapping[str, Any], top: Mapping[str, Any], classes: Sequence[str]) -> str:
    probs = ", ".join(f"{c} {float(row[f'p_{c}']):.3f}" for c in classes)
    truth = f", truth {html.escape(str(row['truth']))}" if "truth" in row and row["truth"] == row["truth"] else ""
    figs = []
    for img, sal, a, cid in zip(top["images"], top["saliency"], top["attention"], top["cell_ids"]):
        figs.append(f"<figure style='width:auto'><img style='width:auto;height:90px' alt='cell' "
                    f"src='{_png(cell_tile(img, sal))}'><figcaption>{html.escape(cid.split('/')[-1])}<br>"
                    f"attention {float(a):.3f}</figcaption></figure>")
    return (f"<h3>{html.escape(str(row['patient_id']))}: {html.escape(str(row['call']))}{truth}</h3>"
            f"<p>{int(row['n_cells'])} cells; p: {probs}</p><div class='gallery'>{''.join(figs)}</div>")


def write_patient_report(path: str | Path, patients: pd.DataFrame, *, tops: Sequence[Mapping[str, Any]],
                         classes: Sequence[str], confusion: Mapping[str, np.ndarray] | None, model: Any,
                         cell_model: Any, title: str = "rescue_gpu patient subtype report") -> Path:
    """Write the report (see the module docstring); ``tops`` has one entry per patient, in ``patients`` order."""
    summary = {"patients": len(patients), "cells": int(patients["n_cells"].sum()),
               "calls": {c: int((patients["call"] == c).sum()) for c in classes}}
    if "truth" in patients:
        summary["accuracy"] = round(float((patients["call"] == patients["truth"]).mean()), 4)
    blocks = "".join(_patient_block(r, t, classes) for r, t in zip(patients.to_dict("records"), tops))
    about = {"classes": list(model.classes), "temperature": round(float(model.temperature), 4),
             "bag size (training)": model.bag_size, "layout": str(model.layout), "metrics": model.metrics,
             "MIL weights sha256": model.sha256, "cell model sha256": cell_model.sha256,
             "cell model architecture": cell_model.architecture}
    return write_page(path, title, [
        ("Summary", kv(summary)),
        ("Confusion matrix (patients)", confusion_html(confusion, classes) if confusion is not None
         else "<p>No known classes.</p>"),
        ("Most-attended cells per patient",
         "<p>Each tile: the cell network's input, then guided Grad-CAM of its logit for the patient's call; "
         "attention weights of a patient sum to 1 over all its cells.</p>" + blocks),
        ("All patients", table(patients)),
        ("Model", kv(about)),
    ])
