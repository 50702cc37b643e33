"""``rescue cells score`` on the shared runner: outputs, readout consistency, resume, failures, parity, CLI."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rescue_gpu.cells.manifest import input_digest, read_cell_manifest
from rescue_gpu.cells.record import build_cell_model
from rescue_gpu.cells.readout import AccRates, sample_readout
from rescue_gpu.cells.record import CellModelRecord
from rescue_gpu.cells.assay import CellScoreOptions, score_cells
from rescue_gpu.runner.store import decode_strings, encode_strings
from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.cells.workflow import with_overrides
from rescue_gpu.runner.store import RunStore
from rescue_gpu.config import RuntimeConfig
from rescue_gpu.errors import ConfigError, ManifestError, ModelError
from rescue_gpu.simulate.cells import simulate_cell_library

RATES = {"tpr": 0.9, "fpr": 0.1, "n_pos": 200, "n_neg": 800}


@pytest.fixture(scope="module")
def pipe():
    return with_overrides(load_cell_pipeline("ifc-labelfree"), architecture="resnet18")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells-lib")
    return simulate_cell_library(root, assay="ifc", layout="channel-tiffs", n_train_patients=3, cells_per_class=1,
                                 n_samples=3, cells_per_sample=40, fractions=[0.0, 0.3, 0.6], seed=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, pipe):
    torch.manual_seed(0)
    net = build_cell_model(architecture="resnet18", in_channels=pipe.in_channels, n_classes=len(pipe.classes.names))
    rec = CellModelRecord(model=net.eval(), architecture="resnet18", classes=pipe.classes.names,
                          leukaemic=pipe.classes.leukaemic, channels=pipe.input.network_channels,
                          image_size=pipe.preprocess.size, preprocess=pipe.preprocess, temperature=1.5, rates=RATES)
    return rec.save(tmp_path_factory.mktemp("cells-model") / "model")


def _score(lib, model_dir, out, pipe, **kw):
    opts = CellScoreOptions(pipeline=pipe, **{k: v for k, v in kw.items() if k != "in_process"})
    return score_cells(lib.samples_manifest, model=model_dir, out=out, options=opts,
                       runtime=RuntimeConfig(backend="cpu", workers="1"), in_process=kw.get("in_process", True))


@pytest.fixture(scope="module")
def run(lib, model_dir, pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("cells-run") / "run"
    return _score(lib, model_dir, out, pipe, gallery=4)


def test_outputs_and_readout_consistency(run, lib, pipe):
    assert run.n_scored == 3 and run.n_failed == 0
    for key in ("csv", "parquet", "cells", "embeddings", "report"):
        assert run.outputs[key].is_file(), key
    df = pd.read_parquet(run.outputs["parquet"])
    truth = pd.read_csv(lib.samples_manifest)
    assert list(df["sample_id"]) == list(truth["sample_id"])
    np.testing.assert_allclose(df["true_pct"], 100 * truth["true_fraction"])
    store = RunStore(run.run_dir / "store.zarr")
    for _, row in df.iterrows():
        probs = store.array(row["sample_id"], "probs")
        assert probs.shape == (40, len(pipe.classes.names))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        # the stored readout is what the readout function gives for the stored probabilities
        again = sample_readout(probs.astype(np.float64), classes=pipe.classes, readout=pipe.readout,
                               rates=AccRates(**RATES), seed=0)
        assert row["leukaemic_pct"] == pytest.approx(again.leukaemic_pct, abs=1e-3)
        assert row["call"] == ("positive" if row["leukaemic_pct"] >= pipe.readout.cutoff else "negative")
        assert row["ci_low_pct"] <= row["leukaemic_pct"] <= row["ci_high_pct"]


def test_cells_table_ids_embeddings_gallery(run, lib, pipe):
    cells = pd.read_parquet(run.outputs["cells"])
    truth = pd.read_csv(Path(lib.out_dir) / "truth.csv", dtype=str)
    assert len(cells) == 3 * 40
    assert set(zip(cells["sample_id"], cells["cell_id"])) == set(zip(truth["sample_id"], truth["cell_id"]))
    assert set(cells["predicted"]) <= set(pipe.classes.names)
    emb = np.load(run.outputs["embeddings"])
    assert emb["embeddings"].shape == (120, 512) and emb["embeddings"].dtype == np.float16
    assert list(emb["cell_id"]) == list(cells["cell_id"])
    store = RunStore(run.run_dir / "store.zarr")
    sid = cells["sample_id"].iloc[0]
    gp, gi = store.array(sid, "gallery_p"), store.array(sid, "gallery_index")
    assert store.array(sid, "gallery_images").shape == (4, 2, 48, 48)
    assert store.array(sid, "gallery_saliency").shape == (4, 48, 48)
    p_leuk = cells[cells["sample_id"] == sid]["p_leukaemic"].to_numpy()
    np.testing.assert_allclose(np.sort(gp)[::-1], np.sort(p_leuk)[::-1][:4], rtol=1e-5)  # the top cells
    np.testing.assert_allclose(p_leuk[gi], gp, rtol=1e-5)
    html = run.outputs["report"].read_text()
    for section in ("Leukaemic percentage per sample", "Most leukaemic-looking cells", "MAE adjusted", "Provenance"):
        assert section in html


def test_resume_skips_unchanged_and_redoes_touched(run, lib, model_dir, pipe):
    again = _score(lib, model_dir, run.run_dir, pipe, gallery=4)
    assert again.n_skipped == 3 and again.n_processed == 0
    sample = Path(lib.samples_manifest).parent / pd.read_csv(lib.samples_manifest)["path"].iloc[1]
    f = sorted(sample.iterdir())[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = _score(lib, model_dir, run.run_dir, pipe, gallery=4)
    assert third.n_skipped == 2 and third.n_processed == 1


def test_bad_sample_fails_alone(lib, model_dir, pipe, tmp_path):
    src = Path(lib.samples_manifest).parent
    shutil.copytree(src / "samples", tmp_path / "samples")
    shutil.copy(lib.samples_manifest, tmp_path / "samples.csv")
    bad = sorted((tmp_path / "samples").iterdir())[0]
    victim = sorted(bad.glob("*_Ch6.tif"))[0]
    victim.unlink()  # one cell lost its dark-field plane
    lib2 = dataclasses.replace(lib, samples_manifest=tmp_path / "samples.csv") if dataclasses.is_dataclass(lib) else lib
    out = _score(lib2, model_dir, tmp_path / "run", pipe, gallery=0)
    assert out.n_failed == 1 and out.n_scored == 2
    df = pd.read_csv(out.outputs["csv"], keep_default_na=False)
    err = df.loc[df["status"] == "failed", "error"].iloc[0]
    assert "Ch6" in err and str(tmp_path) not in err  # says what is missing, without the path


def test_dask_equals_in_process(run, lib, model_dir, pipe, tmp_path):
    dask = _score(lib, model_dir, tmp_path / "run", pipe, gallery=4, in_process=False)
    assert dask.cluster != "in-process (no Dask)"
    a, b = RunStore(run.run_dir / "store.zarr"), RunStore(tmp_path / "run" / "store.zarr")
    for sid in pd.read_csv(lib.samples_manifest)["sample_id"]:
        np.testing.assert_array_equal(a.array(sid, "probs"), b.array(sid, "probs"))
        assert a.read(sid).record["readout"] == b.read(sid).record["readout"]


def test_model_must_fit_pipeline(lib, model_dir, pipe, tmp_path):
    other = dataclasses.replace(pipe, preprocess=dataclasses.replace(pipe.preprocess, size=64))
    with pytest.raises(ModelError, match="64"):
        _score(lib, model_dir, tmp_path / "run", other)
    assert not (tmp_path / "run" / "store.zarr").exists()


def test_embeddings_need_torch_engine(pipe):
    with pytest.raises(ConfigError, match="embeddings"):
        CellScoreOptions(pipeline=pipe, engine="onnx")
    CellScoreOptions(pipeline=pipe, engine="onnx", keep_embeddings=False)


def test_onnx_engine_gives_the_same_class_logits(model_dir):
    from rescue_gpu.engine import make_engine

    rec = CellModelRecord.load(model_dir)
    x = np.random.default_rng(0).random((5, 2, 48, 48), dtype=np.float32)
    ref = make_engine(rec, kind="torch", device="cpu", precision="fp32", batch_size=2)
    ort = make_engine(rec, kind="onnx", device="cpu", batch_size=2)
    lt, lo = ref.logits(x), ort.logits(x)
    assert lt.shape == lo.shape == (5, 5)
    np.testing.assert_allclose(lo, lt, atol=1e-4)
    np.testing.assert_allclose(ref.predict(x).sum(axis=1), 1.0)
    logits, feats = ref.logits_and_features(x)
    np.testing.assert_allclose(logits, lt, atol=1e-5)
    assert feats.shape == (5, 512)
    assert ref.logits(x[:0]).shape == (0, 5)


def test_strings_round_trip():
    ids = ["a", "", "cell_0001", "ünïcode/€"]
    assert decode_strings(*encode_strings(ids)) == ids
    assert decode_strings(*encode_strings([])) == []


def test_cell_manifest_folder_and_errors(tmp_path, lib):
    rows, truth = read_cell_manifest(lib.samples_manifest)
    assert len(rows) == 3 and set(truth.values()) == {0.0, 0.3, 0.6}
    (tmp_path / "s1").mkdir()
    np.save(tmp_path / "s2.npy", np.zeros((2, 2, 8, 8), np.uint16))
    rows, truth = read_cell_manifest(tmp_path)
    assert [r.sample_id for r in rows] == ["s1", "s2"] and truth == {}
    bad = tmp_path / "m.csv"
    bad.write_text("sample_id,path,true_fraction\na,s1,1.5\nb,s1,x\n")
    with pytest.raises(ManifestError, match="row 2.*row 3"):
        read_cell_manifest(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="no samples"):
        read_cell_manifest(empty)


def test_input_digest_tracks_content_changes(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "a_Ch1.tif").write_bytes(b"1")
    first = input_digest(d)
    (d / "b_Ch1.tif").write_bytes(b"2")
    second = input_digest(d)
    assert first[0] != second[0] and second[1] == 2
    (d / "b_Ch1.tif").unlink()
    assert input_digest(d) == first  # back to the same files: the same digest


def test_cli_score_exit_codes(lib, model_dir, tmp_path, capsys):
    from rescue_gpu.cli import main

    pipeline_file = tmp_path / "p.toml"
    text = (Path(load_cell_pipeline("ifc-labelfree").source)).read_text()
    pipeline_file.write_text(text.replace('architecture = "resnet50"', 'architecture = "resnet18"'))
    common = ["--pipeline", str(pipeline_file), "--in-process", "--gallery", "2"]
    rc = main(["cells", "score", str(lib.samples_manifest), "--model", str(model_dir), "--out", str(tmp_path / "run"),
               *common])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cells/s" in out and "leukaemic_pct" in out
    rc = main(["cells", "score", str(lib.samples_manifest), "--model", str(tmp_path / "nope"), "--out",
               str(tmp_path / "run2"), *common])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_embeddings_export_caps_cells_per_sample(run, pipe, tmp_path):
    from rescue_gpu.cells.outputs import write_embeddings

    df = pd.read_parquet(run.outputs["parquet"])
    store = RunStore(run.run_dir / "store.zarr")
    path = write_embeddings(df, store, tmp_path / "e.npz", classes=pipe.classes.names,
                            leukaemic_index=pipe.classes.leukaemic_index(), per_sample=7)
    emb = np.load(path)
    assert emb["embeddings"].shape == (3 * 7, 512)
    cells = pd.read_parquet(run.outputs["cells"])
    for sid in df["sample_id"]:
        ids = list(emb["cell_id"][emb["sample_id"] == sid])
        order = list(cells.loc[cells["sample_id"] == sid, "cell_id"])
        assert len(ids) == 7 and ids == [c for c in order if c in ids]  # a subset, in cell order
        rows = [order.index(c) for c in ids]
        np.testing.assert_array_equal(emb["embeddings"][emb["sample_id"] == sid], store.array(sid, "embeddings")[rows])


def test_provenance_has_the_resolved_device_and_checksum(run, model_dir):
    from rescue_gpu.runner.store import RunStore

    store = RunStore(run.run_dir / "store.zarr")
    rec = CellModelRecord.load(model_dir)
    for s in store:
        prov = store.read(s.sample_id).record["provenance"]
        assert (prov["backend"], prov["engine"], prov["precision"]) == ("cpu", "torch", "fp32")
        assert prov["model_checksum"] == rec.checksum
    settings = store.run_meta()["settings"]
    assert (settings["backend"], settings["engine"], settings["precision"]) == ("cpu", "torch", "fp32")


def test_resume_rescores_after_a_new_temperature(lib, model_dir, pipe, tmp_path):
    import dataclasses
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    out = tmp_path / "run"
    assert _score(lib, model, out, pipe, gallery=0).n_processed == 3
    dataclasses.replace(CellModelRecord.load(model), temperature=3.0).save(model, overwrite=True)
    again = _score(lib, model, out, pipe, gallery=0)
    assert (again.n_skipped, again.n_processed) == (0, 3)
