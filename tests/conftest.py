"""Shared fixtures: the FCS corpus, GPU detection, array modules."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.device import is_available

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "fcs-corpus"
HAS_GPU = is_available("gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests at collection when no CUDA device with cupy is present."""
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU with cupy in this process")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real FCS corpus beside the checkout (skips when absent)."""
    if not (CORPUS / "truth.json").exists():
        pytest.skip(f"FCS corpus not found at {CORPUS}")
    return CORPUS


def corpus_truth() -> list[dict]:
    """Records of ``truth.json`` ([] when the corpus is absent), for parametrisation."""
    path = CORPUS / "truth.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data if isinstance(data, list) else data.get("files", data)


def xp_params() -> list:
    """Array modules to run kernel tests with: numpy always, cupy (``gpu`` marker) too."""
    params = [pytest.param(np, id="numpy")]
    try:
        import cupy  # noqa: F401

        params.append(pytest.param(cupy, id="cupy", marks=pytest.mark.gpu))
    except Exception:
        params.append(pytest.param(None, id="cupy", marks=[pytest.mark.gpu, pytest.mark.skip(reason="cupy not installed")]))
    return params


def write_csv_rows(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts with the same keys, the first row's order) as a CSV with a header; returns ``path``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path
