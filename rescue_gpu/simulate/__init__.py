"""Synthetic cohorts: AML bone-marrow flow cytometry with known truth.

``simulate_cohort`` writes FCS files, ``manifest.csv`` and ``truth.csv``;
``simulate_sample`` returns one sample in memory (events, channels, markers,
keywords, spillover, truth) for tests and benchmarks.
"""

from .cohort import (
    REFERENCE_COUNTS,
    CohortPlan,
    CohortSummary,
    PlannedSample,
    class_counts,
    plan_cohort,
    simulate_cohort,
    write_sample,
)
from .flow import FLUOR_CHANNELS, INSTRUMENTS, Instrument
from .populations import ABERRATIONS, LABEL_NAMES, MARKERS, Laip, draw_laip, make_laip
from .sample import KINDS, LABELS, TIMEPOINTS, Patient, SimulatedSample, draw_patient, simulate_sample

__all__ = [
    "ABERRATIONS",
    "FLUOR_CHANNELS",
    "INSTRUMENTS",
    "KINDS",
    "LABELS",
    "LABEL_NAMES",
    "MARKERS",
    "REFERENCE_COUNTS",
    "TIMEPOINTS",
    "CohortPlan",
    "CohortSummary",
    "Instrument",
    "Laip",
    "Patient",
    "PlannedSample",
    "SimulatedSample",
    "class_counts",
    "draw_laip",
    "draw_patient",
    "make_laip",
    "plan_cohort",
    "simulate_cohort",
    "simulate_sample",
    "write_sample",
]
