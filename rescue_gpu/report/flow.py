"""The flow run's ``report.html`` (built with :mod:`.page`).

Sections: cohort summary, score histogram with the threshold, evaluation (metrics with
patient-level bootstrap intervals, confusion, ROC; only when the manifest has labels),
image gallery, MRD events (with an MRD model: the aberrant events of positive and
borderline samples, see :mod:`.mrd`), MRD % vs truth (only when the manifest gives
``true_mrd_pct``), failed samples with reasons, samples scored with warnings, all scores,
provenance. Nothing is fetched
from the network when the file is opened.
"""

from __future__ import annotations

import html
import io
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .mrd import MrdView, mrd_section, truth_section
from .page import fig_uri, kv, png_data_uri, pyplot, table, write_page

__all__ = ["write_report"]


def _image_uri(image: np.ndarray) -> str:
    """First channel of a ``(C, H, W)`` image as a viridis PNG."""
    plane = np.asarray(image, dtype=np.float32)
    plane = plane[0] if plane.ndim == 3 else plane
    top = float(plane.max()) if plane.size else 0.0
    buf = io.BytesIO()
    pyplot().imsave(buf, plane / top if top > 0 else plane, cmap="viridis", vmin=0.0, vmax=1.0, format="png")
    return png_data_uri(buf.getvalue())


def _histogram(df: pd.DataFrame, threshold: float) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.2), dpi=110)
    scored = df[df["status"] == "scored"]
    p_all = np.r_[scored["p_mrd"].to_numpy(dtype=float), threshold]
    lo, hi = float(np.nanmin(p_all)), float(np.nanmax(p_all))
    pad = max(0.02, 0.05 * (hi - lo))
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    bins = np.linspace(lo, hi, 31)
    labels = scored["label"].fillna("")
    groups = [("positive", "#c62828"), ("negative", "#2e7d32"), ("", "#546e7a")]
    for lab, colour in groups:
        p = scored.loc[labels == lab, "p_mrd"].to_numpy(dtype=float)
        if p.size:
            ax.hist(p, bins=bins, alpha=0.6, color=colour, label=f"label {lab}" if lab else "unlabelled")
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.3g}")
    ax.set(xlabel="p_mrd", ylabel="samples", xlim=(lo, hi))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig_uri(fig)


def _summary(df: pd.DataFrame, threshold: float) -> dict[str, Any]:
    scored = df[df["status"] == "scored"]
    return {"samples": len(df), "scored": len(scored), "failed": int((df["status"] != "scored").sum()),
            "called positive": int((scored["call"] == "positive").sum()),
            "called negative": int((scored["call"] == "negative").sum()),
            "with warnings": int((df["warnings"].fillna("").astype(str) != "").sum()) if "warnings" in df else 0,
            "patients": int(df["patient_id"].replace("", np.nan).nunique()), "threshold": f"{threshold:.4g}",
            "events read (scored samples)": f"{int(scored['n_events'].fillna(0).sum()):,}"}


def _labelled(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "scored") & df["label"].isin(["positive", "negative"])]


def _evaluation(df: pd.DataFrame, threshold: float, n_boot: int) -> str:
    """Metrics with intervals and the ROC, when labels of both classes are present."""
    lab = _labelled(df)
    if lab.empty:
        return "<p>No labels in the manifest: no evaluation.</p>"
    y = (lab["label"] == "positive").to_numpy(dtype=int)
    p = lab["p_mrd"].to_numpy(dtype=float)
    if y.min() == y.max():
        return f"<p>Only {'positive' if y[0] else 'negative'} labels among the scored samples: no ROC.</p>"
    from ..nn import metrics

    groups = np.where(lab["patient_id"] == "", lab["sample_id"], lab["patient_id"])
    ev = metrics.evaluate_predictions(y, p, threshold=threshold, groups=groups,
                                      timepoints=lab["timepoint"].to_numpy(), n_boot=n_boot)
    rows = {k: _interval(v) for k, v in ev["metrics"].items()}
    with tempfile.TemporaryDirectory() as tmp:
        roc = metrics.plot_roc(y, p, Path(tmp) / "roc.png", threshold=threshold, title="ROC (scored, labelled samples)")
        roc_uri = png_data_uri(roc.read_bytes())
    per_tp = pd.DataFrame([{"timepoint": tp, "n": r["n"], "positive": r["n_positive"], "negative": r["n_negative"],
                            **{k: _interval(r.get(k)) for k in ("sensitivity", "specificity", "roc_auc")}}
                           for tp, r in ev["by_timepoint"].items()])
    return (f"<p>{ev['n']} labelled samples from {ev['n_patients']} patients; 95% patient-level bootstrap "
            f"intervals ({n_boot} replicates).</p>{kv(rows)}{kv({'confusion': ev['confusion']})}"
            f"{table(per_tp)}<img alt='ROC' src='{roc_uri}'>")


def _interval(v: Any) -> str:
    if not v or v.get("estimate") is None:
        return "n/a"
    if v.get("low") is None or v.get("high") is None:
        return f"{v['estimate']:.3f}"
    return f"{v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def _gallery(df: pd.DataFrame, images: Mapping[str, np.ndarray]) -> str:
    by_id = df.set_index("sample_id")
    figs = []
    for sid, img in images.items():
        r = by_id.loc[sid]
        cls = {"positive": "pos", "negative": "neg"}.get(r["call"], "")
        label = f" (label {r['label']})" if r["label"] else ""
        figs.append(f"<figure><img alt='{html.escape(sid)}' src='{_image_uri(img)}'><figcaption>"
                    f"{html.escape(sid)}<br><span class='{cls}'>p={r['p_mrd']:.3f} {html.escape(r['call'])}</span>"
                    f"{html.escape(label)}</figcaption></figure>")
    return f"<div class='gallery'>{''.join(figs)}</div>" if figs else "<p>No scored samples.</p>"


def _failed(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "scored"][["sample_id", "patient_id", "timepoint", "error"]]
    return "<p>None.</p>" if bad.empty else table(bad)


def _warned(df: pd.DataFrame) -> str:
    """Samples with warnings (the ``warnings`` column), one warning per line."""
    if "warnings" not in df.columns:
        return "<p>None.</p>"
    rows = df[df["warnings"].fillna("").astype(str) != ""]
    if rows.empty:
        return "<p>None.</p>"
    body = "".join(
        f"<tr><td>{html.escape(str(r['sample_id']))}</td><td>{html.escape(str(r['status']))}</td><td>"
        + "<br>".join(html.escape(w) for w in str(r["warnings"]).split("; ")) + "</td></tr>"
        for _, r in rows.iterrows())
    return ("<p>Samples with non-fatal warnings: each was processed, but not quite as the pipeline asks.</p>"
            f"<table><tr><th>sample_id</th><th>status</th><th>warnings</th></tr>{body}</table>")


def write_report(path: str | Path, df: pd.DataFrame, *, images: Mapping[str, np.ndarray],
                 provenance: Mapping[str, Any], n_boot: int = 200, title: str = "rescue_gpu cohort report",
                 mrd_views: Mapping[str, MrdView] | None = None, extent: Any = None) -> Path:
    """Write the self-contained HTML report of a run.

    Parameters
    ----------
    path
        Output file.
    df
        The score table (see :func:`rescue_gpu.flow.outputs.score_table`).
    images
        ``sample_id -> (C, H, W)`` images for the gallery (first channel shown).
    provenance
        Reference fingerprint, model sha256, settings, software, cluster, ...
    n_boot
        Bootstrap replicates of the evaluation intervals.
    mrd_views, extent
        ``sample_id -> MrdView`` of the samples :func:`.mrd.shown_samples` selects, and the
        reference's UMAP extent ``(x_min, x_max, y_min, y_max)`` their images cover.
    """
    threshold = float(df["threshold"].iloc[0]) if len(df) else 0.5
    shown = df.drop(columns=["input_sha256"], errors="ignore")
    mrd = [("MRD events", mrd_section(df, mrd_views or {}, extent))] if "mrd_status" in df.columns else []
    truth = truth_section(df)
    mrd += [("MRD % vs truth", truth)] if truth is not None else []
    return write_page(path, title, [
        ("Summary", kv(_summary(df, threshold))),
        ("Scores", f"<img alt='histogram of p_mrd' src='{_histogram(df, threshold)}'>"),
        ("Evaluation", _evaluation(df, threshold, n_boot)),
        ("Images", "<p>Density images in the reference UMAP (first channel), highest p_mrd first.</p>"
                   f"{_gallery(df, images)}"),
        *mrd,
        ("Failed samples", _failed(df)),
        ("Warnings", _warned(df)),
        ("All samples", table(shown)),
        ("Provenance", kv(provenance)),
    ])
