"""Outputs of a cells run, read back from the run store.

- ``scores.csv`` / ``scores.parquet``: one row per sample (manifest order): leukaemic %
  (adjusted), its interval, the call at the cutoff, the raw share, class fractions, the
  known true % where the manifest gives it, status and error.
- ``cells.parquet``: one row per cell: sample, cell id, predicted class, leukaemic
  probability and every class probability (written a sample at a time).
- ``embeddings.npz``: penultimate-layer features (float16) of up to 500 cells per sample,
  with sample and cell ids and the predicted class, for plotting (UMAP/t-SNE/PCA of the
  cells); every cell's features stay in the run store.
- ``report.html``: see :mod:`rescue_gpu.report.cells`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..runner.manifest import ManifestRow
from ..runner.store import RunStore, decode_strings
from ..runner.tables import replacing, write_table

__all__ = ["cell_score_table", "sample_cells", "write_cells_parquet", "write_embeddings", "write_cell_outputs",
           "SCORE_COLUMNS", "EMBEDDINGS_PER_SAMPLE"]

EMBEDDINGS_PER_SAMPLE = 500
SCORE_COLUMNS = ("sample_id", "patient_id", "timepoint", "label", "status", "error", "n_cells", "leukaemic_pct",
                 "ci_low_pct", "ci_high_pct", "cutoff_pct", "call", "q_raw_pct", "adjusted", "true_pct")


def _score_row(m: ManifestRow, record: dict[str, Any] | None, classes: Sequence[str],
               truth: dict[str, float]) -> dict[str, Any]:
    rec = record or {"status": "failed", "error": "not processed (the run was interrupted); run the command again"}
    ro = rec.get("readout") or {}
    true = truth.get(m.sample_id)
    row: dict[str, Any] = {
        "sample_id": m.sample_id, "patient_id": m.patient_id, "timepoint": m.timepoint, "label": m.label,
        "status": rec.get("status", "failed"), "error": rec.get("error") or "", "n_cells": rec.get("n_cells"),
        "call": ro.get("call", ""), "adjusted": ro.get("adjusted"),
        "true_pct": 100.0 * true if true is not None else math.nan}
    for key in ("leukaemic_pct", "ci_low_pct", "ci_high_pct", "cutoff_pct"):
        row[key] = _num(ro.get(key))
    row["q_raw_pct"] = 100.0 * _num(ro.get("q_raw"))
    fractions = ro.get("fractions") or {}
    row.update({f"frac_{c}": _num(fractions.get(c)) for c in classes})
    row["input_sha256"] = (rec.get("provenance") or {}).get("input_sha256", "")
    return row


def _num(v: Any) -> float:
    return float(v) if v is not None else math.nan


def cell_score_table(rows: Sequence[ManifestRow], store: RunStore, *, classes: Sequence[str],
                     truth: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per manifest sample with its readout (see the module docstring)."""
    records = [_score_row(m, store.record(m.sample_id), classes, truth or {}) for m in rows]  # damaged: failed
    cols = [*SCORE_COLUMNS, *(f"frac_{c}" for c in classes), "input_sha256"]
    df = pd.DataFrame.from_records(records, columns=cols)
    df["n_cells"] = df["n_cells"].astype("Int64")
    return df


def _cell_ids(store: RunStore, sid: str) -> list[str]:
    return decode_strings(store.array(sid, "cell_id_bytes"), store.array(sid, "cell_id_offsets"))


def _scored(df: pd.DataFrame) -> list[str]:
    return list(df.loc[df["status"] == "scored", "sample_id"])


def sample_cells(store: RunStore, sid: str, *, classes: Sequence[str], leukaemic_index: Sequence[int]) -> pd.DataFrame:
    """One row per cell of one stored sample: ids, predicted class, leukaemic and class probabilities."""
    probs = store.array(sid, "probs")
    part = pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])
    part.insert(0, "p_leukaemic", probs[:, list(leukaemic_index)].sum(axis=1))
    part.insert(0, "predicted", np.asarray(classes)[probs.argmax(axis=1)] if len(probs) else [])
    part.insert(0, "cell_id", _cell_ids(store, sid))
    part.insert(0, "sample_id", sid)
    return part


def write_cells_parquet(df: pd.DataFrame, store: RunStore, path: Path, *, classes: Sequence[str],
                        leukaemic_index: Sequence[int]) -> Path:
    """``cells.parquet``, written one sample (one row group) at a time: memory stays one sample's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("sample_id", pa.string()), ("cell_id", pa.string()), ("predicted", pa.string()),
                        ("p_leukaemic", pa.float32()), *((f"p_{c}", pa.float32()) for c in classes)])
    with replacing(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for sid in _scored(df):
            part = sample_cells(store, sid, classes=classes, leukaemic_index=leukaemic_index)
            writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
    return path


def write_embeddings(df: pd.DataFrame, store: RunStore, path: Path, *, classes: Sequence[str],
                     leukaemic_index: Sequence[int], per_sample: int = EMBEDDINGS_PER_SAMPLE,
                     seed: int = 0) -> Path | None:
    """``embeddings.npz`` for plotting: up to ``per_sample`` cells of each scored sample (a random subset
    in cell order when a sample has more; every cell's embedding stays in the run store)."""
    parts, feats = [], []
    for sid in _scored(df):
        emb = store.array(sid, "embeddings")
        if emb is None:
            continue
        cells = sample_cells(store, sid, classes=classes, leukaemic_index=leukaemic_index)
        keep = np.arange(len(cells))
        if len(keep) > per_sample:
            keep = np.sort(np.random.default_rng([seed, len(parts)]).choice(len(keep), per_sample, replace=False))
        parts.append(cells.iloc[keep])
        feats.append(emb[keep])
    if not parts:
        return None
    cells = pd.concat(parts, ignore_index=True)
    with replacing(path, ".embeddings.tmp.npz") as tmp:  # np.savez adds .npz to a name without it
        np.savez(tmp, embeddings=np.concatenate(feats).astype(np.float16),
                 sample_id=cells["sample_id"].to_numpy(str), cell_id=cells["cell_id"].to_numpy(str),
                 predicted=cells["predicted"].to_numpy(str), p_leukaemic=cells["p_leukaemic"].to_numpy(np.float32))
    return path


def write_cell_outputs(rows: Sequence[ManifestRow], store: RunStore, run_dir: Path, *, record: Any, options: Any,
                       truth: dict[str, float], provenance: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Write the score tables, ``cells.parquet``, ``embeddings.npz`` and ``report.html``; return the table and paths."""
    classes = options.pipeline.classes.names
    df = cell_score_table(rows, store, classes=classes, truth=truth)
    paths = write_table(df, run_dir)
    index = record.leukaemic_index
    paths["cells"] = write_cells_parquet(df, store, run_dir / "cells.parquet", classes=classes, leukaemic_index=index)
    if options.keep_embeddings and (emb := write_embeddings(df, store, run_dir / "embeddings.npz", classes=classes,
                                                            leukaemic_index=index, seed=options.seed)):
        paths["embeddings"] = emb
    if options.report:
        from ..report.cells import write_cell_report

        with replacing(run_dir / "report.html") as tmp:
            write_cell_report(tmp, df, store=store, record=record, pipeline=options.pipeline, provenance=provenance)
        paths["report"] = run_dir / "report.html"
    return df, paths
