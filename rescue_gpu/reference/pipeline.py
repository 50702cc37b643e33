"""Which pipeline a command uses with a reference: the reference's own, or a ``--pipeline`` that agrees with it.

A reference is built with one pipeline and stores all of it in ``reference.json``
(``"pipeline"``). ``rescue train``, ``rescue score`` and ``rescue project`` take it from
there by default, so a lab with its own panel names its pipeline once, when it builds the
reference. A ``--pipeline`` given anyway must agree with the reference on what the
reference fixes: the panel and preprocessing (they make the events the reference was
fitted on) and the raster (images are always made with the reference's); other sections
(training settings, for one) may differ. A disagreement is a :class:`ConfigError` that
lists every differing key, and for the markers which are missing and which are extra.

References written before the pipeline was stored record only the panel and
preprocessing (``settings``): those are rebuilt from it (checked against the
preprocessing fingerprint), the rest comes from the default pipeline with a note. A
reference that records neither (imported from umap-learn, say) gets the default pipeline,
with a note saying so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (DEFAULT_PIPELINE, PanelSpec, Pipeline, PreprocessSpec, from_mapping, load_pipeline,
                      pipeline_from_record, pipeline_record)
from ..errors import ConfigError, ReferenceDataError
from ..artifacts import raster_from_dict
from .store import _read_meta

__all__ = ["ResolvedPipeline", "resolve_pipeline", "stored_pipeline", "pipeline_differences", "FIXED_SECTIONS"]

#: The pipeline sections a reference fixes: a ``--pipeline`` must agree with it on these.
FIXED_SECTIONS = ("panel", "preprocess", "raster")


@dataclass(frozen=True)
class ResolvedPipeline:
    """The pipeline to use with a reference, and a note for the user ("" when there is nothing to say)."""

    pipeline: Pipeline
    note: str = ""


def _fingerprint(pipeline: Pipeline) -> str:
    from ..preprocess import preprocess_fingerprint

    return preprocess_fingerprint(pipeline.panel, pipeline.preprocess)


def stored_pipeline(meta: dict[str, Any], *, where: str) -> Pipeline | None:
    """The pipeline stored in a reference's ``reference.json`` record, or None when it stores none.

    Raises
    ------
    ReferenceDataError
        The stored pipeline is invalid, or disagrees with the reference's preprocessing
        fingerprint or raster (``reference.json`` was edited).
    """
    record = meta.get("pipeline")
    if record is None:
        return None
    file = f"{where}/reference.json"
    try:
        pipe = pipeline_from_record(record, file=file)
    except ConfigError as exc:
        raise ReferenceDataError(f"{where}: the pipeline stored in reference.json is invalid ({exc}); "
                                 "rebuild the reference") from None
    fingerprint = meta.get("preprocess_fingerprint") or ""
    if fingerprint and _fingerprint(pipe) != fingerprint:
        raise ReferenceDataError(f"{where}: the pipeline stored in reference.json does not match the reference's "
                                 "preprocessing fingerprint (reference.json was edited); rebuild the reference")
    if "raster" in meta and dataclasses.asdict(pipe.raster) != dataclasses.asdict(raster_from_dict(meta["raster"])):
        raise ReferenceDataError(f"{where}: the pipeline stored in reference.json has other raster settings than "
                                 "the reference (reference.json was edited); rebuild the reference")
    return pipe


def _from_settings(meta: dict[str, Any], *, where: str) -> Pipeline | None:
    """An older reference's pipeline: its recorded panel and preprocessing, the rest default (None if not recorded)."""
    settings = meta.get("settings") or {}
    if not isinstance(settings, dict) or not isinstance(settings.get("panel"), dict) \
            or not isinstance(settings.get("preprocess"), dict):
        return None
    file = f"{where}/reference.json"
    try:
        panel = from_mapping(PanelSpec, settings["panel"], file=file, prefix="settings.panel")
        spec = from_mapping(PreprocessSpec, settings["preprocess"], file=file, prefix="settings.preprocess")
    except ConfigError:
        return None
    base = load_pipeline(DEFAULT_PIPELINE)
    pipe = dataclasses.replace(base, name=str(settings.get("pipeline") or base.name), panel=panel, preprocess=spec,
                               raster=raster_from_dict(meta["raster"]) if "raster" in meta else base.raster,
                               source=file)
    fingerprint = meta.get("preprocess_fingerprint") or ""
    return pipe if not fingerprint or _fingerprint(pipe) == fingerprint else None


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(_flatten(value[key], f"{prefix}.{key}"))
        return out
    return {prefix: list(value) if isinstance(value, (list, tuple)) else value}


def _describe(key: str, ours: Any, theirs: Any) -> str:
    """One difference: ``key: reference X, --pipeline Y`` (markers: which are missing and which extra)."""
    text = f"{key}: reference {theirs!r}, --pipeline {ours!r}"
    if isinstance(ours, list) and isinstance(theirs, list) and key.endswith(("markers", "scatter")):
        missing = [m for m in theirs if m not in ours]
        extra = [m for m in ours if m not in theirs]
        parts = ([f"missing {', '.join(map(str, missing))}"] if missing else []) + \
                ([f"not in the reference {', '.join(map(str, extra))}"] if extra else [])
        text += f" ({' and '.join(parts) if parts else 'same names in another order'})"
    return text


def pipeline_differences(pipeline: Pipeline, reference: Pipeline) -> list[str]:
    """Every key of :data:`FIXED_SECTIONS` on which ``pipeline`` differs from ``reference``'s pipeline."""
    ours, theirs = pipeline_record(pipeline), pipeline_record(reference)
    diffs: list[str] = []
    for section in FIXED_SECTIONS:
        a, b = _flatten(ours[section], section), _flatten(theirs[section], section)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(_describe(key, a.get(key), b.get(key)))
    return diffs


def _check_requested(pipe: Pipeline, requested: str, known: Pipeline | None, meta: dict[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` when ``--pipeline`` disagrees with what the reference records."""
    if known is not None:
        diffs = pipeline_differences(pipe, known)
    else:
        fingerprint = meta.get("preprocess_fingerprint") or ""
        diffs = [] if not fingerprint or _fingerprint(pipe) == fingerprint else \
            ["its preprocessing fingerprint differs (the reference records no settings to say which keys)"]
    if diffs:
        raise ConfigError(
            f"--pipeline {requested} does not match the pipeline reference {where} was built with: "
            + "; ".join(diffs)
            + ". Leave out --pipeline to use the reference's own pipeline, or build a reference with this one"
        )


def resolve_pipeline(reference: str | Path, requested: str | None = None, *, uses_model: bool = False) -> ResolvedPipeline:
    """The pipeline to use with the reference directory ``reference``.

    Parameters
    ----------
    reference
        The reference directory (only its ``reference.json`` is read).
    requested
        ``--pipeline`` (a name or TOML path), or None: take the reference's own.
    uses_model
        The command reads the pipeline's model section (``rescue train``): a reference
        that does not store it gets a note that the default pipeline's is used.

    Returns
    -------
    ResolvedPipeline
        The pipeline, and a note to print when part of it could not come from the reference.

    Raises
    ------
    ConfigError
        ``requested`` disagrees with the reference on its panel, preprocessing or raster
        (the message lists each differing key), or the pipeline file is invalid.
    ReferenceDataError
        ``reference`` is not a reference directory, or its stored pipeline was altered.
    """
    where = str(reference)
    meta = _read_meta(Path(reference))
    stored = stored_pipeline(meta, where=where)
    known = stored if stored is not None else _from_settings(meta, where=where)
    if requested is not None:
        pipe = load_pipeline(requested)
        _check_requested(pipe, requested, known, meta, where)
        return ResolvedPipeline(pipe)
    if stored is not None:
        return ResolvedPipeline(stored)
    if known is not None:
        note = (f"note: reference {where} records its panel and preprocessing but not the rest of its pipeline "
                f"(it was built before references stored it): training settings come from the default pipeline "
                f"'{DEFAULT_PIPELINE}'; pass --pipeline to choose them") if uses_model else ""
        return ResolvedPipeline(known, note)
    pipe = load_pipeline(DEFAULT_PIPELINE)
    fingerprint = meta.get("preprocess_fingerprint") or ""
    if fingerprint and _fingerprint(pipe) != fingerprint:
        raise ConfigError(f"reference {where} records no pipeline, and the default pipeline '{DEFAULT_PIPELINE}' "
                          "preprocesses differently from its build (preprocessing fingerprints differ); pass "
                          "--pipeline with the pipeline the reference was built with")
    if "raster" in meta:  # images are always made with the reference's raster
        pipe = dataclasses.replace(pipe, raster=raster_from_dict(meta["raster"]))
    return ResolvedPipeline(pipe, f"note: reference {where} records no pipeline (built before references stored it, "
                                  f"or imported): using the default pipeline '{DEFAULT_PIPELINE}'; pass --pipeline "
                                  "with the pipeline the reference's events were preprocessed with if that is not it")
