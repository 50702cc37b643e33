"""Site calibration: re-set a trained model's decision threshold from a new laboratory's own normals.

A model's stored threshold was chosen on its training cohort's out-of-fold predictions. On
another instrument, panel build or population its probabilities on normal marrow can sit
elsewhere (issue 17: a model trained on one simulated source called every normal sample of
the other positive). ELN 2021 asks each laboratory to establish its own normal range; the
image model's counterpart is :func:`site_calibrate`: score the site's own MRD-negative
samples (controls, MRD-negative follow-ups) with the model (``rescue score``), then write a
copy of the model whose threshold is the lowest that calls at most ``max_positive_rate`` of
them positive (:func:`rescue_gpu.nn.calibration.site_threshold`). The weights, temperature
and everything else are unchanged; the new threshold is covered by the copy's checksum and
the calibration is recorded in its provenance (``site_calibration``).

The ranking (ROC AUC) cannot change this way: only where the calls are cut.
"""

from __future__ import annotations

import csv
import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..nn.calibration import site_threshold
from .record import ModelRecord

__all__ = ["site_calibrate", "normal_scores"]


def normal_scores(run_dir: str | Path, model: ModelRecord) -> tuple[np.ndarray, list[str]]:
    """``p_mrd`` and sample ids of the scored normals in a ``rescue score`` run directory.

    Raises
    ------
    ModelError
        No ``scores.csv`` or run store, a run scored with another model (the store's
        ``model_sha256``), a row labelled ``positive`` (only normals may set a site
        threshold), or no scored row.
    """
    run = Path(run_dir)
    scores, store = run / "scores.csv", run / "store.zarr"
    if not scores.is_file() or not store.is_dir():
        raise ModelError(f"{run}: not a 'rescue score' run directory (no scores.csv and store.zarr); score the "
                         "site's normal samples first: rescue score NORMALS.csv --model MODEL --reference REF --out RUN")
    from ..runner.store import RunStore

    used = RunStore(store).run_meta().get("model_sha256")
    if used != model.sha256:
        raise ModelError(f"{run}: these scores were made with another model (weights sha256 {str(used)[:16]}, "
                         f"this model {model.sha256[:16]}); score the normals with this model")
    with open(scores, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("status") == "scored"]
    positive = [r["sample_id"] for r in rows if (r.get("label") or "").strip().lower() == "positive"]
    if positive:
        raise ModelError(f"{run}: {len(positive)} scored samples are labelled positive ({', '.join(positive[:5])}"
                         f"{', ...' if len(positive) > 5 else ''}); a site threshold is set on normals only "
                         "(controls, MRD-negative follow-ups): score a manifest of those")
    if not rows:
        raise ModelError(f"{run}: no scored sample in scores.csv; a site threshold needs the site's normal samples")
    return np.array([float(r["p_mrd"]) for r in rows]), [r["sample_id"] for r in rows]


def site_calibrate(model_dir: str | Path, run_dir: str | Path, out: str | Path, *,
                   max_positive_rate: float = 0.05) -> tuple[ModelRecord, dict[str, Any]]:
    """Write a copy of the model at ``model_dir`` with its threshold set on the normals scored in ``run_dir``.

    Parameters
    ----------
    model_dir
        The trained model directory (unchanged).
    run_dir
        A ``rescue score`` run directory of the site's normal samples, scored with that model.
    out
        Model directory to write (must not exist).
    max_positive_rate
        Share of the site's normals the new threshold may call positive, in ``[0, 1)``.

    Returns
    -------
    tuple
        The new record and the calibration summary stored in its provenance
        (``threshold``, ``previous_threshold``, ``max_positive_rate``, ``n_normals``,
        ``positive_at_previous``, ``positive_at_new``, ``run``, ``at``).

    Raises
    ------
    ModelError
        As :func:`normal_scores`; ``out`` exists.
    ValueError
        ``max_positive_rate`` outside ``[0, 1)``.
    """
    rec = ModelRecord.load(model_dir)
    p, ids = normal_scores(run_dir, rec)
    thr = site_threshold(p, max_positive_rate)
    if thr > 1.0:  # every normal at p = 1.0: no threshold in [0, 1] calls fewer of them
        raise ModelError(f"{run_dir}: the model gives p_mrd = 1 to more than {max_positive_rate:.0%} of the "
                         f"{p.size} normals; no threshold can call them negative (retrain on this site's data)")
    summary = {"threshold": thr, "previous_threshold": float(rec.threshold), "max_positive_rate": float(max_positive_rate),
               "n_normals": int(p.size), "positive_at_previous": int((p >= rec.threshold).sum()),
               "positive_at_new": int((p >= thr).sum()), "run": str(Path(run_dir).resolve()),
               "normals": ids, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    new = dataclasses.replace(rec, threshold=thr, provenance={**rec.provenance, "site_calibration": summary})
    new.save(out)
    return new, summary
