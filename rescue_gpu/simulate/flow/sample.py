"""One simulated AML bone-marrow sample, in memory.

:func:`simulate_sample` draws the cells of one marrow (normal populations, leukaemic
blasts with the patient's LAIP, debris, doublets), passes them through one of the
simulated instruments (gains, day-to-day drift, spillover, detector noise, Time) and
returns the events as they would be written to an FCS file, together with the truth.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ...errors import RescueError
from ...fcs.types import Spillover
from . import populations as pops
from ._kernel import NORMAL_TABLE, acquire, draw_cells, shuffle
from .instruments import FLUOR_MARKER_INDEX, INSTRUMENTS, Instrument, sample_spillover, spill_keyword

__all__ = [
    "KINDS",
    "TIMEPOINTS",
    "LABELS",
    "Patient",
    "SimulatedSample",
    "draw_patient",
    "simulate_sample",
]

#: Sample classes: diagnosis, MRD-positive follow-up, MRD-negative follow-up, control.
KINDS: tuple[str, ...] = ("diagnosis", "mrd_positive", "mrd_negative", "control")
#: ``timepoint`` column of the manifest for each class.
TIMEPOINTS: dict[str, str] = {
    "diagnosis": "diagnosis", "mrd_positive": "follow-up", "mrd_negative": "follow-up", "control": "control",
}
#: ``label`` column of the manifest for each class.
LABELS: dict[str, str] = {
    "diagnosis": "positive", "mrd_positive": "positive", "mrd_negative": "negative", "control": "negative",
}
MIN_EVENTS = 100
_LN10 = float(np.log(10.0))
#: Mean and sd of ln(height / area) of a cell's scatter: ratio ~ 0.85 with 3% spread.
_RATIO = np.array([-0.0705811, 0.013]) * _LN10
_SD = np.stack([p.sd for p in pops.POPULATIONS])
_UNIQUE = np.sqrt(1.0 - pops.LOADING**2)
_KERNEL_SCATTER = ("FSC-A", "FSC-H", "SSC-A", "SSC-H", "Time")
_EPOCH = _dt.date(2018, 1, 1)
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass(frozen=True)
class Patient:
    """What stays the same across one patient's samples.

    Attributes
    ----------
    patient_id
        Identifier written to the manifest.
    instrument
        Index into :data:`~rescue_gpu.simulate.flow.instruments.INSTRUMENTS`.
    proportions
        Normal population shares of this marrow (``N_NORMAL``, sum 1).
    offsets
        ``(n_populations, 12)`` small per-patient shifts of each population mean (log10).
    laip
        The leukaemia's immunophenotype, or None for a control.
    first_day
        Days after 2018-01-01 of the first sample.
    """

    patient_id: str
    instrument: int
    proportions: np.ndarray
    offsets: np.ndarray
    laip: pops.Laip | None
    first_day: int

    @property
    def leukaemic(self) -> bool:
        """Whether the patient has AML (controls do not)."""
        return self.laip is not None


class SimulatedSample(NamedTuple):
    """One sample, as written to its FCS file, plus the truth.

    ``truth`` holds ``labels`` (int8 per event, names in ``label_names``), ``signal``
    (float32 true fluorochrome signal before spillover and noise, columns in
    ``spillover.channels`` order), ``kind``, ``timepoint``, ``label``,
    ``blast_fraction`` (requested), ``n_blasts``, ``n_leukocytes``, ``observed_fraction``,
    ``laip`` (aberration names), ``blast_mean`` (log10 per marker), ``instrument``,
    ``patient_id`` and ``visit``.
    """

    events: np.ndarray
    channels: list[str]
    markers: list[str]
    keywords: dict[str, str]
    spillover: Spillover
    truth: dict[str, Any]


def _rng(seed: int | np.random.SeedSequence | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def draw_patient(
    seed: int | np.random.SeedSequence | np.random.Generator,
    *,
    patient_id: str = "P00000",
    leukaemic: bool = True,
    instrument: int | None = None,
    aberrations: tuple[str, ...] | list[str] | None = None,
) -> Patient:
    """Draw a patient: marrow composition, instrument and (if leukaemic) a LAIP.

    Parameters
    ----------
    seed
        Seed, SeedSequence or Generator.
    patient_id
        Identifier for the manifest.
    leukaemic
        False for a control (no LAIP, never any blasts).
    instrument
        Fix the instrument (index into ``INSTRUMENTS``); drawn when None.
    aberrations
        Fix the LAIP's aberrations (names from ``ABERRATIONS``); drawn when None.

    Returns
    -------
    Patient
    """
    rng = _rng(seed)
    inst = int(rng.integers(len(INSTRUMENTS))) if instrument is None else int(instrument)
    if not 0 <= inst < len(INSTRUMENTS):
        raise RescueError(f"instrument {instrument} does not exist; choose 0..{len(INSTRUMENTS) - 1}")
    proportions = pops.normal_proportions(rng)
    offsets = rng.normal(0.0, 0.04, (len(pops.POPULATIONS), len(pops.DIMS)))
    laip = None
    if leukaemic:
        laip = pops.draw_laip(rng) if aberrations is None else pops.make_laip(tuple(aberrations), rng)
    elif aberrations:
        raise RescueError("a control patient (leukaemic=False) cannot have LAIP aberrations")
    return Patient(patient_id, inst, proportions, offsets, laip, int(rng.integers(0, 5 * 365)))


def _blast_fraction(kind: str, requested: float | None, patient: Patient, rng: np.random.Generator) -> float:
    if requested is None:
        if kind == "diagnosis":
            return float(rng.uniform(0.2, 0.9))
        if kind == "mrd_positive":
            return float(np.exp(rng.uniform(np.log(1e-4), np.log(1e-1))))
        return 0.0
    if not 0.0 <= requested < 1.0:
        raise RescueError(f"blast_fraction must be in [0, 1), got {requested}")
    if requested > 0 and (kind in ("mrd_negative", "control") or not patient.leukaemic):
        raise RescueError(f"a {kind} sample of patient {patient.patient_id} cannot have blasts")
    return float(requested)


def _population_probabilities(patient: Patient, kind: str, fraction: float, debris: float,
                              rng: np.random.Generator) -> np.ndarray:
    """Probability of each singlet population (POPULATIONS order)."""
    normal = patient.proportions
    if kind in ("mrd_positive", "mrd_negative"):  # regenerating marrow after chemotherapy
        normal = pops.normal_proportions(rng, concentration=400.0, regenerating=True) * 0.5 + normal * 0.5
    ery = normal[pops.ERYTHROID]
    leuk = np.delete(normal, pops.ERYTHROID) / (1.0 - ery)
    leuk = np.insert(leuk * (1.0 - fraction), pops.ERYTHROID, 0.0)
    p = np.zeros(len(pops.POPULATIONS))
    p[: pops.N_NORMAL] = (1.0 - debris) * (1.0 - ery) * leuk
    p[pops.ERYTHROID] = (1.0 - debris) * ery
    p[pops.BLAST] = (1.0 - debris) * (1.0 - ery) * fraction
    p[pops.DEBRIS] = debris
    return p / p.sum()


def _means(patient: Patient, visit: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) mean of every population for this sample."""
    out = []
    for k, pop in enumerate(pops.POPULATIONS):
        shift = patient.offsets[k]
        if k == pops.BLAST and patient.laip is not None:
            drift = rng.normal(0.0, 0.06, len(pops.DIMS)) if visit > 0 else 0.0
            mean = patient.laip.mean + drift
            out.append((mean, mean))
        elif k == pops.DEBRIS:
            out.append((pop.start, pop.end))
        else:
            out.append((pop.start + shift, pop.end + shift))
    return out


def _labels(patient: Patient, kind: str, fraction: float, n_events: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Population label of every event in acquisition order, and the singlet shares."""
    n_doublets = int(round(n_events * rng.uniform(0.01, 0.04)))
    probs = _population_probabilities(patient, kind, fraction, float(rng.uniform(0.02, 0.08)), rng)
    counts = rng.multinomial(n_events - n_doublets, probs)
    if fraction > 0 and counts[pops.BLAST] == 0:  # a positive sample keeps at least one blast
        counts[int(np.argmax(counts))] -= 1
        counts[pops.BLAST] = 1
    counts = np.append(counts, n_doublets)
    labels = np.repeat(np.arange(len(counts), dtype=np.int8), counts)
    shuffle(labels, np.uint64(rng.integers(0, 2**63)))  # numba: ~5x faster than rng.shuffle
    return labels, probs


def _date_keywords(patient: Patient, visit: int, rng: np.random.Generator, seconds: float) -> dict[str, str]:
    day = _EPOCH + _dt.timedelta(days=patient.first_day + visit * 60 + int(rng.integers(0, 30)) * (visit > 0))
    start = int(rng.integers(8 * 3600, 17 * 3600))
    end = start + int(np.ceil(seconds))
    hms = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in (start, end)]
    return {"$DATE": f"{day.day:02d}-{_MONTHS[day.month - 1]}-{day.year}", "$BTIM": hms[0], "$ETIM": hms[1]}


def _keywords(inst: Instrument, spill: Spillover, sample_id: str, dates: dict[str, str]) -> dict[str, str]:
    kw = {"$FIL": f"{sample_id}.fcs", "$CYT": inst.name, "$CYTSN": inst.serial, "$TIMESTEP": "0.01",
          "$INST": "Simulated Haematology Laboratory", "TUBE NAME": "AML MRD 10c",
          "CREATOR": "rescue_gpu.simulate", **dates}
    for i, volts in enumerate(inst.voltages, start=1):
        if volts:
            kw[f"$P{i}V"] = volts
    kw[inst.spill_keyword] = spill_keyword(spill)
    return kw


def _acquire(inst: Instrument, labels: np.ndarray, probs: np.ndarray,
             means: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator,
             seconds: float) -> tuple[np.ndarray, Spillover, np.ndarray]:
    """Draw every cell and pass it through the instrument: (events, spillover, true signal)."""
    gains = inst.gains * rng.lognormal(0.0, 0.05, len(inst.gains))  # day-to-day drift
    order = inst.fluor_order
    spill = sample_spillover(inst, rng)
    # The kernel draws natural-log values (log10 model x ln 10) so np.exp needs no rescaling pass.
    start = np.array([lo for lo, _ in means]) * _LN10
    delta = np.array([hi for _, hi in means]) * _LN10 - start
    cell = probs[: pops.DEBRIS] / probs[: pops.DEBRIS].sum()  # doublets pair non-debris cells
    n_doublets = int(np.count_nonzero(labels == pops.DOUBLET))
    z = np.empty((len(labels) + n_doublets, len(pops.DIMS) + 1), dtype=np.float32)
    draw_cells(labels, pops.DOUBLET, np.cumsum(cell), start, delta, _SD * _LN10, _UNIQUE, pops.LOADING,
               _RATIO, NORMAL_TABLE, np.uint64(rng.integers(0, 2**63)), z)
    lin = np.exp(z, out=z)  # vectorised: far faster than a scalar exp per value
    fl = {c: j for j, c in enumerate(inst.layout)}
    cols = [fl[c] for c in inst.fluor_channels] + [fl.get(c, -1) for c in _KERNEL_SCATTER]
    events = np.empty((len(labels), len(inst.layout)), dtype=np.float32)
    signal = np.empty((len(labels), len(order)), dtype=np.float32)
    acquire(lin, labels, pops.DOUBLET, FLUOR_MARKER_INDEX[order], gains[order], gains[-2:],
            np.ascontiguousarray(spill.matrix, dtype=np.float64),
            inst.noise_sd[order] ** 2, inst.photon, np.array(cols, dtype=np.int64), seconds / 0.01,
            NORMAL_TABLE, np.uint64(rng.integers(0, 2**63)), events, signal)
    return events, spill, signal


def _check(kind: str, n_events: int) -> None:
    if kind not in KINDS:
        raise RescueError(f"unknown sample kind {kind!r}; choose one of {', '.join(KINDS)}")
    if int(n_events) < MIN_EVENTS:
        raise RescueError(f"n_events must be at least {MIN_EVENTS}, got {n_events}")


def simulate_sample(
    patient: Patient | None = None,
    *,
    kind: str = "diagnosis",
    n_events: int = 100_000,
    seed: int | np.random.SeedSequence | np.random.Generator = 0,
    blast_fraction: float | None = None,
    visit: int = 0,
    sample_id: str = "S00000",
) -> SimulatedSample:
    """Simulate one bone-marrow sample of the AML MRD tube.

    Parameters
    ----------
    patient
        Who the sample comes from (:func:`draw_patient`); drawn from ``seed`` when None
        (a control for ``kind="control"``, a leukaemic patient otherwise).
    kind
        ``"diagnosis"``, ``"mrd_positive"``, ``"mrd_negative"`` or ``"control"``.
    n_events
        Events in the file (debris and doublets included); at least 100.
    seed
        Seed, SeedSequence or Generator of this sample.
    blast_fraction
        Leukaemic blasts among leukocytes (singlet, non-debris, non-erythroid cells).
        Drawn when None: 20-90% at diagnosis, log-uniform 0.01-10% for MRD-positive
        follow-up, 0 for MRD-negative follow-up and controls.
    visit
        0 for the first sample of a patient; later visits drift the LAIP slightly.
    sample_id
        Written as ``$FIL``.

    Returns
    -------
    SimulatedSample
        ``(events, channels, markers, keywords, spillover, truth)``; ``events`` is
        float32 ``(n_events, n_parameters)`` in the instrument's parameter order.
    """
    _check(kind, n_events)
    rng = _rng(seed)
    if patient is None:
        patient = draw_patient(rng, leukaemic=kind != "control")
    fraction = _blast_fraction(kind, blast_fraction, patient, rng)
    labels, probs = _labels(patient, kind, fraction, int(n_events), rng)
    means = _means(patient, visit, rng)
    inst = INSTRUMENTS[patient.instrument]
    seconds = float(n_events) / rng.uniform(2000.0, 8000.0)
    dates = _date_keywords(patient, visit, rng, seconds)
    events, spill, signal = _acquire(inst, labels, probs, means, rng, seconds)
    truth = _truth(patient, kind, fraction, labels, signal, spill, inst, visit)
    keywords = _keywords(inst, spill, sample_id, dates)
    return SimulatedSample(events, list(inst.layout), list(inst.labels), keywords, spill, truth)


def _truth(patient: Patient, kind: str, fraction: float, labels: np.ndarray, signal: np.ndarray,
           spill: Spillover, inst: Instrument, visit: int) -> dict[str, Any]:
    counts = np.bincount(labels, minlength=len(pops.LABEL_NAMES))
    n_leuk = int(counts[: pops.DEBRIS].sum() - counts[pops.ERYTHROID])
    laip = patient.laip
    return {
        "labels": labels, "label_names": pops.LABEL_NAMES, "signal": signal,
        "signal_channels": spill.channels, "kind": kind, "timepoint": TIMEPOINTS[kind],
        "label": LABELS[kind], "blast_fraction": fraction, "n_blasts": int(counts[pops.BLAST]),
        "n_leukocytes": n_leuk, "observed_fraction": float(counts[pops.BLAST]) / max(n_leuk, 1),
        "laip": () if laip is None else laip.aberrations,
        "blast_mean": {} if laip is None else dict(zip(pops.MARKERS, map(float, laip.mean))),
        "instrument": inst.name, "patient_id": patient.patient_id, "visit": visit,
    }
