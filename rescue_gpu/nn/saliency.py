"""Guided Grad-CAM saliency for ResNet-style networks (one image or a batch).

1. Grad-CAM on the last ResNet block (``layer4``): the block's activations ``A`` and the
   gradient of a scalar score with respect to them give ``relu(sum_k mean(dS/dA_k) * A_k)``,
   upsampled (bilinear) to the image size. A network with several ``layer4`` blocks (an
   :class:`~rescue_gpu.nn.ensemble.EnsembleNetwork`, one per member) gets the sum of
   their maps; the score being the members' mean logit, that is the mean of the members'
   own Grad-CAM maps.
2. The map is multiplied by the gradient x input saliency of the image (positive part,
   summed over channels), which sharpens the coarse map to the pixels that carry signal
   ("guided" Grad-CAM). Where that product is all zero the Grad-CAM map is used, and
   where Grad-CAM is all zero (common on small images whose last block is 1 x 1) the
   saliency alone.

The score defaults to the network's single output (the MRD logit); cell models pass the
log-probability of the leukaemic classes. Images of a batch are independent (the network
is put in eval mode), so one backward pass over the summed scores gives every map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import RescueError

__all__ = ["grad_cam", "last_block", "cam_blocks"]


def last_block(network: Any) -> Any:
    """The module Grad-CAM hooks: the last ``layer4`` found in ``network``."""
    found = [m for name, m in network.named_modules() if name.split(".")[-1] == "layer4"]
    if not found:
        raise RescueError("the network has no 'layer4' block (not a ResNet); Grad-CAM cannot be computed")
    return found[-1]


def cam_blocks(network: Any) -> list[Any]:
    """Every ``layer4`` block of ``network`` (one for a ResNet, one per member of an ensemble)."""
    found = [m for name, m in network.named_modules() if name.split(".")[-1] == "layer4"]
    if not found:
        raise RescueError("the network has no 'layer4' block (not a ResNet); Grad-CAM cannot be computed")
    return found


def _cam(acts: Any, g_act: Any, size: tuple[int, int]) -> Any:
    """One block's Grad-CAM map, ``(N, H, W)`` upsampled to ``size``."""
    import torch.nn.functional as F

    weights = g_act.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]


def _guided(cam: Any, g_in: Any, x: Any) -> Any:
    """Per image: Grad-CAM x positive gradient-x-input, with the fallbacks of the module docstring."""
    import torch.nn.functional as F

    saliency = F.relu((g_in * x).sum(dim=1))
    guided = cam * saliency
    out = []
    for gi, ci, si in zip(guided, cam, saliency):
        out.append(gi if float(gi.sum()) > 0 else (ci if float(ci.sum()) > 0 else si))
    return out


def grad_cam(network: Any, images: np.ndarray, *, score: Callable[[Any], Any] | None = None) -> np.ndarray:
    """Guided Grad-CAM maps (>= 0, float32) of a ``(C, H, W)`` image or an ``(N, C, H, W)`` batch.

    Parameters
    ----------
    network
        A ResNet-style module with a ``layer4`` block, on the CPU.
    images
        One image or a batch, float32.
    score
        Maps the network's output for the batch to one scalar per image ``(N,)``;
        default: the single output (``out.reshape(N, -1)[:, 0]``).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` for one image, ``(N, H, W)`` for a batch.
    """
    import torch

    single = np.ndim(images) == 3
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = (x[None] if single else x).requires_grad_(True)
    blocks, store = cam_blocks(network), {}
    hooks = [b.register_forward_hook(lambda _m, _i, out, k=k: store.__setitem__(k, out)) for k, b in enumerate(blocks)]
    was_training = network.training
    network.eval()
    try:
        with torch.enable_grad():
            out = network(x)
            s = score(out) if score is not None else out.reshape(x.shape[0], -1)[:, 0]
            acts = [store[k] for k in range(len(blocks))]
            *g_acts, g_in = torch.autograd.grad(s.sum(), [*acts, x])
    finally:
        for h in hooks:
            h.remove()
        network.train(was_training)
    size = tuple(x.shape[-2:])
    cam = sum(_cam(a.detach(), g, size) for a, g in zip(acts, g_acts))
    maps = torch.stack(_guided(cam, g_in, x.detach())).numpy().astype(np.float32)
    return maps[0] if single else maps
