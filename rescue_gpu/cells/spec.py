"""Typed, validated settings of a single-cell image assay (``pipelines/<assay>.toml`` with ``kind = "cells"``).

A cells pipeline file names the classes (and which of them are leukaemic), how images
are read (layout, channel names, the channels the network sees), how a crop becomes a
network input, the network and its training, and the per-sample readout (cutoff on the
leukaemic percentage, bootstrap). It is validated once by :func:`load_cell_pipeline`
with the same rules as the flow pipelines: unknown keys, wrong types and bad values
raise :class:`~rescue_gpu.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import from_mapping, pipeline_path, read_toml
from ..errors import ConfigError

__all__ = [
    "CellClassesSpec", "CellInputSpec", "CellPreprocessSpec", "CellModelSpec", "CellTrainSpec",
    "CellReadoutSpec", "CellPipeline", "load_cell_pipeline", "ARCHITECTURES",
]

ARCHITECTURES = ("resnet50", "resnext50_32x4d", "resnet34", "resnet18")


@dataclass(frozen=True)
class CellClassesSpec:
    """The cell classes, in the network's output order, and the leukaemic ones among them.

    ``leukaemic`` defines the grouped binary (e.g. blast vs non-blast) used for the
    per-sample leukaemic percentage; every name in it must be in ``names``.
    """

    names: tuple[str, ...] = ("leukaemic", "normal")
    leukaemic: tuple[str, ...] = ("leukaemic",)

    def __post_init__(self) -> None:
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            raise ConfigError(f"classes.names needs at least two distinct names (got {list(self.names)})")
        unknown = [c for c in self.leukaemic if c not in self.names]
        if not self.leukaemic or unknown or len(self.leukaemic) == len(self.names):
            raise ConfigError(f"classes.leukaemic must be a non-empty proper subset of classes.names "
                              f"(got {list(self.leukaemic)}; unknown: {unknown})")

    def leukaemic_index(self) -> tuple[int, ...]:
        """Positions of the leukaemic classes in :attr:`names`."""
        return tuple(self.names.index(c) for c in self.leukaemic)


@dataclass(frozen=True)
class CellInputSpec:
    """How cell images are found and which planes the network sees.

    ``layout``: ``"auto"`` (decided per input), ``"tree"`` (``class/patient/image`` for
    training, a folder of images per sample for scoring), ``"channel-tiffs"`` (one TIFF
    per channel per cell, ``<cell>_Ch1.tif``, as exported by imaging-flow software) or
    ``"numpy"`` (``.npy``/``.npz`` stacks). ``channels`` names the planes in file order
    (``["Ch1", "Ch6"]``, ``["R", "G", "B"]``); ``use_channels`` selects the network's
    input planes from them, in this order (empty: all).
    """

    layout: Literal["auto", "tree", "channel-tiffs", "numpy"] = "auto"
    channels: tuple[str, ...] = ("R", "G", "B")
    use_channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.channels or len(set(self.channels)) != len(self.channels):
            raise ConfigError(f"input.channels needs distinct names (got {list(self.channels)})")
        unknown = [c for c in self.use_channels if c not in self.channels]
        if unknown:
            raise ConfigError(f"input.use_channels {unknown} are not among input.channels {list(self.channels)}")

    @property
    def network_channels(self) -> tuple[str, ...]:
        """The planes the network sees, in order."""
        return self.use_channels or self.channels


@dataclass(frozen=True)
class CellPreprocessSpec:
    """How a raw crop becomes a ``(C, size, size)`` float32 network input.

    With ``resize > 0`` a crop is first resampled (bilinear, aspect kept) so that its
    longer side is ``resize`` pixels (smear photographs of 400 px to 224 px, say).
    Crops larger than ``size`` are centre-cropped; smaller ones are padded with
    ``pad``: ``"noise"`` (Gaussian noise with the mean and spread of the crop's border,
    i.e. its background), ``"edge"`` or ``"constant"`` (zeros). Each plane is then
    stretched so its ``low_percentile`` maps to 0 and ``high_percentile`` to 1 (clipped);
    ``stretch = "none"`` only scales integer images by their dtype's maximum.
    """

    size: int = 48
    resize: int = 0
    pad: Literal["noise", "edge", "constant"] = "noise"
    stretch: Literal["percentile", "none"] = "percentile"
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    def __post_init__(self) -> None:
        if self.size < 16 or (self.resize and self.resize < 16):
            raise ConfigError(f"preprocess.size must be >= 16 and resize 0 or >= 16 (got {self.size}, {self.resize})")
        if not (0.0 <= self.low_percentile < self.high_percentile <= 100.0):
            raise ConfigError("preprocess needs 0 <= low_percentile < high_percentile <= 100 "
                              f"(got {self.low_percentile}, {self.high_percentile})")


@dataclass(frozen=True)
class CellTrainSpec:
    """Training: patient-level split, class balancing, augmentation, optimiser, early stopping.

    Patients (never single cells) are split into train / validation / test with the
    given fractions. ``balance``: ``"sampler"`` (inverse-frequency sampling),
    ``"loss"`` (inverse-frequency class weights) or ``"none"``. Augmentation draws
    flips, 90-degree rotations and shifts of up to ``max_shift`` pixels.
    ``recompute_bn``: after each epoch the BatchNorm running statistics are set from
    that epoch's training images (:func:`rescue_gpu.nn.train.recompute_bn_stats`).
    """

    val_fraction: float = 0.2
    test_fraction: float = 0.2
    max_epochs: int = 30
    patience: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    balance: Literal["sampler", "loss", "none"] = "sampler"
    augment: bool = True
    max_shift: int = 4
    recompute_bn: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0.0 < self.val_fraction < 1.0 and 0.0 <= self.test_fraction < 1.0
                and self.val_fraction + self.test_fraction < 1.0):
            raise ConfigError("train needs 0 < val_fraction, 0 <= test_fraction, val_fraction + test_fraction < 1 "
                              f"(got {self.val_fraction}, {self.test_fraction})")
        if self.max_epochs < 1 or self.patience < 1 or self.batch_size < 2 or self.learning_rate <= 0:
            raise ConfigError("train needs max_epochs >= 1, patience >= 1, batch_size >= 2, learning_rate > 0")
        if self.max_shift < 0:
            raise ConfigError(f"train.max_shift must be >= 0 (got {self.max_shift})")


@dataclass(frozen=True)
class CellModelSpec:
    """The network: a torchvision ResNet/ResNeXt with ``conv1`` for any channel count and one logit per class.

    ``pretrained`` is the path of a LOCAL torchvision state dict of the same
    architecture (``""``: random initialisation); nothing is downloaded.
    """

    architecture: Literal["resnet50", "resnext50_32x4d", "resnet34", "resnet18"] = "resnet50"
    pretrained: str = ""
    dropout: float = 0.0
    train: CellTrainSpec = CellTrainSpec()

    def __post_init__(self) -> None:
        if not (0.0 <= self.dropout < 1.0):
            raise ConfigError(f"model.dropout must be in [0, 1) (got {self.dropout})")


@dataclass(frozen=True)
class CellReadoutSpec:
    """The per-sample readout.

    ``cutoff``: leukaemic percentage (0-100) at or above which a sample is called
    positive (25 for slow early responders in Doan et al. 2020). ``adjust``: apply the
    adjusted classify-and-count correction ``(q - FPR) / (TPR - FPR)`` (clipped to
    [0, 1]) with the model's TPR and FPR from its validation patients. ``n_boot``
    bootstrap replicates over cells give a ``level`` interval.
    """

    cutoff: float = 25.0
    adjust: bool = True
    n_boot: int = 1000
    level: float = 0.95
    gallery: int = 24

    def __post_init__(self) -> None:
        if not (0.0 <= self.cutoff <= 100.0):
            raise ConfigError(f"readout.cutoff is a percentage in [0, 100] (got {self.cutoff})")
        if self.n_boot < 0 or not (0.5 <= self.level < 1.0) or self.gallery < 0:
            raise ConfigError("readout needs n_boot >= 0, 0.5 <= level < 1 and gallery >= 0")


@dataclass(frozen=True)
class CellPipeline:
    """One single-cell image assay: classes, input, preprocessing, model and readout."""

    name: str = "unnamed"
    description: str = ""
    kind: Literal["cells"] = "cells"
    classes: CellClassesSpec = CellClassesSpec()
    input: CellInputSpec = CellInputSpec()
    preprocess: CellPreprocessSpec = CellPreprocessSpec()
    model: CellModelSpec = CellModelSpec()
    readout: CellReadoutSpec = CellReadoutSpec()
    source: str | None = None

    @property
    def in_channels(self) -> int:
        """Planes of the network input."""
        return len(self.input.network_channels)


def load_cell_pipeline(name_or_path: str | Path) -> CellPipeline:
    """Load a cells pipeline by path, or by name from ``pipelines/`` (e.g. ``"ifc-labelfree"``).

    Raises
    ------
    ConfigError
        Missing file, invalid TOML, a flow pipeline (no ``kind = "cells"``), unknown keys,
        wrong types or bad values (the message names the key and the file).
    """
    path = pipeline_path(name_or_path)
    data = read_toml(path)
    if data.get("kind") != "cells":
        raise ConfigError(f"{path}: not a single-cell image pipeline (it needs kind = \"cells\"); "
                          "flow-cytometry pipelines are used by 'rescue score', not 'rescue cells'")
    pipe = from_mapping(CellPipeline, data, file=str(path))
    return dataclasses.replace(pipe, source=str(path))
