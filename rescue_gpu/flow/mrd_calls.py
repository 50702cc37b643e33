"""How the image model's call, the MRD % call and the combined call each perform (``rescue evaluate``).

The three calls of a scored sample (columns of ``scores.csv``):

``image``
    the image model's ``call`` (``p_mrd >= threshold``);
``mrd``
    the MRD % alone: ``mrd_status == "positive"`` (>= 50 aberrant events and >= 0.1% of CD45+
    events, ELN 2021; see :func:`rescue_gpu.flow.mrd.mrd_status`);
``combined``
    ``combined_call`` (:func:`rescue_gpu.flow.mrd.combined_call`): positive when the MRD % is
    positive, or when the MRD count is inconclusive (``below-lloq`` / ``insufficient-events``)
    and the image model calls positive; a quantified negative MRD % is never overturned.

:func:`call_performance` gives each call's sensitivity and specificity against the
manifest's labels on the same samples, with patient-level 95% bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CALLS", "sample_calls", "call_performance"]

#: The calls compared, in report order.
CALLS = ("image", "mrd", "combined")


def sample_calls(scores: Sequence[Mapping[str, str]], sample_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``{"has_mrd", "image", "mrd", "combined"}`` 0/1 arrays for ``sample_ids`` from score rows (strings).

    ``has_mrd`` is 0 where the row has no ``mrd_status`` (no MRD model, or the MRD step did
    not run); the other arrays are 0 there.
    """
    by_id = {r["sample_id"]: r for r in scores}
    rows = [by_id.get(s, {}) for s in sample_ids]
    status = np.array([(r.get("mrd_status") or "").strip().lower() for r in rows])
    return {"has_mrd": (status != "").astype(int),
            "image": np.array([(r.get("call") or "").strip().lower() == "positive" for r in rows], dtype=int),
            "mrd": (status == "positive").astype(int),
            "combined": np.array([(r.get("combined_call") or "").strip().lower() == "positive" for r in rows],
                                 dtype=int)}


def call_performance(y: Any, calls: Mapping[str, Any], groups: Any, *, n_boot: int = 1000,
                     seed: int = 0, timepoints: Any = None) -> dict[str, Any]:
    """Sensitivity and specificity of each call in ``calls`` (0/1 per sample) against ``y`` (0/1).

    Intervals: patient-level percentile bootstrap (``groups`` = patient per sample, all of a
    patient's samples drawn together; the same draws for every call, as the seed is shared).
    With ``timepoints`` (one per sample), the same figures per timepoint go under
    ``by_timepoint`` (a metric a timepoint cannot define, e.g. sensitivity among controls,
    is ``None``).

    Returns
    -------
    dict
        ``{call: {"sensitivity": {estimate, low, high}, "specificity": {...}, "positive": n}}``
        plus ``n``, ``n_positive``, ``n_negative``, ``n_patients`` (and ``by_timepoint``:
        ``{timepoint: <the same without by_timepoint>}``).
    """
    from ..nn.metrics import TIMEPOINT_ORDER, bootstrap_intervals

    y = np.asarray(y, dtype=int)
    groups = np.asarray(groups).astype(str)
    out: dict[str, Any] = {"n": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
                           "n_patients": int(np.unique(groups).size)}
    for name, c in calls.items():
        c = np.asarray(c, dtype=float)
        iv = bootstrap_intervals(y, c, groups, threshold=0.5, n_boot=n_boot, seed=seed,
                                 metrics=("sensitivity", "specificity"))
        out[name] = {k: (v.as_dict() if np.isfinite(v.estimate) else None) for k, v in iv.items()} \
            | {"positive": int(c.sum())}
    if timepoints is not None:
        tps = np.asarray(timepoints).astype(str)
        order = [t for t in TIMEPOINT_ORDER if t in set(tps)] + sorted(set(tps) - set(TIMEPOINT_ORDER))
        out["by_timepoint"] = {}
        for tp in order:
            m = tps == tp
            out["by_timepoint"][tp or "unspecified"] = call_performance(
                y[m], {k: np.asarray(c)[m] for k, c in calls.items()}, groups[m], n_boot=n_boot, seed=seed)
    return out
