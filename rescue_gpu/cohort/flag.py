"""``--flag-events``: mark the events in the image regions that drive a positive call.

1.-2. Guided Grad-CAM of the MRD logit on the last ResNet block
   (:func:`rescue_gpu.model.saliency.grad_cam`): where in the image the call comes from.
3. The driving region: the smallest set of pixels holding ``mass`` (default half) of
   the map's total.
4. Each event goes through its pixel (the same :func:`~rescue_gpu.raster.pixel_index`
   the image was made with): ``RESCUE_FLAG = 1`` inside the region, else 0; events
   removed by QC or outside the canvas get 0.

The flagged file holds every original event with its original parameters (linear values,
``$PnE``/``$PnG`` already applied, float32) plus ``RESCUE_FLAG``. Identifying keywords
are copied only with ``keep_identifiers``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..config import Pipeline
from ..errors import RescueError
from ..model.saliency import grad_cam

__all__ = ["grad_cam", "driving_region", "flag_sample", "FLAG_PARAMETER", "SAFE_KEYWORDS"]

FLAG_PARAMETER = "RESCUE_FLAG"
SAFE_KEYWORDS = ("$CYT", "$CYTSN", "$TIMESTEP", "$VOL", "$TR")


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


def _keywords(fcs: Any, keep_identifiers: bool) -> dict[str, str]:
    kw = fcs.keywords if keep_identifiers else {k: v for k, v in fcs.keywords.items() if k in SAFE_KEYWORDS}
    out = {k: v for k, v in kw.items() if k not in ("$SPILLOVER", "SPILL", "$COMP", "$DFC")}
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
        Copy every keyword (names, dates, ``$SRC``, ``$FIL``) instead of the instrument ones only.
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
    tmp = Path(out).with_suffix(".fcs.tmp")
    write_fcs(tmp, np.column_stack([linear, flags]), channels=[*fcs.channels, FLAG_PARAMETER],
              markers=[*fcs.markers, "MRD flag"], keywords=_keywords(fcs, keep_identifiers),
              spillover=fcs.spillover)
    os.replace(tmp, out)
    return int(flags.sum())
