"""The per-sample stages chained: read -> preprocess -> project -> rasterise.

Each function is a plain composition of the stage kernels with typed settings handed
in; the CLI, the reference builder, training and the flow assay's workers call these, so there is
one path from an FCS file to an image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Pipeline, pipeline_record
from ..errors import ConfigError, RescueError
from ..fcs import read_fcs
from ..preprocess import Events, preprocess, preprocess_fingerprint
from ..projection import transform
from ..raster import count_outside, render
from ..reference import Reference, build_reference
from ..runner.manifest import ManifestRow

__all__ = ["load_events", "iter_events", "project", "rasterise", "build_reference_from_rows", "pipeline_settings",
           "reference_landmarks"]


def load_events(path: str | Path, pipeline: Pipeline, *, xp: Any = None) -> Events:
    """Read one FCS file and preprocess it with ``pipeline``'s panel and settings."""
    return preprocess(read_fcs(path), panel=pipeline.panel, spec=pipeline.preprocess, xp=xp)


def iter_events(
    rows: Sequence[ManifestRow], pipeline: Pipeline, *, on_sample: Callable[[int, int], None] | None = None
) -> Iterator[tuple[ManifestRow, Events | None, str]]:
    """Yield ``(row, events, error)`` per sample; a failing sample yields its message, never raises."""
    for i, row in enumerate(rows):
        try:
            yield row, load_events(row.path, pipeline), ""
        except RescueError as exc:
            yield row, None, str(exc)
        if on_sample is not None:
            on_sample(i, len(rows))


def pipeline_settings(pipeline: Pipeline) -> dict[str, Any]:
    """The panel and preprocessing settings as a JSON-ready record."""
    return {"pipeline": pipeline.name, "panel": dataclasses.asdict(pipeline.panel),
            "preprocess": dataclasses.asdict(pipeline.preprocess)}


def project(reference: Reference, events: Events, *, seed: int = 0, backend: str = "auto",
            chunk_events: int | None = None, knn_method: str = "auto") -> Any:
    """Project preprocessed events into ``reference`` after checking markers and preprocessing.

    ``chunk_events`` bounds the events per chunk of the neighbour search (None: the
    projection's default); the coordinates do not depend on it. ``knn_method``: the CPU
    neighbour search (:func:`rescue_gpu.projection.transform`; ``rescue bench --knn-method``).
    """
    reference.check_markers(events.markers, what=f"sample with {len(events.markers)} markers")
    return transform(reference, events.values, seed=seed, backend=backend, chunk_size=chunk_events,
                     knn_method=knn_method)  # type: ignore[arg-type]


def rasterise(reference: Reference, coords: Any, events: Events) -> tuple[Any, int]:
    """Render projected events with the reference's raster settings; return (image, events outside)."""
    r = reference.raster
    image = render(coords, extent=reference.extent, size=r.size, channels=r.channels,
                   values=events.values if "markers" in r.channels else None, point_radius=r.point_radius)
    return image, count_outside(coords, extent=reference.extent)


def build_reference_from_rows(
    rows: Sequence[ManifestRow],
    pipeline: Pipeline,
    *,
    events_per_sample: int | None = None,
    max_events: int | None = None,
    backend: str = "cpu",
    on_sample: Callable[[int, int], None] | None = None,
) -> Reference:
    """Preprocess the selected samples and fit a reference; failed samples are skipped and recorded.

    The reference stores the whole pipeline (with ``events_per_sample`` as used), so that
    training and scoring take it from the reference; each sample's warnings are recorded
    in ``provenance["sample_warnings"]``.
    """
    spec = pipeline.reference
    if events_per_sample is not None:
        spec = dataclasses.replace(spec, events_per_sample=events_per_sample)
    if max_events is not None:
        spec = dataclasses.replace(spec, max_events=max_events)
    warned: dict[str, list[str]] = {}
    selected = [r for r in rows if r.in_reference is not False]
    failed: dict[str, str] = {}
    markers: list[tuple[str, ...]] = []

    def samples() -> Iterator[tuple[str, np.ndarray]]:
        for row, ev, err in iter_events(selected, pipeline, on_sample=on_sample):
            if ev is None:
                failed[row.sample_id] = err
                continue
            markers.append(tuple(ev.markers))
            if ev.warnings:
                warned[row.sample_id] = list(ev.warnings)
            yield row.sample_id, ev.values

    pooled = list(samples())
    if not pooled:
        raise RescueError(f"no sample could be preprocessed for the reference; first error: {next(iter(failed.values()), 'no samples selected')}")
    ref = build_reference(pooled, markers=markers[0], spec=spec, raster=pipeline.raster,
                          preprocess_fingerprint=preprocess_fingerprint(pipeline.panel, pipeline.preprocess),
                          settings=pipeline_settings(pipeline), backend=backend,
                          pipeline=pipeline_record(dataclasses.replace(pipeline, reference=spec)),
                          strata={r.sample_id: f"{r.timepoint}/{r.label}" for r in selected})
    ref.provenance["failed_samples"] = failed
    ref.provenance["sample_warnings"] = warned
    return ref


def reference_landmarks(
    rows: Sequence[ManifestRow],
    pipeline: Pipeline,
    *,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    channels: Sequence[str] = (),
    method: str = "landmarks",
    bandwidth: float = 0.02,
    min_height: float = 0.05,
    on_sample: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, tuple[float, ...]], dict[str, str]]:
    """The landmark targets of a reference cohort for ``[preprocess.normalize]``.

    Each selected sample (``in_reference`` not false) is preprocessed with ``pipeline`` with
    the normalisation off; the targets are, per channel, the mean of the samples' own
    ``quantiles`` (``method = "landmarks"``) or the peaks of their pooled density
    (``"peaks"``, with ``bandwidth`` and ``min_height``;
    :func:`~rescue_gpu.preprocess.landmark_targets`). ``channels`` empty: every output
    column. Returns ``(targets, failed samples -> error)``; no labels are read.
    """
    from ..config import NormalizeSpec
    from ..preprocess import landmark_targets

    off = dataclasses.replace(pipeline, preprocess=dataclasses.replace(pipeline.preprocess, normalize=NormalizeSpec()))
    selected = [r for r in rows if r.in_reference is not False]
    failed: dict[str, str] = {}
    values, names = [], ()
    for row, ev, err in iter_events(selected, off, on_sample=on_sample):
        if ev is None:
            failed[row.sample_id] = err
            continue
        values.append(ev.values)
        names = ev.markers
    if not values:
        raise RescueError(f"no sample could be preprocessed for the landmarks; first error: {next(iter(failed.values()), 'no samples selected')}")
    unknown = sorted(set(channels) - set(names))
    if unknown:
        raise ConfigError(f"landmark channels {', '.join(map(repr, unknown))} are not output columns "
                          f"({', '.join(names)}); pick from those")
    return landmark_targets(values, names, list(channels) or list(names), quantiles, method=method,
                            bandwidth=bandwidth, min_height=min_height), failed
