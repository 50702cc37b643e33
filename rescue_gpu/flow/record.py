"""ModelRecord: the flow MRD model, a :class:`~rescue_gpu.nn.record.WeightsRecord` of format ``rescue-model``.

Layout of ``MODEL_DIR`` (see :mod:`rescue_gpu.nn.record` for the checksum scheme and the
version-1 migration)::

    weights.safetensors   the network's state dict: a ResNet-34 backbone (``backbone.*``)
                          and the head of a :class:`~rescue_gpu.config.HeadSpec` (``head.*``);
                          for an ensemble (what ``rescue train`` writes) every cross-validation
                          fold model's, under ``members.<k>.backbone.*`` / ``members.<k>.head.*``
    model.json            format, architecture, head spec, in_channels, image_size, raster
                          settings, reference fingerprint, threshold, temperature, metrics,
                          provenance, software versions, the weights' sha256 and the checksum

An ensemble record (``ensemble_members`` in ``model.json``) scores with the mean of its
members' logits (:class:`~rescue_gpu.nn.ensemble.EnsembleNetwork`); ``calibration_route``
says which predictions chose its temperature and threshold. Records without these keys
(every model directory written before them, and imported ones) hold one network.

The checksum covers the weights' sha256 (every member's), architecture, head, in_channels,
image_size, raster settings, reference fingerprint, threshold and temperature, and for an
ensemble its member count and calibration route; a cohort run resumes
only samples scored with an equal checksum. ``rescue model upgrade MODEL_DIR`` writes
the checksum into a format version 1 directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..artifacts import raster_from_dict
from ..config import HeadSpec, RasterSpec
from ..errors import ModelError
from ..nn.ensemble import EnsembleNetwork
from ..nn.network import HeadLayout, Network, build_network, load_torchvision_state_dict
from ..nn.record import FORMAT_VERSION, WeightsRecord

__all__ = ["ModelRecord", "build_model", "build_ensemble", "head_layout", "import_state_dict", "expected_channels",
           "FORMAT", "FORMAT_VERSION", "ARCHITECTURE", "ENSEMBLE_ROUTE"]

FORMAT = "rescue-model"
ARCHITECTURE = "resnet34"
_TV_TOP = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
ENSEMBLE_ROUTE = "cv-fold-ensemble"  # mean logits of the fold models; T and threshold fitted on their OOF logits


def head_layout(head: HeadSpec) -> HeadLayout:
    """The network head of a flow :class:`~rescue_gpu.config.HeadSpec`: one MRD logit after its hidden layers."""
    return HeadLayout(outputs=1, hidden=tuple(head.hidden), activation=head.activation, dropout=head.dropout)


def build_model(*, in_channels: int, head: HeadSpec, pretrained: str | Path = "") -> Network:
    """The flow MRD network: ResNet-34 on ``in_channels`` planes, ``head``, one logit per image.

    Parameters
    ----------
    in_channels
        Image planes of the input.
    head
        The classifier head.
    pretrained
        ``""`` or the path of a LOCAL torchvision resnet34 state dict (see
        :func:`rescue_gpu.nn.network.build_network`). Never downloads.

    Raises
    ------
    ModelError
        ``in_channels < 1``; the weights file is missing, unreadable or not a resnet34 state dict.
    """
    return build_network(architecture=ARCHITECTURE, in_channels=in_channels, head=head_layout(head),
                         pretrained=pretrained)


def build_ensemble(*, in_channels: int, head: HeadSpec, members: int) -> EnsembleNetwork:
    """``members`` freshly initialised flow networks (:func:`build_model`) as one mean-logit ensemble."""
    if members < 1:
        raise ModelError(f"an ensemble needs at least one member (got {members})")
    return EnsembleNetwork([build_model(in_channels=in_channels, head=head) for _ in range(members)])


def expected_channels(raster: RasterSpec, markers: tuple[str, ...] | list[str]) -> int:
    """Image planes a raster makes: one per ``density``/``scatter``, one per marker for ``markers``."""
    return sum(len(markers) if c == "markers" else 1 for c in raster.channels)


def _head_from(d: dict[str, Any]) -> HeadSpec:
    return HeadSpec(**{**d, "hidden": tuple(d["hidden"])})


@dataclass(kw_only=True)
class ModelRecord(WeightsRecord):
    """A trained flow MRD network plus everything needed to use it safely.

    Attributes
    ----------
    model
        The network (its weights are what :attr:`sha256` identifies).
    in_channels, image_size
        Input planes and ``H = W`` the network was trained on.
    head
        The classifier head spec.
    raster
        Raster settings of the training images; must equal the reference's.
    reference_fingerprint
        :attr:`Reference.fingerprint` of the reference the images were projected into.
    threshold
        Probability at or above which a sample is called MRD-positive.
    temperature
        Temperature scaling of the logits (``p = sigmoid(logit / temperature)``).
    metrics, provenance
        Training / cross-validation metrics; training manifest, sample counts, dates.
    calibration_route
        Which predictions chose ``temperature`` and ``threshold``: :data:`ENSEMBLE_ROUTE`
        for a trained ensemble (its fold models' out-of-fold logits), ``""`` for a
        single network (imported, or trained before ensembles).
    """

    FORMAT: ClassVar[str] = FORMAT
    WHAT: ClassVar[str] = "model"
    MISSING_HINT: ClassVar[str] = "train one with 'rescue train' or use 'rescue model import'"
    FIX: ClassVar[str] = ("restore the original model.json from a copy, or retrain the model ('rescue train') or "
                          "re-import its weights ('rescue model import --threshold ...')")

    in_channels: int
    image_size: int
    head: HeadSpec
    raster: RasterSpec
    reference_fingerprint: str
    threshold: float = 0.5
    calibration_route: str = ""

    @property
    def n_members(self) -> int:
        """Networks whose mean logit is scored (1 for a single network)."""
        return int(getattr(self.model, "n_members", 1))

    def __post_init__(self) -> None:
        if not (0.0 <= self.threshold <= 1.0):
            raise ModelError(f"threshold must be within [0, 1] (got {self.threshold})")
        if not self.temperature > 0:
            raise ModelError(f"temperature must be > 0 (got {self.temperature})")
        if getattr(self.model, "in_channels", self.in_channels) != self.in_channels:
            raise ModelError(f"the network takes {self.model.in_channels} channels, the record says {self.in_channels}")

    def checksum_fields(self) -> dict[str, Any]:
        """Every setting besides the weights that changes a call (what :attr:`checksum` covers)."""
        return {"architecture": ARCHITECTURE, "head": dataclasses.asdict(self.head),
                "in_channels": int(self.in_channels), "image_size": int(self.image_size),
                "raster": dataclasses.asdict(self.raster), "reference_fingerprint": self.reference_fingerprint,
                "threshold": float(self.threshold), "temperature": float(self.temperature),
                **self._ensemble_fields()}

    def _ensemble_fields(self) -> dict[str, Any]:
        """``ensemble_members`` and ``calibration_route`` where set (absent for a single legacy network)."""
        out: dict[str, Any] = {}
        if isinstance(self.model, EnsembleNetwork):
            out["ensemble_members"] = self.n_members
        if self.calibration_route:
            out["calibration_route"] = self.calibration_route
        return out

    def covers(self) -> str:
        """What the checksum protects, for messages."""
        return (f"its settings (threshold {self.threshold:g}, temperature {self.temperature:g}, head, raster, "
                "reference fingerprint, input channels/size, ensemble members and calibration route)")

    @classmethod
    def check_meta(cls, path: Path, meta: dict[str, Any]) -> None:
        """Refuse an architecture other than ResNet-34 (the only one of this format)."""
        if meta.get("architecture", ARCHITECTURE) != ARCHITECTURE:
            raise ModelError(f"{path}: architecture {meta['architecture']!r} is not supported (only {ARCHITECTURE})")

    @classmethod
    def from_meta(cls, meta: dict[str, Any], sd: dict[str, torch.Tensor], map_location: str) -> ModelRecord:
        """The record of ``model.json``'s content ``meta`` and the verified weights ``sd``."""
        head, raster = _head_from(meta["head"]), raster_from_dict(meta["raster"])
        n_in = int(meta["in_channels"])
        model: Network | EnsembleNetwork
        if "ensemble_members" in meta:
            model = build_ensemble(in_channels=n_in, head=head, members=int(meta["ensemble_members"]))
        else:
            model = build_model(in_channels=n_in, head=head)
        model.load_state_dict(sd, strict=True)
        return cls(model=model.to(map_location).eval(), in_channels=n_in,
                   image_size=int(meta["image_size"]), head=head, raster=raster,
                   reference_fingerprint=meta["reference_fingerprint"], threshold=float(meta["threshold"]),
                   temperature=float(meta["temperature"]), metrics=meta.get("metrics", {}),
                   provenance=meta.get("provenance", {}), calibration_route=str(meta.get("calibration_route", "")))

    def check_compatible(self, reference: Any) -> None:
        """Raise :class:`ModelError` listing every way this model does not fit ``reference``.

        Compared: raster channels, size, point radius and padding against
        ``reference.raster``; ``image_size`` against the raster size; ``in_channels``
        against the planes the reference's raster makes; the reference fingerprint.
        """
        problems = _mismatches(self, reference)
        if problems:
            raise ModelError("the model does not fit this reference: " + "; ".join(problems)
                             + ". Use the reference the model was trained with, or retrain/import the model for this one")

    def calls(self, p: np.ndarray) -> np.ndarray:
        """``"positive"`` where ``p >= threshold``, else ``"negative"``."""
        return np.where(np.asarray(p) >= self.threshold, "positive", "negative")


def _mismatches(rec: ModelRecord, reference: Any) -> list[str]:
    out: list[str] = []
    ras = reference.raster
    for name in ("channels", "size", "point_radius", "padding"):
        mine, theirs = getattr(rec.raster, name), getattr(ras, name)
        if mine != theirs:
            out.append(f"raster {name} {_fmt(mine)} (model) vs {_fmt(theirs)} (reference)")
    if rec.image_size != ras.size:
        out.append(f"image size {rec.image_size} (model) vs raster size {ras.size} (reference)")
    n = expected_channels(ras, reference.markers)
    if rec.in_channels != n:
        out.append(f"channel count {rec.in_channels} (model) vs {n} made by the reference's raster {list(ras.channels)}")
    if rec.reference_fingerprint != reference.fingerprint:
        out.append(f"reference fingerprint {rec.reference_fingerprint[:12]}... (model) vs {reference.fingerprint[:12]}... (reference)")
    return out


def _fmt(v: Any) -> str:
    return str(list(v)) if isinstance(v, tuple) else str(v)


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` (DataParallel); put bare torchvision backbone names under ``backbone.``."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("module.")
        out[f"backbone.{k}" if k.startswith(_TV_TOP) else k] = v
    return out


def _load_reference(reference: Any) -> Any:
    if isinstance(reference, (str, Path)):
        from ..reference.store import Reference

        return Reference.load(reference)
    return reference


def import_state_dict(path: str | Path, *, head: HeadSpec, reference: Any, out: str | Path,
                      threshold: float = 0.5) -> ModelRecord:
    """Wrap an externally trained flow network state dict as a model directory.

    Parameters
    ----------
    path
        ``.safetensors`` or ``torch.save`` file (read with ``weights_only=True``) holding
        the flow network's keys: ``backbone.*`` (bare torchvision names such as ``conv1.weight``,
        ``layer1.0.bn1.running_mean`` are accepted and put under ``backbone.``) and
        ``head.<i>.weight/bias`` laid out as :func:`~rescue_gpu.nn.network.build_head`
        makes them. Keys must match exactly (a ``module.`` prefix is dropped).
    head
        The head the weights were trained with.
    reference
        A :class:`~rescue_gpu.reference.store.Reference` or its directory; gives the
        image size, raster settings and fingerprint.
    out
        Model directory to write (must not exist).
    threshold
        Decision threshold on the probability.

    Raises
    ------
    ModelError
        Missing or unexpected keys (all listed), shapes that do not fit, or a channel
        count that does not fit the reference.
    """
    sd = _normalise_keys(load_torchvision_state_dict(path))
    if "backbone.conv1.weight" not in sd:
        raise ModelError(f"{path}: no conv1.weight / backbone.conv1.weight; cannot tell the input channels")
    in_channels = int(sd["backbone.conv1.weight"].shape[1])
    model = build_model(in_channels=in_channels, head=head)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ModelError(f"{path}: state dict does not fit the flow network with head {head}: missing keys {missing}; "
                         f"unexpected keys {unexpected}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: tensor shapes do not fit the flow network with head {head} ({exc})") from None
    ref = _load_reference(reference)
    rec = ModelRecord(model=model.eval(), in_channels=in_channels, image_size=ref.raster.size, head=head,
                      raster=ref.raster, reference_fingerprint=ref.fingerprint, threshold=threshold,
                      provenance={"imported_from": str(Path(path).resolve()),
                                  "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    rec.check_compatible(ref)
    rec.save(out)
    return rec
