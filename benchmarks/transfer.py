"""Transfer check (issue 17): train on one simulator's cohort, score the other's, both directions.

Sources: the main simulator (``rescue_gpu.simulate.flow``, 10-colour, ``$PnR`` 2**18) and
Lab B (``rescue_gpu.simulate.labb``, 8-colour, other fluorochromes, ``$PnR`` 2**20). Each
source's patients are split into training and held-out patients. Per source, the CLI
builds a reference from the training manifest (``rescue reference build --pipeline``),
trains (``rescue train``: 3-fold patient CV, then a final model) and scores
(``rescue score --in-process``) the held-out patients of both sources. The pipeline
of a source keeps the 8 markers both panels share (CD45, CD34, CD117, CD13, CD33, HLA-DR,
CD7, CD56) plus FSC-A/SSC-A, its own instrument scale (logicle ``t`` and scatter
``scale``: 262144 for the main simulator, 1048576 for Lab B) and CPU-sized training
(64 px, 3 folds, <= 12 epochs, patience 4, 2 augmentation copies; aml-mrd otherwise);
the target is preprocessed with the source's pipeline, as ``rescue score`` does with
any reference. Reported per (source -> target) on the target's held-out patients: ROC
AUC, sensitivity and specificity at the model's stored threshold, with patient-level
95% bootstrap intervals, overall and per timepoint (control, MRD-negative follow-up,
MRD-positive follow-up). Writes ``transfer.md`` and ``transfer.json`` to ``--out``.

Beside the image model's call, each row also reports (issue 17, session 6) the event-level
MRD % call and the combined call on the same held-out samples (:func:`call_metrics`): per
source the CLI builds the DfN normal model from the source's training normals only
(``rescue mrd build-normal SOURCE-TRAIN --reference SOURCE-REF``, the manifest's rows
labelled negative: MRD-negative follow-ups and controls) and scores with it
(``rescue score --mrd-model``); the LAIP of a follow-up comes from the same patient's
diagnosis sample in the scored (target) manifest, as ``rescue score`` does. The MRD % call
is ``mrd_status == "positive"`` (>= 50 aberrant events and >= 0.1 % of CD45+ events, ELN
2021), ranked by ``mrd_pct`` for its ROC AUC; the combined call is ``combined_call``. Both
definitions of positive are reported: the manifest's labels (every diagnosis and MRD+
follow-up, as for the image call) and the simulator's truth (``observed_fraction`` >= 0.1 %).
``--metrics-only`` recomputes the tables and JSON from an existing ``--out`` folder.

``--site-normals`` (issue 17, session 8) adds, per cross-source direction S -> T, the route
ELN prescribes for a new laboratory: the target site establishes its own normal range from
its own normal marrows, here the MRD-negative follow-ups and controls of T's *training*
patients (never the scored ones). Through the CLI: a DfN model from them against S's
reference (``rescue mrd build-normal T-TRAIN --reference S-REF``); S's image model scores
them (``sitecal-S-to-T``) and ``rescue model site-threshold`` writes a copy of it whose
stored threshold is the lowest calling at most ``--site-rate`` of them positive
(``model-S-site-T``); T's held-out patients are scored with both (``run-S-to-T-site``,
the row ``S → T (site normals)``). S's weights and reference are unchanged.

``--main-mix`` sets the main cohort's class composition: ``monitoring`` (default;
:data:`rescue_gpu.simulate.MONITORING_COUNTS`, 30/23/30/17 diagnosis / MRD+ / MRD- / control,
47 % negative samples) or ``library`` (the reference library's 765/336/170/90, 19 % negative,
which left main's training part with 5 negative samples of 34 in a 60-sample cohort).
Lab B's composition is its generator's (diagnosis plus 1-3 follow-ups per patient, half the
first follow-ups negative, ``patients // 2`` controls). ``--shift-copies`` / ``--shift-gain`` /
``--shift-offset`` set the instrument-shift augmentation of training (``[model.train]``).

``--normalize landmarks`` turns on the per-sample landmark registration
(``[preprocess.normalize]``): the source's targets are the mean quantile landmarks of the
source's own training samples (preprocessed without it); ``--normalize peaks`` registers
the density peaks instead (the peaks of the training samples' pooled density, each sample's
peaks matched to them; ``method = "peaks"``). Either is computed before the reference is
built and written into the source's pipeline file, so the reference, the training images
and both targets' scoring use the same registration. Only the source's training files are
read for the targets (no labels, nothing of the scored patients).

Usage::

    python benchmarks/transfer.py --main-samples 48 --labb-patients 12 --events 4000 --out /tmp/transfer
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rescue_gpu.cli import main as rescue
from rescue_gpu.config import NormalizeSpec, load_pipeline
from rescue_gpu.flow.mrd import THRESHOLD_PCT, combined_call, mrd_status
from rescue_gpu.flow.stages import reference_landmarks
from rescue_gpu.nn.metrics import bootstrap_intervals
from rescue_gpu.preprocess import normalize_toml
from rescue_gpu.runner.manifest import read_manifest
from rescue_gpu.simulate.labb import PIPELINE_FILE, simulate_labb_cohort

COMMON = ["CD45", "CD34", "CD117", "CD13", "CD33", "HLA-DR", "CD7", "CD56"]
SCALE = {"main": 262144.0, "labb": 1048576.0}
GROUPS = ("control", "mrd_negative", "mrd_positive", "diagnosis")

PIPELINE = """
name = "transfer-{source}"
description = "issue 17 transfer check, trained on the {source} simulator"

[panel]
markers = {markers}
scatter = ["FSC-A", "SSC-A"]

[panel.aliases]
"HLA-DR" = ["HLADR", "DR", "HLA DR"]
"CD117" = ["KIT", "C-KIT", "CKIT"]
"CD56" = ["NCAM"]
"CD45" = ["PTPRC"]

[preprocess.fluorescence]
kind = "logicle"
t = {scale}
w = 0.5
m = 4.5
a = 0.0
top = "{top}"

[preprocess.scatter]
kind = "linear"
scale = {scale}
top = "{top}"

[reference]
events_per_sample = {ref_events}

[raster]
size = 64

[model.train]
folds = 3
max_epochs = 12
patience = 4
augment_copies = 2
shift_copies = {shift_copies}
shift_gain = {shift_gain}
shift_offset = {shift_offset}
seed = {seed}
"""


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--main-samples", type=int, default=48, help="samples of the main simulator's cohort")
    ap.add_argument("--main-mix", choices=("monitoring", "library"), default="monitoring",
                    help="class composition of the main cohort: an MRD-monitoring cohort (MONITORING_COUNTS, "
                         "47%% negative samples) or the reference library's (REFERENCE_COUNTS, 19%%)")
    ap.add_argument("--labb-patients", type=int, default=12, help="leukaemic patients of the Lab B cohort")
    ap.add_argument("--labb-controls", type=int, default=None, help="Lab B control donors (default patients // 2)")
    ap.add_argument("--events", type=int, default=4000, help="events per sample (both sources)")
    ap.add_argument("--ref-events", type=int, default=1000, help="events pooled per reference sample")
    ap.add_argument("--held-out", type=float, default=0.4, help="share of each source's patients held out")
    ap.add_argument("--boot", type=int, default=1000, help="patient-level bootstrap replicates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", choices=("file", "fixed"), default="file",
                    help="transforms' top of scale: each file's own $PnR (file) or the source's fixed range")
    ap.add_argument("--normalize", choices=("none", "landmarks", "peaks"), default="none",
                    help="per-sample registration onto the source's training landmarks: quantiles or density peaks")
    ap.add_argument("--quantiles", type=float, nargs="+", default=[0.1, 0.5, 0.9],
                    help="landmark quantiles for --normalize landmarks")
    ap.add_argument("--normalize-channels", nargs="*", default=[],
                    help="channels to register with --normalize (default: all 10)")
    ap.add_argument("--shift-copies", type=int, default=0,
                    help="train.shift_copies: instrument-shifted copies of each training sample (0: off)")
    ap.add_argument("--shift-gain", type=float, default=0.1, help="train.shift_gain (SD of the log per-channel gain)")
    ap.add_argument("--shift-offset", type=float, default=0.05, help="train.shift_offset (SD of the per-channel offset)")
    ap.add_argument("--site-normals", action="store_true",
                    help="also score each cross-source direction with a DfN model and an image threshold "
                         "from the target site's own training-side normals (ELN's per-laboratory normal range)")
    ap.add_argument("--site-rate", type=float, default=0.05,
                    help="share of the site's normals the site threshold may call positive (--site-normals)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/transfer"))
    ap.add_argument("--metrics-only", action="store_true",
                    help="recompute transfer.md / transfer.json from the runs already in --out (no simulation, "
                         "training or scoring)")
    return ap.parse_args()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_manifest(path: Path, rows: list[dict[str, str]], base: Path) -> Path:
    """A manifest of ``rows`` with absolute paths (so it may live outside the cohort folder)."""
    cols = ["sample_id", "path", "patient_id", "timepoint", "label"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows([{**r, "path": str((base / r["path"]).resolve())} for r in rows])
    return path


def _split(rows: list[dict[str, str]], share: float, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Patient-level split, stratified by whether the patient is a control."""
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for control in (True, False):
        ids = sorted({r["patient_id"] for r in rows if (r["timepoint"] == "control") == control})
        ids = [ids[i] for i in rng.permutation(len(ids))]
        held |= set(ids[: max(1, round(share * len(ids)))])
    return [r for r in rows if r["patient_id"] not in held], [r for r in rows if r["patient_id"] in held]


def _kinds(truth: Path) -> dict[str, str]:
    """sample_id -> diagnosis / mrd_positive / mrd_negative / control (both truth.csv formats have ``kind``)."""
    return {r["sample_id"]: r["kind"] for r in _read_csv(truth)}


def _cli(*args: Any) -> None:
    rc = rescue([str(a) for a in args])
    if rc != 0:
        raise SystemExit(f"rescue {' '.join(map(str, args[:2]))} failed with exit code {rc}")


def _truth_pct(truth: Path) -> dict[str, float]:
    """sample_id -> the simulator's observed MRD % (100 x ``observed_fraction``, a column of both generators)."""
    return {r["sample_id"]: 100.0 * float(r["observed_fraction"]) for r in _read_csv(truth)}


def _float(text: str | None) -> float:
    """A CSV cell as a float (empty or missing: nan)."""
    try:
        return float(text) if text not in (None, "") else float("nan")
    except ValueError:
        return float("nan")


def _call_block(y: np.ndarray, score: np.ndarray | None, call: np.ndarray, g: np.ndarray, k: np.ndarray,
                n_boot: int, seed: int) -> dict[str, Any]:
    """One call's pooled ROC AUC (of ``score``; None without one), sensitivity, specificity, and per kind."""
    out: dict[str, Any] = {"positive": int(call.sum())}
    iv = bootstrap_intervals(y, call.astype(float), g, threshold=0.5, n_boot=n_boot, seed=seed,
                             metrics=("sensitivity", "specificity"))
    out["all"] = {m: v.as_dict() for m, v in iv.items()}
    follow = np.isin(k, ("mrd_positive", "mrd_negative", "control"))
    for name, m in (("all", np.ones(y.size, bool)), ("follow_up_and_control", follow)):
        ok = m & np.isfinite(score) if score is not None else m
        auc = (bootstrap_intervals(y[ok], score[ok], g[ok], threshold=0.5, n_boot=n_boot, seed=seed,
                                   metrics=("roc_auc",))["roc_auc"].as_dict()
               if score is not None and ok.any() else None)
        out.setdefault(name, {})["roc_auc"] = auc
    for group in GROUPS:
        m = k == group
        if m.any():
            iv = bootstrap_intervals(y[m], call[m].astype(float), g[m], threshold=0.5, n_boot=n_boot, seed=seed,
                                     metrics=("sensitivity", "specificity"))
            out[group] = {"n": int(m.sum()), "positive": int(call[m].sum()), **{n: v.as_dict() for n, v in iv.items()}}
    return out


def call_metrics(rows: list[dict[str, str]], y: dict[str, int], kinds: dict[str, str], *, n_boot: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """The image, MRD % and combined calls of scored ``rows`` (``scores.csv`` dicts) against ``y`` (sample -> 0/1).

    ``image``: ``p_mrd >= threshold`` (the row's ``threshold``), AUC by ``p_mrd``; ``mrd``:
    ``mrd_status == "positive"``, AUC by ``mrd_pct``; ``combined``: ``combined_call ==
    "positive"``, no AUC (a 0/1 call). Each: ``{"positive": n, "all": {roc_auc, sensitivity,
    specificity}, "follow_up_and_control": {roc_auc}, <kind>: {n, positive, sensitivity,
    specificity}}`` with patient-level 95 % bootstrap intervals (``{estimate, low, high}``,
    None where undefined), kinds from ``kinds`` (diagnosis, mrd_positive, mrd_negative,
    control). Rows whose ``status`` is not ``scored`` are left out; a scored row without MRD
    columns counts as an MRD-negative call and as ``mrd_pct`` nan (left out of the MRD AUC;
    ``n_no_mrd`` counts them). For comparison only (not the product's rule, as in
    ``benchmarks/eval_calls.py``), with ``mrd_events`` / ``cd45_events`` in every row:
    ``combined_at_eln_counts``, ``combined_call`` as if every sample had ELN's 500,000 CD45+
    events (``mrd_status(min_cd45=0)``: a count below 0.1 % is ``negative`` and the image
    model cannot overturn it).
    """
    rows = [r for r in rows if r.get("status", "scored") == "scored"]
    ids = [r["sample_id"] for r in rows]
    yy = np.array([y[s] for s in ids], dtype=int)
    g = np.array([r["patient_id"] for r in rows]).astype(str)
    k = np.array([kinds[s] for s in ids]).astype(str)
    p = np.array([_float(r.get("p_mrd")) for r in rows])
    thr = np.array([_float(r.get("threshold")) for r in rows])
    pct = np.array([_float(r.get("mrd_pct")) for r in rows])
    status = np.array([(r.get("mrd_status") or "").strip().lower() for r in rows])
    combined = np.array([(r.get("combined_call") or "").strip().lower() == "positive" for r in rows])
    out: dict[str, Any] = {"n": len(rows), "n_positive": int(yy.sum()), "n_patients": int(np.unique(g).size),
                           "n_no_mrd": int((status == "").sum()),
                           "mrd_status_counts": {s: int((status == s).sum()) for s in sorted(set(status))}}
    out["image"] = _call_block(yy, p, p >= thr, g, k, n_boot, seed)
    out["mrd"] = _call_block(yy, pct, status == "positive", g, k, n_boot, seed)
    out["combined"] = _call_block(yy, None, combined, g, k, n_boot, seed)
    ev, cd45 = np.array([_float(r.get("mrd_events")) for r in rows]), np.array([_float(r.get("cd45_events")) for r in rows])
    if rows and np.isfinite(ev).all() and np.isfinite(cd45).all():
        eln = np.array([combined_call(float(pi), float(ti), mrd_status(int(e), int(c), min_cd45=0)) == "positive"
                        for pi, ti, e, c in zip(p, thr, ev, cd45)])
        out["combined_at_eln_counts"] = _call_block(yy, None, eln, g, k, n_boot, seed)
    return out


def _metrics(scores: Path, kinds: dict[str, str], n_boot: int, seed: int,
             truth_pct: dict[str, float] | None = None) -> dict[str, Any]:
    """Pooled and per-group ROC AUC / sensitivity / specificity with patient-level intervals.

    Also ``calls`` (:func:`call_metrics` against the manifest's labels) and, with
    ``truth_pct``, ``calls_truth_ge_0.1`` (positive iff the simulator's MRD % >= 0.1).
    """
    all_rows = _read_csv(scores)
    rows = [r for r in all_rows if r["status"] == "scored"]
    y = np.array([1 if kinds[r["sample_id"]] in ("diagnosis", "mrd_positive") else 0 for r in rows])
    p = np.array([float(r["p_mrd"]) for r in rows])
    g = np.array([r["patient_id"] for r in rows])
    k = np.array([kinds[r["sample_id"]] for r in rows])
    thr = float(rows[0]["threshold"])
    out: dict[str, Any] = {"n": len(rows), "n_failed": len(_read_csv(scores)) - len(rows), "threshold": thr,
                           "n_patients": int(np.unique(g).size)}
    out["all"] = {m: v.as_dict() for m, v in bootstrap_intervals(y, p, g, threshold=thr, n_boot=n_boot,
                                                                    seed=seed).items()}
    for group in GROUPS:
        m = k == group
        if m.any():
            iv = bootstrap_intervals(y[m], p[m], g[m], threshold=thr, n_boot=n_boot, seed=seed,
                                     metrics=("sensitivity", "specificity"))
            out[group] = {"n": int(m.sum()), **{n: v.as_dict() for n, v in iv.items()}}
    label = {s: int(kd in ("diagnosis", "mrd_positive")) for s, kd in kinds.items()}
    out["calls"] = call_metrics(rows, label, kinds, n_boot=n_boot, seed=seed)
    if truth_pct is not None:
        out["calls_truth_ge_0.1"] = call_metrics(rows, {s: int(v >= THRESHOLD_PCT) for s, v in truth_pct.items()},
                                                 kinds, n_boot=n_boot, seed=seed)
    return out


def _fmt(d: dict[str, Any] | None) -> str:
    if not d or d.get("estimate") is None or not np.isfinite(d["estimate"]):
        return "n/a"
    lo, hi = d.get("low"), d.get("high")
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and np.isfinite(lo) else ""
    return f"{d['estimate']:.2f}{ci}"


def _table(results: dict[str, dict[str, Any]]) -> str:
    head = ("| source → target | held-out samples (patients) | ROC AUC | sensitivity | specificity | "
            "spec. controls | spec. MRD− follow-up | sens. MRD+ follow-up | sens. diagnosis |")
    lines = [head, "|" + "---|" * 9]
    for key, r in results.items():
        lines.append(
            f"| {key} | {r['n']} ({r['n_patients']}) | {_fmt(r['all']['roc_auc'])} | {_fmt(r['all']['sensitivity'])} | "
            f"{_fmt(r['all']['specificity'])} | {_fmt(r.get('control', {}).get('specificity'))} | "
            f"{_fmt(r.get('mrd_negative', {}).get('specificity'))} | {_fmt(r.get('mrd_positive', {}).get('sensitivity'))} | "
            f"{_fmt(r.get('diagnosis', {}).get('sensitivity'))} |")
    return "\n".join(lines)


def _calls_table(results: dict[str, dict[str, Any]], key: str = "calls") -> str:
    """Per (source -> target) x call: ROC AUC, sensitivity, specificity, overall and per kind."""
    head = ("| source → target | call | ROC AUC | ROC AUC follow-ups+controls | sensitivity | specificity | "
            "spec. controls | spec. MRD− follow-up | sens. MRD+ follow-up | sens. diagnosis |")
    lines = [head, "|" + "---|" * 10]
    for label, r in results.items():
        for call in ("image", "mrd", "combined", "combined_at_eln_counts"):
            c = (r.get(key) or {}).get(call)
            if c is None:
                continue
            lines.append(
                f"| {label} | {call} | {_fmt(c['all'].get('roc_auc'))} | "
                f"{_fmt(c['follow_up_and_control'].get('roc_auc'))} | {_fmt(c['all']['sensitivity'])} | "
                f"{_fmt(c['all']['specificity'])} | {_fmt(c.get('control', {}).get('specificity'))} | "
                f"{_fmt(c.get('mrd_negative', {}).get('specificity'))} | "
                f"{_fmt(c.get('mrd_positive', {}).get('sensitivity'))} | "
                f"{_fmt(c.get('diagnosis', {}).get('sensitivity'))} |")
    return "\n".join(lines)


def _cohorts(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Simulate both cohorts; per source, its train/held-out manifests and kinds."""
    from rescue_gpu.simulate import MONITORING_COUNTS, simulate_cohort

    main_dir, labb_dir = a.out / "main", a.out / "labb"
    simulate_cohort(main_dir, n_samples=a.main_samples, n_events=a.events, seed=a.seed,
                    weights=MONITORING_COUNTS if a.main_mix == "monitoring" else None)
    simulate_labb_cohort(labb_dir, n_patients=a.labb_patients, n_events=a.events, seed=a.seed + 1,
                         n_controls=a.labb_controls)
    out = {}
    for name, d in (("main", main_dir), ("labb", labb_dir)):
        train, held = _split(_read_csv(d / "manifest.csv"), a.held_out, a.seed)
        kinds = _kinds(d / "truth.csv")
        out[name] = {"train": _write_manifest(a.out / f"{name}-train.csv", train, d),
                     "held": _write_manifest(a.out / f"{name}-held.csv", held, d),
                     "kinds": kinds, "n_train": len(train), "n_held": len(held),
                     "n_train_by_kind": {g: sum(kinds[r["sample_id"]] == g for r in train) for g in GROUPS},
                     "n_held_by_kind": {g: sum(kinds[r["sample_id"]] == g for r in held) for g in GROUPS},
                     "patients_train": len({r["patient_id"] for r in train}),
                     "patients_held": len({r["patient_id"] for r in held})}
    return out


def _landmarks(toml: Path, manifest: Path, method: str, quantiles: list[float], channels: list[str]) -> str:
    """The ``[preprocess.normalize]`` table: the landmarks of the training samples in ``manifest``."""
    targets, failed = reference_landmarks(read_manifest(manifest), load_pipeline(toml), quantiles=quantiles,
                                          channels=channels, method=method)
    if failed:
        raise SystemExit(f"landmarks: {len(failed)} training samples failed: {failed}")
    return normalize_toml(NormalizeSpec(method=method, quantiles=tuple(quantiles), targets=targets))


def _train(source: str, c: dict[str, Any], a: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Reference, image model and DfN normal model of one source (its training manifest only), through the CLI."""
    toml = a.out / f"transfer-{source}.toml"
    toml.write_text(PIPELINE.format(source=source, markers=json.dumps(COMMON), scale=SCALE[source],
                                    ref_events=a.ref_events, seed=a.seed, top=a.top, shift_copies=a.shift_copies,
                                    shift_gain=a.shift_gain, shift_offset=a.shift_offset), encoding="utf-8")
    if a.normalize != "none":
        block = _landmarks(toml, c["train"], a.normalize, a.quantiles, a.normalize_channels)
        toml.write_text(toml.read_text(encoding="utf-8") + "\n" + block, encoding="utf-8")
    ref, model = a.out / f"ref-{source}", a.out / f"model-{source}"
    _cli("reference", "build", c["train"], "--out", ref, "--pipeline", toml, "--backend", "cpu")
    _cli("train", c["train"], "--reference", ref, "--out", model, "--device", "cpu")
    normal = a.out / f"normal-{source}"
    _cli("mrd", "build-normal", c["train"], "--out", normal, "--reference", ref)
    return ref, model, normal


def _results(a: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Metrics of every ``run-SOURCE-to-TARGET`` folder in ``a.out`` (the runs' scores and the cohorts' truth)."""
    results: dict[str, dict[str, Any]] = {}
    for source in ("main", "labb"):
        for target in ("main", "labb"):
            scores = a.out / f"run-{source}-to-{target}" / "scores.csv"
            if not scores.exists():
                continue
            truth = a.out / target / "truth.csv"
            label = f"{source} → {target}" + (" (within-source baseline)" if source == target else "")
            results[label] = _metrics(scores, _kinds(truth), a.boot, a.seed, _truth_pct(truth))
            site = a.out / f"run-{source}-to-{target}-site" / "scores.csv"
            if site.exists():
                r = _metrics(site, _kinds(truth), a.boot, a.seed, _truth_pct(truth))
                cal = json.loads((a.out / f"model-{source}-site-{target}" / "model.json").read_text(encoding="utf-8"))
                r["site_calibration"] = {k: v for k, v in cal["provenance"]["site_calibration"].items() if k != "normals"}
                results[f"{source} → {target} (site normals)"] = r
    return results


def _site_normals(source: str, target: str, c: dict[str, Any], ref: Path, model: Path, a: argparse.Namespace) -> None:
    """Score the target's held-out patients with a DfN model and an image threshold from the target's own normals.

    Only the negative rows of the target's training patients are read for both.
    """
    normal = a.out / f"normal-{source}-site-{target}"
    _cli("mrd", "build-normal", c["train"], "--out", normal, "--reference", ref)
    negatives = [r for r in _read_csv(c["train"]) if r["label"].strip().lower() == "negative"]
    cal, site_model = a.out / f"sitecal-{source}-to-{target}", a.out / f"model-{source}-site-{target}"
    _cli("score", _write_manifest(a.out / f"{target}-train-normals.csv", negatives, a.out), "--reference", ref,
         "--model", model, "--out", cal, "--in-process", "--backend", "cpu", "--no-report")
    _cli("model", "site-threshold", model, "--normals", cal, "--out", site_model, "--rate", a.site_rate)
    _cli("score", c["held"], "--reference", ref, "--model", site_model, "--mrd-model", normal,
         "--out", a.out / f"run-{source}-to-{target}-site", "--in-process", "--backend", "cpu", "--no-report")


def _write(a: argparse.Namespace, results: dict[str, dict[str, Any]], sizes: dict[str, Any],
           times: dict[str, float]) -> None:
    """transfer.md and transfer.json in ``a.out``; print the tables."""
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
               f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    table = _table(results)
    calls = ("### image / MRD % / combined call, positive = manifest label (diagnosis, every MRD+ follow-up)\n\n"
             + _calls_table(results, "calls")
             + "\n\n### image / MRD % / combined call, positive = simulator's MRD % >= 0.1\n\n"
             + _calls_table(results, "calls_truth_ge_0.1"))
    (a.out / "transfer.md").write_text(table + "\n\n" + calls + "\n", encoding="utf-8")
    (a.out / "transfer.json").write_text(json.dumps({"simulated": True, "args": {k: str(v) for k, v in vars(a).items()},
                                                    "sizes": sizes, "times_s": times, "machine": machine,
                                                    "results": results}, indent=2), encoding="utf-8")
    print(table)
    print(calls)
    print(json.dumps(sizes))
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()) + f"; total {sum(times.values()):.0f} s")
    print(f"machine: {machine}")


def main() -> None:
    """Run the check and write the table and JSON (``--metrics-only``: only recompute them)."""
    a = _args()
    if a.metrics_only:
        saved = json.loads((a.out / "sizes.json").read_text(encoding="utf-8"))
        times = json.loads((a.out / "times.json").read_text(encoding="utf-8")) if (a.out / "times.json").exists() else {}
        _write(a, _results(a), saved, times)
        return
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    cohorts = _cohorts(a)
    times["simulate"] = time.perf_counter() - t0
    sizes = {k: {m: v for m, v in c.items() if m.startswith(("n_", "patients_"))} for k, c in cohorts.items()}
    (a.out / "sizes.json").write_text(json.dumps(sizes), encoding="utf-8")
    for source in ("main", "labb"):
        t0 = time.perf_counter()
        ref, model, normal = _train(source, cohorts[source], a)
        times[f"reference+train+normal {source}"] = time.perf_counter() - t0
        for target in ("main", "labb"):
            t0 = time.perf_counter()
            run = a.out / f"run-{source}-to-{target}"
            _cli("score", cohorts[target]["held"], "--reference", ref, "--model", model, "--mrd-model", normal,
                 "--out", run, "--in-process", "--backend", "cpu", "--no-report")
            times[f"score {source}->{target}"] = time.perf_counter() - t0
            if a.site_normals and target != source:
                t0 = time.perf_counter()
                _site_normals(source, target, cohorts[target], ref, model, a)
                times[f"site normals {source}->{target}"] = time.perf_counter() - t0
            (a.out / "times.json").write_text(json.dumps(times), encoding="utf-8")
            _write(a, _results(a), sizes, times)


if __name__ == "__main__":
    main()
