"""``rescue mrd build-normal``: build the DfN normal-marrow model that ``rescue score --mrd-model`` reads.

Wire it in with :func:`register` (adds an ``mrd`` sub-app). The model is fitted by
:func:`rescue_gpu.flow.mrd.normal_model_from_rows` from the manifest rows labelled
``negative`` (MRD-negative follow-ups and controls) and saved as ``normal.npz`` +
``normal.json`` (:class:`rescue_gpu.flow.mrd.NormalModel`). Errors are
:class:`~rescue_gpu.errors.RescueError` subclasses (exit code 2 from ``rescue``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..cliutil import console, err_console
from ..errors import ConfigError, OutputError

__all__ = ["register", "build_normal"]


def _pipeline(reference: Path | None, pipeline: str | None) -> Any:
    """The pipeline of the reference (checked against ``pipeline`` when both are given), else ``pipeline``."""
    from ..config import load_pipeline
    from ..reference.pipeline import resolve_pipeline

    if reference is None:
        if pipeline is None:
            raise ConfigError("give --reference (the reference you score with; its pipeline is used) or --pipeline: "
                              "the model must be built with the preprocessing the samples are scored with")
        return load_pipeline(pipeline)
    resolved = resolve_pipeline(reference, pipeline)
    if resolved.note:
        err_console.print(resolved.note, markup=False, highlight=False, soft_wrap=True)
    return resolved.pipeline


def build_normal(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV; the rows labelled 'negative' (MRD-negative "
                                                  "follow-ups and controls) are pooled.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (normal.npz, normal.json).")],
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Reference directory you score with: its "
                                                      "pipeline (panel, preprocessing) is used.")] = None,
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="Pipeline name or TOML path (without "
                                                    "--reference; with it, must agree with the reference).")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Neighbour rank of the DfN distance (default 5).",
                                             show_default=False)] = None,
    max_points: Annotated[Optional[int], typer.Option("--max-points", help="Model events kept (default 20000).",
                                                      show_default=False)] = None,
    false_flag_rate: Annotated[Optional[float], typer.Option("--false-flag-rate", help="Share of normal calibration "
                                                             "events flagged DfN (default 1e-4).",
                                                             show_default=False)] = None,
    candidate_rate: Annotated[Optional[float], typer.Option("--candidate-rate", help="Share of normal calibration "
                                                            "events that are DfN candidates (default 0.005).",
                                                            show_default=False)] = None,
    cluster_radius: Annotated[Optional[float], typer.Option("--cluster-radius", help="Radius of the DfN cluster "
                                                            "score, preprocessed units (default 0.2).",
                                                            show_default=False)] = None,
    loose_rate: Annotated[Optional[float], typer.Option("--loose-rate", help="Share beyond the LAIP tracking's loose "
                                                        "threshold (default 0.003).", show_default=False)] = None,
    cluster_rule: Annotated[Optional[str], typer.Option("--cluster-rule", help="How the cluster threshold is set "
                                                        "on the calibration normals: 'sample' (default: the maximum "
                                                        "of each sample's own threshold) or 'pooled'.",
                                                        show_default=False)] = None,
    sample_flag_rate: Annotated[Optional[float], typer.Option("--sample-flag-rate", help="'sample' rule: share of "
                                                              "each calibration sample's events it may flag "
                                                              "(default 2e-4).", show_default=False)] = None,
    cross_fit: Annotated[Optional[bool], typer.Option("--cross-fit/--no-cross-fit", help="Calibrate every normal "
                                                      "sample against a model without it (default on).",
                                                      show_default=False)] = None,
    excess: Annotated[Optional[bool], typer.Option("--excess/--no-excess", help="Also flag excess populations: "
                                                   "events where a sample is >= --excess-ratio times denser than "
                                                   "normal marrow, once they are >= --excess-share of its events "
                                                   "(blasts on normal progenitors; default on).",
                                                   show_default=False)] = None,
    excess_ratio: Annotated[Optional[float], typer.Option("--excess-ratio", help="Density ratio of the excess rule "
                                                          "(default 10).", show_default=False)] = None,
    excess_share: Annotated[Optional[float], typer.Option("--excess-share", help="Smallest share of a sample's "
                                                          "events the excess rule flags (default 0.02; raised to "
                                                          "twice what the model's own normals reach).",
                                                          show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the model-event subsample.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a model already in --out.")] = False,
) -> None:
    """Build the DfN normal-marrow model from a manifest's MRD-negative and control samples."""
    from ..runner.manifest import read_manifest
    from .mrd import CLUSTER_RULES, EXCESS_RATIO, EXCESS_SHARE, check_excess_rule, normal_model_from_rows

    if (out / "normal.json").exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a DfN model (normal.json); pass --overwrite to replace it or "
                          "choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another --out")
    if cluster_rule is not None and cluster_rule not in CLUSTER_RULES:
        raise ConfigError(f"--cluster-rule must be one of {', '.join(CLUSTER_RULES)}, got {cluster_rule!r}")
    if excess is not False:
        check_excess_rule(EXCESS_RATIO if excess_ratio is None else excess_ratio,
                          EXCESS_SHARE if excess_share is None else excess_share)
    rows = read_manifest(manifest)
    negatives = [r for r in rows if r.label == "negative"]
    if not negatives:
        raise ConfigError(f"{manifest}: no row is labelled 'negative'; label the MRD-negative follow-ups and the "
                          "controls 'negative' (column label) to build the normal model from them")
    pipe = _pipeline(reference, pipeline)
    settings = {name: v for name, v in (("k", k), ("max_points", max_points), ("false_flag_rate", false_flag_rate),
                                        ("candidate_rate", candidate_rate), ("cluster_radius", cluster_radius),
                                        ("loose_rate", loose_rate), ("cluster_rule", cluster_rule),
                                        ("sample_flag_rate", sample_flag_rate), ("cross_fit", cross_fit),
                                        ("excess", excess), ("excess_ratio", excess_ratio),
                                        ("excess_share", excess_share))
                if v is not None}
    failed: dict[str, str] = {}
    warned: dict[str, list[str]] = {}
    model = normal_model_from_rows(rows, pipe, seed=seed, skipped=failed, warned=warned, **settings)
    try:
        model.save(out)
    except OSError as exc:
        raise OutputError(out, exc, "the DfN model") from None
    skipped = len(negatives) - model.n_samples
    rule = (f"max of {len(model.sample_thresholds)} samples' own at flag rate {model.sample_flag_rate:g}"
            if model.cluster_rule == "sample" else f"pooled false-flag rate {model.false_flag_rate:g}")
    console.print(f"wrote {out}: DfN model from {model.n_samples} of {len(negatives)} negative sample(s)"
                  + (f" ({skipped} could not be preprocessed or had no events, left out)" if skipped else "")
                  + f", {len(model.points):,} model events, {model.n_calibration:,} calibration events, k {model.k}, "
                  f"candidate threshold {model.candidate_threshold:.4g} (rate {model.candidate_rate:g}), cluster "
                  f"threshold {model.cluster_threshold:.4g} (radius {model.cluster_radius:g}, rule "
                  f"{model.cluster_rule}: {rule}{', cross-fitted' if model.cross_fit else ''}), "
                  + (f"excess rule (ratio {model.excess_ratio:g} within {model.excess_radius:g}, share "
                     f"{model.excess_share:.3g}; the normals reach at most {max(model.excess_shares, default=0.0):.3g})"
                     if model.excess else "no excess rule")
                  + f", loose threshold {model.loose_threshold:.4g} (rate {model.loose_rate:g}); use it with rescue "
                  f"score --mrd-model {out}",
                  markup=False, highlight=False, soft_wrap=True)
    for sid, err in failed.items():
        err_console.print(f"skipped {sid}: {err}", markup=False, highlight=False, soft_wrap=True)
    for sid, texts in warned.items():
        for text in texts:
            err_console.print(f"warning: {sid}: {text}", markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``mrd`` sub-app (``build-normal``) to ``app``."""
    mrd_app = typer.Typer(no_args_is_help=True, help="Event-level MRD %: build the DfN normal-marrow model.")
    mrd_app.command("build-normal")(build_normal)
    app.add_typer(mrd_app, name="mrd")
