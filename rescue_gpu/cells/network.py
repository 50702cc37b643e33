"""CellNet: a torchvision ResNet / ResNeXt classifying single-cell images into K classes.

The backbone is ``torchvision.models.<architecture>(weights=None)`` with ``conv1``
replaced to take ``in_channels`` image planes (same 7x7 kernel, stride 2, padding 3, no
bias) and ``fc`` replaced by :class:`~torch.nn.Identity`. The head is
``Dropout(p) -> Linear(F, K)``. Features and head are split the timm way:
``forward_features`` gives ``(N, F)`` globally average-pooled features (``F`` = 2048
for resnet50 / resnext50_32x4d, 512 for resnet34 / resnet18), ``forward_head`` gives
``(N, K)`` logits. Standard ResNets take 48 x 48 crops (``layer4`` is then 2 x 2).
Nothing is ever downloaded: pretrained weights come from a local file.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..errors import ModelError
from ..model.network import load_backbone, load_torchvision_state_dict
from .spec import ARCHITECTURES

__all__ = ["CellNet", "build_backbone", "build_cell_model", "FEATURE_WIDTH"]

FEATURE_WIDTH = {"resnet50": 2048, "resnext50_32x4d": 2048, "resnet34": 512, "resnet18": 512}


def build_backbone(architecture: str) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision backbone with ``fc`` removed.

    Parameters
    ----------
    architecture
        One of :data:`~rescue_gpu.cells.spec.ARCHITECTURES`.

    Returns
    -------
    tuple
        The module (3-plane ``conv1``, ``fc = Identity``) and its feature width.

    Raises
    ------
    ModelError
        Unknown architecture.
    """
    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    import torchvision.models as tvm

    module = getattr(tvm, architecture)(weights=None)
    module.fc = nn.Identity()
    return module, FEATURE_WIDTH[architecture]


class CellNet(nn.Module):
    """A torchvision ResNet/ResNeXt backbone plus ``Dropout -> Linear`` giving one logit per class.

    Parameters
    ----------
    architecture
        ``"resnet50"``, ``"resnext50_32x4d"``, ``"resnet34"`` or ``"resnet18"``.
    in_channels
        Image planes ``C`` of the ``(N, C, H, W)`` input.
    n_classes
        Number of classes ``K`` (at least 2).
    dropout
        Dropout probability before the final linear layer.

    Raises
    ------
    ModelError
        Unknown architecture, ``in_channels < 1`` or ``n_classes < 2``.
    """

    def __init__(self, *, architecture: str, in_channels: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_channels < 1:
            raise ModelError(f"in_channels must be >= 1 (got {in_channels})")
        if n_classes < 2:
            raise ModelError(f"n_classes must be >= 2 (got {n_classes}); a classifier needs at least two classes")
        if not (0.0 <= dropout < 1.0):
            raise ModelError(f"dropout must be in [0, 1) (got {dropout})")
        self.backbone, self.num_features = build_backbone(architecture)
        self.architecture, self.in_channels, self.n_classes = architecture, int(in_channels), int(n_classes)
        self.dropout = float(dropout)
        self.backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, n_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images to ``(N, F)`` globally average-pooled features."""
        return self.backbone(x)

    def forward_head(self, f: Tensor) -> Tensor:
        """``(N, F)`` features to ``(N, K)`` logits."""
        return self.head(f)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images to ``(N, K)`` logits (before temperature scaling)."""
        return self.forward_head(self.forward_features(x))


def build_cell_model(*, architecture: str, in_channels: int, n_classes: int, dropout: float = 0.0,
                     pretrained: str | Path = "") -> CellNet:
    """Build a :class:`CellNet`, optionally starting the backbone from local ImageNet weights.

    Parameters
    ----------
    architecture, in_channels, n_classes, dropout
        See :class:`CellNet`.
    pretrained
        ``""`` for random initialisation, or the path of a LOCAL torchvision state dict of
        the same architecture (``torch.save`` file read with ``weights_only=True``, or
        ``.safetensors``). Its ``fc`` weights are ignored; ``conv1`` is adapted to
        ``in_channels`` by :func:`~rescue_gpu.model.network.adapt_conv1_weight`. Never downloads.

    Raises
    ------
    ModelError
        Bad architecture or sizes; the weights file is missing, unreadable or not a
        state dict of ``architecture`` (missing and unexpected keys are listed).
    """
    model = CellNet(architecture=architecture, in_channels=in_channels, n_classes=n_classes, dropout=dropout)
    if str(pretrained):
        path = Path(pretrained)
        if not path.is_file():
            raise ModelError(f"{path}: weights file not found; set model.pretrained to a LOCAL torchvision "
                             f"{architecture} state dict (.pth/.pt or .safetensors) or to '' for random "
                             "initialisation; nothing is downloaded")
        load_backbone(model, load_torchvision_state_dict(path), str(path), architecture=architecture)
    return model
