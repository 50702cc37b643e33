"""``rescue mrd build-normal``: the DfN model from a manifest's negative samples, and its errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from rescue_gpu.errors import ConfigError
from rescue_gpu.flow import mrd

from .test_cohort_fixtures import build_assets


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")


def _invoke(args: list[str]):
    from rescue_gpu.flow.mrd_cli import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return CliRunner().invoke(app, ["mrd", "build-normal", *map(str, args)])


def test_build_normal_equals_the_python_api(assets: dict[str, Path], tmp_path: Path) -> None:
    from rescue_gpu.config import load_pipeline
    from rescue_gpu.runner.manifest import read_manifest

    out = tmp_path / "normal"
    res = _invoke([assets["manifest"], "--out", out, "--pipeline", "aml-mrd", "--k", "3", "--false-flag-rate", "0.01",
                   "--loose-rate", "0.05"])
    assert res.exit_code == 0, res.output
    got = mrd.NormalModel.load(out)
    rows = read_manifest(assets["manifest"])
    peer = mrd.normal_model_from_rows(rows, load_pipeline("aml-mrd"), k=3, false_flag_rate=0.01, loose_rate=0.05)
    np.testing.assert_array_equal(got.points, peer.points)
    assert got.meta() == peer.meta()
    n_neg = sum(r.label == "negative" for r in rows)
    assert f"from {n_neg} of {n_neg} negative sample(s)" in res.output and "--mrd-model" in res.output
    # a second build into the same folder needs --overwrite; with it, the reference's pipeline is used
    again = _invoke([assets["manifest"], "--out", out, "--reference", assets["reference"], "--k", "3"])
    assert isinstance(again.exception, ConfigError) and "--overwrite" in str(again.exception)
    redo = _invoke([assets["manifest"], "--out", out, "--reference", assets["reference"], "--k", "3", "--overwrite"])
    assert redo.exit_code == 0, redo.output
    assert mrd.NormalModel.load(out).k == 3 and mrd.NormalModel.load(out).false_flag_rate == 1e-4  # the default


def test_build_normal_errors(assets: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke([assets["manifest"], "--out", tmp_path / "a"])
    assert isinstance(res.exception, ConfigError) and "--reference" in str(res.exception)
    with open(assets["manifest"]) as fh:
        recs = [r for r in csv.DictReader(fh) if r["label"] == "positive"]
    only_pos = tmp_path / "positives.csv"
    with open(only_pos, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows({**r, "path": str(assets["cohort"] / r["path"])} for r in recs)
    res = _invoke([only_pos, "--out", tmp_path / "b", "--pipeline", "aml-mrd"])
    assert isinstance(res.exception, ConfigError) and "labelled 'negative'" in str(res.exception)
    assert not (tmp_path / "b").exists()
    broken = tmp_path / "broken.csv"
    broken.write_text("sample_id,path,label\nN1,missing.fcs,negative\n")
    res = _invoke([broken, "--out", tmp_path / "c", "--pipeline", "aml-mrd"])
    assert isinstance(res.exception, ConfigError) and "could be preprocessed" in str(res.exception)
    (tmp_path / "file").write_text("x")
    res = _invoke([assets["manifest"], "--out", tmp_path / "file", "--pipeline", "aml-mrd"])
    assert isinstance(res.exception, ConfigError) and "not a directory" in str(res.exception)
    res = _invoke([assets["manifest"], "--out", tmp_path / "d", "--pipeline", "aml-mrd", "--cluster-rule", "mean"])
    assert isinstance(res.exception, ConfigError) and "--cluster-rule must be one of sample, pooled" in str(res.exception)
    assert not (tmp_path / "d").exists()  # refused before any sample was read


def test_build_normal_threshold_rules(assets: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke([assets["manifest"], "--out", tmp_path / "s", "--pipeline", "aml-mrd", "--k", "3",
                   "--sample-flag-rate", "0.01"])
    assert res.exit_code == 0, res.output
    model = mrd.NormalModel.load(tmp_path / "s")
    assert model.cluster_rule == "sample" and model.cross_fit and model.sample_flag_rate == 0.01
    assert len(model.sample_thresholds) == model.n_samples and model.cluster_threshold == max(model.sample_thresholds)
    assert "rule sample: max of" in res.output and "cross-fitted" in res.output
    res = _invoke([assets["manifest"], "--out", tmp_path / "p", "--pipeline", "aml-mrd", "--k", "3",
                   "--cluster-rule", "pooled", "--no-cross-fit", "--false-flag-rate", "0.01"])
    assert res.exit_code == 0, res.output
    pooled = mrd.NormalModel.load(tmp_path / "p")
    assert pooled.cluster_rule == "pooled" and not pooled.cross_fit and "pooled false-flag rate 0.01" in res.output
    np.testing.assert_array_equal(pooled.points, model.points)


def test_build_normal_excess_rule(assets: dict[str, Path], tmp_path: Path) -> None:
    res = _invoke([assets["manifest"], "--out", tmp_path / "e", "--pipeline", "aml-mrd", "--k", "3",
                   "--excess-ratio", "20", "--excess-share", "0.05"])
    assert res.exit_code == 0, res.output
    model = mrd.NormalModel.load(tmp_path / "e")
    assert model.excess and model.excess_ratio == 20 and model.excess_radius == 2 * model.cluster_radius
    assert model.excess_share == max(0.05, 2 * max(model.excess_shares))
    assert len(model.excess_shares) == model.n_samples  # every normal, cross-fitted
    assert f"excess rule (ratio 20 within {model.excess_radius:g}, share {model.excess_share:.3g}" in res.output
    res = _invoke([assets["manifest"], "--out", tmp_path / "n", "--pipeline", "aml-mrd", "--k", "3", "--no-excess"])
    assert res.exit_code == 0, res.output
    assert not mrd.NormalModel.load(tmp_path / "n").excess and "no excess rule" in res.output
    res = _invoke([assets["manifest"], "--out", tmp_path / "b", "--pipeline", "aml-mrd", "--excess-share", "1.5"])
    assert isinstance(res.exception, ConfigError) and "excess_share must be in (0, 1), got 1.5" in str(res.exception)
    assert not (tmp_path / "b").exists()  # refused before any sample was read


def test_build_normal_names_the_negatives_it_left_out(assets: dict[str, Path], tmp_path: Path) -> None:
    """A negative row that cannot be read is named with its reason (was: only a count, nothing to act on)."""
    with open(assets["manifest"]) as fh:
        recs = list(csv.DictReader(fh))
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows({**r, "path": str(assets["cohort"] / r["path"])} for r in recs)
        w.writerow({**recs[0], "sample_id": "GONE1", "path": str(tmp_path / "gone.fcs"), "label": "negative"})
    res = _invoke([manifest, "--out", tmp_path / "n", "--pipeline", "aml-mrd", "--k", "3"])
    assert res.exit_code == 0, res.output
    assert "1 could not be preprocessed" in res.output
    assert "skipped GONE1:" in res.output and "file not found" in res.output
    broken = tmp_path / "broken.csv"
    broken.write_text(f"sample_id,path,label\nN1,{tmp_path / 'missing.fcs'},negative\n")
    res = _invoke([broken, "--out", tmp_path / "c", "--pipeline", "aml-mrd"])
    assert isinstance(res.exception, ConfigError) and "N1" in str(res.exception) and "file not found" in str(res.exception)
