"""The ``rescue train`` and ``rescue evaluate`` commands (wired into :mod:`rescue_gpu.cli` by ``register``).

Errors are raised as :class:`~rescue_gpu.errors.RescueError`; ``rescue_gpu.cli.main`` maps them to exit code 2.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.table import Table

from ..cliutil import console, err_console
from ..errors import ManifestError, RescueError

__all__ = ["register", "read_scores", "join_scores"]

_CALLS = {"positive": 1, "pos": 1, "1": 1, "true": 1, "mrd+": 1, "negative": 0, "neg": 0, "0": 0, "false": 0, "mrd-": 0}
_FAILED = {"failed", "error", "fail"}


def register(app: typer.Typer) -> None:
    """Add the top-level ``train`` and ``evaluate`` commands to ``app``."""
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)


def train_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV with sample_id,path,patient_id,timepoint,label.")],
    reference: Annotated[Path, typer.Option("--reference", help="Reference directory the samples are projected into.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (must not exist).")],
    folds: Annotated[Optional[int], typer.Option("--folds", help="Cross-validation folds (default: the pipeline's).")] = None,
    pipeline: Annotated[Optional[str], typer.Option(
        "--pipeline", help="Pipeline name in pipelines/ or a TOML path. Default: the pipeline the reference was built "
                           "with (stored in it); one given here must have the reference's panel, preprocessing and "
                           "raster, and may differ in its training settings.", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Maximum epochs per fold (default: the pipeline's).")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Folder of the projected-events cache (default: <out>-cache).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Train an MRD model with patient-level cross-validation; save the fold models' ensemble with its CV metrics.

    The ensemble (mean logit of the fold models) makes the calls; its threshold and
    temperature are fitted on the fold models' out-of-fold logits. Warnings about too
    few patients per class per fold or unstable validation curves are printed as
    ``warning: ...`` lines and stored in model.json (provenance ``warnings``).
    """
    from ..runner.manifest import read_manifest
    from ..reference import Reference
    from ..reference.pipeline import resolve_pipeline
    from .train import train_model

    resolved = resolve_pipeline(reference, pipeline, uses_model=True)
    if resolved.note:
        err_console.print(resolved.note, markup=False, highlight=False, soft_wrap=True)
    pipe = resolved.pipeline
    if epochs is not None:
        pipe = dataclasses.replace(pipe, model=dataclasses.replace(
            pipe.model, train=dataclasses.replace(pipe.model.train, max_epochs=epochs)))
    rows = read_manifest(manifest)
    ref = Reference.load(reference)
    record = train_model(rows, ref, pipe, out=out, folds=folds, cache_dir=cache, device=device)
    cv = record.metrics["cv"]
    _print_metrics(cv, title=f"cross-validation (out-of-fold, {record.provenance['folds']} folds)")
    _print_excluded(record.provenance.get("failed_samples", {}), "failed to project, left out")
    _print_excluded({s: "no label" for s in record.provenance.get("unlabelled_samples", [])}, "unlabelled, left out")
    for text in record.provenance.get("warnings", []):
        err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {out}: ensemble of {record.n_members} fold models (mean logit; threshold and temperature "
                  f"fitted on their out-of-fold logits), threshold {record.threshold:.4f} ({cv['threshold_rule']}), "
                  f"temperature {record.temperature:.3f}, sha256 {record.sha256[:12]}")


def read_scores(path: Path) -> list[dict[str, str]]:
    """Read a scores CSV (at least ``sample_id,p_mrd,call``; ``status`` and ``threshold`` optional)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in ("sample_id", "p_mrd", "call") if c not in header]
            if missing:
                raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; a scores file needs "
                                    f"sample_id,p_mrd,call (found: {', '.join(header) or 'nothing'})")
            return [{(k or "").strip(): (v or "").strip() for k, v in rec.items()} for rec in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read the scores ({exc})") from None


def _usable(rec: dict[str, str]) -> str:
    """Why a score row cannot be evaluated ('' when it can)."""
    if rec.get("status", "").lower() in _FAILED:
        return f"status {rec['status']}"
    try:
        p = float(rec["p_mrd"])
    except ValueError:
        return "no p_mrd"
    if not math.isfinite(p):
        return "no p_mrd"
    if rec["call"].lower() not in _CALLS:
        return f"call {rec['call']!r} unreadable"
    return ""


def join_scores(scores: list[dict[str, str]], truth: list[Any]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Join scores with manifest rows on ``sample_id``.

    Returns
    -------
    (dict, dict)
        Arrays ``sample_id, y, p, call, patient, timepoint`` of the evaluable samples,
        and ``{sample_id: reason}`` of every sample left out.
    """
    from .dataset import label_value

    by_id = {r["sample_id"]: r for r in scores}
    excluded: dict[str, str] = {}
    cols: dict[str, list[Any]] = {k: [] for k in ("sample_id", "y", "p", "call", "patient", "timepoint")}
    for row in truth:
        rec, y = by_id.get(row.sample_id), label_value(row.label)
        why = "no label in the manifest" if y is None else "no score" if rec is None else _usable(rec)
        if why:
            excluded[row.sample_id] = why
            continue
        for k, v in zip(cols, (row.sample_id, y, float(rec["p_mrd"]), _CALLS[rec["call"].lower()],
                               row.patient_id or f"sample:{row.sample_id}", row.timepoint)):
            cols[k].append(v)
    known = {r.sample_id for r in truth}
    excluded.update({sid: "not in the manifest" for sid in by_id if sid not in known})
    return {k: np.asarray(v) for k, v in cols.items()}, excluded


def _threshold(scores: list[dict[str, str]], data: dict[str, np.ndarray]) -> float:
    """The run's threshold column if present and single-valued, else the largest threshold consistent with the calls."""
    values = {r.get("threshold", "") for r in scores if r.get("threshold", "")}
    if len(values) == 1:
        return float(values.pop())
    pos = data["p"][data["call"] == 1]
    return float(pos.min()) if pos.size else float(np.nextafter(data["p"].max(), np.inf))


def evaluate_cmd(
    scores: Annotated[Path, typer.Argument(help="Scores CSV (sample_id,p_mrd,call[,status,threshold,...]).")],
    truth: Annotated[Path, typer.Option("--truth", help="Manifest CSV with the labels (and patient_id, timepoint).")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for metrics.json and roc.png.")] = None,
    boot: Annotated[int, typer.Option("--boot", help="Patient-level bootstrap replicates.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
    mrd_truth: Annotated[Optional[Path], typer.Option("--mrd-truth", help="CSV with sample_id and true_mrd_pct "
                         "(the simulator's truth.csv): also report the MRD % agreement (scores need mrd_pct).")] = None,
) -> None:
    """Score calls against the truth: metrics with patient-level 95% intervals, confusion, per timepoint.

    Scores with MRD columns (``rescue score --mrd-model``) also get the image model's call,
    the MRD % call and the combined call compared on the same samples (``calls`` in
    metrics.json; see :mod:`rescue_gpu.flow.mrd_calls`).
    """
    from ..runner.manifest import read_manifest
    from ..nn.metrics import binary_metrics, confusion, evaluate_predictions, plot_roc

    recs = read_scores(scores)
    data, excluded = join_scores(recs, read_manifest(truth))
    if data["y"].size == 0:
        raise RescueError(f"{scores}: no sample could be evaluated against {truth} ({len(excluded)} left out)")
    threshold = _threshold(recs, data)
    report = evaluate_predictions(data["y"], data["p"], threshold=threshold, groups=data["patient"],
                                  timepoints=data["timepoint"], n_boot=boot, seed=seed)
    report["threshold_source"] = ("the scores' threshold column" if any(r.get("threshold") for r in recs)
                                  else "inferred from the calls (lowest p_mrd called positive)")
    calls_conf = confusion(data["y"], data["call"])
    if calls_conf != report["confusion"]:  # the calls disagree with p >= threshold: report the calls as made
        err_console.print("note: the 'call' column disagrees with p_mrd >= threshold; the confusion uses the calls")
        report["confusion"] = calls_conf
        made = binary_metrics(data["y"], data["call"].astype(float), threshold=0.5)
        for k in ("sensitivity", "specificity", "f1"):
            report["metrics"][k] = {"estimate": _none(made[k]), "low": None, "high": None}
    report["excluded"] = excluded
    report.update({"scores": str(scores), "truth": str(truth)})
    calls = _calls_report(recs, data, boot=boot, seed=seed)
    if calls is not None:
        report["calls"] = calls
    if mrd_truth is not None:
        report["mrd"] = _mrd_report(scores, mrd_truth, boot=boot, seed=seed)
        console.print(f"MRD % agreement: {json.dumps(report['mrd'])}", markup=False, highlight=False)
    _print_metrics(report, title=f"evaluation of {scores.name} against {truth.name}")
    if calls is not None:
        _print_calls(calls)
    _print_excluded(excluded, "left out of the evaluation")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        if 0 < data["y"].sum() < data["y"].size:
            plot_roc(data["y"], data["p"], out / "roc.png", threshold=threshold, title="ROC (evaluated samples)")
        console.print(f"wrote {out / 'metrics.json'}" + (f" and {out / 'roc.png'}" if (out / "roc.png").exists() else ""))


def _calls_report(recs: list[dict[str, str]], data: dict[str, np.ndarray], *, boot: int,
                  seed: int) -> dict[str, Any] | None:
    """The image, MRD % and combined calls compared (:mod:`rescue_gpu.flow.mrd_calls`), or None without MRD columns.

    Only the evaluated samples that have an ``mrd_status`` are compared (the same samples
    for the three calls), pooled and per manifest timepoint (``by_timepoint``).
    """
    from .mrd_calls import CALLS, call_performance, sample_calls

    if not recs or "mrd_status" not in recs[0]:
        return None
    calls = sample_calls(recs, list(data["sample_id"]))
    keep = calls["has_mrd"] == 1
    if not keep.any():
        return None
    return call_performance(data["y"][keep], {k: calls[k][keep] for k in CALLS}, data["patient"][keep],
                            n_boot=boot, seed=seed, timepoints=data["timepoint"][keep])


def _print_calls(calls: dict[str, Any]) -> None:
    table = Table("call", "positive calls", "sensitivity [95% patient CI]", "specificity [95% patient CI]",
                  title=f"image model, MRD % and combined call on the same {calls['n']} samples "
                        f"({calls['n_positive']} positive, {calls['n_negative']} negative, {calls['n_patients']} patients)")
    for name, label in (("image", "image model (p_mrd >= threshold)"), ("mrd", "MRD % (mrd_status positive)"),
                        ("combined", "combined_call")):
        c = calls[name]
        table.add_row(label, str(c["positive"]), _fmt(c["sensitivity"]), _fmt(c["specificity"]))
    console.print(table)
    per = Table("timepoint", "n (pos/neg)", "call", "sensitivity", "specificity", title="calls by timepoint")
    for tp, part in calls.get("by_timepoint", {}).items():
        for name in ("image", "mrd", "combined"):
            per.add_row(tp, f"{part['n']} ({part['n_positive']}/{part['n_negative']})", name,
                        _fmt(part[name]["sensitivity"]), _fmt(part[name]["specificity"]))
    if calls.get("by_timepoint"):
        console.print(per)


def _mrd_report(scores: Path, truth: Path, *, boot: int, seed: int) -> dict[str, Any]:
    """MRD % agreement (:func:`rescue_gpu.flow.mrd.mrd_agreement`), overall and per ``mrd_method``."""
    import pandas as pd

    from .mrd import mrd_agreement

    s = pd.read_csv(scores)
    if "mrd_pct" not in s.columns:
        raise RescueError(f"{scores}: no mrd_pct column; score with --mrd-model to evaluate the MRD %")
    t = pd.read_csv(truth)
    if "true_mrd_pct" not in t.columns:
        raise RescueError(f"{truth}: no true_mrd_pct column; --mrd-truth takes a CSV with sample_id and "
                          "true_mrd_pct (the known MRD % of each sample, as rescue simulate's truth.csv has)")
    df = s.merge(t[["sample_id", "true_mrd_pct"]], on="sample_id", how="inner")
    df = df[df["timepoint"] != "diagnosis"] if "timepoint" in df.columns else df
    out: dict[str, Any] = {"all": mrd_agreement(df["mrd_pct"], df["true_mrd_pct"], df["patient_id"], n_boot=boot,
                                                seed=seed)}
    for method, part in df.groupby("mrd_method"):
        out[str(method)] = mrd_agreement(part["mrd_pct"], part["true_mrd_pct"], part["patient_id"], n_boot=boot,
                                         seed=seed)
    return _finite_or_none(out)


def _finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN where a figure is undefined) as ``None``: strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float):
        return _none(obj)
    return obj


def _none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _fmt(d: dict[str, Any] | None) -> str:
    if not d or d.get("estimate") is None:
        return "n/a"
    if d.get("low") is None:
        return f"{d['estimate']:.3f}"
    return f"{d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"


def _print_metrics(report: dict[str, Any], *, title: str) -> None:
    c = report["confusion"]
    console.print(f"[bold]{title}[/bold]: {report['n']} samples ({report['n_positive']} positive, "
                  f"{report['n_negative']} negative), {report['n_patients']} patients, threshold {report['threshold']:.4f}"
                  + (f" ({report['threshold_source']})" if "threshold_source" in report else ""))
    table = Table("metric", "estimate [95% patient bootstrap CI]")
    for k, v in report["metrics"].items():
        table.add_row(k, _fmt(v))
    console.print(table)
    console.print(f"confusion: TP {c['tp']}  FP {c['fp']}  TN {c['tn']}  FN {c['fn']}")
    per = Table("timepoint", "n", "positive", "sensitivity", "specificity", "ROC AUC", title="by timepoint")
    for tp, row in report["by_timepoint"].items():
        per.add_row(tp, str(row["n"]), str(row["n_positive"]), _fmt(row["sensitivity"]),
                    _fmt(row["specificity"]), _fmt(row["roc_auc"]))
    console.print(per)


def _print_excluded(excluded: dict[str, str], what: str) -> None:
    if not excluded:
        return
    console.print(f"{len(excluded)} sample(s) {what}:")
    for sid, why in excluded.items():
        console.print(f"  {sid}: {why}", markup=False, highlight=False)

