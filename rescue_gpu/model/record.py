"""ModelRecord: a trained MrdNet as a self-describing, checksummed directory.

Layout of ``MODEL_DIR``::

    weights.safetensors   the MrdNet state dict (no pickle); a ``weights.pt`` written by
                          ``torch.save`` is also read, with ``torch.load(weights_only=True)``
    model.json            format, architecture, head spec, in_channels, image_size, raster
                          settings, reference fingerprint, threshold, temperature, metrics,
                          provenance, software versions, the sha256 of the weights and the
                          record's checksum

The weights' sha256 is taken over the tensors (name, dtype, shape, bytes, in name
order), not over the file bytes, so it is the same for ``.safetensors`` and ``.pt``
files and for a model in memory. The record's ``checksum`` (format version 2) covers
everything that changes a call: the weights' sha256, architecture, head, in_channels,
image_size, raster settings, reference fingerprint, threshold and temperature (not
metrics or provenance). :meth:`ModelRecord.load` recomputes both and refuses a
difference; a cohort run resumes only samples scored with an equal checksum.

Format version 1 (no checksum) still loads, with a
:class:`~rescue_gpu.records.RecordFormatWarning`, the checksum computed at load:
refusing it would force every lab to retrain, and its weights are still verified.
``rescue model upgrade MODEL_DIR`` (:meth:`ModelRecord.upgrade`) writes the checksum
into it once its threshold and temperature have been checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import HeadSpec, RasterSpec
from ..errors import ModelError
from ..records import (RecordFormatWarning, check_settings_checksum, new_record_dir, raster_from_dict,
                       read_record_json, settings_checksum, software_versions, update_record_json)
from .network import MrdNet, load_torchvision_state_dict

__all__ = ["ModelRecord", "import_state_dict", "state_dict_sha256", "write_weights_dir", "verified_state_dict",
           "expected_channels", "FORMAT", "FORMAT_VERSION"]

FORMAT = "rescue-model"
FORMAT_VERSION = 2
CHECKSUM_SINCE = 2  # first format version whose model.json has a checksum
ARCHITECTURE = "resnet34"
_TV_TOP = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's tensors: names, dtypes, shapes and C-order bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def expected_channels(raster: RasterSpec, markers: tuple[str, ...] | list[str]) -> int:
    """Image planes a raster makes: one per ``density``/``scatter``, one per marker for ``markers``."""
    return sum(len(markers) if c == "markers" else 1 for c in raster.channels)


def _head_from(d: dict[str, Any]) -> HeadSpec:
    return HeadSpec(**{**d, "hidden": tuple(d["hidden"])})


@dataclass
class ModelRecord:
    """A trained network plus everything needed to use it safely.

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
    """

    model: MrdNet
    in_channels: int
    image_size: int
    head: HeadSpec
    raster: RasterSpec
    reference_fingerprint: str
    threshold: float = 0.5
    temperature: float = 1.0
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0.0 <= self.threshold <= 1.0):
            raise ModelError(f"threshold must be within [0, 1] (got {self.threshold})")
        if not self.temperature > 0:
            raise ModelError(f"temperature must be > 0 (got {self.temperature})")
        if getattr(self.model, "in_channels", self.in_channels) != self.in_channels:
            raise ModelError(f"the network takes {self.model.in_channels} channels, the record says {self.in_channels}")

    @property
    def sha256(self) -> str:
        """sha256 of the model weights (see :func:`state_dict_sha256`); cached until a tensor changes."""
        sd = self.model.state_dict()
        key = tuple((k, v.data_ptr(), v._version) for k, v in sd.items())
        cached = getattr(self, "_sha_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, state_dict_sha256(sd))
            object.__setattr__(self, "_sha_cache", cached)
        return cached[1]

    def checksum_fields(self) -> dict[str, Any]:
        """Every setting besides the weights that changes a call (what :attr:`checksum` covers)."""
        return {"architecture": ARCHITECTURE, "head": dataclasses.asdict(self.head),
                "in_channels": int(self.in_channels), "image_size": int(self.image_size),
                "raster": dataclasses.asdict(self.raster), "reference_fingerprint": self.reference_fingerprint,
                "threshold": float(self.threshold), "temperature": float(self.temperature)}

    @property
    def checksum(self) -> str:
        """sha256 of the weights and :meth:`checksum_fields`: equal checksums give equal calls."""
        return settings_checksum(self.sha256, self.checksum_fields())

    def metadata(self) -> dict[str, Any]:
        """The ``model.json`` record."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "architecture": ARCHITECTURE,
            "head": dataclasses.asdict(self.head), "in_channels": int(self.in_channels),
            "image_size": int(self.image_size), "raster": dataclasses.asdict(self.raster),
            "reference_fingerprint": self.reference_fingerprint, "threshold": float(self.threshold),
            "temperature": float(self.temperature), "metrics": self.metrics, "provenance": self.provenance,
            "software": software_versions(("rescue_gpu", "torch", "torchvision", "numpy", "safetensors")), "weights": "weights.safetensors", "sha256": self.sha256,
            "checksum": self.checksum,
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``weights.safetensors`` and ``model.json`` into directory ``path``.

        Raises
        ------
        ModelError
            ``path`` exists and ``overwrite`` is false.
        """
        return write_weights_dir(path, self.model, self.metadata(), fmt=FORMAT, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, *, map_location: str = "cpu") -> ModelRecord:
        """Read a model directory, verify the weights' sha256 and return the record (model in eval mode).

        Raises
        ------
        ModelError
            Not a model directory, unreadable files, a newer format, weights whose
            sha256 differs from ``model.json`` (altered or corrupt), or settings
            (threshold, temperature, head, raster, reference fingerprint, input
            channels/size) that do not match the record's checksum (``model.json`` edited).

        Warns
        -----
        RecordFormatWarning
            A format version 1 record (no checksum): loaded, its settings unverified.
        """
        root = Path(path)
        meta = _read_meta(root)
        sd = verified_state_dict(root, meta)
        try:
            head, raster = _head_from(meta["head"]), raster_from_dict(meta["raster"])
            model = MrdNet(in_channels=int(meta["in_channels"]), head=head)
            model.load_state_dict(sd, strict=True)
            rec = cls(model=model.to(map_location).eval(), in_channels=int(meta["in_channels"]),
                      image_size=int(meta["image_size"]), head=head, raster=raster,
                      reference_fingerprint=meta["reference_fingerprint"], threshold=float(meta["threshold"]),
                      temperature=float(meta["temperature"]), metrics=meta.get("metrics", {}),
                      provenance=meta.get("provenance", {}))
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ModelError(f"{root}: model.json and weights do not fit together ({exc.__class__.__name__}: {exc})") from None
        check_settings_checksum(
            root / "model.json", meta, rec.checksum, since=CHECKSUM_SINCE, error=ModelError,
            covers=(f"its settings (threshold {rec.threshold:g}, temperature {rec.temperature:g}, head, raster, "
                    "reference fingerprint, input channels/size)"),
            fix="restore the original model.json from a copy, or retrain the model ('rescue train') or re-import "
                "its weights ('rescue model import --threshold ...')",
            upgrade=f"run 'rescue model upgrade {root}' to protect them (or retrain)")
        return rec

    @classmethod
    def upgrade(cls, path: str | Path) -> ModelRecord:
        """Write the current format version and checksum into an older model directory's ``model.json``.

        The settings are taken as they are now (check the threshold and temperature
        first); the weights are verified. A current record is left as it is.

        Raises
        ------
        ModelError
            As :meth:`load`, or ``model.json`` cannot be rewritten.
        """
        root = Path(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordFormatWarning)
            rec = cls.load(root)
        update_record_json(root / "model.json", {"format_version": FORMAT_VERSION, "checksum": rec.checksum},
                           error=ModelError)
        return rec

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

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``sigmoid(logits / temperature)`` as float64."""
        z = np.asarray(logits, dtype=np.float64) / float(self.temperature)
        return 0.5 * (1.0 + np.tanh(0.5 * z))

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


def write_weights_dir(directory: str | Path, model: torch.nn.Module, meta: dict[str, Any], *, fmt: str,
                      overwrite: bool = False) -> Path:
    """Write ``weights.safetensors`` (the model's state dict) and ``model.json`` (``meta``) into a new directory."""
    from safetensors.torch import save_file

    out = new_record_dir(directory, overwrite=overwrite, error=ModelError)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "weights.safetensors"), metadata={"format": fmt})
    (out / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return out


def verified_state_dict(root: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of a model directory, after checking their sha256 against ``model.json``.

    Raises
    ------
    ModelError
        No weights file, an unreadable one, or a sha256 that differs (altered or corrupt).
    """
    sd = _read_weights(root, meta)
    digest = state_dict_sha256(sd)
    if meta.get("sha256") != digest:
        raise ModelError(f"{root}: weights sha256 {digest[:12]}... does not match model.json "
                         f"({str(meta.get('sha256'))[:12]}...); the weights were altered or corrupted, "
                         "copy the model again, re-export or retrain it")
    return sd


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / "model.json"
    meta = read_record_json(path, fmt=FORMAT, what="model", version=FORMAT_VERSION, error=ModelError,
                            missing_hint="train one with 'rescue train' or use 'rescue model import'")
    if meta.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise ModelError(f"{path}: architecture {meta['architecture']!r} is not supported (only {ARCHITECTURE})")
    return meta


def _read_weights(root: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    names = [meta.get("weights", "weights.safetensors"), "weights.safetensors", "weights.pt"]
    for name in dict.fromkeys(names):
        if (root / name).is_file():
            return load_torchvision_state_dict(root / name)
    raise ModelError(f"{root}: no weights file (weights.safetensors or weights.pt); the model directory is incomplete")


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
    """Wrap an externally trained MrdNet state dict as a model directory.

    Parameters
    ----------
    path
        ``.safetensors`` or ``torch.save`` file (read with ``weights_only=True``) holding
        MrdNet's keys: ``backbone.*`` (bare torchvision names such as ``conv1.weight``,
        ``layer1.0.bn1.running_mean`` are accepted and put under ``backbone.``) and
        ``head.<i>.weight/bias`` laid out as :func:`~rescue_gpu.model.network.build_head`
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
    model = MrdNet(in_channels=in_channels, head=head)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ModelError(f"{path}: state dict does not fit MrdNet with head {head}: missing keys {missing}; "
                         f"unexpected keys {unexpected}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: tensor shapes do not fit MrdNet with head {head} ({exc})") from None
    ref = _load_reference(reference)
    rec = ModelRecord(model=model.eval(), in_channels=in_channels, image_size=ref.raster.size, head=head,
                      raster=ref.raster, reference_fingerprint=ref.fingerprint, threshold=threshold,
                      provenance={"imported_from": str(Path(path).resolve()),
                                  "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    rec.check_compatible(ref)
    rec.save(out)
    return rec
