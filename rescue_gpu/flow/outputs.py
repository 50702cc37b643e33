"""Flow run outputs: ``scores.csv``, ``scores.parquet`` and ``report.html`` from the run store.

One row per manifest sample, in manifest order. The manifest gives ``sample_id``,
``patient_id``, ``timepoint`` and ``label`` (so editing those columns needs no re-run);
the store gives the scores, QC counts and status. No FCS keyword is copied here. With an
MRD model the MRD columns follow, and ``true_mrd_pct`` when the manifest gives it.

``warnings`` holds a sample's non-fatal warnings (e.g. a ``"file"`` compensation on a file
without a spillover matrix, a QC gate that could not run, a flagged file not written),
joined by ``"; "`` (a ``;`` inside one warning becomes ``,``); empty when there are none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..runner.manifest import ManifestRow
from ..runner.store import RunStore
from ..runner.tables import join_warnings, replacing, write_table

__all__ = ["COLUMNS", "QC_COLUMNS", "MRD_COLUMNS", "score_table", "write_outputs", "mrd_views"]

COLUMNS = ("sample_id", "patient_id", "timepoint", "p_mrd", "call", "threshold", "status", "error",
           "n_events", "n_events_used", "label", "warnings")
QC_COLUMNS = ("non_finite", "saturated", "debris", "doublets", "n_events_out", "n_outside")
#: Event-level MRD columns (present when the run had an MRD model; see :mod:`rescue_gpu.flow.mrd`).
MRD_COLUMNS = ("mrd_pct", "mrd_pct_low", "mrd_pct_high", "mrd_events", "cd45_events", "lod_pct", "lloq_pct",
               "mrd_status", "mrd_method", "dfn_events", "excess_events", "laip_events", "combined_call")


def _row(m: ManifestRow, record: dict[str, Any] | None, threshold: float) -> dict[str, Any]:
    rec = record or {"status": "failed", "error": "not processed (the run was interrupted); run the command again"}
    qc = rec.get("qc") or {}
    p = rec.get("p_mrd")
    out: dict[str, Any] = {
        "sample_id": m.sample_id, "patient_id": m.patient_id, "timepoint": m.timepoint, "label": m.label,
        "p_mrd": float(p) if p is not None else math.nan, "call": rec.get("call") or "",
        "threshold": float(threshold), "status": rec.get("status", "failed"), "error": rec.get("error") or "",
        "n_events": rec.get("n_events"), "n_events_used": rec.get("n_events_used"),
        "warnings": join_warnings(rec.get("warnings")),
    }
    out.update({k: qc.get(k) for k in QC_COLUMNS})
    out["input_sha256"] = (rec.get("provenance") or {}).get("input_sha256", "")
    truth = m.true_mrd_pct
    mrd = rec.get("mrd")
    if mrd:
        from .mrd import combined_call

        out.update({k: mrd.get(k) for k in MRD_COLUMNS if k != "combined_call"})
        out["combined_call"] = combined_call(out["p_mrd"], float(threshold), str(mrd.get("mrd_status")))
    out["true_mrd_pct"] = math.nan if truth is None else float(truth)
    return out


def score_table(rows: Sequence[ManifestRow], store: RunStore, *, threshold: float) -> pd.DataFrame:
    """The scores of ``rows`` (manifest order) as read back from ``store``."""
    records = [_row(m, store.record(m.sample_id), threshold) for m in rows]  # damaged samples: failed
    has_mrd = any("mrd_status" in r for r in records)
    has_truth = any(m.true_mrd_pct is not None for m in rows)
    df = pd.DataFrame.from_records(records, columns=[*COLUMNS, *QC_COLUMNS, "input_sha256",
                                                     *(MRD_COLUMNS if has_mrd else ()),
                                                     *(("true_mrd_pct",) if has_truth else ())])
    for col in ("n_events", "n_events_used", *QC_COLUMNS, *(("mrd_events", "cd45_events", "dfn_events", "excess_events",
                                                               "laip_events")
                                                            if has_mrd else ())):
        df[col] = df[col].astype("Int64")
    return df


def write_outputs(df: pd.DataFrame, store: RunStore, run_dir: Path, *, report: bool = True,
                  provenance: dict[str, Any] | None = None, extent: Any = None) -> dict[str, Path]:
    """Write the score tables and, with ``report``, ``report.html``; return their paths.

    ``extent``: the reference's UMAP extent, where the report draws the MRD views' events.
    """
    paths = write_table(df, run_dir)
    if report:
        from ..report.flow import write_report

        with replacing(run_dir / "report.html") as tmp:
            write_report(tmp, df, images=_gallery_images(df, store), provenance=provenance or {},
                         mrd_views=mrd_views(df, store), extent=extent)
        paths["report"] = run_dir / "report.html"
    return paths


def mrd_views(df: pd.DataFrame, store: RunStore) -> dict[str, Any]:
    """``sample_id -> MrdView`` of the samples the report's MRD section shows (those with a stored ``mrd_view``)."""
    from ..report.mrd import MrdView, shown_samples
    from .mrd_view import split_view

    out: dict[str, Any] = {}
    for sid in shown_samples(df)["sample_id"]:
        view = store.array(sid, "mrd_view")
        rec = (store.record(sid) or {}).get("mrd") or {}
        if view is None or not rec.get("view_markers"):
            continue
        aberrant, coords, values = split_view(view)
        out[sid] = MrdView(aberrant=aberrant, coords=coords, values=values, markers=tuple(rec["view_markers"]),
                           image=store.image(sid))
    return out


def _gallery_images(df: pd.DataFrame, store: RunStore, *, limit: int = 48) -> dict[str, Any]:
    """First-channel images of up to ``limit`` scored samples, highest p_mrd first."""
    scored = df[df["status"] == "scored"].sort_values("p_mrd", ascending=False).head(limit)
    out = {}
    for sid in scored["sample_id"]:
        img = store.image(sid)
        if img is not None:
            out[sid] = img
    return out
