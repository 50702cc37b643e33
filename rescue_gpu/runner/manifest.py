"""Cohort manifests: a CSV of samples, or a directory searched for FCS files.

A manifest has the columns ``sample_id,path`` and optionally ``patient_id``,
``timepoint``, ``label``, ``reference`` (yes/no: whether the sample is pooled into a
reference; all samples when the column is absent) and ``true_mrd_pct`` (the known MRD %,
e.g. the simulator's ``truth.csv`` column, for the report's estimated-vs-true plot); paths
are relative to the manifest's folder. Every problem is collected and reported at once, before any work starts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import ManifestError

__all__ = ["ManifestRow", "read_manifest", "TIMEPOINTS", "LABELS"]

REQUIRED = ("sample_id", "path")
OPTIONAL = ("patient_id", "timepoint", "label", "reference", "true_mrd_pct")
_BOOL = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": None}
TIMEPOINTS = ("diagnosis", "follow-up", "control", "")
LABELS = ("positive", "negative", "")
FCS_SUFFIXES = {".fcs", ".lmd"}


@dataclass(frozen=True)
class ManifestRow:
    """One sample of a cohort."""

    sample_id: str
    path: Path
    patient_id: str = ""
    timepoint: str = ""
    label: str = ""
    in_reference: bool | None = None
    true_mrd_pct: float | None = None


def _mrd_truth(text: str) -> float | None:
    """``true_mrd_pct`` of a row: None when empty; raises ValueError unless a number in [0, 100]."""
    text = text.strip()
    if not text:
        return None
    value = float(text)
    if not 0.0 <= value <= 100.0:
        raise ValueError(text)
    return value


def _check_row(line: int, rec: dict[str, str], base: Path, seen: dict[str, int]) -> tuple[ManifestRow | None, list[str]]:
    problems: list[str] = []
    sid = (rec.get("sample_id") or "").strip()
    rel = (rec.get("path") or "").strip()
    if not sid:
        problems.append(f"row {line}: empty sample_id")
    elif sid in seen:
        problems.append(f"row {line}: duplicate sample_id {sid!r} (first on row {seen[sid]})")
    if not rel:
        problems.append(f"row {line}: empty path")
    tp = (rec.get("timepoint") or "").strip().lower()
    if tp not in TIMEPOINTS:
        problems.append(f"row {line}: timepoint {tp!r} is not one of diagnosis, follow-up, control")
    label = (rec.get("label") or "").strip().lower()
    if label not in LABELS:
        problems.append(f"row {line}: label {label!r} is not 'positive' or 'negative'")
    ref = (rec.get("reference") or "").strip().lower()
    if ref not in _BOOL:
        problems.append(f"row {line}: reference {ref!r} is not yes/no (or 1/0, true/false)")
    try:
        truth = _mrd_truth(rec.get("true_mrd_pct") or "")
    except ValueError:
        truth = None
        problems.append(f"row {line}: true_mrd_pct {rec.get('true_mrd_pct')!r} is not a percentage in 0..100 "
                        "(leave it empty when unknown)")
    if problems:
        return None, problems
    seen[sid] = line
    path = Path(rel) if Path(rel).is_absolute() else base / rel
    return ManifestRow(sample_id=sid, path=path, patient_id=(rec.get("patient_id") or "").strip(), timepoint=tp,
                       label=label, in_reference=_BOOL[ref], true_mrd_pct=truth), []


def _read_csv(path: Path) -> list[ManifestRow]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise ManifestError(
                    f"{path}: missing column(s) {', '.join(missing)}; a manifest needs "
                    f"'sample_id,path' and may have {', '.join(OPTIONAL)} (found: {', '.join(header) or 'nothing'})"
                )
            records = [{(k or "").strip(): (v or "") for k, v in rec.items()} for rec in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc})") from None
    rows, problems, seen = [], [], {}
    for line, rec in enumerate(records, start=2):
        row, bad = _check_row(line, rec, path.parent, seen)
        problems += bad
        if row is not None:
            rows.append(row)
    if problems:
        raise ManifestError(f"{path}: {len(problems)} problem(s), fix them and run again:\n  " + "\n  ".join(problems))
    if not rows:
        raise ManifestError(f"{path}: the manifest lists no samples")
    return rows


def _scan_dir(path: Path) -> list[ManifestRow]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FCS_SUFFIXES)
    if not files:
        raise ManifestError(f"{path}: no .fcs files found in this directory or below")
    rows, seen = [], {}
    for f in files:
        sid = f.relative_to(path).with_suffix("").as_posix()
        if sid in seen:  # a.fcs and a.FCS in one folder
            raise ManifestError(f"{path}: files {seen[sid]} and {f} give the same sample_id {sid!r}")
        seen[sid] = f
        rows.append(ManifestRow(sample_id=sid, path=f))
    return rows


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest CSV, or list the FCS files below a directory.

    Raises
    ------
    ManifestError
        Missing columns, duplicate sample ids, unknown timepoints or labels (every
        offending row is listed), or no samples at all.
    """
    p = Path(path)
    if p.is_dir():
        return _scan_dir(p)
    if not p.exists():
        raise ManifestError(f"{p}: no such manifest file or directory")
    return _read_csv(p)
