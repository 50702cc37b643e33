"""One Lab B sample: composition, cells, detectors, spillover, scatter and Time, in memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .biology import DIMS, NORMAL, NORMAL_SHARE, REGENERATING_SHARE, Laip, blast_path, draw_cells
from .panel import CHANNELS, FLUOR, FLUOR_CHANNELS, MARKERS, RANGE, day_spillover

__all__ = ["LabbSample", "POPULATIONS", "simulate_labb_sample", "MIN_EVENTS"]

#: Event labels: the normal populations, then blast, debris, doublet.
POPULATIONS: tuple[str, ...] = tuple(p.name for p in NORMAL) + ("blast", "debris", "doublet")
BLAST, DEBRIS, DOUBLET = len(NORMAL), len(NORMAL) + 1, len(NORMAL) + 2
MIN_EVENTS = 200
_TIMESTEP = 0.01  # seconds per Time tick


@dataclass(frozen=True)
class LabbSample:
    """A simulated sample: events (file column order), per-event labels and the spillover written."""

    events: np.ndarray
    labels: np.ndarray
    spillover: np.ndarray
    n_leukocytes: int
    n_blasts: int
    keywords: dict[str, str] = field(default_factory=dict)


def _composition(n: int, fraction: float, regenerating: bool, rng: np.random.Generator) -> np.ndarray:
    """Event count per label (:data:`POPULATIONS` order); blasts ~ Binomial(leukocytes, fraction)."""
    debris, doublet = rng.uniform(0.02, 0.06), rng.uniform(0.01, 0.03)
    n_debris, n_doublet, n_leuk = rng.multinomial(n, [debris, doublet, 1.0 - debris - doublet])
    n_blast = int(rng.binomial(n_leuk, fraction)) if fraction > 0 else 0
    if fraction > 0 and n_blast == 0:
        n_blast = 1  # a positive sample keeps at least one blast
    share = REGENERATING_SHARE if regenerating else NORMAL_SHARE
    normal = rng.multinomial(n_leuk - n_blast, share / share.sum())
    return np.concatenate([normal, [n_blast, n_debris, n_doublet]]).astype(int)


def _cells(counts: np.ndarray, laip: Laip | None, rng: np.random.Generator) -> np.ndarray:
    """Log10 cells of every singlet population and the debris, stacked in label order."""
    parts = [draw_cells(p, int(c), rng) for p, c in zip(NORMAL, counts[:len(NORMAL)])]
    if counts[BLAST]:
        assert laip is not None, "blasts need a LAIP"
        parts.append(draw_cells(blast_path(laip), int(counts[BLAST]), rng))
    debris = np.column_stack([rng.normal(2.4, 0.35, (counts[DEBRIS], len(MARKERS))),
                              rng.uniform(3.7, 4.6, counts[DEBRIS]), rng.uniform(3.5, 4.9, counts[DEBRIS])])
    parts.append(debris)
    return np.concatenate(parts) if parts else np.empty((0, len(DIMS)))


def _linear_with_doublets(cells: np.ndarray, n_leuk: int, n_doublet: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Linear intensities of singlets+debris plus doublets (two leukocytes summed) and a height/area ratio."""
    lin = 10.0 ** cells
    n_single = len(cells)
    ratio = np.exp(rng.normal(np.log(0.88), 0.03, n_single + n_doublet))
    if n_doublet:
        a, b = rng.integers(0, max(n_leuk, 1), (2, n_doublet))  # leukocytes come first, debris last
        pair = lin[a] + lin[b]
        lin = np.concatenate([lin, pair])
        ratio[n_single:] *= np.maximum(lin[a, -2], lin[b, -2]) / pair[:, -2] * 1.08
    return lin, ratio


def _detect(lin: np.ndarray, ratio: np.ndarray, spill: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Detector values in CHANNELS order without Time: gain, photon and electronic noise, spillover, saturation."""
    n = len(lin)
    col = {m: i for i, m in enumerate(MARKERS)}
    true = np.column_stack([lin[:, col[_marker(c)]] for c in FLUOR_CHANNELS])
    gains = np.exp(rng.normal(0.0, 0.08, len(FLUOR_CHANNELS)))
    signal = true * gains
    signal = signal + rng.normal(0.0, 1.0, signal.shape) * np.sqrt(1.3 * signal)
    fluo = signal @ spill + rng.normal(0.0, 35.0, signal.shape)
    fsc, ssc = lin[:, -2] * rng.lognormal(0, 0.02, n), lin[:, -1] * rng.lognormal(0, 0.02, n)
    ssc_ratio = ratio * np.exp(rng.normal(0.02, 0.02, n))
    scatter = np.column_stack([fsc, fsc * ratio, ssc, ssc * ssc_ratio])
    return np.minimum(np.column_stack([scatter, fluo]), RANGE - 1)


def _marker(channel: str) -> str:
    return next(m for m, f in FLUOR.items() if f"{f}-A" == channel)


def simulate_labb_sample(
    *, laip: Laip | None, fraction: float, regenerating: bool, n_events: int, seed: np.random.SeedSequence | int,
) -> LabbSample:
    """Simulate one sample of Lab B's tube.

    Parameters
    ----------
    laip
        The patient's LAIP (``None`` for a control or any sample with ``fraction == 0``).
    fraction
        Requested blast share of leukocytes (0 for MRD-negative and controls).
    regenerating
        Draw the normal cells from the regenerating-marrow composition.
    n_events
        Events written (at least :data:`MIN_EVENTS`).
    seed
        Seed of the sample.

    Returns
    -------
    LabbSample
        Events in :data:`CHANNELS` order (acquisition order, Time increasing).
    """
    if n_events < MIN_EVENTS:
        raise ValueError(f"n_events must be at least {MIN_EVENTS}, got {n_events}")
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    counts = _composition(int(n_events), float(fraction), regenerating, rng)
    cells = _cells(counts, laip, rng)
    n_leuk = int(counts[:BLAST + 1].sum())
    lin, ratio = _linear_with_doublets(cells, n_leuk, int(counts[DOUBLET]), rng)
    spill = day_spillover(rng)
    values = _detect(lin, ratio, spill, rng)
    labels = np.repeat(np.arange(len(POPULATIONS)), counts)
    order = rng.permutation(len(labels))
    rate = rng.uniform(800.0, 2500.0)
    ticks = np.floor(np.sort(rng.uniform(0.0, len(labels) / rate, len(labels))) / _TIMESTEP)
    events = np.column_stack([values[order], ticks]).astype(np.float32)
    assert events.shape[1] == len(CHANNELS)
    kw = {"$TIMESTEP": str(_TIMESTEP), "$CYT": "CytoFLEX S (Lab B)", "$CYTSN": "LB-0427",
          **{f"$P{i}R": str(RANGE) for i in range(1, len(CHANNELS) + 1)}}
    return LabbSample(events, labels[order], spill, n_leuk, int(counts[BLAST]), kw)
