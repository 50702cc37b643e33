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

from rescue_gpu.runner.store import RunStore

from .test_cohort_fixtures import N_SAMPLES, build_assets, stored_samples as _done


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")


def _score_args(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rescue_gpu.flow.cli", "score", str(assets["manifest"]),
            "--reference", str(assets["reference"]), "--model", str(assets["model"]), "--out", str(out),
            "--keep-coords", "--no-report", *extra]


def _kill_after(args: list[str], store_dir: Path, *, at_least: int, timeout: float = 300) -> tuple[int, str]:
    """Start ``args`` in its own process group; SIGKILL the group once ``at_least`` samples are stored.

    Returns the samples stored and what the run printed (for the message when the kill misses).
    """
    log = store_dir.parent.with_suffix(".log")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        began = time.monotonic()
        try:
            while time.monotonic() - began < timeout and proc.poll() is None:
                if _done(store_dir) >= at_least:
                    break
                time.sleep(0.05)
        finally:
            state = (f"exited {proc.returncode}" if proc.poll() is not None
                     else f"killed after {time.monotonic() - began:.0f} s")
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the run and its Dask workers, mid-flight
            proc.wait(timeout=30)
    return _done(store_dir), f"{state}; it printed: " + log.read_text(errors="replace")[-3000:]


def test_kill_9_then_resume_equals_uninterrupted(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "killed"
    dask = ["--workers", "2", "--samples-per-task", "1", "--dashboard-address", "127.0.0.1:0"]
    n_before, printed = _kill_after(_score_args(assets, out, *dask), out / "store.zarr", at_least=2)
    assert 1 <= n_before < N_SAMPLES, f"kill landed after {n_before} samples; the test wants it mid-run ({printed})"

    resumed = subprocess.run(_score_args(assets, out, "--in-process"), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{N_SAMPLES - n_before} to score, {n_before} already done" in " ".join(resumed.stdout.split())

    clean = tmp_path / "clean"  # uninterrupted, in this process (saves a torch import)
    from rescue_gpu.flow.cli import _main

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


# ----------------------------------------------------------------------------- what the resume identity covers


def _rows(assets: dict[str, Path], n: int = 2) -> list:
    from rescue_gpu.runner.manifest import read_manifest

    return read_manifest(assets["manifest"])[:n]


def _options(**kw):
    from rescue_gpu.flow.assay import ScoreOptions

    from .test_cohort_fixtures import tiny_pipeline

    return ScoreOptions(pipeline=tiny_pipeline(), report=False, **kw)


def _score(assets: dict[str, Path], model: Path, out: Path, **kw):
    from rescue_gpu.flow.assay import score_cohort
    from rescue_gpu.config import RuntimeConfig

    return score_cohort(_rows(assets), reference=assets["reference"], model=model, out=out, options=_options(),
                        runtime=RuntimeConfig(backend="cpu"), in_process=True, **kw)


def test_resume_after_a_model_edit_refuses_then_rescores(assets: dict[str, Path], tmp_path: Path) -> None:
    import dataclasses
    import json
    import shutil

    from rescue_gpu.errors import ModelError
    from rescue_gpu.flow.record import ModelRecord

    model = tmp_path / "model"
    shutil.copytree(assets["model"], model)
    out = tmp_path / "run"
    first = _score(assets, model, out)
    assert (first.n_scored, first.n_skipped) == (2, 0)
    assert _score(assets, model, out).n_skipped == 2  # unchanged model: resumed

    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**meta, "threshold": 0.0}))  # the edit of issue 11
    with pytest.raises(ModelError, match="model.json: its settings .*edited"):
        _score(assets, model, out)

    rec = ModelRecord.load(assets["model"])  # a legitimate new threshold: same weights, new checksum
    dataclasses.replace(rec, threshold=0.0).save(model, overwrite=True)
    again = _score(assets, model, out)
    assert (again.n_skipped, again.n_processed) == (0, 2)  # re-scored, not skipped
    table = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert set(table["call"]) == {"positive"} and set(table["threshold"]) == {0.0}
    store = RunStore(out / "store.zarr")
    checksums = {store.read(s).record["provenance"]["model_checksum"] for s in table["sample_id"]}
    assert checksums == {ModelRecord.load(model).checksum}


def test_settings_identity_holds_the_resolved_backend() -> None:
    from rescue_gpu.device import DevicePlan
    from rescue_gpu.flow.assay import settings_record
    from rescue_gpu.runner.identity import settings_hash

    opts = _options()
    cpu = settings_record(opts, DevicePlan(backend="cpu", engine="torch", precision="fp32"))
    gpu = settings_record(opts, DevicePlan(backend="gpu", engine="torch", precision="fp16"))
    assert (cpu["backend"], cpu["engine"], cpu["precision"]) == ("cpu", "torch", "fp32")
    assert (gpu["backend"], gpu["engine"], gpu["precision"]) == ("gpu", "torch", "fp16")
    assert settings_hash(cpu) != settings_hash(gpu)
    assert settings_hash(cpu) != settings_hash(settings_record(opts, DevicePlan(backend="cpu", engine="onnx", precision="fp32")))
    assert "auto" not in settings_record(opts, "cpu").values()  # a backend name is resolved, never hashed as given


@pytest.mark.skipif(__import__("tests.conftest", fromlist=["HAS_GPU"]).HAS_GPU, reason="needs a machine without a GPU")
def test_auto_falls_back_once_and_provenance_says_how(assets: dict[str, Path], tmp_path: Path) -> None:
    import warnings

    from rescue_gpu.device import BackendFallbackWarning, DevicePlan
    from rescue_gpu.flow.assay import score_cohort, settings_record
    from rescue_gpu.runner.identity import pending_rows, settings_hash
    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.flow.record import ModelRecord

    started: list[str] = []
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        summary = score_cohort(_rows(assets), reference=assets["reference"], model=assets["model"], out=tmp_path / "run",
                               options=_options(), runtime=RuntimeConfig(backend="auto"), in_process=True,
                               on_start=lambda desc, n, k: started.append(desc))
    assert summary.n_scored == 2
    fallbacks = [w for w in got if issubclass(w.category, BackendFallbackWarning)]
    assert len(fallbacks) == 1 and "using the CPU because" in str(fallbacks[0].message)
    assert "device: cpu (auto fell back to the CPU" in started[0] and "engine torch, precision fp32" in started[0]

    store = RunStore(tmp_path / "run" / "store.zarr")
    rec = ModelRecord.load(assets["model"])
    ids = [s.sample_id for s in store]
    assert len(ids) == 2
    for sid in ids:
        prov = store.read(sid).record["provenance"]
        assert (prov["backend"], prov["engine"], prov["precision"]) == ("cpu", "torch", "fp32")
        assert prov["model_checksum"] == rec.checksum
    assert store.run_meta()["settings"]["backend"] == "cpu"

    # the same store seen from a GPU machine: nothing is skipped, nothing is mixed
    gpu = settings_hash(settings_record(_options(), DevicePlan(backend="gpu", engine="torch", precision="fp16")))
    cpu = settings_hash(settings_record(_options(), DevicePlan(backend="cpu", engine="torch", precision="fp32")))
    base = {"reference_fingerprint": prov["reference_fingerprint"], "model_sha256": rec.sha256,
            "model_checksum": rec.checksum}
    assert pending_rows(_rows(assets), store, {**base, "settings_hash": cpu})[1] == 2
    assert pending_rows(_rows(assets), store, {**base, "settings_hash": gpu}) == (_rows(assets), 0)


# ----------------------------------------------------------------------------- a damaged run store (issue 11, section 2)


def _chunk_of(store_dir: Path, sid: str, name: str = "image") -> Path:
    from rescue_gpu.runner.store import sample_key

    return next(p for p in (store_dir / "samples" / sample_key(sid) / name).rglob("*")
                if p.is_file() and p.name != "zarr.json")


def _run_here(assets: dict[str, Path], out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from rescue_gpu.flow.cli import _main

    capsys.readouterr()
    args = [a for a in _score_args(assets, out, "--in-process")[3:] if a != "--no-report"]  # report: gallery images
    rc = _main(args)
    got = capsys.readouterr()
    return rc, " ".join(got.out.split()), got.err


def test_damaged_samples_are_rescored_never_shown_as_zeros(assets: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    import json
    import shutil

    out = tmp_path / "run"
    store_dir = out / "store.zarr"
    assert _run_here(assets, out, capsys)[0] == 0
    first = pd.read_csv(out / "scores.csv")
    images = {sid: RunStore(store_dir).image(sid) for sid in first["sample_id"]}
    _chunk_of(store_dir, "S00001").unlink()  # zarr would read back an all-zero image
    _chunk_of(store_dir, "S00003").write_bytes(os.urandom(64))  # a zstd decompression error

    rc, text, err = _run_here(assets, out, capsys)
    assert rc == 0, err
    assert f"2 to score, {N_SAMPLES - 2} already done" in text
    again = pd.read_csv(out / "scores.csv")
    assert (again["status"] == "scored").all()
    np.testing.assert_allclose(again["p_mrd"], first["p_mrd"], rtol=1e-5, atol=1e-6)
    store = RunStore(store_dir)
    for sid, img in images.items():
        np.testing.assert_array_equal(store.image(sid), img)

    # a store written before per-file checksums: a garbage chunk is named, with the fix, in one line
    meta = store_dir / "samples" / "S00002" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"].pop("files")
    meta.write_text(json.dumps(doc))
    _chunk_of(store_dir, "S00002").write_bytes(os.urandom(64))
    rc, _, err = _run_here(assets, out, capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and lines[-1].startswith("error: ")
    assert "sample 'S00002'" in lines[-1] and f"remove the folder {store_dir / 'samples' / 'S00002'}" in lines[-1]
    shutil.rmtree(store_dir / "samples" / "S00002")  # the fix it gives
    rc, text, err = _run_here(assets, out, capsys)
    assert rc == 0 and f"1 to score, {N_SAMPLES - 1} already done" in text, err


@pytest.mark.skipif(__import__("tests.conftest", fromlist=["HAS_GPU"]).HAS_GPU, reason="needs a machine without a GPU")
def test_backend_gpu_without_a_gpu_stops_before_any_sample(assets: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    from rescue_gpu.flow.cli import _main

    code = _main(_score_args(assets, tmp_path / "run", "--in-process", "--backend", "gpu")[3:])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "backend='gpu' was requested but" in err and "use backend='cpu'" in err
    assert not (tmp_path / "run" / "store.zarr" / "samples").exists()


def test_workers_refuse_an_unresolved_backend_and_a_changed_model() -> None:
    from types import SimpleNamespace

    from rescue_gpu.runner.worker import worker_engine
    from rescue_gpu.errors import BackendError, ModelError

    rec = SimpleNamespace(sha256="w" * 64, checksum="c" * 64)
    kw = {"path": "MODEL", "sha256": "w" * 64, "kind": "torch", "precision": "fp32", "batch_size": 4}
    with pytest.raises(BackendError, match="given backend 'auto'; the client resolves it"):
        worker_engine(rec, backend="auto", checksum="c" * 64, **kw)
    with pytest.raises(ModelError, match="MODEL: the model changed since the run started"):
        worker_engine(rec, backend="cpu", checksum="d" * 64, **kw)  # e.g. model.json's threshold re-saved mid-run


def test_mrd_identity_changes_with_the_dfn_settings_not_only_its_points(tmp_path: Path) -> None:
    """A DfN model rebuilt with other thresholds (same points) must re-score, not resume stale MRD %."""
    import dataclasses

    from rescue_gpu.flow import mrd
    from rescue_gpu.flow.assay import _mrd_identity

    rng = np.random.default_rng(0)
    samples = [rng.normal(size=(400, 3)).astype(np.float32) + [1.0, 0, 0] for _ in range(4)]
    model = mrd.fit_normal_model(samples, ("CD45", "CD34", "SSC-A"), k=3, max_points=500)
    model.save(tmp_path / "a")
    dataclasses.replace(model, cluster_threshold=model.cluster_threshold + 5.0).save(tmp_path / "b")
    assert mrd.NormalModel.load(tmp_path / "a").points.tobytes() == mrd.NormalModel.load(tmp_path / "b").points.tobytes()
    assert _mrd_identity(str(tmp_path / "a")) != _mrd_identity(str(tmp_path / "b"))
    assert _mrd_identity(str(tmp_path / "a")) == _mrd_identity(str(tmp_path / "a"))
