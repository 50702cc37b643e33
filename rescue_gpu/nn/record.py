"""WeightsRecord: a trained :class:`~rescue_gpu.nn.network.Network` as a self-describing, checksummed directory.

Layout of a model directory::

    weights.safetensors   the network's state dict (no pickle); a ``weights.pt`` written by
                          ``torch.save`` is also read, with ``torch.load(weights_only=True)``
    model.json            format, format version, the record's settings (what an assay's
                          subclass stores), temperature, metrics, provenance, software
                          versions, the sha256 of the weights and the record's checksum

The weights' sha256 (:func:`state_dict_sha256`) is taken over the tensors (name, dtype,
shape, bytes, in name order), not over the file bytes, so it is the same for
``.safetensors`` and ``.pt`` files and for a model in memory. The record's ``checksum``
(format version 2) covers the weights' sha256 and every setting that changes a call
(:meth:`WeightsRecord.checksum_fields`), not metrics or provenance.
:meth:`WeightsRecord.load` recomputes both and refuses a difference.

Format version 1 (no checksum) still loads, with a
:class:`~rescue_gpu.artifacts.RecordFormatWarning`, the checksum computed at load:
refusing it would force every lab to retrain, and its weights are still verified.
:meth:`WeightsRecord.upgrade` (``rescue model upgrade MODEL_DIR``) writes the checksum
into it once its settings have been checked.

An assay subclasses :class:`WeightsRecord` with its own fields and format name: the
flow MRD model (:class:`rescue_gpu.flow.record.ModelRecord`) and the cell classifier
(:class:`rescue_gpu.cells.record.CellModelRecord`).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from ..artifacts import (RecordFormatWarning, check_settings_checksum, new_record_dir, read_record_json,
                         settings_checksum, software_versions, update_record_json, write_json_atomic)
from ..errors import ConfigError, ModelError
from .ensemble import EnsembleNetwork
from .network import Network, load_torchvision_state_dict

__all__ = ["WeightsRecord", "state_dict_sha256", "write_weights_dir", "verified_state_dict", "read_weights",
           "FORMAT_VERSION", "CHECKSUM_SINCE", "WEIGHTS_FILE", "SOFTWARE"]

FORMAT_VERSION = 2
CHECKSUM_SINCE = 2  # first format version whose model.json has a checksum
WEIGHTS_FILE = "weights.safetensors"
SOFTWARE = ("rescue_gpu", "torch", "torchvision", "numpy", "safetensors")

R = TypeVar("R", bound="WeightsRecord")


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's tensors: names, dtypes, shapes and C-order bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(kw_only=True)
class WeightsRecord:
    """A trained network plus everything needed to use it safely (the part every assay shares).

    Subclasses add their settings as fields and set the class variables; they implement
    :meth:`checksum_fields` (what changes a call) and :meth:`from_meta` (the record back
    from ``model.json`` and the weights), and may extend :meth:`stored_fields`.

    Attributes
    ----------
    model
        The network (its weights are what :attr:`sha256` identifies).
    temperature
        Temperature scaling of the logits (see :meth:`probabilities`).
    metrics, provenance
        Validation / cross-validation metrics; training data, split sizes, dates, device.
    """

    FORMAT: ClassVar[str] = ""
    WHAT: ClassVar[str] = "model"
    MISSING_HINT: ClassVar[str] = "train one first"
    FIX: ClassVar[str] = "restore the original model.json from a copy, or retrain the model"

    model: Network | EnsembleNetwork
    temperature: float = 1.0
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

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

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Per-image output shape: ``()`` for a one-logit network, ``(K,)`` for ``K`` classes."""
        k = int(self.model.n_outputs)
        return () if k == 1 else (k,)

    def checksum_fields(self) -> dict[str, Any]:
        """Every setting besides the weights that changes a call (what :attr:`checksum` covers)."""
        raise NotImplementedError

    def stored_fields(self) -> dict[str, Any]:
        """The settings written to ``model.json`` (default: :meth:`checksum_fields`)."""
        return self.checksum_fields()

    def covers(self) -> str:
        """What the checksum protects, for messages."""
        return f"its settings (temperature {self.temperature:g})"

    @property
    def checksum(self) -> str:
        """sha256 of the weights and :meth:`checksum_fields`: equal checksums give equal calls."""
        return settings_checksum(self.sha256, self.checksum_fields())

    def metadata(self) -> dict[str, Any]:
        """The ``model.json`` record."""
        return {"format": self.FORMAT, "format_version": FORMAT_VERSION, **self.stored_fields(),
                "metrics": self.metrics, "provenance": self.provenance, "software": software_versions(SOFTWARE),
                "weights": WEIGHTS_FILE, "sha256": self.sha256, "checksum": self.checksum}

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, float64: ``sigmoid(logits / T)`` for one output, ``softmax(logits / T)`` for K.

        Raises
        ------
        ModelError
            A K-class record given logits that are not ``(N, K)``.
        """
        z = np.asarray(logits, dtype=np.float64) / float(self.temperature)
        if not self.output_shape:
            return 0.5 * (1.0 + np.tanh(0.5 * z))
        return softmax_rows(z, self.output_shape[0], self.class_names())

    def class_names(self) -> tuple[str, ...]:
        """Names of the outputs, for messages (default: their indices)."""
        return tuple(str(i) for i in range(int(self.model.n_outputs)))

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``weights.safetensors`` and ``model.json`` into directory ``path``.

        Raises
        ------
        ModelError
            ``path`` exists and ``overwrite`` is false.
        """
        return write_weights_dir(path, self.model, self.metadata(), fmt=self.FORMAT, overwrite=overwrite)

    @classmethod
    def check_meta(cls, path: Path, meta: dict[str, Any]) -> None:
        """Refuse a ``model.json`` this class cannot rebuild before the weights are read (default: accept)."""

    @classmethod
    def from_meta(cls: type[R], meta: dict[str, Any], sd: dict[str, torch.Tensor], map_location: str) -> R:
        """The record of ``model.json``'s content ``meta`` and the verified weights ``sd``."""
        raise NotImplementedError

    @classmethod
    def load(cls: type[R], path: str | Path, *, map_location: str = "cpu") -> R:
        """Read a model directory, verify the weights' sha256 and return the record (model in eval mode).

        Raises
        ------
        ModelError
            Not a model directory of this class's format, unreadable files, a newer
            format, weights whose sha256 differs from ``model.json`` (altered or
            corrupt), ``model.json`` and weights that do not fit together, or settings
            that do not match the record's checksum (``model.json`` edited).

        Warns
        -----
        RecordFormatWarning
            A format version 1 record (no checksum): loaded, its settings unverified.
        """
        root = Path(path)
        meta = read_record_json(root / "model.json", fmt=cls.FORMAT, what=cls.WHAT, version=FORMAT_VERSION,
                                error=ModelError, missing_hint=cls.MISSING_HINT)
        cls.check_meta(root / "model.json", meta)
        sd = verified_state_dict(root, meta)
        try:
            rec = cls.from_meta(meta, sd, map_location)
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError, ModelError) as exc:
            raise ModelError(f"{root}: model.json and weights do not fit together "
                             f"({exc.__class__.__name__}: {exc})") from None
        check_settings_checksum(root / "model.json", meta, rec.checksum, since=CHECKSUM_SINCE, error=ModelError,
                                covers=rec.covers(), fix=cls.FIX,
                                upgrade=f"run 'rescue model upgrade {root}' to protect them (or retrain)")
        return rec

    @classmethod
    def upgrade(cls: type[R], path: str | Path) -> R:
        """Write the current format version and checksum into an older model directory's ``model.json``.

        The settings are taken as they are now (check them first); the weights are
        verified. A current record is left as it is.

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


def softmax_rows(z: np.ndarray, k: int, names: tuple[str, ...]) -> np.ndarray:
    """Row-wise softmax of ``(N, k)`` scores (already divided by the temperature).

    Raises
    ------
    ModelError
        ``z`` is not ``(N, k)``.
    """
    if z.ndim != 2 or z.shape[1] != k:
        raise ModelError(f"logits must be (N, {k}) for classes {list(names)}, got shape {z.shape}")
    z = z - z.max(axis=1, keepdims=True) if z.size else z
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def write_weights_dir(directory: str | Path, model: torch.nn.Module, meta: dict[str, Any], *, fmt: str,
                      overwrite: bool = False) -> Path:
    """Write ``weights.safetensors`` (the model's state dict) and ``model.json`` (``meta``) into a new directory.

    Raises
    ------
    ModelError
        ``directory`` exists and ``overwrite`` is false.
    """
    from safetensors.torch import save_file

    out = new_record_dir(directory, overwrite=overwrite, error=ModelError)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": fmt})
    write_json_atomic(out / "model.json", meta)
    return out


def verified_state_dict(root: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of a model directory, after checking their sha256 against ``model.json``.

    Raises
    ------
    ModelError
        No weights file, an unreadable one, or a sha256 that differs (altered or corrupt).
    """
    sd = read_weights(root, meta)
    digest = state_dict_sha256(sd)
    if meta.get("sha256") != digest:
        raise ModelError(f"{root}: weights sha256 {digest[:12]}... does not match model.json "
                         f"({str(meta.get('sha256'))[:12]}...); the weights were altered or corrupted, "
                         "copy the model again, re-export or retrain it")
    return sd


def read_weights(root: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of a model directory (``model.json``'s ``weights``, else ``weights.safetensors`` or ``.pt``).

    Raises
    ------
    ModelError
        No weights file, or an unreadable one.
    """
    names = [meta.get("weights", WEIGHTS_FILE), WEIGHTS_FILE, "weights.pt"]
    for name in dict.fromkeys(names):
        if (root / name).is_file():
            return load_torchvision_state_dict(root / name)
    raise ModelError(f"{root}: no weights file (weights.safetensors or weights.pt); the model directory is incomplete")
