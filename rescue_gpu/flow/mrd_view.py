"""The events behind a sample's MRD % kept for the report (``mrd_view`` in the run store).

The worker keeps, for a sample whose MRD status is not ``negative`` and that has aberrant
events, a seeded subsample of its aberrant events and of its other CD45+ events (the
"normal" ones), with their projected (UMAP) coordinates and preprocessed marker values.
The report (:mod:`rescue_gpu.report.mrd`) draws them; it never re-reads the FCS files.

Layout of ``mrd_view`` (float32, ``(m, 3 + d)``): column 0 is 1.0 for an aberrant event and
0.0 for another CD45+ event; columns 1-2 are the UMAP coordinates; columns 3.. are the
markers in the order of the sample's preprocessed markers (``view_markers`` in the MRD
record). At most :data:`VIEW_ABERRANT` aberrant and :data:`VIEW_NORMAL` other events are
kept (drawn without replacement with a fixed seed, so the same sample gives the same view).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["VIEW_ABERRANT", "VIEW_NORMAL", "VIEW_SEED", "needs_view", "view_sample", "split_view"]

#: Aberrant events kept per sample for the report.
VIEW_ABERRANT = 2000
#: Other (non-aberrant) CD45+ events kept per sample for the report.
VIEW_NORMAL = 3000
#: Seed of the subsample.
VIEW_SEED = 0


def needs_view(mrd_status: str, mrd_events: int) -> bool:
    """Whether the report may show the sample's MRD views (status not ``negative``, some aberrant events).

    A ``negative`` sample is never shown: its combined call is negative too
    (:func:`rescue_gpu.flow.mrd.combined_call`).
    """
    return mrd_status != "negative" and int(mrd_events) > 0


def _pick(mask: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``mask``'s True entries, at most ``cap`` of them (a sorted random subset)."""
    idx = np.flatnonzero(mask)
    if idx.size > cap:
        idx = np.sort(rng.choice(idx, cap, replace=False))
    return idx


def view_sample(values: Any, coords: Any, aberrant: Any, gate: Any, *, max_aberrant: int = VIEW_ABERRANT,
                max_normal: int = VIEW_NORMAL, seed: int = VIEW_SEED) -> np.ndarray:
    """The ``mrd_view`` array of one sample (host float32; see the module docstring for its layout).

    ``values`` ``(n, d)`` and ``coords`` ``(n, 2)`` may be numpy or cupy arrays; ``aberrant``
    and ``gate`` are boolean per event (aberrant events and the CD45+ gate). Only the
    picked rows are copied to the host.
    """
    from ..device import to_numpy
    from ..xp import namespace

    ab = np.asarray(to_numpy(aberrant), dtype=bool)
    other = np.asarray(to_numpy(gate), dtype=bool) & ~ab
    rng = np.random.default_rng(seed)
    idx = np.concatenate([_pick(ab, max_aberrant, rng), _pick(other, max_normal, rng)])
    xp = namespace(values)
    take = xp.asarray(idx)
    v = np.asarray(to_numpy(values[take, ...]), dtype=np.float32).reshape(idx.size, -1)
    c = np.asarray(to_numpy(coords[take, ...]), dtype=np.float32).reshape(idx.size, 2)
    return np.ascontiguousarray(np.column_stack([ab[idx].astype(np.float32), c, v]), dtype=np.float32)


def split_view(view: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(is_aberrant, coords, values)`` of a stored ``mrd_view`` array."""
    v = np.asarray(view, dtype=np.float32)
    return v[:, 0] > 0.5, v[:, 1:3], v[:, 3:]
