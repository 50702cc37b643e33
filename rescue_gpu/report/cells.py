"""``report.html`` of a cells run: one self-contained file, like the flow report.

Sections: summary; per-sample leukaemic percentage with its interval and the cutoff
(and against the known truth where the manifest gives it); evaluation (calls against
labels, readout error against true fractions, interval coverage); a gallery of the most
leukaemic-looking cells of the run with their guided Grad-CAM maps; the model (classes,
validation TPR/FPR used by the adjusted count, training metrics); failed samples; every
sample; provenance.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .page import fig_uri, kv, png_data_uri, pyplot, table, write_page

__all__ = ["write_cell_report", "cell_tile", "readout_errors"]


def _rgb(plane_or_rgb: np.ndarray) -> np.ndarray:
    a = np.clip(np.asarray(plane_or_rgb, dtype=np.float32), 0.0, 1.0)
    return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else np.moveaxis(a, 0, -1)


def cell_tile(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """An ``(S, W, 3)`` RGB tile: the cell (RGB if 3 planes, else every plane in grey) then its saliency overlay."""
    img = np.asarray(image, dtype=np.float32)
    panels = [_rgb(img)] if img.shape[0] == 3 else [_rgb(p) for p in img]
    sal = np.asarray(saliency, dtype=np.float32)
    sal = sal / sal.max() if sal.max() > 0 else sal
    heat = pyplot().get_cmap("inferno")(sal)[..., :3]
    base = panels[0].mean(axis=-1, keepdims=True)
    panels.append(0.45 * base + 0.55 * heat)
    gap = np.ones((img.shape[1], 2, 3), dtype=np.float32)
    return np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)


def _png(tile: np.ndarray) -> str:
    buf = io.BytesIO()
    pyplot().imsave(buf, np.clip(tile, 0.0, 1.0), format="png")
    return png_data_uri(buf.getvalue())


def _gallery(df: pd.DataFrame, store: Any, *, limit: int) -> str:
    """The ``limit`` most leukaemic-looking cells of the run (from every sample's stored gallery)."""
    items = []
    for sid in df.loc[df["status"] == "scored", "sample_id"]:
        p = store.array(sid, "gallery_p")
        if p is None:
            continue
        items += [(float(pi), sid, i) for i, pi in enumerate(p)]
    items.sort(key=lambda t: -t[0])
    figs = []
    for p, sid, i in items[:limit]:
        img, sal = store.array(sid, "gallery_images")[i], store.array(sid, "gallery_saliency")[i]
        cell = int(store.array(sid, "gallery_index")[i])
        figs.append(f"<figure style='width:auto'><img style='width:auto;height:110px' alt='cell' "
                    f"src='{_png(cell_tile(img, sal))}'><figcaption>{html.escape(sid)} #{cell}<br>"
                    f"p(leukaemic)={p:.3f}</figcaption></figure>")
    if not figs:
        return "<p>No gallery cells stored (gallery = 0, or no scored samples).</p>"
    return ("<p>Each tile: the network input planes, then guided Grad-CAM of log p(leukaemic) over the first plane."
            f"</p><div class='gallery'>{''.join(figs)}</div>")


def _readout_plot(df: pd.DataFrame, cutoff: float) -> str:
    plt = pyplot()
    s = df[df["status"] == "scored"].reset_index(drop=True)
    has_truth = s["true_pct"].notna().any()
    fig, ax = plt.subplots(figsize=(7.0, 3.4), dpi=110)
    x = s["true_pct"].to_numpy(float) if has_truth else np.arange(len(s), dtype=float)
    y = s["leukaemic_pct"].to_numpy(float)
    err = np.vstack([y - s["ci_low_pct"].to_numpy(float), s["ci_high_pct"].to_numpy(float) - y])
    ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o", ms=4, capsize=2, label="leukaemic % (interval)")
    if has_truth:
        ax.scatter(x, s["q_raw_pct"].to_numpy(float), marker="x", color="#888", label="raw classify-and-count")
        top = float(np.nanmax(np.r_[x, y, cutoff])) * 1.05 + 1
        ax.plot([0, top], [0, top], color="black", lw=0.8, label="identity")
        ax.set_xlabel("true leukaemic %")
    else:
        ax.set_xticks(x, s["sample_id"], rotation=90, fontsize=6)
    ax.axhline(cutoff, color="#b00020", ls="--", lw=1, label=f"cutoff {cutoff:g} %")
    ax.set_ylabel("leukaemic %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig_uri(fig)


def readout_errors(df: pd.DataFrame) -> dict[str, Any]:
    """Error of the readout against known true percentages (scored samples with truth only)."""
    s = df[(df["status"] == "scored") & df["true_pct"].notna()]
    if s.empty:
        return {}
    t = s["true_pct"].to_numpy(float)
    adj, raw = s["leukaemic_pct"].to_numpy(float), s["q_raw_pct"].to_numpy(float)
    cover = (s["ci_low_pct"].to_numpy(float) <= t) & (t <= s["ci_high_pct"].to_numpy(float))
    return {"samples with truth": int(len(s)), "MAE adjusted (points)": round(float(np.mean(np.abs(adj - t))), 3),
            "MAE raw (points)": round(float(np.mean(np.abs(raw - t))), 3),
            "bias adjusted (points)": round(float(np.mean(adj - t)), 3),
            "bias raw (points)": round(float(np.mean(raw - t)), 3),
            "interval coverage": round(float(cover.mean()), 3)}


def _calls(df: pd.DataFrame) -> dict[str, Any]:
    lab = df[(df["status"] == "scored") & df["label"].isin(["positive", "negative"])]
    if lab.empty:
        return {}
    y, c = lab["label"] == "positive", lab["call"] == "positive"
    tp, fn, tn, fp = int((y & c).sum()), int((y & ~c).sum()), int((~y & ~c).sum()), int((~y & c).sum())
    out: dict[str, Any] = {"labelled samples": len(lab), "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp}}
    if tp + fn:
        out["sensitivity"] = round(tp / (tp + fn), 3)
    if tn + fp:
        out["specificity"] = round(tn / (tn + fp), 3)
    return out


def _model(record: Any) -> dict[str, Any]:
    return {"architecture": record.architecture, "classes": list(record.classes),
            "leukaemic classes": list(record.leukaemic), "input planes": list(record.channels),
            "image size": record.image_size, "temperature": round(float(record.temperature), 4),
            "validation rates (adjusted count)": record.rates, "training metrics": record.metrics,
            "weights sha256": record.sha256}


def write_cell_report(path: str | Path, df: pd.DataFrame, *, store: Any, record: Any, pipeline: Any,
                      provenance: Mapping[str, Any], title: str = "rescue_gpu cells report") -> Path:
    """Write the self-contained HTML report of a cells run (see the module docstring)."""
    cutoff = float(pipeline.readout.cutoff)
    scored = df[df["status"] == "scored"]
    summary = {"samples": len(df), "scored": len(scored), "failed": int((df["status"] != "scored").sum()),
               "called positive": int((scored["call"] == "positive").sum()),
               "called negative": int((scored["call"] == "negative").sum()), "cutoff": f"{cutoff:g} % leukaemic",
               "cells classified": f"{int(scored['n_cells'].fillna(0).sum()):,}", "pipeline": pipeline.name,
               "adjusted classify-and-count": bool(pipeline.readout.adjust and record.rates)}
    evaluation = {**_calls(df), **readout_errors(df)}
    shown = df.drop(columns=["input_sha256"], errors="ignore")
    bad = df[df["status"] != "scored"]
    return write_page(path, title, [
        ("Summary", kv(summary)),
        ("Leukaemic percentage per sample", f"<img alt='readout' src='{_readout_plot(df, cutoff)}'>"
         if len(scored) else "<p>No scored samples.</p>"),
        ("Evaluation", kv(evaluation) if evaluation else "<p>No labels or true fractions given.</p>"),
        ("Most leukaemic-looking cells", _gallery(df, store, limit=max(pipeline.readout.gallery, 1))),
        ("Model", kv(_model(record))),
        ("Failed samples", "<p>None.</p>" if bad.empty else table(bad[["sample_id", "patient_id", "error"]])),
        ("All samples", table(shown)),
        ("Provenance", kv(provenance)),
    ])
