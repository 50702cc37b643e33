"""Site calibration (issue 17): a model copy whose threshold is set on a site's own normals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from rescue_gpu.errors import ModelError
from rescue_gpu.flow.model_cli import register
from rescue_gpu.flow.record import ModelRecord, build_model
from rescue_gpu.flow.site import site_calibrate
from rescue_gpu.runner.store import RunStore
from tests.test_flow_record import HEAD, SIZE, make_reference
from tests.conftest import write_csv_rows

P_NORMALS = [0.81, 0.35, 0.62, 0.77, 0.90, 0.41, 0.58, 0.66, 0.72, 0.49]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> ModelRecord:
    torch.manual_seed(1)
    ref = make_reference()
    rec = ModelRecord(model=build_model(in_channels=1, head=HEAD).eval(), in_channels=1, image_size=SIZE, head=HEAD,
                      raster=ref.raster, reference_fingerprint=ref.fingerprint, threshold=0.3, temperature=1.2,
                      provenance={"n_samples": 40})
    return rec.save(tmp_path_factory.mktemp("m") / "model")


def _run(path, sha: str, p: list[float], labels: list[str] | None = None, failed: int = 0):
    labels = labels or ["negative"] * len(p)
    rows = [{"sample_id": f"N{i}", "p_mrd": v, "threshold": 0.3, "status": "scored", "label": lab}
            for i, (v, lab) in enumerate(zip(p, labels))]
    rows += [{"sample_id": f"F{i}", "p_mrd": "", "threshold": 0.3, "status": "failed", "label": "negative"}
             for i in range(failed)]
    path.mkdir(parents=True)
    write_csv_rows(path / "scores.csv", rows)
    RunStore(path / "store.zarr").set_run({"model_sha256": sha})
    return path


def test_site_calibrate_sets_the_lowest_threshold_and_keeps_the_rest(tmp_path, model_dir) -> None:
    rec = ModelRecord.load(model_dir)
    run = _run(tmp_path / "run", rec.sha256, P_NORMALS, failed=2)
    new, s = site_calibrate(model_dir, run, tmp_path / "site", max_positive_rate=0.1)
    # 10 normals at 10 %: one may be positive, so the cut lies just above the second highest (0.81)
    assert s["threshold"] == np.nextafter(0.81, 1.0) and s["n_normals"] == 10
    assert s["positive_at_previous"] == 10 and s["positive_at_new"] == 1
    back = ModelRecord.load(tmp_path / "site")                 # checksummed: loads, threshold covered
    assert back.threshold == s["threshold"] and back.temperature == rec.temperature and back.sha256 == rec.sha256
    assert back.provenance["n_samples"] == 40 and back.provenance["site_calibration"]["previous_threshold"] == 0.3
    assert ModelRecord.load(model_dir).threshold == 0.3        # the original is unchanged
    assert list(back.calls(np.array(P_NORMALS))).count("positive") == 1
    meta = json.loads((tmp_path / "site" / "model.json").read_text())
    meta["threshold"] = 0.5
    (tmp_path / "site" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError):                            # an edited site threshold is refused
        ModelRecord.load(tmp_path / "site")


def test_site_calibrate_refuses_other_models_positives_and_empty_runs(tmp_path, model_dir) -> None:
    rec = ModelRecord.load(model_dir)
    with pytest.raises(ModelError, match="another model"):
        site_calibrate(model_dir, _run(tmp_path / "a", "0" * 64, P_NORMALS), tmp_path / "o1")
    with pytest.raises(ModelError, match="labelled positive"):
        site_calibrate(model_dir, _run(tmp_path / "b", rec.sha256, [0.2, 0.9], ["negative", "positive"]), tmp_path / "o2")
    with pytest.raises(ModelError, match="no scored sample"):
        site_calibrate(model_dir, _run(tmp_path / "c", rec.sha256, [], failed=3), tmp_path / "o3")
    with pytest.raises(ModelError, match="not a 'rescue score' run"):
        site_calibrate(model_dir, tmp_path, tmp_path / "o4")
    with pytest.raises(ModelError, match="p_mrd = 1"):
        site_calibrate(model_dir, _run(tmp_path / "d", rec.sha256, [1.0, 1.0]), tmp_path / "o5")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_cli_site_threshold(tmp_path, model_dir) -> None:
    app = typer.Typer()
    register(app)
    rec = ModelRecord.load(model_dir)
    run = _run(tmp_path / "run", rec.sha256, P_NORMALS)
    res = CliRunner().invoke(app, ["model", "site-threshold", str(model_dir), "--normals", str(run),
                                   "--out", str(tmp_path / "site")])
    assert res.exit_code == 0, res.output
    assert "threshold 0.3000 -> 0.9000" in res.output and "10 site normals" in res.output
    assert "warning: only 10 normals" in res.output                # 10 < 1 / 0.05
    assert ModelRecord.load(tmp_path / "site").threshold == np.nextafter(0.90, 1.0)
    bad = CliRunner().invoke(app, ["model", "site-threshold", str(model_dir), "--normals", str(run),
                                   "--out", str(tmp_path / "x"), "--rate", "1.5"])
    assert bad.exit_code != 0 and not (tmp_path / "x").exists()
