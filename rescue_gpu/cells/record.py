"""CellModelRecord: a cell classifier, a :class:`~rescue_gpu.nn.record.WeightsRecord` of format ``rescue-cell-model``.

Layout of ``MODEL_DIR`` (see :mod:`rescue_gpu.nn.record` for the sha256 over the tensors,
the checksum and the version-1 migration)::

    weights.safetensors   the network's state dict (``backbone.*``, ``head.1.*``)
    model.json            format "rescue-cell-model", architecture, dropout, classes, the
                          leukaemic ones, input plane names, image size, preprocessing,
                          temperature, validation rates of the grouped leukaemic call,
                          metrics, provenance, software versions, the weights' sha256
                          and the record's checksum

The checksum covers the weights' sha256 and every setting that changes a call or a
readout: architecture, dropout, classes, the leukaemic ones, input planes, image size,
preprocessing, temperature and the validation rates of the adjusted count. A model must
only score images prepared the way its training images were:
:meth:`CellModelRecord.check_pipeline` lists every difference from a pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ModelError
from ..nn.network import HeadLayout, Network, build_network
from ..nn.record import FORMAT_VERSION, WeightsRecord
from .spec import CellPipeline, CellPreprocessSpec

__all__ = ["CellModelRecord", "build_cell_model", "cell_head", "FORMAT", "FORMAT_VERSION"]

FORMAT = "rescue-cell-model"


def cell_head(n_classes: int, dropout: float = 0.0) -> HeadLayout:
    """The head of a cell classifier: ``Dropout(dropout) -> Linear(F, n_classes)``.

    Raises
    ------
    ModelError
        ``n_classes < 2`` or ``dropout`` outside ``[0, 1)``.
    """
    if n_classes < 2:
        raise ModelError(f"n_classes must be >= 2 (got {n_classes}); a classifier needs at least two classes")
    if not (0.0 <= dropout < 1.0):
        raise ModelError(f"dropout must be in [0, 1) (got {dropout})")
    return HeadLayout(outputs=int(n_classes), input_dropout=float(dropout))


def build_cell_model(*, architecture: str, in_channels: int, n_classes: int, dropout: float = 0.0,
                     pretrained: str | Path = "") -> Network:
    """A cell classifier network: ``architecture`` on ``in_channels`` planes, :func:`cell_head`, ``(N, K)`` logits.

    Parameters
    ----------
    architecture
        ``"resnet50"``, ``"resnext50_32x4d"``, ``"resnet34"`` or ``"resnet18"``.
    in_channels, n_classes, dropout
        Input planes, classes ``K`` (at least 2) and the dropout before the last layer.
    pretrained
        ``""`` or the path of a LOCAL torchvision state dict of ``architecture`` (see
        :func:`rescue_gpu.nn.network.build_network`). Never downloads.

    Raises
    ------
    ModelError
        Bad architecture or sizes; a missing, unreadable or unfitting weights file.
    """
    return build_network(architecture=architecture, in_channels=in_channels, head=cell_head(n_classes, dropout),
                         pretrained=pretrained)


@dataclass(kw_only=True)
class CellModelRecord(WeightsRecord):
    """A trained cell classifier plus everything needed to use it safely.

    Attributes
    ----------
    model
        The network (its weights are what :attr:`sha256` identifies).
    architecture
        The torchvision architecture of ``model``.
    classes
        Class names in the network's output order.
    leukaemic
        The leukaemic classes (a non-empty proper subset of ``classes``).
    channels
        Names of the network's input planes, in order.
    image_size
        ``H = W`` of the network input (equals ``preprocess.size``).
    preprocess
        How raw crops were made into network inputs for training.
    temperature
        Temperature scaling of the logits (``p = softmax(logits / temperature)``).
    rates
        ``tpr``, ``fpr``, ``n_pos``, ``n_neg`` of the grouped leukaemic call on the
        validation cells (``{}`` if unknown), for adjusted classify-and-count.
    metrics, provenance
        Validation / test metrics; pipeline, split sizes, epochs, date, device.
    """

    FORMAT: ClassVar[str] = FORMAT
    WHAT: ClassVar[str] = "cell model"
    MISSING_HINT: ClassVar[str] = "train one with 'rescue cells train'"
    FIX: ClassVar[str] = "restore the original model.json from a copy, or retrain the model ('rescue cells train')"

    architecture: str
    classes: tuple[str, ...]
    leukaemic: tuple[str, ...]
    channels: tuple[str, ...]
    image_size: int
    preprocess: CellPreprocessSpec
    rates: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes, self.leukaemic, self.channels = tuple(self.classes), tuple(self.leukaemic), tuple(self.channels)
        problems = _inconsistencies(self)
        if problems:
            raise ModelError("inconsistent cell model record: " + "; ".join(problems))

    @property
    def dropout(self) -> float:
        """Dropout before the network's last layer."""
        return float(self.model.layout.input_dropout or 0.0)

    def checksum_fields(self) -> dict[str, Any]:
        """Every setting besides the weights that changes a call or a readout (what :attr:`checksum` covers)."""
        return {"architecture": self.architecture, "dropout": self.dropout,
                "classes": list(self.classes), "leukaemic": list(self.leukaemic), "channels": list(self.channels),
                "image_size": int(self.image_size), "preprocess": dataclasses.asdict(self.preprocess),
                "temperature": float(self.temperature), "rates": self.rates}

    def stored_fields(self) -> dict[str, Any]:
        """:meth:`checksum_fields` and ``in_channels``."""
        return {**self.checksum_fields(), "in_channels": self.in_channels}

    def covers(self) -> str:
        """What the checksum protects, for messages."""
        return (f"its settings (temperature {self.temperature:g}, classes, leukaemic classes, input channels, "
                "image size, preprocessing, validation rates)")

    def class_names(self) -> tuple[str, ...]:
        """The class names, in output order."""
        return self.classes

    @property
    def in_channels(self) -> int:
        """Planes of the network input."""
        return len(self.channels)

    @property
    def n_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.classes)

    @property
    def leukaemic_index(self) -> tuple[int, ...]:
        """Positions of the leukaemic classes in :attr:`classes`."""
        return tuple(self.classes.index(c) for c in self.leukaemic)

    @classmethod
    def from_pipeline(cls, model: Network, pipeline: CellPipeline, *, channels: tuple[str, ...] | None = None,
                      temperature: float = 1.0, rates: dict | None = None, metrics: dict | None = None,
                      provenance: dict | None = None) -> CellModelRecord:
        """A record for ``model`` trained with ``pipeline`` (classes, channels and preprocessing taken from it)."""
        return cls(model=model, architecture=model.architecture, classes=pipeline.classes.names,
                   leukaemic=pipeline.classes.leukaemic, channels=tuple(channels or pipeline.input.network_channels),
                   image_size=pipeline.preprocess.size, preprocess=pipeline.preprocess, temperature=temperature,
                   rates=dict(rates or {}), metrics=dict(metrics or {}), provenance=dict(provenance or {}))

    @classmethod
    def from_meta(cls, meta: dict[str, Any], sd: dict[str, torch.Tensor], map_location: str) -> CellModelRecord:
        """The record of ``model.json``'s content ``meta`` and the verified weights ``sd``."""
        classes, channels = tuple(meta["classes"]), tuple(meta["channels"])
        model = build_cell_model(architecture=meta["architecture"], in_channels=len(channels),
                                 n_classes=len(classes), dropout=float(meta.get("dropout", 0.0)))
        model.load_state_dict(sd, strict=True)
        return cls(model=model.to(map_location).eval(), architecture=meta["architecture"], classes=classes,
                   leukaemic=tuple(meta["leukaemic"]), channels=channels, image_size=int(meta["image_size"]),
                   preprocess=CellPreprocessSpec(**meta["preprocess"]), temperature=float(meta["temperature"]),
                   rates=meta.get("rates", {}), metrics=meta.get("metrics", {}), provenance=meta.get("provenance", {}))

    def check_pipeline(self, pipeline: CellPipeline) -> None:
        """Raise :class:`ModelError` listing every way images prepared by ``pipeline`` differ from the training images.

        Compared: class names and order, the leukaemic set, the network's input planes
        (``pipeline.input.network_channels``), the image size (``preprocess.size``) and
        every other preprocessing setting.
        """
        problems = _pipeline_mismatches(self, pipeline)
        if problems:
            raise ModelError(f"the cell model does not fit pipeline {pipeline.name!r}: " + "; ".join(problems)
                             + ". Score with the pipeline the model was trained with, or retrain the model")


def _inconsistencies(rec: CellModelRecord) -> list[str]:
    out = []
    if getattr(rec.model, "n_outputs", rec.n_classes) != rec.n_classes:
        out.append(f"the network has {rec.model.n_outputs} outputs but there are {rec.n_classes} classes")
    if getattr(rec.model, "in_channels", rec.in_channels) != rec.in_channels:
        out.append(f"the network takes {rec.model.in_channels} planes but channels lists {rec.in_channels}")
    if getattr(rec.model, "architecture", rec.architecture) != rec.architecture:
        out.append(f"the network is a {rec.model.architecture}, the record says {rec.architecture}")
    if not rec.leukaemic or len(rec.leukaemic) >= rec.n_classes or not set(rec.leukaemic) <= set(rec.classes):
        out.append(f"leukaemic {list(rec.leukaemic)} must be a non-empty proper subset of classes {list(rec.classes)}")
    if rec.image_size != rec.preprocess.size:
        out.append(f"image_size {rec.image_size} differs from preprocess.size {rec.preprocess.size}")
    if not rec.temperature > 0:
        out.append(f"temperature must be > 0 (got {rec.temperature})")
    return out


def _pipeline_mismatches(rec: CellModelRecord, pipe: CellPipeline) -> list[str]:
    out: list[str] = []
    if rec.classes != pipe.classes.names:
        out.append(f"classes {list(rec.classes)} (model) vs {list(pipe.classes.names)} (pipeline)")
    if set(rec.leukaemic) != set(pipe.classes.leukaemic):
        out.append(f"leukaemic classes {sorted(rec.leukaemic)} (model) vs {sorted(pipe.classes.leukaemic)} (pipeline)")
    if rec.channels != pipe.input.network_channels:
        out.append(f"input channels {list(rec.channels)} (model) vs {list(pipe.input.network_channels)} (pipeline)")
    if rec.image_size != pipe.preprocess.size:
        out.append(f"image size {rec.image_size} (model) vs preprocess.size {pipe.preprocess.size} (pipeline)")
    for f in dataclasses.fields(CellPreprocessSpec):
        mine, theirs = getattr(rec.preprocess, f.name), getattr(pipe.preprocess, f.name)
        if f.name != "size" and mine != theirs:
            out.append(f"preprocess.{f.name} {mine!r} (model) vs {theirs!r} (pipeline)")
    return out
