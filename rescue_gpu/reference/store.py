"""The Reference: a fitted reference UMAP as a self-describing, checksummed directory.

Layout of ``REF_DIR``::

    reference.json     format, version, markers, UMAP parameters, preprocessing
                       fingerprint and settings, raster settings and extent,
                       the whole pipeline it was built with ("pipeline"; null in
                       references made before it was stored, and in imported ones),
                       provenance, software versions, sha256 of every array
    arrays.zarr/       train_events (N x d float32), embedding (N x 2 float32)

Zarr and JSON only; no pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RasterSpec
from ..errors import ReferenceDataError
from ..projection.transform import UmapParams
from ..artifacts import new_record_dir, raster_from_dict, read_record_json, software_versions

__all__ = ["Reference", "FORMAT", "FORMAT_VERSION", "array_sha256"]

FORMAT = "rescue-reference"
FORMAT_VERSION = 1
_ARRAYS = ("train_events", "embedding")


def array_sha256(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes (independent of the on-disk encoding)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass
class Reference:
    """A reference UMAP that new samples are projected into.

    Attributes
    ----------
    train_events
        ``(N, d)`` float32 preprocessed events the UMAP was fitted on.
    embedding
        ``(N, 2)`` float32 UMAP coordinates of ``train_events``.
    params
        Every UMAP parameter the transform needs.
    markers
        Names of the ``d`` columns, in order; samples must match them.
    preprocess_fingerprint
        sha256 of the preprocessing settings the events went through.
    raster
        Raster settings images of this reference are made with.
    extent
        ``(x_min, x_max, y_min, y_max)`` canvas of every image.
    settings
        The panel and preprocessing settings (for the record).
    pipeline
        The whole validated pipeline the reference was built with
        (:func:`rescue_gpu.config.pipeline_record`), or None when not known;
        :func:`rescue_gpu.reference.pipeline.resolve_pipeline` reads it.
    provenance
        Samples used, events per sample, dropped rows, software versions, creation time.
    """

    train_events: np.ndarray
    embedding: np.ndarray
    params: UmapParams
    markers: tuple[str, ...]
    preprocess_fingerprint: str = ""
    raster: RasterSpec = RasterSpec()
    extent: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    pipeline: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.train_events = np.ascontiguousarray(self.train_events, dtype=np.float32)
        self.embedding = np.ascontiguousarray(self.embedding, dtype=np.float32)
        self.markers = tuple(self.markers)
        self.extent = tuple(float(v) for v in self.extent)  # type: ignore[assignment]
        n, d = self.train_events.shape
        if self.embedding.shape != (n, 2):
            raise ReferenceDataError(f"embedding has shape {self.embedding.shape}, expected ({n}, 2)")
        if len(self.markers) != d:
            raise ReferenceDataError(f"{len(self.markers)} marker names for {d} event columns")

    @property
    def fingerprint(self) -> str:
        """sha256 identifying this reference: arrays, UMAP parameters, markers, preprocessing, raster."""
        meta = json.dumps([dataclasses.asdict(self.params), self.markers, self.preprocess_fingerprint,
                           dataclasses.asdict(self.raster), self.extent], sort_keys=True, default=str)
        h = hashlib.sha256(meta.encode())
        for name in _ARRAYS:
            h.update(array_sha256(getattr(self, name)).encode())
        return h.hexdigest()

    def check_markers(self, markers: tuple[str, ...] | list[str], *, what: str = "the sample") -> None:
        """Raise :class:`ReferenceDataError` unless ``markers`` equal the reference's, in order."""
        markers = tuple(markers)
        if markers == self.markers:
            return
        missing = [m for m in self.markers if m not in markers]
        extra = [m for m in markers if m not in self.markers]
        detail = f"missing {missing}, unexpected {extra}" if (missing or extra) else "same markers in another order"
        raise ReferenceDataError(
            f"{what} has markers {list(markers)} but the reference expects {list(self.markers)} ({detail}); "
            "preprocess it with the pipeline the reference was built with"
        )

    def metadata(self) -> dict[str, Any]:
        """The ``reference.json`` record (without array data)."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "markers": list(self.markers), "n_events": int(self.train_events.shape[0]),
            "umap": dataclasses.asdict(self.params),
            "preprocess_fingerprint": self.preprocess_fingerprint,
            "raster": dataclasses.asdict(self.raster), "extent": list(self.extent),
            "settings": self.settings, "pipeline": self.pipeline, "provenance": self.provenance,
            "software": software_versions(("rescue_gpu", "numpy", "umap-learn", "zarr", "cuml")), "fingerprint": self.fingerprint,
            "sha256": {name: array_sha256(getattr(self, name)) for name in _ARRAYS},
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the reference directory (refuses to replace an existing one unless ``overwrite``)."""
        import zarr

        out = new_record_dir(path, overwrite=overwrite, error=ReferenceDataError)
        group = zarr.open_group(out / "arrays.zarr", mode="w")
        for name in _ARRAYS:
            a = getattr(self, name)
            group.create_array(name, data=a, chunks=(min(max(a.shape[0], 1), 65536), a.shape[1]))
        (out / "reference.json").write_text(json.dumps(self.metadata(), indent=2, sort_keys=True))
        return out

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> Reference:
        """Read a reference directory; with ``verify``, check every array's sha256 and the fingerprint.

        The stored ``fingerprint`` covers the markers, UMAP parameters, preprocessing
        fingerprint, raster settings, extent and arrays (see :attr:`fingerprint`); it is
        required, so deleting it cannot switch the check off.

        Raises
        ------
        ReferenceDataError
            Not a reference, unreadable, a newer format, no ``fingerprint``, or (with
            ``verify``) arrays or a fingerprint that do not match the contents.
        """
        root = Path(path)
        meta = _read_meta(root)
        stored = _stored_fingerprint(root, meta)
        arrays = _read_arrays(root, verify=verify, expected=meta.get("sha256", {}))
        try:
            ref = cls(
                train_events=arrays["train_events"], embedding=arrays["embedding"],
                params=UmapParams(**meta["umap"]), markers=tuple(meta["markers"]),
                preprocess_fingerprint=meta.get("preprocess_fingerprint", ""),
                raster=raster_from_dict(meta["raster"]),
                extent=tuple(meta["extent"]), settings=meta.get("settings", {}), provenance=meta.get("provenance", {}),
                pipeline=meta.get("pipeline"),
            )
        except (KeyError, TypeError) as exc:
            raise ReferenceDataError(f"{root}: reference.json lacks or mangles a field ({exc}); rebuild the reference") from None
        if verify and stored != ref.fingerprint:
            raise ReferenceDataError(f"{root / 'reference.json'}: fingerprint does not match its contents (markers, UMAP "
                                     "parameters, preprocessing, raster, extent or arrays were changed); the reference "
                                     "was altered: restore it from a copy or rebuild it ('rescue reference build')")
        return ref


def _stored_fingerprint(root: Path, meta: dict[str, Any]) -> str:
    """The ``fingerprint`` of ``reference.json``; a missing or malformed one is an error, never a skipped check."""
    stored = meta.get("fingerprint")
    if not isinstance(stored, str) or len(stored) != 64:
        what = "no 'fingerprint'" if stored is None else f"a malformed 'fingerprint' ({str(stored)[:20]!r})"
        raise ReferenceDataError(f"{root / 'reference.json'}: {what}, so the reference cannot be checked against its "
                                 "contents or its models; restore reference.json from a copy or rebuild the "
                                 "reference ('rescue reference build')")
    return stored


def _read_meta(root: Path) -> dict[str, Any]:
    return read_record_json(root / "reference.json", fmt=FORMAT, what="reference", version=FORMAT_VERSION, error=ReferenceDataError,
                            missing_hint="build one with 'rescue reference build'")


def _read_arrays(root: Path, *, verify: bool, expected: dict[str, str]) -> dict[str, np.ndarray]:
    import zarr

    try:
        group = zarr.open_group(root / "arrays.zarr", mode="r")
        arrays = {name: np.asarray(group[name][:]) for name in _ARRAYS}
    except Exception as exc:  # zarr raises several kinds for missing or corrupt stores
        raise ReferenceDataError(f"{root}: cannot read arrays.zarr ({exc.__class__.__name__}: {exc}); rebuild the reference") from None
    if verify:
        for name, a in arrays.items():
            if expected.get(name) != array_sha256(a):
                raise ReferenceDataError(f"{root}: checksum of '{name}' does not match reference.json; the files are corrupt or altered")
    return arrays
