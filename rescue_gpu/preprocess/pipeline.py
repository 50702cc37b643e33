"""The preprocessing stage: stored FCS values -> float32 events in panel order, with QC counts.

Order of work, all on the array module ``xp`` (the events cross to the device once):

1. panel matching (:func:`~rescue_gpu.preprocess.panel.match_panel`) and scatter lookup;
2. ``$PnE``/``$PnG`` decoding to linear values (integer data only: FCS 3.1 requires
   float data to be stored linear, so ``$PnE`` is ignored for ``$DATATYPE`` F/D);
3. QC gates (:func:`~rescue_gpu.preprocess.qc.qc_mask`) on every event;
4. compensation of the kept events;
5. the per-channel transforms, cast to float32;
6. with ``[preprocess.normalize] method = "landmarks"``, the per-sample landmark
   registration of the named channels onto the reference's landmarks
   (:func:`~rescue_gpu.preprocess.normalize.normalize_events`).

Output columns: the panel markers in panel order, then the ``panel.scatter`` channels
in their order. Without panel markers: every parameter except time and event counters,
in file order, named by ``$PnN``.

Fatal or not. A problem that makes the events untrustworthy raises (the sample fails):
a missing panel marker, or, with ``compensation = "file"``, a spillover matrix in the file
that does not fit it (e.g. a ``$SPILLOVER`` channel name that is no ``$PnN``): such a sample
is never processed uncompensated behind the user's back. A decision that changes the
events but leaves them usable is a warning in :attr:`Events.warnings` (shown by every
command, in ``scores.csv``'s ``warnings`` column, the run store and ``report.html``):
a ``"file"`` compensation on a file without any matrix, a QC gate that could not run,
and the reader's non-fatal notes on the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from ..device import to_numpy
from ..config import PanelSpec, PreprocessSpec, TransformSpec
from ..errors import CompensationError, PanelError, PreprocessError
from ..fcs.types import FcsData, Spillover
from .amplification import decode_amplification
from .compensation import NO_FILE_MATRIX, compensate, resolve_spillover, spillover_indices
from .normalize import normalize_events
from .panel import default_channels, is_scatter, match_channels, match_panel
from .qc import qc_mask
from .transforms import apply_transform

__all__ = ["Events", "preprocess", "preprocess_fingerprint", "sample_warnings", "FINGERPRINT_VERSION"]

FINGERPRINT_VERSION = 1


@dataclass
class Events:
    """Preprocessed events of one sample.

    Attributes
    ----------
    values
        ``(n_events_kept, n_markers)`` float32 array (numpy or cupy, as processed).
    markers
        Output column names: panel markers, then scatter channels.
    channels
        ``$PnN`` each column came from.
    qc
        ``n_events_in``, ``non_finite``, ``saturated``, ``debris``, ``doublets``,
        ``n_events_out``, ``compensation`` (where the matrix came from) and
        ``qc_skipped`` (gates that could not run, with the reason).
    fingerprint
        :func:`preprocess_fingerprint` of the settings used.
    kept
        Boolean mask over the file's events: which ones passed QC (row ``i`` of
        ``values`` is the ``i``-th True event), to map results back to the file.
    warnings
        Non-fatal decisions that changed how the sample was processed (see
        :func:`sample_warnings`); empty when there were none.
    """

    values: Any
    markers: tuple[str, ...]
    channels: tuple[str, ...]
    qc: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    kept: Any = None
    warnings: tuple[str, ...] = ()

    @property
    def n_events(self) -> int:
        """Number of kept events."""
        return int(self.values.shape[0])

    def to_numpy(self) -> "Events":
        """A copy whose ``values`` live in host memory."""
        kept = None if self.kept is None else to_numpy(self.kept)
        return dataclasses.replace(self, values=to_numpy(self.values), qc=dict(self.qc), kept=kept)


def preprocess_fingerprint(panel: PanelSpec, spec: PreprocessSpec) -> str:
    """sha256 of a canonical JSON of the panel and preprocessing settings.

    Two runs with equal fingerprints turn the same file into the same events;
    references and models record it to check that samples fit them.
    """
    record = {
        "version": FINGERPRINT_VERSION,
        "panel": dataclasses.asdict(panel),
        "preprocess": _without_later_defaults(dataclasses.asdict(spec)),
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: Settings added after fingerprints were first recorded, at their defaults: left out of the
#: fingerprint so that references and models from before them keep fitting their samples.
_LATER_DEFAULTS: dict[str, Any] = {"top": "fixed", "bandwidth": 0.02, "min_height": 0.05, "max_shift": 0.2}


def _without_later_defaults(record: Any) -> Any:
    """``record`` without settings added later at their defaults (:data:`_LATER_DEFAULTS`, ``normalize`` off).

    Fingerprints from before those settings existed stay valid.
    """
    if isinstance(record, dict):
        return {k: _without_later_defaults(v) for k, v in record.items()
                if not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])
                and not (k == "normalize" and isinstance(v, dict) and v.get("method") == "none")}
    return record


def channel_tops(fcs: FcsData) -> np.ndarray:
    """Each parameter's top of scale as a linear value: ``$PnR`` decoded with ``$PnE``/``$PnG``.

    This is what ``top = "file"`` transforms use for logicle's ``t`` and linear's ``scale``.
    """
    ranges = np.asarray(fcs.ranges(), dtype=np.float64)
    return np.asarray(_decode(fcs, ranges[None, :]), dtype=np.float64)[0]


def _resolved(tspec: TransformSpec, top: float, channel: str) -> TransformSpec:
    """``tspec`` with ``t``/``scale`` set to the channel's top of scale when ``top = "file"``."""
    if tspec.top == "fixed" or tspec.kind == "arcsinh":
        return tspec
    if not (np.isfinite(top) and top > 1.0):
        raise PreprocessError(f"channel {channel!r} has no usable top of scale ($PnR decodes to {top!r}); "
                              "set the transform's t/scale and top = \"fixed\" in the pipeline file")
    return dataclasses.replace(tspec, t=float(top)) if tspec.kind == "logicle" else dataclasses.replace(tspec, scale=float(top))


def _where(fcs: FcsData) -> str:
    name = fcs.path or "<in-memory sample>"
    return f"{name} (data set {fcs.dataset})" if fcs.n_datasets > 1 else name


def _columns(fcs: FcsData, panel: PanelSpec) -> tuple[list[int], list[str], list[bool]]:
    """Column indices, output names and is-scatter flags, in output order."""
    if not panel.markers:
        cols = default_channels(fcs.channels)
        return cols, [fcs.channels[i] for i in cols], [is_scatter(fcs.channels[i]) for i in cols]
    cols = match_panel(fcs.channels, fcs.markers, panel)
    scatter = match_channels(fcs.channels, panel.scatter, what="scatter")
    names = list(panel.markers) + list(panel.scatter)
    return cols + scatter, names, [False] * len(cols) + [True] * len(scatter)


def _to_device(events: np.ndarray, xp: ModuleType) -> Any:
    """The one host-to-device copy (native byte order: cupy refuses swapped arrays)."""
    host = np.asarray(events)
    if not host.dtype.isnative:
        host = host.astype(host.dtype.newbyteorder("="))
    return xp.asarray(host)


def linear_values(fcs: FcsData, *, xp: ModuleType | None = None) -> Any:
    """All of the file's events as linear values (``$PnE``/``$PnG`` decoded), on ``xp``'s device."""
    xp = np if xp is None else xp
    return _decode(fcs, _to_device(fcs.events, xp))


def _decode(fcs: FcsData, stored: Any) -> Any:
    """Linear values: ``$PnE``/``$PnG`` applied (``$PnE`` only to integer columns, per ``$PnDATATYPE``)."""
    amp = [(0.0, 0.0) if kind in ("F", "D") else e for e, kind in zip(fcs.amplification(), fcs.data_types())]
    return decode_amplification(stored, decades_offsets=amp, ranges=fcs.ranges(), gains=fcs.gains())


def _transform(block: Any, names: list[str], scatter: list[bool], spec: PreprocessSpec, xp: ModuleType,
               tops: np.ndarray, channels: list[str]) -> Any:
    """Apply each column's transform (grouped by resolved spec) into a float32 array.

    ``tops`` and ``channels`` are the selected columns' tops of scale and ``$PnN``, used
    by ``top = "file"`` transforms.
    """
    groups: dict[TransformSpec, list[int]] = {}
    for j, (name, sc) in enumerate(zip(names, scatter)):
        chosen = spec.transforms.get(name, spec.scatter if sc else spec.fluorescence)
        groups.setdefault(_resolved(chosen, float(tops[j]), channels[j]), []).append(j)
    out = xp.empty(block.shape, dtype=xp.float32)
    for tspec, idx in groups.items():
        cols = xp.asarray(np.asarray(idx, dtype=np.int64))
        out[:, cols] = apply_transform(block[:, cols], tspec).astype(xp.float32)
    return out


def sample_warnings(fcs: FcsData, qc: dict[str, Any], compensation: str) -> tuple[str, ...]:
    """The non-fatal warnings of one preprocessed sample, one sentence each.

    Parameters
    ----------
    fcs
        The sample; the reader's notes are in ``fcs.extra["warnings"]`` (those about the
        spillover keyword are left out: compensation reports on the matrix itself).
    qc
        The QC record; each of its ``qc_skipped`` reasons is a warning.
    compensation
        Where the matrix came from (``qc["compensation"]``); ``"file:none"`` (a
        ``"file"`` compensation on a file without a matrix) is a warning.
    """
    notes = [str(w) for w in (fcs.extra or {}).get("warnings", ()) if not str(w).lower().startswith("spillover")]
    out = [f"FCS file: {w}" for w in notes]
    if compensation == "file:none":
        out.append(NO_FILE_MATRIX)
    out += [f"QC gate not run: {reason}" for reason in qc.get("qc_skipped", ())]
    return tuple(out)


def _spillover(fcs: FcsData, spec: PreprocessSpec, override: Spillover | None) -> tuple[Spillover | None, str, list[int]]:
    spill, source = (override, f"override:{override.source}") if override is not None else resolve_spillover(fcs, spec.compensation)
    return spill, source, (spillover_indices(fcs.channels, spill) if spill is not None else [])


def preprocess(
    fcs: FcsData,
    *,
    panel: PanelSpec,
    spec: PreprocessSpec,
    compensation_override: Spillover | None = None,
    xp: ModuleType | None = None,
) -> Events:
    """Turn one sample's stored values into float32 events in panel order, with QC counts.

    Parameters
    ----------
    fcs
        The sample, as read.
    panel
        Markers (output order), scatter channels and aliases.
    spec
        Compensation choice, transforms and QC gates.
    compensation_override
        A spillover matrix to use instead of ``spec.compensation`` (e.g. one CSV
        loaded once for a whole cohort).
    xp
        Array module to compute with (numpy by default; cupy keeps the events on
        the GPU, and ``Events.values`` is then a cupy array).

    Returns
    -------
    Events

    Raises
    ------
    PanelError
        A marker or scatter channel is missing or ambiguous.
    CompensationError
        The matrix does not fit the sample's channels or is singular; with
        ``compensation = "file"`` also when the file's own matrix is malformed or names
        a channel the file does not have (the message names it and says how to fix it).
    PreprocessError
        No event survives QC, or a log parameter cannot be decoded.
    """
    xp = np if xp is None else xp
    where = _where(fcs)
    try:
        cols, names, scatter = _columns(fcs, panel)
        spill, source, spill_cols = _spillover(fcs, spec, compensation_override)
    except (PanelError, CompensationError) as exc:
        raise type(exc)(f"{where}: {exc}") from None
    stored = _to_device(fcs.events, xp)
    try:
        linear = _decode(fcs, stored)
    except PreprocessError as exc:
        raise PreprocessError(f"{where}: {exc}") from None
    check = sorted(set(cols) | set(spill_cols))
    keep, qc = qc_mask(stored, linear, channels=fcs.channels, ranges=fcs.ranges(), check=check, spec=spec.qc)
    qc["compensation"] = source
    if qc["n_events_out"] == 0:
        raise PreprocessError(f"{where}: no events left after QC ({_summary(qc)}); check the QC thresholds")
    kept = linear[keep]
    if spill is not None:
        kept = compensate(kept, channels=fcs.channels, spillover=spill)
    try:
        values = _transform(kept[:, xp.asarray(np.asarray(cols, dtype=np.int64))], names, scatter, spec, xp,
                            channel_tops(fcs)[cols], [fcs.channels[i] for i in cols])
        notes: list[str] = []
        values = normalize_events(values, names, spec.normalize, xp=xp, notes=notes)
    except PreprocessError as exc:
        raise PreprocessError(f"{where}: {exc}") from None
    return Events(values=values, markers=tuple(names), channels=tuple(fcs.channels[i] for i in cols),
                  qc=qc, fingerprint=preprocess_fingerprint(panel, spec), kept=keep,
                  warnings=sample_warnings(fcs, qc, source) + tuple(notes))


def _summary(qc: dict[str, Any]) -> str:
    keys = ("n_events_in", "non_finite", "saturated", "debris", "doublets")
    return ", ".join(f"{k}={qc[k]}" for k in keys)
