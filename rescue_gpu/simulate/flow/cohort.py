"""A simulated cohort on disk: FCS files, ``manifest.csv`` and ``truth.csv``.

The cohort mirrors the reference library's timepoints (765 diagnosis, 336 MRD-positive
follow-up, 170 MRD-negative follow-up, 90 controls), scaled to the requested size. A
leukaemic patient has a diagnosis sample and, often, 1-3 follow-ups that keep the
patient's LAIP and instrument; controls are patients of their own.

Seeds: ``SeedSequence(seed)`` spawns one child for the plan, one per patient and one per
sample, so a sample's bytes depend only on the seed and its place in the plan, never on
the order or the process in which samples are written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...artifacts import write_csv
from ...errors import RescueError
from ...fcs.writer import write_fcs
from .sample import KINDS, LABELS, MIN_EVENTS, TIMEPOINTS, Patient, draw_patient, simulate_sample

__all__ = [
    "REFERENCE_COUNTS",
    "MONITORING_COUNTS",
    "class_counts",
    "PlannedSample",
    "CohortPlan",
    "plan_cohort",
    "CohortSummary",
    "simulate_cohort",
    "write_sample",
]

#: Samples per class in the reference library.
REFERENCE_COUNTS: dict[str, int] = {"diagnosis": 765, "mrd_positive": 336, "mrd_negative": 170, "control": 90}
#: Class weights of an MRD-monitoring cohort: mostly follow-ups, about as many MRD-negative as
#: MRD-positive ones, and healthy-donor controls (47 % negative samples, against 19 % in the
#: reference library, whose 170 + 90 negatives of 1,361 leave a 60-sample cohort 11 negatives).
MONITORING_COUNTS: dict[str, int] = {"diagnosis": 30, "mrd_positive": 23, "mrd_negative": 30, "control": 17}
MANIFEST_COLUMNS = ("sample_id", "path", "patient_id", "timepoint", "label")
TRUTH_COLUMNS = ("sample_id", "patient_id", "kind", "visit", "instrument", "blast_fraction",
                 "observed_fraction", "n_blasts", "n_leukocytes", "n_events", "laip", "true_mrd_pct")
FCS_DIR = "fcs"


def class_counts(n_samples: int, weights: Mapping[str, int | float] | None = None) -> dict[str, int]:
    """Split ``n_samples`` over the classes like the reference library (or by ``weights``).

    Largest-remainder rounding of 765/336/170/90 (or ``weights``) scaled to ``n_samples``;
    when ``n_samples >= 4`` every class gets at least one sample (taken from the largest).

    Parameters
    ----------
    n_samples
        Cohort size (at least 1).
    weights
        Relative class sizes, one non-negative number per class of :data:`KINDS` with a
        positive sum (e.g. :data:`MONITORING_COUNTS`); default :data:`REFERENCE_COUNTS`.

    Returns
    -------
    dict
        Class -> count, in :data:`KINDS` order; the counts sum to ``n_samples``.
    """
    w = _weights(weights)
    total = sum(w.values())
    quota = [n_samples * w[k] / total for k in KINDS]
    counts = [int(q) for q in quota]
    by_remainder = sorted(range(len(KINDS)), key=lambda i: (-(quota[i] - counts[i]), i))
    for i in by_remainder[: n_samples - sum(counts)]:
        counts[i] += 1
    if n_samples >= len(KINDS):
        for i in range(len(KINDS)):
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return dict(zip(KINDS, counts))


def _weights(weights: Mapping[str, int | float] | None) -> dict[str, float]:
    if weights is None:
        return {k: float(v) for k, v in REFERENCE_COUNTS.items()}
    if set(weights) != set(KINDS):
        raise RescueError(f"class weights must name exactly the classes {', '.join(KINDS)}; got {', '.join(weights)}")
    w = {k: float(weights[k]) for k in KINDS}
    if any(not np.isfinite(v) or v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise RescueError(f"class weights must be finite, >= 0 and not all 0; got {w}")
    return w


@dataclass(frozen=True)
class PlannedSample:
    """One sample of the plan: who, which class, which visit, and its seed."""

    sample_id: str
    patient_index: int
    kind: str
    visit: int
    seed: np.random.SeedSequence = field(repr=False)


@dataclass(frozen=True)
class CohortPlan:
    """Patients and samples of a cohort, before any event is drawn."""

    patients: tuple[Patient, ...]
    samples: tuple[PlannedSample, ...]

    def counts(self) -> dict[str, int]:
        """Samples per class."""
        return {k: sum(s.kind == k for s in self.samples) for k in KINDS}


def _follow_ups(n_patients: int, kinds: list[str], rng: np.random.Generator) -> list[list[str]]:
    """Spread follow-up samples over leukaemic patients, 1-3 each (more only if needed)."""
    visits: list[list[str]] = [[] for _ in range(n_patients)]
    order = rng.permutation(n_patients)
    left = list(kinds)
    for p in order:
        if not left:
            break
        k = min(int(rng.integers(1, 4)), len(left))
        visits[p], left = left[:k], left[k:]
    for i, kind in enumerate(left):  # more follow-ups than 3 per patient can hold
        visits[order[i % n_patients]].append(kind)
    return visits


def plan_cohort(n_samples: int, *, seed: int, counts: Mapping[str, int] | None = None,
                weights: Mapping[str, int | float] | None = None) -> CohortPlan:
    """Plan a cohort: patients (with LAIPs and instruments) and their samples.

    Parameters
    ----------
    n_samples
        Number of samples (at least 1).
    seed
        Root seed.
    counts
        Samples per class (:data:`KINDS`; missing classes 0), summing to ``n_samples``.
        Default: :func:`class_counts` of ``weights``. Each diagnosis is a
        leukaemic patient whose 1-3 follow-ups are drawn from the follow-up classes; with
        no diagnosis, each follow-up is a patient of its own.
    weights
        Class composition (see :func:`class_counts`) when ``counts`` is not given; default
        the reference library's.

    Returns
    -------
    CohortPlan

    Raises
    ------
    RescueError
        ``counts`` names an unknown class, has a negative count or does not sum to ``n_samples``;
        invalid ``weights``; both ``counts`` and ``weights`` given.
    """
    if counts is not None and weights is not None:
        raise RescueError("give counts (samples per class) or weights (a class composition), not both")
    counts = class_counts(n_samples, weights) if counts is None else _checked_counts(counts, n_samples)
    plan_ss, patient_ss, sample_ss = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(plan_ss)
    follow = ["mrd_positive"] * counts["mrd_positive"] + ["mrd_negative"] * counts["mrd_negative"]
    follow = [follow[i] for i in rng.permutation(len(follow))]
    n_leuk = counts["diagnosis"] if counts["diagnosis"] else len(follow)
    first = ["diagnosis"] * counts["diagnosis"]
    groups = [first[i:i + 1] + fu for i, fu in enumerate(_follow_ups(n_leuk, follow, rng))]
    groups += [["control"]] * counts["control"]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    seeds = patient_ss.spawn(len(groups))
    patients = tuple(
        draw_patient(s, patient_id=f"P{i:05d}", leukaemic=g[0] != "control") for i, (s, g) in enumerate(zip(seeds, groups))
    )
    sample_seeds = iter(sample_ss.spawn(n_samples))
    samples = tuple(
        PlannedSample("", p, kind, visit, next(sample_seeds))
        for p, g in enumerate(groups) for visit, kind in enumerate(g)
    )
    samples = tuple(PlannedSample(f"S{i:05d}", s.patient_index, s.kind, s.visit, s.seed) for i, s in enumerate(samples))
    return CohortPlan(patients, samples)


def _checked_counts(counts: Mapping[str, int], n_samples: int) -> dict[str, int]:
    unknown = sorted(set(counts) - set(KINDS))
    if unknown:
        raise RescueError(f"unknown sample class(es) {', '.join(unknown)} in counts; choose from {', '.join(KINDS)}")
    out = {k: int(counts.get(k, 0)) for k in KINDS}
    if any(v < 0 for v in out.values()) or sum(out.values()) != n_samples:
        raise RescueError(f"counts {out} must be >= 0 and sum to n_samples ({n_samples})")
    return out


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`simulate_cohort` wrote.

    Attributes
    ----------
    out_dir, manifest, truth
        The cohort folder, its ``manifest.csv`` and ``truth.csv``.
    n_samples, n_patients, n_events
        Samples, patients, and events per sample.
    counts
        Samples per class (:data:`KINDS`).
    seconds
        Wall time of the run.
    """

    out_dir: Path
    manifest: Path
    truth: Path
    n_samples: int
    n_patients: int
    n_events: int
    counts: dict[str, int]
    seconds: float


def _prepare(out_dir: str | os.PathLike[str], n_samples: int, n_events: int) -> Path:
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise RescueError(f"n_samples must be a whole number >= 1, got {n_samples!r}")
    if not isinstance(n_events, (int, np.integer)) or n_events < MIN_EVENTS:
        raise RescueError(f"n_events must be a whole number >= {MIN_EVENTS}, got {n_events!r}")
    out = Path(out_dir)
    try:
        (out / FCS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RescueError(f"{out}: cannot create the output directory ({exc}); choose a writable path") from exc
    if not os.access(out / FCS_DIR, os.W_OK | os.X_OK):
        raise RescueError(f"{out}: the output directory is not writable; choose a writable path")
    return out


def write_sample(plan: CohortPlan, index: int, out_dir: Path, *, n_events: int) -> dict[str, str]:
    """Simulate and write one planned sample; return its ``truth.csv`` row.

    Parameters
    ----------
    plan
        The cohort plan.
    index
        Which sample of ``plan.samples``.
    out_dir
        Cohort folder (the file goes to ``out_dir/fcs/<sample_id>.fcs``).
    n_events
        Events per sample.

    Returns
    -------
    dict
        The sample's truth row (strings, :data:`TRUTH_COLUMNS`).
    """
    s = plan.samples[index]
    sim = simulate_sample(plan.patients[s.patient_index], kind=s.kind, n_events=n_events,
                          seed=s.seed, visit=s.visit, sample_id=s.sample_id)
    path = out_dir / FCS_DIR / f"{s.sample_id}.fcs"
    try:
        write_fcs(path, sim.events, channels=sim.channels, markers=sim.markers, keywords=sim.keywords)
    except OSError as exc:
        raise RescueError(f"{path}: cannot write the FCS file ({exc})") from exc
    t = sim.truth
    return {"sample_id": s.sample_id, "patient_id": t["patient_id"], "kind": s.kind, "visit": str(s.visit),
            "instrument": t["instrument"], "blast_fraction": repr(t["blast_fraction"]),
            "observed_fraction": repr(t["observed_fraction"]), "n_blasts": str(t["n_blasts"]),
            "n_leukocytes": str(t["n_leukocytes"]), "n_events": str(n_events), "laip": ";".join(t["laip"]),
            "true_mrd_pct": repr(100.0 * float(t["observed_fraction"]))}


def _manifest_rows(plan: CohortPlan) -> list[dict[str, str]]:
    return [
        {"sample_id": s.sample_id, "path": f"{FCS_DIR}/{s.sample_id}.fcs",
         "patient_id": plan.patients[s.patient_index].patient_id,
         "timepoint": TIMEPOINTS[s.kind], "label": LABELS[s.kind]}
        for s in plan.samples
    ]


def simulate_cohort(
    out_dir: str | os.PathLike[str],
    *,
    n_samples: int,
    n_events: int,
    seed: int,
    weights: Mapping[str, int | float] | None = None,
    on_sample: Callable[[int, int], None] | None = None,
    counts: Mapping[str, int] | None = None,
) -> CohortSummary:
    """Simulate a cohort and write it to ``out_dir``.

    Writes ``fcs/<sample_id>.fcs`` (FCS 3.1, float32), ``manifest.csv``
    (``sample_id,path,patient_id,timepoint,label``; paths relative to the manifest),
    ``truth.csv`` (true blast fraction, LAIP, instrument per sample; never read by the
    pipeline) and ``cohort.json`` (the parameters). Same arguments, same bytes.

    Parameters
    ----------
    out_dir
        Cohort folder; created if missing.
    n_samples
        Number of samples (at least 1).
    n_events
        Events per sample (at least 100).
    seed
        Root seed.
    weights
        Class composition (see :func:`class_counts`), e.g. :data:`MONITORING_COUNTS`;
        default the reference library's 765/336/170/90.
    on_sample
        Called as ``on_sample(i, n)`` after the i-th of n samples is written (i from 1).
    counts
        Samples per class, summing to ``n_samples`` (default: the reference library's
        mix; see :func:`plan_cohort`).

    Returns
    -------
    CohortSummary

    Raises
    ------
    RescueError
        For ``n_samples < 1``, ``n_events < 100``, ``counts`` that do not fit, invalid
        ``weights``, both of them, or an output
        directory that cannot be created or written.
    """
    began = time.perf_counter()
    out = _prepare(out_dir, n_samples, n_events)
    plan = plan_cohort(int(n_samples), seed=seed, counts=counts, weights=weights)
    truth_rows = []
    for i in range(len(plan.samples)):
        truth_rows.append(write_sample(plan, i, out, n_events=int(n_events)))
        if on_sample is not None:
            on_sample(i + 1, len(plan.samples))
    write_csv(out / "manifest.csv", MANIFEST_COLUMNS, _manifest_rows(plan))
    write_csv(out / "truth.csv", TRUTH_COLUMNS, truth_rows)
    params = {"generator": "rescue_gpu.simulate", "seed": seed, "n_samples": int(n_samples),
              "n_events": int(n_events), "counts": plan.counts()}
    if weights is not None:
        params["weights"] = {k: float(weights[k]) for k in KINDS}
    (out / "cohort.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return CohortSummary(out, out / "manifest.csv", out / "truth.csv", len(plan.samples), len(plan.patients),
                         int(n_events), plan.counts(), time.perf_counter() - began)
