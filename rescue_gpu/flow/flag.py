"""``--flag-events``: mark the events in the image regions that drive a positive call.

1.-2. Guided Grad-CAM of the MRD logit on the last ResNet block
   (:func:`rescue_gpu.nn.saliency.grad_cam`): where in the image the call comes from.
3. The driving region: the smallest set of pixels holding ``mass`` (default half) of
   the map's total.
4. Each event goes through its pixel (the same :func:`~rescue_gpu.raster.pixel_index`
   the image was made with): ``RESCUE_FLAG = 1`` inside the region, else 0; events
   removed by QC or outside the canvas get 0.

The flagged file holds every original event with its original parameters (linear values,
``$PnE``/``$PnG`` already applied, float32) plus ``RESCUE_FLAG``.

Keywords. Without ``keep_identifiers`` the file keeps an allow-list, so that a keyword a
vendor invents is left out rather than copied: the layout keywords the writer owns, the
file's spillover matrix (as ``$SPILLOVER``), ``$PnN`` and ``$PnR`` of every parameter,
``$PnS`` reduced to the pipeline's panel marker names (a matched parameter gets e.g.
``CD34``, any other none: ``$PnS`` is free text and can hold anything), and
:data:`KEPT_KEYWORDS` (``$CYT`` only when it holds nothing serial-number-like). Everything
else is left out, among it ``$CYTSN``, ``$SRC``, ``$FIL``, ``$OP``, ``$INST``,
``$INSTADDRESS``, ``$SMNO``, ``$PROJ``, ``$EXP``, ``$COM``, ``$CELLS``, ``$SYS``,
``$DATE``, ``$BTIM``, ``$ETIM``, ``$BEGINDATETIME``, ``$ENDDATETIME``, ``$LAST_MODIFIED``,
``$LAST_MODIFIER``, ``$ORIGINALITY``, ``$PLATEID``, ``$PLATENAME``, ``$WELLID``,
``$CARRIERID``, ``$CARRIERTYPE``, ``$LOCATIONID``, gating keywords and every keyword
without a ``$`` (``CYTNUM``, ``TUBE NAME``, ``EXPERIMENT NAME``, ...). With
``keep_identifiers`` every keyword is copied, ``$PnS`` verbatim, except those that would
describe the written values wrongly (``$PnG``, ``$PnE``, ``$PnB``, ``$PnDATATYPE``, the
old spillover keywords).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..device import to_numpy
from ..config import PanelSpec, Pipeline
from ..errors import RescueError
from ..fcs.spillover import SPILLOVER_KEYWORDS
from ..nn.saliency import grad_cam

__all__ = ["grad_cam", "driving_region", "flag_sample", "flagged_keywords", "flagged_markers", "FLAG_PARAMETER", "MRD_PARAMETER",
           "KEPT_KEYWORDS", "SAFE_KEYWORDS"]

FLAG_PARAMETER = "RESCUE_FLAG"
#: Parameter of the event-level MRD bit (DfN or LAIP aberrant) in a flagged file.
MRD_PARAMETER = "RESCUE_MRD"
#: Keywords of the sample kept in its flagged file without ``keep_identifiers`` (an allow-list):
#: instrument model, time step, volume and trigger. ``$CYT`` is dropped when serial-number-like.
KEPT_KEYWORDS = ("$CYT", "$TIMESTEP", "$VOL", "$TR")
SAFE_KEYWORDS = KEPT_KEYWORDS  # the former name
#: A value that looks like a serial number: 5+ digits in a row, "S/N", "SN:" or "serial".
_SERIAL_LIKE = re.compile(r"\d{5,}|\bS/?N\b|serial", re.IGNORECASE)
#: Keywords never copied: they would describe the written (linear, float32, gain applied) values wrongly,
#: or carry a second spillover matrix beside the $SPILLOVER the writer writes.
_NOT_COPIED = re.compile(r"^(\$P\d+(E|G|B|R|DATATYPE)|\$COMP|\$DFC\d+TO\d+)$")


def driving_region(cam: np.ndarray, *, mass: float = 0.5) -> np.ndarray:
    """Boolean ``(H, W)``: the fewest pixels that together hold ``mass`` of ``cam``'s total."""
    flat = np.clip(np.asarray(cam, dtype=np.float64).ravel(), 0.0, None)
    total = flat.sum()
    region = np.zeros(flat.size, dtype=bool)
    if total <= 0:
        return region.reshape(cam.shape)
    order = np.argsort(-flat, kind="stable")
    n = int(np.searchsorted(np.cumsum(flat[order]), mass * total) + 1)
    region[order[:n]] = True
    return region.reshape(cam.shape)


def _kept(key: str, value: str) -> bool:
    """Whether a keyword is on the allow-list (:data:`KEPT_KEYWORDS`, ``$CYT`` without a serial number)."""
    return key in KEPT_KEYWORDS and not (key == "$CYT" and _SERIAL_LIKE.search(value))


def flagged_markers(fcs: Any, panel: PanelSpec, keep_identifiers: bool) -> list[str]:
    """``$PnS`` of the flagged file's original parameters.

    With ``keep_identifiers`` the file's own texts; otherwise the panel's marker name for
    each parameter the panel matched (``"CD34"`` for ``"CD34 PerCP-Cy5.5"``) and none for
    the others, so free text in ``$PnS`` does not travel.
    """
    if keep_identifiers:
        return list(fcs.markers)
    from ..preprocess.panel import match_panel

    names = [""] * fcs.n_parameters
    if panel.markers:
        for marker, col in zip(panel.markers, match_panel(fcs.channels, fcs.markers, panel)):
            names[col] = marker
    return names


def flagged_keywords(fcs: Any, keep_identifiers: bool) -> dict[str, str]:
    """The keywords a flagged file copies from its sample (see the module docstring), plus its own."""
    spill = set(SPILLOVER_KEYWORDS)
    if keep_identifiers:
        out = {k: v for k, v in fcs.keywords.items() if k not in spill and not _NOT_COPIED.match(k)}
    else:
        out = {k: v for k, v in fcs.keywords.items() if _kept(k, v)}
    for i in range(1, fcs.n_parameters + 1):
        out[f"$P{i}R"] = fcs.keywords.get(f"$P{i}R", "262144")
    out[f"$P{fcs.n_parameters + 1}R"] = "2"
    out["RESCUE_FLAG_NOTE"] = "1 = event in the image region driving the MRD call (guided Grad-CAM); 0 otherwise"
    return out


def flag_sample(
    path: str | Path,
    out: str | Path,
    *,
    pipeline: Pipeline,
    reference: Any,
    network: Any,
    image: np.ndarray,
    coords: Any,
    mass: float = 0.5,
    keep_identifiers: bool = False,
    mrd_bits: np.ndarray | None = None,
) -> int:
    """Write ``out``: the sample's events plus ``RESCUE_FLAG``; return how many events are flagged.

    Parameters
    ----------
    path
        The sample's FCS file.
    out
        The flagged FCS file to write (via a temporary file and a rename).
    pipeline, reference
        What the sample was preprocessed and projected with (``pipeline`` finds which
        events passed QC, through :attr:`Events.kept`).
    network
        The model's ``nn.Module`` (an MrdNet: ResNet backbone with ``layer4``).
    image
        The sample's ``(C, H, W)`` image.
    coords
        ``(n_kept, 2)`` projected coordinates of the events that passed QC, in file order.
    mass
        Share of the attribution whose pixels form the driving region.
    keep_identifiers
        Copy every keyword (names, dates, serial numbers, ``$SRC``, ``$FIL``) and the
        ``$PnS`` texts verbatim instead of the allow-list (see the module docstring).
    mrd_bits
        Boolean per kept event: MRD-aberrant (DfN or LAIP, :mod:`rescue_gpu.flow.mrd`);
        written as a further parameter :data:`MRD_PARAMETER` (1 aberrant, 0 otherwise;
        events removed by QC get 0). None: no such parameter.
    """
    from ..fcs import read_fcs, write_fcs
    from ..preprocess import preprocess
    from ..preprocess.pipeline import linear_values
    from ..raster import pixel_index

    region = driving_region(grad_cam(network, image), mass=mass).ravel()
    flat, inside = pixel_index(to_numpy(coords), extent=reference.extent, size=image.shape[-2:])
    kept_flags = np.asarray(inside) & region[np.asarray(flat)]
    fcs = read_fcs(path)
    keep = to_numpy(preprocess(fcs, panel=pipeline.panel, spec=pipeline.preprocess).kept).astype(bool)
    if int(keep.sum()) != kept_flags.size:
        raise RescueError(f"{path}: QC kept {int(keep.sum())} events but {kept_flags.size} were projected; "
                          "cannot map flags back to events")
    flags = np.zeros(fcs.n_events, dtype=np.float32)
    flags[keep] = kept_flags
    linear = np.asarray(linear_values(fcs), dtype=np.float32)
    columns, channels = [linear, flags], [*fcs.channels, FLAG_PARAMETER]
    markers = [*flagged_markers(fcs, pipeline.panel, keep_identifiers), "MRD flag"]
    keywords = flagged_keywords(fcs, keep_identifiers)
    if mrd_bits is not None:
        bits = np.asarray(mrd_bits, dtype=bool)
        if bits.size != kept_flags.size:
            raise RescueError(f"{path}: {bits.size} MRD bits for {kept_flags.size} kept events")
        aberrant = np.zeros(fcs.n_events, dtype=np.float32)
        aberrant[keep] = bits
        columns.append(aberrant)
        channels.append(MRD_PARAMETER)
        markers.append("MRD aberrant")
        keywords[f"$P{fcs.n_parameters + 2}R"] = "2"
        keywords["RESCUE_MRD_NOTE"] = "1 = event different from normal marrow or in the diagnosis LAIP; 0 otherwise"
    tmp = Path(out).with_suffix(".fcs.tmp")
    write_fcs(tmp, np.column_stack(columns), channels=channels, markers=markers, keywords=keywords,
              spillover=fcs.spillover)
    os.replace(tmp, out)
    return int(flags.sum())
