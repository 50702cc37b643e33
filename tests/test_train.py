"""Training data cache, augmentation, patient-level folds, train_model and the train/evaluate CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from sklearn import metrics as skm
from typer.testing import CliRunner

from rescue_gpu.flow import stages
from rescue_gpu.runner.manifest import ManifestRow, read_manifest
from rescue_gpu.config import RasterSpec, load_pipeline
from rescue_gpu.errors import ConfigError
from rescue_gpu.flow.dataset import MrdImageDataset, bootstrap_events, build_cache
from rescue_gpu.nn.splits import patient_folds
from rescue_gpu.projection.transform import UmapParams
from rescue_gpu.reference import Reference
from rescue_gpu.simulate import simulate_cohort
from tests.conftest import write_csv_rows


def _tiny_pipeline(size: int = 32, epochs: int = 1):
    pipe = load_pipeline("aml-mrd")
    train = dataclasses.replace(pipe.model.train, max_epochs=epochs, patience=2, batch_size=8, augment_copies=1)
    return dataclasses.replace(pipe, raster=dataclasses.replace(pipe.raster, size=size),
                               model=dataclasses.replace(pipe.model, train=train))


def _pca_reference(rows: list[ManifestRow], pipe, *, n: int = 1500) -> Reference:
    """A small reference without a UMAP fit: events of a few samples, embedded by their first two PCs."""
    ev = np.concatenate([stages.load_events(r.path, pipe).values[:n // 3] for r in rows[:3]])
    centred = ev - ev.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    emb = centred @ vt[:2].T
    emb = (emb * (5.0 / emb.std())).astype(np.float32)  # UMAP-like scale, so the SGD keeps events on the canvas
    lo, hi = emb.min(0), emb.max(0)
    pad = 0.05 * (hi - lo)
    markers = stages.load_events(rows[0].path, pipe).markers
    return Reference(ev, emb, UmapParams(random_state=0), markers, raster=pipe.raster,
                     extent=(lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1]))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[ManifestRow], Reference, object, Path]:
    root = tmp_path_factory.mktemp("cohort")
    summary = simulate_cohort(root / "sim", n_samples=12, n_events=3000, seed=5)
    rows = read_manifest(summary.manifest)
    pipe = _tiny_pipeline()
    return rows, _pca_reference(rows, pipe), pipe, root


def test_patient_folds_never_leak() -> None:
    rng = np.random.default_rng(0)
    per = rng.integers(1, 5, size=40)
    groups = np.repeat([f"P{i}" for i in range(40)], per)
    y = np.repeat(rng.random(40) < 0.4, per).astype(int)
    for k in (2, 3, 5):
        splits = patient_folds(y, groups, folds=k, seed=1)
        assert len(splits) == k
        seen = np.concatenate([va for _, va in splits])
        assert sorted(seen) == list(range(y.size))  # every sample validated exactly once
        for tr, va in splits:
            assert not set(groups[tr]) & set(groups[va])
            assert 0 < y[va].sum() < va.size  # both classes in every validation part
    with pytest.raises(ConfigError, match="patients"):
        patient_folds(np.array([0, 1, 0]), np.array(["a", "a", "b"]), folds=3)


def test_cache_round_trip_stale_rebuild_and_failures(cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, ref, pipe, _ = cohort
    bad = ManifestRow("broken", tmp_path / "missing.fcs", "PX", "diagnosis", "positive")
    cache, failed = build_cache([*rows[:3], bad], ref, pipe, cache_dir=tmp_path)
    assert list(failed) == ["broken"] and cache.sample_ids() == sorted(r.sample_id for r in rows[:3])
    direct = stages.project(ref, stages.load_events(rows[1].path, pipe), seed=0, backend="cpu")
    got = cache.get(rows[1].sample_id)
    np.testing.assert_array_equal(got.coords, np.asarray(direct))
    assert (got.patient_id, got.timepoint, got.label) == (rows[1].patient_id, rows[1].timepoint,
                                                          {"positive": 1, "negative": 0}[rows[1].label])
    assert got.values is None  # density-only raster: no marker values stored

    def boom(*a, **k):
        raise AssertionError("a cached sample was projected again")

    monkeypatch.setattr(stages, "project", boom)
    again, failed2 = build_cache(rows[:3], ref, pipe, cache_dir=tmp_path)
    assert not again.rebuilt and not failed2
    monkeypatch.undo()
    other = dataclasses.replace(ref, raster=dataclasses.replace(ref.raster, channels=("density", "markers")))
    stale, _ = build_cache(rows[:2], other, pipe, cache_dir=tmp_path)
    assert stale.rebuilt and stale.sample_ids() == sorted(r.sample_id for r in rows[:2])
    assert stale.get(rows[0].sample_id).values.shape[1] == len(ref.markers)


def test_bootstrap_augmentation_changes_image_keeps_mass(cohort, tmp_path: Path) -> None:
    rows, ref, pipe, _ = cohort
    cache, _ = build_cache(rows[:2], ref, pipe, cache_dir=tmp_path)
    s = dataclasses.replace(cache.get(rows[0].sample_id), label=1)
    rng = np.random.default_rng(0)
    bc, _ = bootstrap_events(s.coords, None, rng)
    assert bc.shape == s.coords.shape and not np.array_equal(bc, s.coords)
    raster = RasterSpec(size=32)
    full = MrdImageDataset([s], extent=ref.extent, raster=raster).image(0)
    train = MrdImageDataset([s], extent=ref.extent, raster=raster, train=True, jitter=0.0, seed=3)
    train.set_epoch(1)
    aug = train.image(0)
    assert aug.shape == full.shape and not np.allclose(aug, full)
    mass = [np.histogram2d(c[:, 0], c[:, 1], bins=32, range=[ref.extent[:2], ref.extent[2:]])[0].sum()
            for c in (s.coords, bc)]
    assert mass[0] == mass[1]  # same number of events land on the canvas (no events lost or added)
    assert np.corrcoef(aug.ravel(), full.ravel())[0, 1] > 0.9  # same layout: no flips or rotations
    np.testing.assert_array_equal(train.image(0), aug)  # seeded by (seed, epoch, index)
    train.set_epoch(2)
    assert not np.array_equal(train.image(0), aug)
    jit = MrdImageDataset([s], extent=ref.extent, raster=raster, train=True, jitter=0.05, seed=3)
    jit.set_epoch(1)
    ratio = jit.image(0)[aug > 0] / aug[aug > 0]
    assert np.allclose(ratio, ratio[0], rtol=1e-5) and ratio[0] != 1.0 and abs(ratio[0] - 1) < 0.25


def test_train_model_tiny_cohort(cohort, tmp_path: Path) -> None:
    from rescue_gpu.flow.record import ModelRecord
    from rescue_gpu.flow.train import train_model

    rows, ref, pipe, _ = cohort
    epochs: list[dict] = []
    rec = train_model(rows, ref, pipe, out=tmp_path / "m1", folds=2, cache_dir=tmp_path / "cache", device="cpu",
                      on_epoch=epochs.append, n_boot=50, show_progress=False)
    loaded = ModelRecord.load(tmp_path / "m1")
    assert loaded.sha256 == rec.sha256
    assert 0.0 <= loaded.threshold <= 1.0 and loaded.temperature > 0
    cv = loaded.metrics["cv"]
    assert cv["n"] == 12 and set(cv["metrics"]) == {"sensitivity", "specificity", "f1", "roc_auc", "pr_auc"}
    oof = cv["oof"]
    y = np.array([o["label"] for o in oof])
    p = np.array([o["p"] for o in oof])
    assert cv["metrics"]["sensitivity"]["estimate"] == pytest.approx(skm.recall_score(y, p >= loaded.threshold))
    groups = {f: {o["patient_id"] for o in oof if o["fold"] == f} for f in (0, 1)}
    assert not groups[0] & groups[1]
    assert loaded.n_members == 2 and loaded.calibration_route == "cv-fold-ensemble"
    assert {e["fold"] for e in epochs} == {0, 1}
    loaded.check_compatible(ref)
    # the CLI with the same settings and seeds on the CPU: the same out-of-fold logits (the cache is reused)
    rec2 = _train_via_cli(cohort, tmp_path)
    np.testing.assert_allclose([o["logit"] for o in rec2.metrics["cv"]["oof"]], [o["logit"] for o in oof], rtol=1e-5)
    assert rec2.threshold == pytest.approx(rec.threshold)
    _check_oof_calibration(loaded, cohort, tmp_path)
    _check_score_is_the_ensemble(rec2, cohort, tmp_path)


def _check_oof_calibration(rec, cohort, tmp_path: Path) -> None:
    """The stored T and threshold are those of the OOF logits, and each OOF logit is its fold member's."""
    from rescue_gpu.nn.calibration import fit_temperature
    from rescue_gpu.nn.metrics import choose_threshold

    rows, ref, pipe, _ = cohort
    oof = rec.metrics["cv"]["oof"]
    z, y = np.array([o["logit"] for o in oof]), np.array([o["label"] for o in oof])
    assert rec.temperature == pytest.approx(fit_temperature(z, y))
    p = 1.0 / (1.0 + np.exp(-z / rec.temperature))
    np.testing.assert_allclose(p, [o["p"] for o in oof], rtol=1e-9)
    assert rec.threshold == pytest.approx(choose_threshold(y, p, target_sensitivity=0.0))
    cache, _ = build_cache(rows, ref, pipe, cache_dir=tmp_path / "cache", seed=pipe.model.train.seed, backend="cpu")
    samples = [cache.get(o["sample_id"]) for o in oof]
    images = np.stack([MrdImageDataset([s], extent=ref.extent, raster=ref.raster)[0][0].numpy() for s in samples])
    import torch

    with torch.inference_mode():
        own = np.array([float(rec.model.members[o["fold"]](torch.from_numpy(im[None]))[0])
                        for o, im in zip(oof, images)])
    np.testing.assert_allclose(own, z, rtol=1e-4, atol=1e-4)


def _check_score_is_the_ensemble(rec, cohort, tmp_path: Path) -> None:
    """``rescue score`` with the trained ensemble: p_mrd is sigmoid(mean of the members' logits / T)."""
    import pandas as pd
    import torch

    from rescue_gpu.flow.cli import _main
    from rescue_gpu.runner.store import RunStore

    _, _, _, root = cohort
    out = tmp_path / "run"
    rc = _main(["score", str(root / "sim" / "manifest.csv"), "--reference", str(tmp_path / "ref"), "--model",
                str(tmp_path / "m2"), "--out", str(out), "--in-process", "--engine", "torch", "--backend", "cpu", "--no-report",
                "--pipeline", str(tmp_path / "tiny.toml")])
    assert rc == 0
    df = pd.read_csv(out / "scores.csv")
    assert (df["status"] == "scored").all()
    store = RunStore(out / "store.zarr")
    for sid, p_mrd in zip(df["sample_id"], df["p_mrd"]):
        x = torch.from_numpy(np.asarray(store.image(str(sid)), dtype=np.float32)[None])
        with torch.inference_mode():
            z = np.mean([float(m(x)[0]) for m in rec.model.members])
        assert p_mrd == pytest.approx(1.0 / (1.0 + np.exp(-z / rec.temperature)), rel=1e-4, abs=1e-6)


def _train_via_cli(cohort, tmp_path: Path):
    """``rescue train`` with a pipeline file equal to the tiny test pipeline."""
    from rescue_gpu.config import PIPELINES_DIR
    from rescue_gpu.flow.record import ModelRecord
    from rescue_gpu.flow.train_cli import register

    rows, ref, _, root = cohort
    text = (PIPELINES_DIR / "aml-mrd.toml").read_text()
    for a, b in (("size = 128", "size = 32"), ("batch_size = 32", "batch_size = 8"), ("augment_copies = 4", "augment_copies = 1"),
                 ("patience = 6", "patience = 2")):
        assert a in text
        text = text.replace(a, b)
    (tmp_path / "tiny.toml").write_text(text)
    ref.save(tmp_path / "ref")
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["train", str(root / "sim" / "manifest.csv"), "--reference", str(tmp_path / "ref"),
                                   "--out", str(tmp_path / "m2"), "--folds", "2", "--epochs", "1", "--device", "cpu",
                                   "--pipeline", str(tmp_path / "tiny.toml"), "--cache", str(tmp_path / "cache")])
    assert res.exit_code == 0, res.output
    assert "cross-validation" in res.output and "threshold" in res.output
    rec = ModelRecord.load(tmp_path / "m2")
    # 12 samples in 2 folds: far fewer than 20 patients per class per fold
    assert rec.provenance["warnings"] and "fewer than 20 per class" in rec.provenance["warnings"][0]
    assert f"warning: {rec.provenance['warnings'][0][:40]}" in res.output
    return rec


def test_evaluate_cli_against_sklearn(tmp_path: Path) -> None:
    from rescue_gpu.flow.train_cli import register

    rng = np.random.default_rng(3)
    n = 40
    y = (rng.random(n) < 0.5).astype(int)
    p = np.clip(0.5 + 0.3 * (2 * y - 1) + 0.25 * rng.standard_normal(n), 0, 1)
    tps = np.array(["diagnosis", "follow-up", "control"])[rng.integers(0, 3, n)]
    y[tps == "diagnosis"], y[tps == "control"] = 1, 0
    truth = [{"sample_id": f"S{i}", "path": f"fcs/S{i}.fcs", "patient_id": f"P{i // 2}", "timepoint": tps[i],
              "label": "positive" if y[i] else "negative"} for i in range(n)]
    scores = [{"sample_id": f"S{i}", "patient_id": f"P{i // 2}", "timepoint": tps[i], "p_mrd": f"{p[i]:.6f}",
               "call": "positive" if p[i] >= 0.5 else "negative", "threshold": "0.5",
               "status": "failed" if i == 3 else "ok"} for i in range(n - 1)]  # S39 has no score, S3 failed
    write_csv_rows(tmp_path / "truth.csv", truth)
    write_csv_rows(tmp_path / "scores.csv", scores)
    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "scores.csv"), "--truth", str(tmp_path / "truth.csv"),
                                   "--out", str(tmp_path / "ev"), "--boot", "200"])
    assert res.exit_code == 0, res.output
    assert "S3" in res.output and "S39" in res.output and "left out" in res.output
    rep = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(rep["excluded"]) == {"S3", "S39"}
    keep = np.array([i not in (3, 39) for i in range(n)])
    yk, pk = y[keep], np.round(p[keep], 6)
    calls = pk >= 0.5
    assert rep["n"] == keep.sum()
    assert rep["metrics"]["sensitivity"]["estimate"] == pytest.approx(skm.recall_score(yk, calls))
    assert rep["metrics"]["specificity"]["estimate"] == pytest.approx(skm.recall_score(1 - yk, ~calls))
    assert rep["metrics"]["f1"]["estimate"] == pytest.approx(skm.f1_score(yk, calls))
    assert rep["metrics"]["roc_auc"]["estimate"] == pytest.approx(skm.roc_auc_score(yk, pk))
    assert rep["metrics"]["pr_auc"]["estimate"] == pytest.approx(skm.average_precision_score(yk, pk))
    tn, fp, fn, tp = skm.confusion_matrix(yk, calls).ravel()
    assert rep["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    ctrl = keep & (tps == "control")
    assert rep["by_timepoint"]["control"]["sensitivity"] is None
    assert rep["by_timepoint"]["control"]["specificity"]["estimate"] == pytest.approx(np.mean(p[ctrl].round(6) < 0.5))
    for m in rep["metrics"].values():
        assert m["low"] <= m["estimate"] <= m["high"]
    assert (tmp_path / "ev" / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_register_adds_train_and_evaluate() -> None:
    from rescue_gpu.flow.train_cli import register

    app = typer.Typer()
    register(app)
    out = CliRunner().invoke(app, ["train", "--help"]).output
    assert all(opt in out for opt in ("--reference", "--out", "--folds", "--epochs", "--cache", "--device", "--pipeline"))


@pytest.mark.gpu
def test_train_model_cuda_mixed_precision(cohort, tmp_path: Path) -> None:
    """The CUDA path (autocast, grad scaler on float16 devices) trains and saves a loadable record."""
    from rescue_gpu.flow.record import ModelRecord
    from rescue_gpu.flow.train import train_model

    rows, ref, pipe, _ = cohort
    rec = train_model(rows, ref, pipe, out=tmp_path / "mg", folds=2, cache_dir=tmp_path / "cache", device="cuda",
                      n_boot=20, show_progress=False)
    assert rec.provenance["device"].startswith("cuda")
    loaded = ModelRecord.load(tmp_path / "mg")
    assert np.isfinite([o["logit"] for o in loaded.metrics["cv"]["oof"]]).all()


def test_instrument_shift_seeded_leaves_original_and_matches_magnitude() -> None:
    from rescue_gpu.flow.dataset import instrument_shift

    rng = np.random.default_rng(1)
    values = rng.normal(0.4, 0.1, size=(4000, 10)).astype(np.float32)
    before = values.copy()
    a, ga, oa = instrument_shift(values, np.random.default_rng(7), gain=0.1, offset=0.05)
    b, gb, ob = instrument_shift(values, np.random.default_rng(7), gain=0.1, offset=0.05)
    np.testing.assert_array_equal(values, before)  # the original is untouched
    assert a is not values and not np.shares_memory(a, values)
    np.testing.assert_array_equal(a, b)  # same generator state, same copy
    np.testing.assert_array_equal(ga, gb)
    c, _, _ = instrument_shift(values, np.random.default_rng(8), gain=0.1, offset=0.05)
    assert not np.array_equal(a, c)
    # per channel, read back from the data: the median moves by the offset, quantile gaps scale by the gain
    np.testing.assert_allclose(np.median(a, 0) - np.median(values, 0), oa, atol=1e-5)
    iqr = lambda v: np.percentile(v, 75, axis=0) - np.percentile(v, 25, axis=0)  # noqa: E731
    np.testing.assert_allclose(iqr(a) / iqr(values), ga, rtol=1e-4)
    # the draws' spread is the setting: SD of log gain 0.1, SD of offset 0.05 (2,000 channel draws each)
    draws = [instrument_shift(values[:50], np.random.default_rng(s), gain=0.1, offset=0.05)[1:] for s in range(200)]
    logg = np.log(np.concatenate([g for g, _ in draws]))
    off = np.concatenate([o for _, o in draws])
    assert abs(logg.std() - 0.1) < 0.01 and abs(off.std() - 0.05) < 0.005
    assert abs(logg.mean()) < 0.01 and abs(off.mean()) < 0.005
    same, g0, o0 = instrument_shift(values, np.random.default_rng(0), gain=0.0, offset=0.0)
    np.testing.assert_allclose(same, values, atol=1e-6)
    assert np.all(g0 == 1.0) and np.all(o0 == 0.0)


def test_shift_settings_validated() -> None:
    from rescue_gpu.config import TrainSpec

    for bad in ({"shift_copies": -1}, {"shift_gain": -0.1}, {"shift_offset": 0.6}, {"shift_copies": 2, "shift_gain": 0.0,
                                                                                   "shift_offset": 0.0}):
        with pytest.raises(ConfigError, match="shift"):
            TrainSpec(**bad)
    assert TrainSpec().shift_copies == 0  # off by default


def test_build_cache_shift_copies_and_training_images(cohort, tmp_path: Path) -> None:
    from rescue_gpu.flow.dataset import InstrumentShift, instrument_shift

    rows, ref, pipe, _ = cohort
    shift = InstrumentShift(copies=2, gain=0.1, offset=0.05, seed=0)
    cache, failed = build_cache(rows[:2], ref, pipe, cache_dir=tmp_path / "s", shift=shift)
    plain, _ = build_cache(rows[:2], ref, pipe, cache_dir=tmp_path / "p")
    assert not failed and cache.sample_ids() == plain.sample_ids()  # copies are not listed as samples
    got = cache.get(rows[0].sample_id, shift)
    np.testing.assert_array_equal(got.coords, plain.get(rows[0].sample_id).coords)  # original unchanged
    assert len(got.shifted) == 2 and plain.get(rows[0].sample_id).shifted == ()
    events = stages.load_events(rows[0].path, pipe)
    for j, (coords, _) in enumerate(got.shifted):
        values = instrument_shift(events.values, shift.rng(rows[0].sample_id, j), gain=0.1, offset=0.05)[0]
        direct = stages.project(ref, dataclasses.replace(events, values=values), seed=0, backend="cpu")
        np.testing.assert_array_equal(coords, np.asarray(direct))  # a seeded copy, projected like the original
        assert not np.array_equal(coords, got.coords)
    other = InstrumentShift(copies=1, gain=0.2, offset=0.05, seed=0)
    with pytest.raises(KeyError):  # copies made with other settings are not reused
        cache.get(rows[0].sample_id, other)
    s = dataclasses.replace(got, label=1)
    raster = RasterSpec(size=32)
    ds = MrdImageDataset([s], extent=ref.extent, raster=raster, train=True, copies=1, jitter=0.0, seed=3)
    picks = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        rng = np.random.default_rng([3, epoch, 0])  # the dataset's documented seeding
        pick = int(rng.integers(0, 3))
        coords = s.coords if pick == 0 else s.shifted[pick - 1][0]
        expected = ds.render(*bootstrap_events(coords, None, rng))
        np.testing.assert_array_equal(ds.image(0), expected)
        picks.add(pick)
    assert picks == {0, 1, 2}  # the original and both copies are drawn
    full = MrdImageDataset([s], extent=ref.extent, raster=raster).image(0)
    np.testing.assert_array_equal(full, MrdImageDataset([dataclasses.replace(s, shifted=())], extent=ref.extent,
                                                        raster=raster).image(0))  # evaluation: the original only
