"""Attention-based multiple-instance learning: gated attention pooling of a bag of instance features.

Ilse, Tomczak and Welling (ICML 2018), gated attention: for instance features
``h_1..h_N`` (rows of ``H``),

    a_n = softmax_n( w^T (tanh(V h_n) * sigmoid(U h_n)) ),      z = sum_n a_n h_n

and the bag's class logits are a linear layer of ``z``. Here the instance features are
first projected (``Linear -> ReLU -> Dropout``) from the cell network's penultimate layer
to ``hidden`` dimensions; the attention and the pooled vector work on the projection.

Two options of :class:`MilLayout`:

- ``pooling="attention+mean"`` classifies ``[z, mean_n h_n]``: the attention-pooled vector
  beside the plain mean of the bag's projected cells. Attention alone normalises away how
  MANY cells look abnormal (a control bag's most subtype-like normal cell gets the same
  weight as a leukaemic bag's abnormal cells); the mean keeps that share, which is what
  separates controls from subtypes with a minority of abnormal cells.
- ``instance_dropout``: in train mode each real instance is masked out with this
  probability (at least one kept per bag), so the model cannot rely on any single cell
  and sees bags of varying size; in eval mode every cell counts.

Bags are batched as ``(B, N, F)`` with an optional ``(B, N)`` boolean mask (True: a real
instance); masked instances get zero attention, so bags of different sizes share a batch.

- :func:`gated_attention`: the attention weights of one batch of bags (a pure function
  of the parameters, for tests and for reading attention out);
- :class:`GatedAttentionMIL`: the module (``forward`` gives logits, as the one training
  loop expects; :meth:`GatedAttentionMIL.forward_with_attention` also the weights);
- :func:`sample_bags`: fixed-size bags drawn from each patient's cells (without
  replacement where a patient has enough cells), on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["POOLINGS", "MilLayout", "GatedAttentionMIL", "gated_attention", "drop_instances", "sample_bags",
           "pad_bags"]


#: Bag vectors the classifier reads: the attention-pooled vector, or it beside the bag's mean.
POOLINGS = ("attention", "attention+mean")


@dataclass(frozen=True)
class MilLayout:
    """Sizes of a :class:`GatedAttentionMIL`: input features, projection, attention, classes, dropout, pooling.

    ``instance_dropout``: share of a bag's instances masked out in train mode (see the module notes).
    """

    in_features: int
    n_classes: int
    hidden: int = 128
    attention: int = 64
    dropout: float = 0.25
    pooling: str = "attention"
    instance_dropout: float = 0.0

    def __post_init__(self) -> None:
        if min(self.in_features, self.hidden, self.attention) < 1 or self.n_classes < 2:
            raise ValueError(f"MIL sizes must be >= 1 and n_classes >= 2 (got {self})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MIL dropout must be in [0, 1) (got {self.dropout})")
        if not 0.0 <= self.instance_dropout < 1.0:
            raise ValueError(f"MIL instance_dropout must be in [0, 1) (got {self.instance_dropout})")
        if self.pooling not in POOLINGS:
            raise ValueError(f"MIL pooling must be one of {POOLINGS} (got {self.pooling!r})")


def gated_attention(h: Tensor, V: nn.Linear, U: nn.Linear, w: nn.Linear, mask: Tensor | None = None) -> Tensor:
    """Gated attention weights ``softmax_n(w^T (tanh(V h_n) * sigmoid(U h_n)))`` of ``(B, N, D)`` instances.

    Masked-out instances (``mask`` False) get weight 0; every bag's weights sum to 1.
    Returns ``(B, N)``.
    """
    score = w(torch.tanh(V(h)) * torch.sigmoid(U(h))).squeeze(-1)
    if mask is not None:
        score = score.masked_fill(~mask, float("-inf"))
    return torch.softmax(score, dim=-1)


class GatedAttentionMIL(nn.Module):
    """Instance projection, gated attention pooling and a linear bag classifier.

    ``forward(x, mask=None)`` of ``(B, N, F)`` instance features gives ``(B, K)`` logits;
    :meth:`forward_with_attention` also the ``(B, N)`` attention weights.
    """

    def __init__(self, layout: MilLayout) -> None:
        super().__init__()
        self.layout = layout
        self.project = nn.Sequential(nn.Linear(layout.in_features, layout.hidden), nn.ReLU(),
                                     nn.Dropout(layout.dropout))
        self.V = nn.Linear(layout.hidden, layout.attention)
        self.U = nn.Linear(layout.hidden, layout.attention)
        self.w = nn.Linear(layout.attention, 1)
        width = layout.hidden * (2 if layout.pooling == "attention+mean" else 1)
        self.classifier = nn.Linear(width, layout.n_classes)

    @property
    def n_outputs(self) -> int:
        """Number of classes ``K``."""
        return self.layout.n_classes

    def pool(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The bag vectors the classifier reads and the ``(B, N)`` attention ``a``.

        ``(B, hidden)`` ``sum_n a_n h_n``, or with ``pooling="attention+mean"`` ``(B, 2 hidden)``
        ``[sum_n a_n h_n, mean_n h_n]`` (mean over the real, unmasked instances). In train mode
        ``instance_dropout`` first masks out a random share of the instances.
        """
        if self.training and self.layout.instance_dropout > 0:
            mask = drop_instances(mask if mask is not None else torch.ones(x.shape[:2], dtype=torch.bool,
                                                                           device=x.device),
                                  self.layout.instance_dropout)
        h = self.project(x)
        a = gated_attention(h, self.V, self.U, self.w, mask)
        z = torch.einsum("bn,bnd->bd", a, h)
        if self.layout.pooling == "attention+mean":
            keep = (torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(h.dtype))
            z = torch.cat([z, torch.einsum("bn,bnd->bd", keep, h) / keep.sum(1, keepdim=True)], dim=1)
        return z, a

    def forward_with_attention(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, K)`` logits and ``(B, N)`` attention weights."""
        z, a = self.pool(x, mask)
        return self.classifier(z), a

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(B, K)`` class logits of ``(B, N, F)`` bags."""
        return self.forward_with_attention(x, mask)[0]


def drop_instances(mask: Tensor, p: float) -> Tensor:
    """``mask`` with each True entry turned False with probability ``p``; every bag keeps at least one instance.

    A bag that would lose all its instances keeps its first real one. Uses torch's global generator
    (seeded by the training loop).
    """
    keep = mask & (torch.rand(mask.shape, device=mask.device) >= p)
    empty = ~keep.any(dim=1)
    if bool(empty.any()):
        first = torch.zeros_like(mask)
        first.scatter_(1, mask.to(torch.int8).argmax(dim=1, keepdim=True), True)
        keep = torch.where(empty.unsqueeze(1), first & mask, keep)
    return keep


def sample_bags(features: Sequence[np.ndarray], bag_size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(bag_size, F)`` bag per patient: cells drawn without replacement (with it if a patient has fewer).

    Returns ``(P, bag_size, F)`` float32.
    """
    if bag_size < 1:
        raise ValueError(f"bag_size must be >= 1 (got {bag_size})")
    out = []
    for f in features:
        n = f.shape[0]
        if n == 0:
            raise ValueError("a patient without cells cannot form a bag")
        idx = rng.choice(n, bag_size, replace=n < bag_size)
        out.append(f[idx])
    return np.stack(out).astype(np.float32, copy=False)


def pad_bags(features: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All cells of every patient as ``(P, N_max, F)`` zero-padded bags and the ``(P, N_max)`` mask of real cells."""
    n_max = max(f.shape[0] for f in features)
    dim = features[0].shape[1]
    x = np.zeros((len(features), n_max, dim), np.float32)
    mask = np.zeros((len(features), n_max), bool)
    for i, f in enumerate(features):
        x[i, :f.shape[0]], mask[i, :f.shape[0]] = f, True
    return x, mask
