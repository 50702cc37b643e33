"""The flow cytometry simulator: AML bone-marrow cohorts with known truth.

Modules, by concern: :mod:`.populations` (cell populations and LAIPs), :mod:`.instruments`
(cytometers: channels, labels, gains, spillover, noise), :mod:`._kernel` (numba event
kernels), :mod:`.sample` (one sample in memory) and :mod:`.cohort` (planning and writing
a cohort: FCS files, ``manifest.csv``, ``truth.csv``).
"""


from .cohort import (
    MONITORING_COUNTS,
    REFERENCE_COUNTS,
    CohortPlan,
    CohortSummary,
    PlannedSample,
    class_counts,
    plan_cohort,
    simulate_cohort,
    write_sample,
)
from .instruments import (FLUOR_CHANNELS, FLUOROCHROMES, INSTRUMENTS, MARKER_FLUOR, RANGE, Instrument, base_spillover,
                          sample_spillover, spill_keyword)
from .populations import ABERRATIONS, LABEL_NAMES, MARKERS, Laip, draw_laip, make_laip
from .sample import KINDS, LABELS, TIMEPOINTS, Patient, SimulatedSample, draw_patient, simulate_sample

__all__ = [
    "ABERRATIONS",
    "CohortPlan",
    "CohortSummary",
    "FLUOROCHROMES",
    "FLUOR_CHANNELS",
    "INSTRUMENTS",
    "Instrument",
    "KINDS",
    "LABELS",
    "LABEL_NAMES",
    "Laip",
    "MARKERS",
    "MARKER_FLUOR",
    "MONITORING_COUNTS",
    "Patient",
    "PlannedSample",
    "RANGE",
    "REFERENCE_COUNTS",
    "SimulatedSample",
    "TIMEPOINTS",
    "base_spillover",
    "class_counts",
    "draw_laip",
    "draw_patient",
    "make_laip",
    "plan_cohort",
    "sample_spillover",
    "simulate_cohort",
    "simulate_sample",
    "spill_keyword",
    "write_sample",
]
