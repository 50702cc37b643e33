"""An ensemble of networks as one module: the mean of its members' logits.

:class:`EnsembleNetwork` holds ``K`` :class:`~rescue_gpu.nn.network.Network` members of
one architecture, input and head layout (the cross-validation fold models of a training
run) and returns the mean of their raw logits, before any temperature. Being one
``nn.Module``, every engine runs it unchanged: the torch engine deep-copies it, the ONNX
and TensorRT engines export it as one graph that runs every member on each batch.

Features: :meth:`EnsembleNetwork.forward_features` gives the mean of the members'
``(N, F)`` pooled features. Members are trained independently, so this mean is a
descriptor of the image, not what any head consumes; the logits always come from
:meth:`forward` (``forward_head`` of the mean features would not equal the mean logits).
Use :meth:`forward_with_features` for the pair. State-dict keys are ``members.<k>.*``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ModelError
from .network import Network

__all__ = ["EnsembleNetwork"]


class EnsembleNetwork(nn.Module):
    """``K >= 1`` networks of one layout; ``forward`` gives the mean of their logits.

    Parameters
    ----------
    members
        The networks (the same architecture, ``in_channels`` and head layout).

    Raises
    ------
    ModelError
        No members, or members that differ in architecture, input channels or head.
    """

    def __init__(self, members: Sequence[Network]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ModelError("an ensemble needs at least one member network")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            if (m.architecture, m.in_channels, m.layout) != (first.architecture, first.in_channels, first.layout):
                raise ModelError(f"ensemble member {k} ({m.architecture}, {m.in_channels} channels, {m.layout}) "
                                 f"differs from member 0 ({first.architecture}, {first.in_channels} channels, "
                                 f"{first.layout})")
        self.members = nn.ModuleList(members)
        self.architecture, self.in_channels, self.layout = first.architecture, first.in_channels, first.layout
        self.num_features = first.num_features

    @property
    def n_members(self) -> int:
        """Networks in the ensemble."""
        return len(self.members)

    @property
    def n_outputs(self) -> int:
        """Logits per image (1 for a binary network)."""
        return self.layout.outputs

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images to the mean of the members' logits, ``(N,)`` or ``(N, K)``."""
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

    def forward_features(self, x: Tensor) -> Tensor:
        """The mean of the members' ``(N, F)`` pooled features (a descriptor; see the module docstring)."""
        return torch.stack([m.forward_features(x) for m in self.members]).mean(dim=0)

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean logits and mean pooled features from one pass through every member."""
        logits, feats = [], []
        for m in self.members:
            f = m.forward_features(x)
            feats.append(f)
            logits.append(m.forward_head(f))
        return torch.stack(logits).mean(dim=0), torch.stack(feats).mean(dim=0)
