"""``rescue bench --manifest/--reference/--model``: benchmarking the user's own files."""

import json

import pytest

from rescue_gpu.cli import main
from rescue_gpu.config import load_pipeline, pipeline_record
from rescue_gpu.flow.bench import check_bench_record, pca_reference, untrained_model
from rescue_gpu.flow.stages import load_events
from rescue_gpu.runner.manifest import read_manifest
from rescue_gpu.simulate import simulate_cohort


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A simulated 3-sample manifest, a reference (with its stored pipeline) and an untrained model on disk."""
    import dataclasses

    d = tmp_path_factory.mktemp("user")
    simulate_cohort(d / "cohort", n_samples=3, n_events=1200, seed=5)
    rows = read_manifest(d / "cohort" / "manifest.csv")
    pipe = load_pipeline("aml-mrd")
    pipe = dataclasses.replace(pipe, raster=dataclasses.replace(pipe.raster, size=32))
    events = [load_events(r.path, pipe) for r in rows]
    # a PCA embedding instead of a UMAP fit keeps the test fast; the reference stores its pipeline as a built one does
    ref = pca_reference([e.values[:400] for e in events], events[0].markers, pipe)
    ref.pipeline = pipeline_record(pipe)
    ref.save(d / "ref")
    untrained_model(ref, seed=1).save(d / "model")
    return d, ref


@pytest.mark.slow
def test_bench_on_user_files_fits_schema(user_files, tmp_path):
    d, ref = user_files
    out = tmp_path / "b.json"
    rc = main(["bench", "--manifest", str(d / "cohort" / "manifest.csv"), "--reference", str(d / "ref"),
               "--model", str(d / "model"), "--samples", "2", "--repeats", "1", "--stages", "read,preprocess,project",
               "--library", "4x1000", "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert check_bench_record(rec) == []
    st = rec["settings"]
    assert st["source"] == "user files" and st["samples"] == 2  # --samples takes the first rows of the manifest
    assert st["reference_events"] == ref.train_events.shape[0] == 1200
    assert list(rec["stages"]) == ["read", "preprocess", "project"]
    assert all(v["median_s"] > 0 for v in rec["stages"].values())
    assert 0 < rec["events_per_sample"] <= 1200
    assert rec["end_to_end"]["in_process"]["events_per_s"] > 0 and rec["extrapolation"]["samples"] == 4


def test_bench_manifest_without_reference_is_one_line_error(tmp_path, capsys):
    rc = main(["bench", "--manifest", str(tmp_path / "manifest.csv"), "--model", str(tmp_path / "model")])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert "--manifest needs --reference and --model" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_bench_manifest_with_a_folder_that_is_not_a_reference(user_files, tmp_path, capsys):
    d, _ = user_files
    rc = main(["bench", "--manifest", str(d / "cohort" / "manifest.csv"), "--reference", str(tmp_path),
               "--model", str(d / "model"), "--samples", "1", "--repeats", "1", "--stages", "read"])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert str(tmp_path) in err and len(err.splitlines()) == 1
