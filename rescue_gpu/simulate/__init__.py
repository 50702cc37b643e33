"""Simulators with known truth, for tests, demos and benchmarks: :mod:`.flow` (AML-MRD flow cytometry
cohorts) and :mod:`.cells` (single-cell image libraries; import it as ``rescue_gpu.simulate.cells``).

``simulate_cohort`` writes FCS files, ``manifest.csv`` and ``truth.csv``;
``simulate_sample`` returns one sample in memory (events, channels, markers,
keywords, spillover, truth) for tests and benchmarks. The flow simulator's public names
are re-exported here, loaded on first use so that ``rescue_gpu.simulate.labb`` (an
independent second generator) can be imported without the flow simulator.
"""

from importlib import import_module
from typing import Any


__all__ = [
    "ABERRATIONS",
    "FLUOR_CHANNELS",
    "INSTRUMENTS",
    "KINDS",
    "LABELS",
    "LABEL_NAMES",
    "MARKERS",
    "MONITORING_COUNTS",
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


def __getattr__(name: str) -> Any:
    """Load the flow simulator on first access to one of its re-exported names."""
    if name in __all__:
        value = getattr(import_module(".flow", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
