"""Training data: a Zarr cache of projected samples and a torch ``Dataset`` that renders them.

Projection is the expensive step, so every manifest sample is preprocessed and
projected once and kept in ``CACHE_DIR/cache.zarr``::

    cache.zarr/              attrs: format, settings_hash, settings
      <sample key>/          attrs: sample_id, label, patient_id, timepoint, n_events
        coords               (n, 2) float32 projected events
        values               (n, M) float32 marker values (only with a "markers" channel)

The settings hash covers the reference fingerprint, the preprocessing fingerprint, the
raster channels and the projection seed; a cache made with other settings is wiped and
rebuilt. Samples missing from the cache are added; samples that fail are reported and
left out.

Images are rendered on the fly from the cached events. For training, the augmentation
re-renders a bootstrap subsample of the sample's events (drawn with replacement, seeded
by ``(seed, epoch, index)``) and multiplies each channel by ``1 + jitter * N(0, 1)``.
There are deliberately no flips or rotations: UMAP coordinates carry meaning.

Instrument-shift augmentation (``train.shift_copies`` > 0): each training sample also
gets ``shift_copies`` copies of its preprocessed events with a random per-channel gain
and offset (:func:`instrument_shift`, imitating another cytometer's voltages and
settings), each projected once and cached next to the sample under
``<sample key>@shift-<settings hash>-<j>``; an augmented image is rendered from the
original or one of the copies, drawn with the bootstrap's generator. Validation and
scoring always use the original events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from ..device import to_numpy
from ..runner.manifest import ManifestRow
from ..config import Pipeline, RasterSpec
from ..errors import RescueError
from ..preprocess import preprocess_fingerprint
from ..raster import render
from ..reference import Reference

__all__ = ["CACHE_NAME", "CachedSample", "SampleCache", "cache_settings_hash", "build_cache",
           "label_value", "bootstrap_events", "InstrumentShift", "instrument_shift", "MrdImageDataset"]

CACHE_NAME = "cache.zarr"
CACHE_FORMAT = "rescue-train-cache"
CACHE_VERSION = 1
LABEL_VALUES = {"positive": 1, "negative": 0}


def label_value(label: str) -> int | None:
    """1 for ``positive``, 0 for ``negative``, ``None`` when unlabelled."""
    return LABEL_VALUES.get(label.strip().lower())


@dataclass(frozen=True)
class CachedSample:
    """One projected sample as held in memory for training."""

    sample_id: str
    coords: np.ndarray
    values: np.ndarray | None
    label: int | None
    patient_id: str
    timepoint: str
    shifted: tuple[tuple[np.ndarray, np.ndarray | None], ...] = ()  # (coords, values) of instrument-shifted copies

    @property
    def n_events(self) -> int:
        """Number of projected events."""
        return int(self.coords.shape[0])


def cache_settings_hash(reference: Reference, pipeline: Pipeline, *, seed: int = 0) -> str:
    """sha256 of everything that changes the cached arrays: reference, preprocessing, channels, seed."""
    record = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "reference": reference.fingerprint,
              "preprocess": preprocess_fingerprint(pipeline.panel, pipeline.preprocess),
              "values": "markers" in reference.raster.channels, "seed": int(seed)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _key(sample_id: str, variant: str = "") -> str:
    return "s_" + quote(sample_id, safe="") + (f"@{variant}" if variant else "")


@dataclass(frozen=True)
class InstrumentShift:
    """Settings of the instrument-shift augmentation (``train.shift_*``; see :func:`instrument_shift`)."""

    copies: int
    gain: float
    offset: float
    seed: int = 0

    def tag(self) -> str:
        """Short hash of the settings: cached copies made with other settings are not reused."""
        record = json.dumps({"gain": self.gain, "offset": self.offset, "seed": self.seed}, sort_keys=True)
        return "shift-" + hashlib.sha256(record.encode()).hexdigest()[:12]

    def rng(self, sample_id: str, copy: int) -> np.random.Generator:
        """The generator of copy ``copy`` of ``sample_id`` (depends on nothing else)."""
        digest = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "little")
        return np.random.default_rng([self.seed, digest, copy])


def instrument_shift(values: np.ndarray, rng: np.random.Generator, *, gain: float, offset: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One instrument-shifted copy of a sample's preprocessed events (a new array; ``values`` is untouched).

    Per channel ``c``: ``g_c = exp(gain * N(0, 1))``, ``o_c = offset * N(0, 1)`` and
    ``v' = m_c + g_c * (v - m_c) + o_c`` with ``m_c`` the channel's median in this sample,
    in the transformed (logicle / linear) space the projection reads. So the channel's
    median moves by ``o_c`` and its spread (any quantile gap) scales by ``g_c``: a changed
    detector voltage or amplification moves the populations of a logicle channel and
    spreads them, which the network otherwise never sees within one instrument.

    Parameters
    ----------
    values
        ``(n_events, n_channels)`` preprocessed events.
    rng
        Source of the draws (one ``gain`` and one ``offset`` normal per channel, in that order).
    gain, offset
        Standard deviations of the log gain and of the offset (>= 0).

    Returns
    -------
    (shifted, gains, offsets)
        The float32 copy and the per-channel ``g_c`` and ``o_c`` drawn.
    """
    v = np.asarray(values, dtype=np.float32)
    n = v.shape[1]
    gains = np.exp(gain * rng.standard_normal(n))
    offsets = offset * rng.standard_normal(n)
    centre = np.median(v, axis=0) if v.shape[0] else np.zeros(n)
    shifted = (centre + gains * (v - centre) + offsets).astype(np.float32)
    return shifted, gains, offsets


class SampleCache:
    """A handle on ``CACHE_DIR/cache.zarr``; see the module docstring for the layout."""

    def __init__(self, cache_dir: str | Path, settings_hash: str) -> None:
        import zarr

        self.path = Path(cache_dir) / CACHE_NAME
        self.settings_hash = settings_hash
        self.rebuilt = False
        if self.path.exists():
            try:
                root = zarr.open_group(self.path, mode="r")
                stale = root.attrs.get("settings_hash") != settings_hash
            except Exception:  # an unreadable cache is a stale cache
                stale = True
            if stale:
                shutil.rmtree(self.path)
                self.rebuilt = True
        self._root = zarr.open_group(self.path, mode="a")
        self._root.attrs.update({"format": CACHE_FORMAT, "version": CACHE_VERSION, "settings_hash": settings_hash})

    def __contains__(self, sample_id: str) -> bool:
        return self.has(sample_id)

    def has(self, sample_id: str, variant: str = "") -> bool:
        """Whether ``sample_id`` (or its copy ``variant``, e.g. an instrument shift) is cached and complete."""
        key = _key(sample_id, variant)
        return key in self._root and self._root[key].attrs.get("complete", False)

    def put(self, row: ManifestRow, coords: Any, values: Any = None, *, variant: str = "") -> None:
        """Store one sample's projected events (and marker values) with its manifest attributes.

        ``variant`` names an augmented copy of the sample (stored beside it, never listed by
        :meth:`sample_ids`).
        """
        key = _key(row.sample_id, variant)
        if key in self._root:
            del self._root[key]
        g = self._root.create_group(key)
        c = np.ascontiguousarray(to_numpy(coords), dtype=np.float32)
        g.create_array("coords", data=c, chunks=(max(c.shape[0], 1), 2))
        if values is not None:
            v = np.ascontiguousarray(to_numpy(values), dtype=np.float32)
            g.create_array("values", data=v, chunks=(max(v.shape[0], 1), v.shape[1]))
        g.attrs.update({"sample_id": row.sample_id, "label": row.label, "patient_id": row.patient_id,
                        "timepoint": row.timepoint, "n_events": int(c.shape[0]), "complete": True,
                        "variant": variant})

    def _arrays(self, sample_id: str, variant: str = "") -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        g = self._root[_key(sample_id, variant)]
        return np.asarray(g["coords"][:]), (np.asarray(g["values"][:]) if "values" in g else None), dict(g.attrs)

    def get(self, sample_id: str, shift: InstrumentShift | None = None) -> CachedSample:
        """Read one sample back, with its ``shift`` copies (raises ``KeyError`` if one is not cached)."""
        coords, values, a = self._arrays(sample_id)
        shifted = () if shift is None else tuple(self._arrays(sample_id, f"{shift.tag()}-{j}")[:2]
                                                 for j in range(shift.copies))
        return CachedSample(a["sample_id"], coords, values, label_value(a["label"]), a["patient_id"], a["timepoint"],
                            shifted=shifted)

    def sample_ids(self) -> list[str]:
        """Ids of every complete sample in the cache (not their augmented copies)."""
        return sorted(str(g.attrs["sample_id"]) for _, g in self._root.groups()
                      if g.attrs.get("complete", False) and not g.attrs.get("variant", ""))


def build_cache(
    rows: Sequence[ManifestRow],
    reference: Reference,
    pipeline: Pipeline,
    *,
    cache_dir: str | Path,
    seed: int = 0,
    backend: str = "cpu",
    shift: InstrumentShift | None = None,
    on_sample: Callable[..., None] | None = None,
) -> tuple[SampleCache, dict[str, str]]:
    """Preprocess and project every sample not yet cached; return the cache and the failures.

    Parameters
    ----------
    rows
        Manifest rows.
    reference
        The reference the samples are projected into.
    pipeline
        Panel and preprocessing settings.
    cache_dir
        Folder holding ``cache.zarr`` (created if missing).
    seed
        Projection seed.
    backend
        ``"cpu" | "gpu" | "auto"`` for the projection.
    shift
        Also cache ``shift.copies`` instrument-shifted copies of every sample
        (:func:`instrument_shift` of its preprocessed events, then projected); None: none.
    on_sample
        Called as ``on_sample(i, n, failed=k)`` after each sample.

    Returns
    -------
    (SampleCache, dict)
        The cache and ``{sample_id: error message}`` of samples that failed (left out).
    """
    from ..flow.stages import load_events, project

    cache = SampleCache(cache_dir, cache_settings_hash(reference, pipeline, seed=seed))
    with_values = "markers" in reference.raster.channels
    failed: dict[str, str] = {}
    variants = [] if shift is None or shift.copies == 0 else [f"{shift.tag()}-{j}" for j in range(shift.copies)]
    for i, row in enumerate(rows):
        missing = [v for v in ["", *variants] if not cache.has(row.sample_id, v)]
        if missing:
            try:
                events = load_events(row.path, pipeline).to_numpy()
                for variant in missing:
                    if variant:
                        j = int(variant.rsplit("-", 1)[1])
                        values = instrument_shift(events.values, shift.rng(row.sample_id, j), gain=shift.gain,
                                                  offset=shift.offset)[0]
                        ev = dataclasses.replace(events, values=values)
                    else:
                        ev = events
                    coords = project(reference, ev, seed=seed, backend=backend)
                    cache.put(row, coords, ev.values if with_values else None, variant=variant)
            except (RescueError, OSError) as exc:
                failed[row.sample_id] = str(exc)
        if on_sample is not None:
            on_sample(i, len(rows), failed=len(failed))
    return cache, failed


def bootstrap_events(coords: np.ndarray, values: np.ndarray | None, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample a sample's events with replacement (same count): the bootstrap augmentation."""
    idx = rng.integers(0, coords.shape[0], size=coords.shape[0])
    return coords[idx], (None if values is None else values[idx])


class MrdImageDataset(torch.utils.data.Dataset):
    """Images rendered from cached samples: ``(image (C, H, W) float32, label float32)``.

    Parameters
    ----------
    samples
        Cached samples (labelled).
    extent, raster
        The reference's canvas and raster settings.
    train
        ``False``: the full-sample image, deterministic (cached after the first render).
        ``True``: a bootstrap re-render (of the sample or, where it has
        ``shifted`` copies, of one drawn among the original and the copies) with intensity
        jitter, seeded by ``(seed, epoch, index)``; call :meth:`set_epoch` before each epoch.
    copies
        Training only: re-renders of each sample per epoch (the dataset length is
        ``copies * len(samples)``).
    jitter
        Relative multiplicative intensity noise per channel.
    seed
        Root seed of the augmentation.
    """

    def __init__(self, samples: Sequence[CachedSample], *, extent: tuple[float, float, float, float],
                 raster: RasterSpec, train: bool = False, copies: int = 1, jitter: float = 0.0, seed: int = 0) -> None:
        self.samples = list(samples)
        self.extent = tuple(extent)
        self.raster = raster
        self.train = train
        self.copies = max(1, int(copies)) if train else 1
        self.jitter = float(jitter)
        self.seed = int(seed)
        self.epoch = 0
        self._full: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples) * self.copies

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch``."""
        self.epoch = int(epoch)

    def labels(self) -> np.ndarray:
        """Labels of the samples (0/1), in order."""
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def render(self, coords: np.ndarray, values: np.ndarray | None) -> np.ndarray:
        """Render events with the reference's raster settings."""
        r = self.raster
        return render(coords, extent=self.extent, size=r.size, channels=r.channels,
                      values=values if "markers" in r.channels else None, point_radius=r.point_radius)

    def image(self, index: int) -> np.ndarray:
        """The image of item ``index`` (augmented when ``train``)."""
        s = self.samples[index % len(self.samples)]
        if not self.train:
            if index not in self._full:
                self._full[index] = self.render(s.coords, s.values)
            return self._full[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        coords, values = s.coords, s.values
        if s.shifted:  # the original or one of its instrument-shifted copies
            pick = int(rng.integers(0, len(s.shifted) + 1))
            if pick:
                coords, values = s.shifted[pick - 1]
        img = self.render(*bootstrap_events(coords, values, rng))
        if self.jitter > 0:
            scale = 1.0 + self.jitter * rng.standard_normal(img.shape[0])
            img = img * np.clip(scale, 0.0, None).astype(np.float32)[:, None, None]
        return img.astype(np.float32, copy=False)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[index % len(self.samples)]
        return torch.from_numpy(np.ascontiguousarray(self.image(index))), torch.tensor(float(s.label))
