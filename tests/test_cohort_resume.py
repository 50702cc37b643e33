"""Resume after ``kill -9``: the result is complete, has no duplicates and equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rescue_gpu.cohort.store import RunStore

from .test_cohort_fixtures import N_SAMPLES, build_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")


def _score_args(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rescue_gpu.cohort.cli", "score", str(assets["manifest"]),
            "--reference", str(assets["reference"]), "--model", str(assets["model"]), "--out", str(out),
            "--keep-coords", "--no-report", *extra]


def _done(store_dir: Path) -> int:
    if not (store_dir / "zarr.json").exists():
        return 0
    try:
        return sum(1 for _ in RunStore(store_dir))
    except Exception:
        return 0


def _kill_after(args: list[str], store_dir: Path, *, at_least: int, timeout: float = 150) -> int:
    """Start ``args`` in its own process group; SIGKILL the group once ``at_least`` samples are stored."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    began = time.monotonic()
    try:
        while time.monotonic() - began < timeout and proc.poll() is None:
            if _done(store_dir) >= at_least:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its Dask workers, mid-flight
        proc.wait(timeout=30)
    return _done(store_dir)


def test_kill_9_then_resume_equals_uninterrupted(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    dask = ["--workers", "2", "--samples-per-task", "1", "--dashboard-address", ":0"]
    n_before = _kill_after(_score_args(assets, out, *dask), out / "store.zarr", at_least=2)
    assert 1 <= n_before < N_SAMPLES, f"kill landed after {n_before} samples; the test wants it mid-run"

    resumed = subprocess.run(_score_args(assets, out, "--in-process"), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{N_SAMPLES - n_before} to score, {n_before} already done" in " ".join(resumed.stdout.split())

    clean = tmp_path / "clean"  # uninterrupted, in this process (saves a torch import)
    from rescue_gpu.cohort.cli import _main

    assert _main(_score_args(assets, clean, "--in-process")[3:]) == 0

    a = pd.read_parquet(out / "scores.parquet")
    b = pd.read_parquet(clean / "scores.parquet")
    assert len(a) == N_SAMPLES and a["sample_id"].is_unique and (a["status"] == "scored").all()
    assert list(a["sample_id"]) == list(b["sample_id"]) and list(a["call"]) == list(b["call"])
    np.testing.assert_allclose(a["p_mrd"], b["p_mrd"], rtol=1e-5, atol=1e-6)
    for col in ("n_events", "n_events_used", "debris", "doublets", "input_sha256"):
        assert list(a[col]) == list(b[col]), col
    store_a, store_b = RunStore(out / "store.zarr"), RunStore(clean / "store.zarr")
    ids = [s.sample_id for s in store_a]
    assert len(ids) == len(set(ids)) == N_SAMPLES
    assert len([p for p in (out / "store.zarr" / "samples").iterdir() if p.is_dir()]) == N_SAMPLES  # no stray groups
    for sid in ids:
        np.testing.assert_array_equal(store_a.array(sid, "coords"), store_b.array(sid, "coords"))
        np.testing.assert_array_equal(store_a.image(sid), store_b.image(sid))
