"""A Lab B cohort on disk: FCS files, ``manifest.csv``, ``truth.csv``, ``pipeline.toml``, ``cohort.json``.

Every leukaemic patient has a diagnosis sample and 1-3 follow-ups (MRD positive at a
log-uniform level, or MRD negative, often in a regenerating marrow); control donors
have one sample each. Seeds: patient ``i`` draws from ``SeedSequence([seed, 1, i])``
and its visit ``v`` from ``SeedSequence([seed, 2, i, v])`` (controls use 3 and 4), so a
sample's bytes depend only on the seed and its place in the cohort.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...artifacts import write_csv
from ...fcs.types import Spillover
from ...fcs.writer import write_fcs
from .biology import Laip, draw_laip
from .panel import CHANNELS, FLUOR_CHANNELS, LABELS
from .sample import simulate_labb_sample

__all__ = ["Visit", "plan_labb", "simulate_labb_cohort", "PIPELINE_FILE", "MANIFEST_COLUMNS", "TRUTH_COLUMNS"]

MANIFEST_COLUMNS = ("sample_id", "path", "patient_id", "timepoint", "label")
TRUTH_COLUMNS = ("sample_id", "patient_id", "kind", "visit", "blast_fraction", "observed_fraction", "n_blasts",
                 "n_leukocytes", "n_events", "laip", "regenerating")
_TIMEPOINT = {"diagnosis": "diagnosis", "mrd_positive": "follow-up", "mrd_negative": "follow-up", "control": "control"}
_LABEL = {"diagnosis": "positive", "mrd_positive": "positive", "mrd_negative": "negative", "control": "negative"}
#: The pipeline of Lab B's panel (also written into every cohort as ``pipeline.toml``).
PIPELINE_FILE = Path(__file__).resolve().parents[3] / "pipelines" / "labb-8colour.toml"


@dataclass(frozen=True)
class Visit:
    """One planned sample."""

    sample_id: str
    patient_id: str
    kind: str
    visit: int
    fraction: float
    regenerating: bool
    laip: Laip | None
    seed: np.random.SeedSequence


def _patient_visits(i: int, seed: int, mrd: tuple[float, float]) -> list[Visit]:
    """Diagnosis plus 1-3 follow-ups of leukaemic patient ``i`` (the first follow-up alternates +/-)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
    laip, pid = draw_laip(rng), f"LBP{i:03d}"
    visits = [Visit(f"{pid}-V0", pid, "diagnosis", 0, float(rng.uniform(0.2, 0.8)), False, laip,
                    np.random.SeedSequence([seed, 2, i, 0]))]
    for v in range(1, int(rng.integers(1, 4)) + 1):
        positive = (i % 2 == 0) if v == 1 else bool(rng.random() < 0.6)
        level = float(np.exp(rng.uniform(np.log(mrd[0]), np.log(mrd[1])))) if positive else 0.0
        visits.append(Visit(f"{pid}-V{v}", pid, "mrd_positive" if positive else "mrd_negative", v, level,
                            bool(rng.random() < 0.5), laip, np.random.SeedSequence([seed, 2, i, v])))
    return visits


def plan_labb(n_patients: int, n_controls: int, *, seed: int, mrd: tuple[float, float] = (0.001, 0.05)) -> list[Visit]:
    """All samples of a cohort: ``n_patients`` leukaemic patients, then ``n_controls`` donors."""
    if n_patients < 0 or n_controls < 0 or n_patients + n_controls < 1:
        raise ValueError("a cohort needs at least one patient or control")
    if not 0.0 < mrd[0] <= mrd[1] < 1.0:
        raise ValueError(f"MRD levels must satisfy 0 < low <= high < 1, got {mrd}")
    plan = [v for i in range(n_patients) for v in _patient_visits(i, seed, mrd)]
    for j in range(n_controls):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 3, j]))
        pid = f"LBC{j:03d}"
        plan.append(Visit(f"{pid}-V0", pid, "control", 0, 0.0, bool(rng.random() < 0.25), None,
                          np.random.SeedSequence([seed, 4, j])))
    return plan


def _write_visit(v: Visit, out: Path, n_events: int) -> dict[str, str]:
    """Simulate and write one sample; return its truth row."""
    s = simulate_labb_sample(laip=v.laip, fraction=v.fraction, regenerating=v.regenerating, n_events=n_events,
                             seed=v.seed)
    write_fcs(out / "fcs" / f"{v.sample_id}.fcs", s.events, channels=CHANNELS, markers=LABELS, keywords=s.keywords,
              spillover=Spillover(FLUOR_CHANNELS, s.spillover))
    return {"sample_id": v.sample_id, "patient_id": v.patient_id, "kind": v.kind, "visit": str(v.visit),
            "blast_fraction": repr(v.fraction), "observed_fraction": repr(s.n_blasts / max(s.n_leukocytes, 1)),
            "n_blasts": str(s.n_blasts), "n_leukocytes": str(s.n_leukocytes), "n_events": str(n_events),
            "laip": ";".join(v.laip.aberrations) if v.laip is not None else "",
            "regenerating": "yes" if v.regenerating else "no"}


def simulate_labb_cohort(out_dir: str | Path, *, n_patients: int, n_events: int, seed: int,
                         n_controls: int | None = None, mrd: tuple[float, float] = (0.001, 0.05)) -> dict[str, object]:
    """Write a Lab B cohort to ``out_dir``; return the ``cohort.json`` summary.

    Parameters
    ----------
    out_dir
        Cohort folder (created).
    n_patients
        Leukaemic patients (each: diagnosis and 1-3 follow-ups).
    n_events
        Events per sample.
    seed
        Root seed; same arguments, same bytes.
    n_controls
        Control donors (default ``max(2, n_patients // 2)``).
    mrd
        Range of the log-uniform blast share of MRD-positive follow-ups.
    """
    out = Path(out_dir)
    (out / "fcs").mkdir(parents=True, exist_ok=True)
    n_controls = max(2, n_patients // 2) if n_controls is None else n_controls
    plan = plan_labb(n_patients, n_controls, seed=seed, mrd=mrd)
    truth = [_write_visit(v, out, int(n_events)) for v in plan]
    write_csv(out / "manifest.csv", MANIFEST_COLUMNS,
               [{"sample_id": v.sample_id, "path": f"fcs/{v.sample_id}.fcs", "patient_id": v.patient_id,
                 "timepoint": _TIMEPOINT[v.kind], "label": _LABEL[v.kind]} for v in plan])
    write_csv(out / "truth.csv", TRUTH_COLUMNS, truth)
    (out / "pipeline.toml").write_text(PIPELINE_FILE.read_text(encoding="utf-8"), encoding="utf-8")
    counts = {k: sum(v.kind == k for v in plan) for k in _TIMEPOINT}
    summary = {"generator": "rescue_gpu.simulate.labb", "seed": seed, "n_patients": n_patients,
               "n_controls": n_controls, "n_samples": len(plan), "n_events": int(n_events), "mrd": list(mrd),
               "counts": counts}
    (out / "cohort.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
