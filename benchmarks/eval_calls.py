"""The image model's call, the MRD % call and the combined call on a held-out SIMULATED cohort (issue 16).

Everything runs through the ``rescue`` CLI, as a user would (``rescue_gpu.cli.main``, in
this process):

1. two cohorts from the project's simulator with different seeds, so their patients are
   disjoint (``simulate_cohort(counts=...)``): a training cohort and a held-out cohort,
   each with diagnosis samples (LAIP), MRD-positive follow-ups (blast fraction
   log-uniform 0.01%-10%, the simulator's own draw), MRD-negative follow-ups and controls;
2. ``rescue reference build`` and ``rescue train`` on the training cohort (a CPU-sized
   copy of ``pipelines/aml-mrd.toml``: ``--image-size`` px, ``--ref-events`` events per
   sample in the reference, ``--folds``-fold patient CV, at most ``--epochs`` epochs);
3. ``rescue mrd build-normal`` (the DfN model) from the training cohort's MRD-negative
   follow-ups and controls;
4. ``rescue score --mrd-model`` of the held-out cohort (LAIPs from its diagnosis samples);
5. ``rescue evaluate`` twice: against the manifest's labels (every MRD-positive follow-up
   is ``positive``, whatever its level) and against the truth (``positive`` iff
   ``true_mrd_pct >= 0.1``, the definition of ``benchmarks/eval_mrd.py``), with
   ``--mrd-truth`` for the MRD % agreement.

Reported (``eval_calls.json``, ``eval_calls.md`` in ``--out``): sensitivity and specificity
of the image model's call, the MRD % call and ``combined_call`` with patient-level 95%
bootstrap intervals (:func:`rescue_gpu.flow.mrd_calls.call_performance`), pooled and per
sample kind (diagnosis, MRD-positive / MRD-negative follow-up, control), under both
definitions of positive; the image model's ROC AUC; the sensitivity of each call per
decade of true MRD; and, for comparison and not used by the product, three rules that
can be stated without looking at this cohort: ``image OR mrd``, ``image AND mrd`` and
``combined_call`` as if every sample had ELN's 500,000 CD45+ events (``mrd_status`` with
``min_cd45 = 0``, so that a quantified MRD % below 0.1% is ``negative`` and is not
overturned by the image model). Nothing is fitted on the held-out cohort.

    python benchmarks/eval_calls.py --events 20000 --out /tmp/eval_calls
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from rescue_gpu.cli import main as rescue
from rescue_gpu.config import PIPELINES_DIR
from rescue_gpu.flow.mrd import THRESHOLD_PCT, combined_call, mrd_status
from rescue_gpu.flow.mrd_calls import CALLS, call_performance, sample_calls
from rescue_gpu.simulate import simulate_cohort

KINDS = ("diagnosis", "mrd_positive", "mrd_negative", "control")
DECADES = ((0.01, 0.1), (0.1, 1.0), (1.0, 10.0))


def _counts(text: str) -> dict[str, int]:
    """``"d,p,n,c"`` -> samples per kind (diagnosis, MRD+ follow-up, MRD- follow-up, control)."""
    values = [int(v) for v in text.split(",")]
    if len(values) != 4:
        raise argparse.ArgumentTypeError("give four counts: diagnosis,mrd_positive,mrd_negative,control")
    return dict(zip(KINDS, values))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=_counts, default=_counts("16,24,12,8"),
                    help="training cohort: diagnosis,mrd_positive,mrd_negative,control samples")
    ap.add_argument("--held-out", type=_counts, default=_counts("24,40,16,10"),
                    help="held-out cohort: diagnosis,mrd_positive,mrd_negative,control samples")
    ap.add_argument("--events", type=int, default=20_000, help="events per sample (both cohorts)")
    ap.add_argument("--ref-events", type=int, default=1000, help="events pooled per reference sample")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--augment-copies", type=int, default=1)
    ap.add_argument("--boot", type=int, default=1000, help="patient-level bootstrap replicates")
    ap.add_argument("--seed", type=int, default=16, help="training cohort seed (held-out: seed + 1)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/eval_calls"))
    return ap.parse_args()


def set_toml(text: str, section: str | None, key: str, value: str) -> str:
    """``text`` (a TOML document) with ``key = value`` of table ``[section]`` (None: top level) replaced.

    The key must be there already. Comment lines are skipped.
    """
    lines, current = text.splitlines(), None
    for i, line in enumerate(lines):
        head = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if head:
            current = head.group(1).strip()
        elif current == section and re.match(rf"\s*{re.escape(key)}\s*=", line):
            lines[i] = f"{key} = {value}"
            return "\n".join(lines) + "\n"
    raise KeyError(f"[{section}] {key} not in the pipeline file")


def _pipeline(a: argparse.Namespace) -> Path:
    """A CPU-sized copy of pipelines/aml-mrd.toml (only the sizes below differ)."""
    text = (PIPELINES_DIR / "aml-mrd.toml").read_text(encoding="utf-8")
    for section, key, value in (
            (None, "name", '"eval-calls"'), ("reference", "events_per_sample", str(a.ref_events)),
            ("raster", "size", str(a.image_size)), ("model.train", "folds", str(a.folds)),
            ("model.train", "max_epochs", str(a.epochs)), ("model.train", "patience", str(a.patience)),
            ("model.train", "augment_copies", str(a.augment_copies)), ("model.train", "seed", str(a.seed))):
        text = set_toml(text, section, key, value)
    path = a.out / "pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _truth_manifest(cohort: Path, out: Path) -> Path:
    """The cohort's manifest with ``label`` = positive iff ``true_mrd_pct >= 0.1`` (absolute paths)."""
    truth = {r["sample_id"]: float(r["true_mrd_pct"]) for r in _read_csv(cohort / "truth.csv")}
    rows = _read_csv(cohort / "manifest.csv")
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "path": str((cohort / r["path"]).resolve()),
                        "label": "positive" if truth[r["sample_id"]] >= THRESHOLD_PCT else "negative"})
    return out


class Steps:
    """Runs ``rescue`` commands, recording wall and process CPU time and the load average of each."""

    def __init__(self) -> None:
        self.log: dict[str, dict[str, float]] = {}

    def __call__(self, name: str, *args: Any) -> None:
        w, c = time.perf_counter(), time.process_time()
        rc = rescue([str(x) for x in args])
        if rc != 0:
            raise SystemExit(f"rescue {' '.join(map(str, args[:2]))} failed with exit code {rc}")
        self.log[name] = {"wall_s": round(time.perf_counter() - w, 1), "cpu_s": round(time.process_time() - c, 1),
                          "load_1min_after": round(os.getloadavg()[0], 2)}
        print(f"== {name}: {self.log[name]}", flush=True)


def _alternatives(scores: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """The a-priori comparison rules (module docstring) per scored sample, 0/1."""
    image = np.array([r["call"] == "positive" for r in scores])
    mrd = np.array([r["mrd_status"] == "positive" for r in scores])
    eln = np.array([combined_call(float(r["p_mrd"]), float(r["threshold"]),
                                  mrd_status(int(r["mrd_events"]), int(r["cd45_events"]), min_cd45=0))
                    == "positive" for r in scores])
    return {"image_or_mrd": (image | mrd).astype(int), "image_and_mrd": (image & mrd).astype(int),
            "combined_at_eln_counts": eln.astype(int)}


def _performance(scores: list[dict[str, str]], label: dict[str, int], kind: dict[str, str],
                 truth: dict[str, float], n_boot: int, seed: int) -> dict[str, Any]:
    """The three calls and the comparison rules against ``label``, pooled and per kind, plus per-decade sensitivity."""
    ids = [r["sample_id"] for r in scores]
    calls = sample_calls(scores, ids)
    rules = {k: calls[k] for k in CALLS} | _alternatives(scores)
    y = np.array([label[s] for s in ids])
    pats = np.array([r["patient_id"] for r in scores])
    kinds = np.array([kind[s] for s in ids])
    out = call_performance(y, rules, pats, n_boot=n_boot, seed=seed, timepoints=kinds)
    t = np.array([truth[s] for s in ids])
    fu = kinds == "mrd_positive"
    out["sensitivity_by_true_mrd_decade"] = {
        f"{lo:g}-{hi:g}%": {"n": int((fu & (t >= lo) & (t < hi)).sum()),
                            **{k: float(v[fu & (t >= lo) & (t < hi)].mean()) if (fu & (t >= lo) & (t < hi)).any()
                               else None for k, v in rules.items()}}
        for lo, hi in DECADES}
    return out


def _fmt(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    return f"{d['estimate']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def _table(perf: dict[str, Any], rules: tuple[str, ...]) -> str:
    """One row per rule: pooled sens/spec, then sens/spec per kind."""
    head = ("| call | sensitivity | specificity | sens. diagnosis | sens. MRD+ follow-up | spec. MRD+ follow-up "
            "(truth < 0.1%) | spec. MRD− follow-up | spec. control |")
    lines = [head, "|" + "---|" * 8]
    per = perf["by_timepoint"]
    for r in rules:
        def get(kind: str, metric: str) -> str:
            return _fmt(per[kind][r][metric]) if kind in per else "n/a"
        lines.append(f"| {r} | {_fmt(perf[r]['sensitivity'])} | {_fmt(perf[r]['specificity'])} | "
                     f"{get('diagnosis', 'sensitivity')} | {get('mrd_positive', 'sensitivity')} | "
                     f"{get('mrd_positive', 'specificity')} | {get('mrd_negative', 'specificity')} | "
                     f"{get('control', 'specificity')} |")
    return "\n".join(lines)


def main() -> None:
    """Simulate, build, train, score and evaluate; write eval_calls.json and eval_calls.md."""
    a = _args()
    if a.out.exists():
        shutil.rmtree(a.out)
    a.out.mkdir(parents=True)
    began, steps = time.perf_counter(), Steps()
    t0 = time.perf_counter()
    train = simulate_cohort(a.out / "train", n_samples=sum(a.train.values()), n_events=a.events, seed=a.seed,
                            counts=a.train)
    held = simulate_cohort(a.out / "held", n_samples=sum(a.held_out.values()), n_events=a.events, seed=a.seed + 1,
                           counts=a.held_out)
    steps.log["simulate"] = {"wall_s": round(time.perf_counter() - t0, 1)}
    pipe, ref, model, normal, run = (_pipeline(a), a.out / "reference", a.out / "model", a.out / "normal",
                                     a.out / "run")
    steps("reference build", "reference", "build", train.manifest, "--out", ref, "--pipeline", pipe,
          "--backend", "cpu")
    steps("train", "train", train.manifest, "--reference", ref, "--out", model, "--device", "cpu")
    steps("mrd build-normal", "mrd", "build-normal", train.manifest, "--out", normal, "--reference", ref)
    steps("score", "score", held.manifest, "--reference", ref, "--model", model, "--mrd-model", normal,
          "--out", run, "--in-process", "--backend", "cpu", "--no-report")
    truth_manifest = _truth_manifest(held.out_dir, a.out / "held-truth-labels.csv")
    steps("evaluate (manifest labels)", "evaluate", run / "scores.csv", "--truth", held.manifest,
          "--out", a.out / "ev-label", "--boot", a.boot, "--mrd-truth", held.truth)
    steps("evaluate (truth >= 0.1%)", "evaluate", run / "scores.csv", "--truth", truth_manifest,
          "--out", a.out / "ev-truth", "--boot", a.boot)

    scores = [r for r in _read_csv(run / "scores.csv") if r.get("status", "scored") == "scored"]
    truth_rows = {r["sample_id"]: r for r in _read_csv(held.truth)}
    kind = {s: r["kind"] for s, r in truth_rows.items()}
    true_pct = {s: float(r["true_mrd_pct"]) for s, r in truth_rows.items()}
    by_label = {r["sample_id"]: int(r["label"] == "positive") for r in _read_csv(held.manifest)}
    by_truth = {s: int(v >= THRESHOLD_PCT) for s, v in true_pct.items()}
    ev = {k: json.loads((a.out / f"ev-{k}" / "metrics.json").read_text()) for k in ("label", "truth")}
    record = json.loads((model / "model.json").read_text())
    statuses = {s: sum(r["mrd_status"] == s for r in scores) for s in sorted({r["mrd_status"] for r in scores})}
    result = {
        "simulated": True,
        "args": {k: str(v) for k, v in vars(a).items()},
        "sizes": {"events_per_sample": a.events, "train": train.counts, "held_out": held.counts,
                  "train_patients": train.n_patients, "held_out_patients": held.n_patients,
                  "scored": len(scores), "failed": len(_read_csv(run / "scores.csv")) - len(scores),
                  "held_out_truth_ge_0.1": int(sum(by_truth[r["sample_id"]] for r in scores)),
                  "labels_differ_from_truth": int(sum(by_truth[r["sample_id"]] != by_label[r["sample_id"]]
                                                      for r in scores))},
        "model": {"threshold": record.get("threshold"), "cv": record.get("metrics", {}).get("cv", {}).get("metrics"),
                  "warnings": record.get("provenance", {}).get("warnings", [])},
        "mrd_status_counts": statuses,
        "image_roc_auc": {k: {"all": e["metrics"]["roc_auc"],
                              **{tp: (row or {}).get("roc_auc") for tp, row in e["by_timepoint"].items()}}
                          for k, e in ev.items()},
        "evaluate_calls": {k: e.get("calls") for k, e in ev.items()},
        "mrd_agreement": ev["label"].get("mrd"),
        "performance": {"manifest_label": _performance(scores, by_label, kind, true_pct, a.boot, a.seed),
                        "truth_ge_0.1": _performance(scores, by_truth, kind, true_pct, a.boot, a.seed)},
        "times": steps.log, "total_wall_s": round(time.perf_counter() - began, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
    }
    rules = CALLS + ("image_or_mrd", "image_and_mrd", "combined_at_eln_counts")
    md = []
    for key, title in (("truth_ge_0.1", "positive = true MRD >= 0.1%"),
                       ("manifest_label", "positive = manifest label (every MRD+ follow-up, diagnosis)")):
        p = result["performance"][key]
        md += [f"### {title}: {p['n']} samples ({p['n_positive']} positive, {p['n_negative']} negative), "
               f"{p['n_patients']} patients", "", _table(p, rules), ""]
    (a.out / "eval_calls.md").write_text("\n".join(md), encoding="utf-8")
    (a.out / "eval_calls.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print("\n".join(md))
    print(json.dumps({k: result[k] for k in ("sizes", "image_roc_auc", "mrd_status_counts", "times")}, indent=1))


if __name__ == "__main__":
    main()
