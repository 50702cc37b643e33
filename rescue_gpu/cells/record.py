"""CellModelRecord: a trained CellNet as a self-describing, checksummed directory.

Layout of ``MODEL_DIR``::

    weights.safetensors   the CellNet state dict (no pickle)
    model.json            format "rescue-cell-model", architecture, dropout, classes, the
                          leukaemic ones, input plane names, image size, preprocessing,
                          temperature, validation rates of the grouped leukaemic call,
                          metrics, provenance, software versions, the weights' sha256
                          and the record's checksum

The sha256 is :func:`~rescue_gpu.model.record.state_dict_sha256` (over the tensors, not
the file bytes). The ``checksum`` (format version 2) covers the weights' sha256 and
every setting that changes a call or a readout: architecture, dropout, classes, the
leukaemic ones, input planes, image size, preprocessing, temperature and the validation
rates of the adjusted count. :meth:`CellModelRecord.load` recomputes both and refuses a
difference; format version 1 records load with a
:class:`~rescue_gpu.records.RecordFormatWarning` (the same migration as the MRD model,
see :mod:`rescue_gpu.model.record`; ``rescue model upgrade`` protects them). A model must
only score images prepared the way its training images were:
:meth:`CellModelRecord.check_pipeline` lists every difference from a pipeline.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ModelError
from ..model.record import ModelRecord, verified_state_dict, write_weights_dir
from ..records import (RecordFormatWarning, check_settings_checksum, read_record_json, settings_checksum,
                       software_versions, update_record_json)
from .network import CellNet
from .spec import CellPipeline, CellPreprocessSpec

__all__ = ["CellModelRecord", "FORMAT", "FORMAT_VERSION"]

FORMAT = "rescue-cell-model"
FORMAT_VERSION = 2
CHECKSUM_SINCE = 2  # first format version whose model.json has a checksum
_WEIGHTS = "weights.safetensors"


@dataclass
class CellModelRecord:
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

    model: CellNet
    architecture: str
    classes: tuple[str, ...]
    leukaemic: tuple[str, ...]
    channels: tuple[str, ...]
    image_size: int
    preprocess: CellPreprocessSpec
    temperature: float = 1.0
    rates: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes, self.leukaemic, self.channels = tuple(self.classes), tuple(self.leukaemic), tuple(self.channels)
        problems = _inconsistencies(self)
        if problems:
            raise ModelError("inconsistent cell model record: " + "; ".join(problems))

    # the same cached weights digest as ModelRecord (recomputed only when a tensor changes)
    sha256 = ModelRecord.sha256

    def checksum_fields(self) -> dict[str, Any]:
        """Every setting besides the weights that changes a call or a readout (what :attr:`checksum` covers)."""
        return {"architecture": self.architecture, "dropout": float(self.model.dropout),
                "classes": list(self.classes), "leukaemic": list(self.leukaemic), "channels": list(self.channels),
                "image_size": int(self.image_size), "preprocess": dataclasses.asdict(self.preprocess),
                "temperature": float(self.temperature), "rates": self.rates}

    @property
    def checksum(self) -> str:
        """sha256 of the weights and :meth:`checksum_fields`."""
        return settings_checksum(self.sha256, self.checksum_fields())

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
    def from_pipeline(cls, model: CellNet, pipeline: CellPipeline, *, channels: tuple[str, ...] | None = None,
                      temperature: float = 1.0, rates: dict | None = None, metrics: dict | None = None,
                      provenance: dict | None = None) -> CellModelRecord:
        """A record for ``model`` trained with ``pipeline`` (classes, channels and preprocessing taken from it)."""
        return cls(model=model, architecture=model.architecture, classes=pipeline.classes.names,
                   leukaemic=pipeline.classes.leukaemic, channels=tuple(channels or pipeline.input.network_channels),
                   image_size=pipeline.preprocess.size, preprocess=pipeline.preprocess, temperature=temperature,
                   rates=dict(rates or {}), metrics=dict(metrics or {}), provenance=dict(provenance or {}))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``softmax(logits / temperature)``, float64 ``(N, K)``.

        Raises
        ------
        ModelError
            ``logits`` is not ``(N, K)`` with ``K`` = number of classes.
        """
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != self.n_classes:
            raise ModelError(f"logits must be (N, {self.n_classes}) for classes {list(self.classes)}, "
                             f"got shape {z.shape}")
        z = z / float(self.temperature)
        z = z - z.max(axis=1, keepdims=True) if z.size else z
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def metadata(self) -> dict[str, Any]:
        """The ``model.json`` record."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "architecture": self.architecture,
            "dropout": float(self.model.dropout), "classes": list(self.classes), "leukaemic": list(self.leukaemic),
            "channels": list(self.channels), "in_channels": self.in_channels, "image_size": int(self.image_size),
            "preprocess": dataclasses.asdict(self.preprocess), "temperature": float(self.temperature),
            "rates": self.rates, "metrics": self.metrics, "provenance": self.provenance,
            "software": software_versions(("rescue_gpu", "torch", "torchvision", "numpy", "safetensors")),
            "weights": _WEIGHTS, "sha256": self.sha256, "checksum": self.checksum,
        }

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``weights.safetensors`` and ``model.json`` into ``directory``.

        Raises
        ------
        ModelError
            ``directory`` exists and ``overwrite`` is false.
        """
        return write_weights_dir(directory, self.model, self.metadata(), fmt=FORMAT, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | Path, *, map_location: str = "cpu") -> CellModelRecord:
        """Read a cell model directory, verify the weights' sha256 and return the record (model in eval mode).

        Raises
        ------
        ModelError
            Not a cell model directory, missing or unreadable files, another format or a
            newer format version, weights whose sha256 differs from ``model.json``
            (altered or corrupt), ``model.json`` and weights that do not fit together, or
            settings that do not match the record's checksum (``model.json`` edited).

        Warns
        -----
        RecordFormatWarning
            A format version 1 record (no checksum): loaded, its settings unverified.
        """
        root = Path(directory)
        meta = read_record_json(root / "model.json", fmt=FORMAT, what="cell model", version=FORMAT_VERSION,
                                error=ModelError, missing_hint="train one with 'rescue cells train'")
        sd = verified_state_dict(root, meta)
        try:
            rec = _from_meta(cls, meta, sd, map_location)
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError, ModelError) as exc:
            raise ModelError(f"{root}: model.json and weights do not fit together "
                             f"({exc.__class__.__name__}: {exc})") from None
        check_settings_checksum(
            root / "model.json", meta, rec.checksum, since=CHECKSUM_SINCE, error=ModelError,
            covers=(f"its settings (temperature {rec.temperature:g}, classes, leukaemic classes, input channels, "
                    "image size, preprocessing, validation rates)"),
            fix="restore the original model.json from a copy, or retrain the model ('rescue cells train')",
            upgrade=f"run 'rescue model upgrade {root}' to protect them (or retrain)")
        return rec

    @classmethod
    def upgrade(cls, directory: str | Path) -> CellModelRecord:
        """Write the current format version and checksum into an older cell model's ``model.json`` (see :meth:`load`).

        Raises
        ------
        ModelError
            As :meth:`load`, or ``model.json`` cannot be rewritten.
        """
        root = Path(directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordFormatWarning)
            rec = cls.load(root)
        update_record_json(root / "model.json", {"format_version": FORMAT_VERSION, "checksum": rec.checksum},
                           error=ModelError)
        return rec

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


def _from_meta(cls: type[CellModelRecord], meta: dict[str, Any], sd: dict[str, torch.Tensor],
               map_location: str) -> CellModelRecord:
    classes, channels = tuple(meta["classes"]), tuple(meta["channels"])
    model = CellNet(architecture=meta["architecture"], in_channels=len(channels), n_classes=len(classes),
                    dropout=float(meta.get("dropout", 0.0)))
    model.load_state_dict(sd, strict=True)
    return cls(model=model.to(map_location).eval(), architecture=meta["architecture"], classes=classes,
               leukaemic=tuple(meta["leukaemic"]), channels=channels, image_size=int(meta["image_size"]),
               preprocess=CellPreprocessSpec(**meta["preprocess"]), temperature=float(meta["temperature"]),
               rates=meta.get("rates", {}), metrics=meta.get("metrics", {}), provenance=meta.get("provenance", {}))


def _inconsistencies(rec: CellModelRecord) -> list[str]:
    out = []
    if getattr(rec.model, "n_classes", rec.n_classes) != rec.n_classes:
        out.append(f"the network has {rec.model.n_classes} outputs but there are {rec.n_classes} classes")
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
