"""Artifacts written by the code before the runner/flow/cells redesign still load and resume.

``tests/fixtures/legacy`` was written by ``tests/fixtures/make_legacy.py`` with main at
commit dfedec1: a flow reference, model and run store (2 of 3 samples scored), and a cells
model and run store (2 samples). Each test works on an unpacked copy.

Documented resume rules checked here: a flow sample is skipped when its FCS file is
unchanged (size and mtime, else sha256: a fresh copy has new mtimes but equal bytes) and
the settings, reference and model identity are equal; a cells sample is skipped when its
files' relative paths, sizes and mtimes are unchanged, and re-scored when touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from rescue_gpu.cells.record import CellModelRecord
from rescue_gpu.cells.assay import CellScoreOptions, score_cells
from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.cells.workflow import with_overrides
from rescue_gpu.runner.manifest import read_manifest
from rescue_gpu.flow.assay import ScoreOptions, score_cohort
from rescue_gpu.runner.store import RunStore
from rescue_gpu.config import RuntimeConfig
from rescue_gpu.flow.record import ModelRecord
from rescue_gpu.reference import Reference

from .fixtures.make_legacy import unpack
from .test_cohort_fixtures import tiny_pipeline

CPU = RuntimeConfig(backend="cpu", workers="1")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(tmp_path_factory.mktemp("legacy") / "legacy")


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    """A copy of its own, for tests that write into the run stores."""
    return unpack(tmp_path / "legacy")


def test_flow_reference_model_and_store_load(legacy: Path) -> None:
    ref = Reference.load(legacy / "flow" / "ref")
    rec = ModelRecord.load(legacy / "flow" / "model")
    rec.check_compatible(ref)
    assert ref.raster.size == 32 and rec.threshold == 0.5
    store = RunStore(legacy / "flow" / "run" / "store.zarr")
    for sid in ("S00000", "S00001"):
        got = store.record(sid)
        assert got["status"] == "scored" and 0.0 <= got["p_mrd"] <= 1.0
        assert got["provenance"]["model_sha256"] == rec.sha256
        assert got["provenance"]["reference_fingerprint"] == ref.fingerprint
        assert store.image(sid).shape[-1] == 32
    assert store.record("S00002") is None


def test_flow_rerun_skips_the_legacy_samples_and_scores_the_rest(fresh: Path) -> None:
    flow = fresh / "flow"
    before = {s: RunStore(flow / "run" / "store.zarr").record(s)["p_mrd"] for s in ("S00000", "S00001")}
    summary = score_cohort(read_manifest(flow / "cohort" / "manifest.csv"), reference=flow / "ref",
                           model=flow / "model", out=flow / "run", options=ScoreOptions(pipeline=tiny_pipeline()),
                           runtime=CPU, in_process=True)
    assert (summary.n_samples, summary.n_skipped, summary.n_processed, summary.n_failed) == (3, 2, 1, 0)
    df = pd.read_csv(summary.outputs["csv"])
    assert list(df["sample_id"]) == ["S00000", "S00001", "S00002"] and set(df["status"]) == {"scored"}
    for sid, p in before.items():
        assert df.set_index("sample_id").loc[sid, "p_mrd"] == pytest.approx(p, rel=1e-5)
    assert summary.outputs["report"].is_file() and "S00002" in summary.outputs["report"].read_text()


def _cells_pipeline():  # noqa: ANN202
    return with_overrides(load_cell_pipeline("ifc-labelfree"), architecture="resnet18")


def _score_cells(cells: Path, **kw):  # noqa: ANN003, ANN202
    opts = CellScoreOptions(pipeline=_cells_pipeline(), keep_embeddings=False, gallery=2, **kw)
    return score_cells(cells / "lib" / "samples.csv", model=cells / "model", out=cells / "run", options=opts,
                       runtime=CPU, in_process=True)


def test_cells_model_and_store_load(legacy: Path) -> None:
    rec = CellModelRecord.load(legacy / "cells" / "model")
    rec.check_pipeline(_cells_pipeline())
    store = RunStore(legacy / "cells" / "run" / "store.zarr")
    for sid in ("S001", "S002"):
        got = store.record(sid)
        assert got["status"] == "scored" and got["n_cells"] == 12
        assert got["provenance"]["model_sha256"] == rec.sha256
        assert store.array(sid, "probs").shape == (12, len(rec.classes))


def test_cells_rerun_skips_unchanged_samples_rescores_touched_ones(fresh: Path) -> None:
    cells = fresh / "cells"
    store = RunStore(cells / "run" / "store.zarr")
    for sid, shift in (("S001", 0), ("S002", 10**9)):  # a checkout has new mtimes: S001 as recorded, S002 touched
        mtime = store.record(sid)["provenance"]["input_mtime_ns"] + shift
        os.utime(cells / "lib" / "samples" / f"{sid}.npy", ns=(mtime, mtime))
    summary = _score_cells(cells)
    assert (summary.n_samples, summary.n_skipped, summary.n_processed, summary.n_failed) == (2, 1, 1, 0)
    for key in ("csv", "parquet", "cells", "report"):
        assert summary.outputs[key].is_file(), key
    df = pd.read_parquet(summary.outputs["parquet"])
    assert list(df["sample_id"]) == ["S001", "S002"] and set(df["status"]) == {"scored"}
    assert len(pd.read_parquet(summary.outputs["cells"])) == 24


def test_flow_worker_job_is_keyword_only_and_carries_the_runtime(legacy: Path) -> None:
    from rescue_gpu.device import DevicePlan
    from rescue_gpu.flow.assay import FlowAssay, WorkerJob
    from rescue_gpu.runner.assay import Assay, AssayJob, RunContext

    flow = legacy / "flow"
    assay = FlowAssay.open(reference=flow / "ref", model=flow / "model", options=ScoreOptions(pipeline=tiny_pipeline()))
    assert isinstance(assay, Assay)
    device = DevicePlan(backend="cpu", engine="torch", precision="fp32")
    job = assay.worker_job(RunContext(run_dir=flow / "run", device=device,
                                      runtime=RuntimeConfig(chunk_events=1000, batch_size=8), settings_hash="h"))
    assert isinstance(job, AssayJob) and job.chunk_events == 1000 and job.batch_size == 8 and job.backend == "cpu"
    assert assay.identity(job)["reference_fingerprint"] == Reference.load(flow / "ref").fingerprint
    with pytest.raises(TypeError):
        WorkerJob(job.reference_path, job.reference_fingerprint)  # noqa: keyword arguments only
