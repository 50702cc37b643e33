"""``--flag-events``: mark the events in the image regions that drive a positive call.

1. Grad-CAM on the last ResNet block (``backbone.layer4``): the block's activations
   ``A`` (512 x h x w) and the gradient of the MRD logit with respect to them give
   ``relu(sum_k mean(dlogit/dA_k) * A_k)``, upsampled (bilinear) to the image size.
2. The map is multiplied by the gradient x input saliency of the image (positive part,
   summed over channels), which sharpens the coarse ``h x w`` map to pixels that carry
   events ("guided" Grad-CAM). Where that product is all zero the Grad-CAM map is used,
   and where Grad-CAM is all zero (a negative evidence sum, common on small images whose
   last block is 1 x 1) the saliency alone.
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

__all__ = ["grad_cam", "driving_region", "flag_sample", "FLAG_PARAMETER", "SAFE_KEYWORDS"]

FLAG_PARAMETER = "RESCUE_FLAG"
SAFE_KEYWORDS = ("$CYT", "$CYTSN", "$TIMESTEP", "$VOL", "$TR")


def _last_block(network: Any) -> Any:
    """The module Grad-CAM hooks: ``backbone.layer4`` (or the last ``layer4`` found)."""
    found = [m for name, m in network.named_modules() if name.split(".")[-1] == "layer4"]
    if not found:
        raise RescueError("the network has no 'layer4' block (not a ResNet); Grad-CAM cannot be computed")
    return found[-1]


def grad_cam(network: Any, image: np.ndarray) -> np.ndarray:
    """The guided Grad-CAM map ``(H, W)`` (>= 0, float32) of one ``(C, H, W)`` image for the MRD logit."""
    import torch
    import torch.nn.functional as F

    block, store = _last_block(network), {}
    hook = block.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    was_training = network.training
    network.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].requires_grad_(True)
        with torch.enable_grad():
            logit = network(x).reshape(-1)[0]
            acts = store["a"]
            g_act, g_in = torch.autograd.grad(logit, [acts, x])
    finally:
        hook.remove()
        network.train(was_training)
    weights = g_act.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach()
    saliency = F.relu((g_in * x).sum(dim=1))[0].detach()
    guided = cam * saliency
    out = guided if float(guided.sum()) > 0 else (cam if float(cam.sum()) > 0 else saliency)
    return out.numpy().astype(np.float32)


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
