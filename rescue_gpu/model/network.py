"""MrdNet: a torchvision ResNet-34 backbone with our classifier head.

The backbone is ``torchvision.models.resnet34(weights=None)`` with ``conv1`` replaced
to take ``in_channels`` image planes (same 7x7 kernel, stride 2, padding 3, no bias)
and ``fc`` removed. Features and head are split the timm way:
``forward_features`` gives ``(N, 512)`` pooled features, ``forward_head`` gives
``(N,)`` logits. Nothing is ever downloaded: pretrained weights come from a local file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import HeadSpec
from ..errors import ModelError

__all__ = ["MrdNet", "build_model", "build_head", "adapt_conv1_weight", "load_torchvision_state_dict", "load_backbone",
           "FEATURES"]

FEATURES = 512
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def build_head(head: HeadSpec, *, in_features: int = FEATURES) -> nn.Sequential:
    """``[Linear(in, h), activation, Dropout(p)]`` per hidden width, then ``Linear(., 1)``."""
    layers: list[nn.Module] = []
    width = in_features
    for h in head.hidden:
        layers += [nn.Linear(width, h), _ACTIVATIONS[head.activation](), nn.Dropout(head.dropout)]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class MrdNet(nn.Module):
    """ResNet-34 features plus a small fully connected head giving one MRD logit per image.

    Parameters
    ----------
    in_channels
        Image planes ``C`` of the ``(N, C, H, W)`` input.
    head
        Hidden widths, activation and dropout of the head.
    """

    def __init__(self, *, in_channels: int, head: HeadSpec) -> None:
        super().__init__()
        from torchvision.models import resnet34

        if in_channels < 1:
            raise ModelError(f"in_channels must be >= 1 (got {in_channels})")
        self.in_channels = int(in_channels)
        self.head_spec = head
        self.backbone = resnet34(weights=None)
        self.backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.backbone.fc = nn.Identity()
        self.head = build_head(head)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images to ``(N, 512)`` globally average-pooled features."""
        return self.backbone(x)

    def forward_head(self, f: Tensor) -> Tensor:
        """``(N, 512)`` features to ``(N,)`` logits."""
        return self.head(f).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images to ``(N,)`` logits (before temperature scaling)."""
        return self.forward_head(self.forward_features(x))


def adapt_conv1_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Adapt an RGB ``conv1`` weight ``(64, 3, k, k)`` to ``in_channels`` input planes.

    For ``in_channels == 3`` the weight is returned unchanged. Otherwise the RGB
    filters are averaged over the input-channel axis and repeated ``in_channels``
    times, then multiplied by ``3 / in_channels`` so that an input whose planes all
    equal a grey image gives the same response as the RGB net on that grey image
    replicated to three planes (the sum over input channels is preserved).
    """
    if weight.ndim != 4:
        raise ModelError(f"conv1 weight must be 4-D, got shape {tuple(weight.shape)}")
    if weight.shape[1] == in_channels:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_torchvision_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a local ``.safetensors`` file or a ``torch.save`` file (``weights_only``).

    Raises
    ------
    ModelError
        The file is missing, unreadable, or not a mapping of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(
            f"{p}: weights file not found; pass the path of a LOCAL torchvision resnet34 state dict "
            "(.pth/.pt saved with torch.save, or .safetensors), or '' for random initialisation; "
            "nothing is downloaded")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many kinds for corrupt files
        raise ModelError(f"{p}: cannot read weights ({exc.__class__.__name__}: {exc})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ModelError(f"{p}: not a state dict (a mapping of parameter names to tensors)")
    return dict(sd)


def load_backbone(model: nn.Module, sd: dict[str, Tensor], source: str, *, architecture: str = "resnet34") -> None:
    """Copy a torchvision ``architecture`` state dict (``fc.*`` ignored) into ``model.backbone``.

    ``conv1`` is adapted to ``model.in_channels`` (:func:`adapt_conv1_weight`); keys must
    match exactly, else :class:`ModelError` lists the missing and unexpected ones.
    """
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("fc.")}
    if "conv1.weight" in sd:
        sd["conv1.weight"] = adapt_conv1_weight(sd["conv1.weight"], model.in_channels)
    expected = set(model.backbone.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ModelError(f"{source}: not a torchvision {architecture} state dict; missing keys {_few(missing)}, "
                         f"unexpected keys {_few(unexpected)}; pass a {architecture} state dict")
    try:
        model.backbone.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: weights do not fit {architecture} ({exc}); pass a {architecture} state dict") from None


def _few(keys: list[str], n: int = 20) -> str:
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def build_model(*, in_channels: int, head: HeadSpec, pretrained: str | Path = "") -> MrdNet:
    """Build an :class:`MrdNet`, optionally starting the backbone from local ImageNet weights.

    Parameters
    ----------
    in_channels
        Image planes of the input.
    head
        The classifier head.
    pretrained
        ``""`` for random initialisation, or the path of a LOCAL torchvision resnet34
        state dict (``torch.save`` file read with ``weights_only=True``, or
        ``.safetensors``). Its ``fc`` weights are ignored; ``conv1`` is adapted to
        ``in_channels`` by :func:`adapt_conv1_weight`. Never downloads.

    Raises
    ------
    ModelError
        The weights file is missing, unreadable or not a resnet34 state dict.
    """
    model = MrdNet(in_channels=in_channels, head=head)
    if str(pretrained):
        load_backbone(model, load_torchvision_state_dict(pretrained), str(pretrained))
    return model
