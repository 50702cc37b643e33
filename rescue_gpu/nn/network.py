"""One network factory: a torchvision ResNet / ResNeXt backbone and a small fully connected head.

:class:`Network` is ``torchvision.models.<architecture>(weights=None)`` with ``conv1``
replaced to take ``in_channels`` image planes (same 7x7 kernel, stride 2, padding 3, no
bias) and ``fc`` replaced by :class:`~torch.nn.Identity`, plus a head laid out by a
:class:`HeadLayout`. Features and head are split the timm way: ``forward_features``
gives ``(N, F)`` globally average-pooled features (``F`` = 512 for resnet18/34, 2048 for
resnet50 / resnext50_32x4d) and ``forward_head`` gives ``(N,)`` logits for a one-output
network (the flow MRD model) or ``(N, K)`` for a ``K``-class one (a cell model).

The state-dict keys are ``backbone.*`` (torchvision's names) and ``head.<i>.*``; the
flow model (hidden layers, then ``Linear(., 1)``) and the cell model (``Dropout`` then
``Linear(F, K)``) keep the exact layouts of the former ``MrdNet`` and ``CellNet``, so
their saved weights load unchanged. Nothing is ever downloaded: pretrained weights come
from a local file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ModelError

__all__ = ["ARCHITECTURES", "FEATURE_WIDTH", "ACTIVATIONS", "HeadLayout", "Network", "build_network",
           "build_backbone", "build_head", "adapt_conv1_weight", "load_torchvision_state_dict", "load_backbone"]

FEATURE_WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnext50_32x4d": 2048}
ARCHITECTURES: tuple[str, ...] = tuple(FEATURE_WIDTH)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass(frozen=True, kw_only=True)
class HeadLayout:
    """The layers of a head on the pooled features.

    Attributes
    ----------
    outputs
        Logits per image: 1 (a binary call; :meth:`Network.forward_head` gives ``(N,)``)
        or ``K >= 2`` classes (``(N, K)``).
    hidden
        Widths of hidden ``Linear`` layers, each followed by ``activation`` and
        ``Dropout(dropout)``.
    activation
        ``"relu"``, ``"gelu"`` or ``"silu"``.
    dropout
        Dropout after each hidden layer.
    input_dropout
        A ``Dropout(input_dropout)`` before the first ``Linear`` (None: no such layer).
    """

    outputs: int = 1
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.0
    input_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.outputs < 1:
            raise ModelError(f"a head needs at least one output (got {self.outputs})")
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        drops = [self.dropout] + ([] if self.input_dropout is None else [self.input_dropout])
        if any(w < 1 for w in self.hidden) or not all(0.0 <= p < 1.0 for p in drops):
            raise ModelError(f"a head needs positive widths and dropout in [0, 1) (got {self.hidden}, {drops})")


def build_head(layout: HeadLayout, *, in_features: int) -> nn.Sequential:
    """The head of ``layout`` on ``in_features`` pooled features.

    Returns
    -------
    torch.nn.Sequential
        ``[Dropout(input_dropout)]``, then ``[Linear(in, h), activation, Dropout]`` per
        hidden width, then ``Linear(., outputs)``.
    """
    layers: list[nn.Module] = [] if layout.input_dropout is None else [nn.Dropout(layout.input_dropout)]
    width = in_features
    for h in layout.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[layout.activation](), nn.Dropout(layout.dropout)]
        width = h
    layers.append(nn.Linear(width, layout.outputs))
    return nn.Sequential(*layers)


def build_backbone(architecture: str, *, in_channels: int = 3) -> tuple[nn.Module, int]:
    """A randomly initialised torchvision backbone with ``fc`` removed.

    Parameters
    ----------
    architecture
        One of :data:`ARCHITECTURES`.
    in_channels
        Input planes of ``conv1`` (3 keeps torchvision's own ``conv1``).

    Returns
    -------
    tuple
        The module (``fc = Identity``) and its feature width.

    Raises
    ------
    ModelError
        Unknown architecture or ``in_channels < 1``.
    """
    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if in_channels < 1:
        raise ModelError(f"in_channels must be >= 1 (got {in_channels})")
    import torchvision.models as tvm

    module = getattr(tvm, architecture)(weights=None)
    module.fc = nn.Identity()
    if in_channels != 3:
        module.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return module, FEATURE_WIDTH[architecture]


class Network(nn.Module):
    """A torchvision backbone plus a head: ``(N, C, H, W)`` images to ``(N,)`` or ``(N, K)`` logits.

    Parameters
    ----------
    architecture
        ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnext50_32x4d"``.
    in_channels
        Image planes ``C`` of the input.
    head
        The head's layout (its ``outputs`` fixes the output shape).

    Raises
    ------
    ModelError
        Unknown architecture or ``in_channels < 1``.
    """

    def __init__(self, *, architecture: str, in_channels: int, head: HeadLayout) -> None:
        super().__init__()
        if in_channels < 1:
            raise ModelError(f"in_channels must be >= 1 (got {in_channels})")
        self.architecture, self.in_channels, self.layout = architecture, int(in_channels), head
        self.backbone, self.num_features = build_backbone(architecture)
        self.backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.head = build_head(head, in_features=self.num_features)

    @property
    def n_outputs(self) -> int:
        """Logits per image (1 for a binary network)."""
        return self.layout.outputs

    def forward_features(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images to ``(N, F)`` globally average-pooled features."""
        return self.backbone(x)

    def forward_head(self, f: Tensor) -> Tensor:
        """``(N, F)`` features to ``(N,)`` logits (one output) or ``(N, K)`` logits."""
        out = self.head(f)
        return out.squeeze(-1) if self.layout.outputs == 1 else out

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images to logits (before temperature scaling), see :meth:`forward_head`."""
        return self.forward_head(self.forward_features(x))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (as :meth:`forward`) and the ``(N, F)`` pooled features from one pass."""
        f = self.forward_features(x)
        return self.forward_head(f), f


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
            f"{p}: weights file not found; pass the path of a LOCAL torchvision state dict "
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


def load_backbone(model: Network, sd: dict[str, Tensor], source: str) -> None:
    """Copy a torchvision state dict of ``model.architecture`` (``fc.*`` ignored) into ``model.backbone``.

    ``conv1`` is adapted to ``model.in_channels`` (:func:`adapt_conv1_weight`); keys must
    match exactly, else :class:`ModelError` lists the missing and unexpected ones.
    """
    architecture = model.architecture
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


def build_network(*, architecture: str, in_channels: int, head: HeadLayout, pretrained: str | Path = "") -> Network:
    """Build a :class:`Network`, optionally starting the backbone from local ImageNet weights.

    Parameters
    ----------
    architecture, in_channels, head
        See :class:`Network`.
    pretrained
        ``""`` for random initialisation, or the path of a LOCAL torchvision state dict
        of ``architecture`` (``torch.save`` file read with ``weights_only=True``, or
        ``.safetensors``). Its ``fc`` weights are ignored; ``conv1`` is adapted to
        ``in_channels`` by :func:`adapt_conv1_weight`. Never downloads.

    Raises
    ------
    ModelError
        Bad architecture or sizes; the weights file is missing, unreadable or not a
        state dict of ``architecture`` (missing and unexpected keys are listed).
    """
    model = Network(architecture=architecture, in_channels=in_channels, head=head)
    if str(pretrained):
        path = Path(pretrained)
        if not path.is_file():
            raise ModelError(f"{path}: weights file not found; set model.pretrained to a LOCAL torchvision "
                             f"{architecture} state dict (.pth/.pt or .safetensors) or to '' for random "
                             "initialisation; nothing is downloaded")
        load_backbone(model, load_torchvision_state_dict(path), str(path))
    return model
