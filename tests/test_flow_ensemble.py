"""The CV fold-model ensemble: mean logits, its record (checksums, legacy) and the training warnings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rescue_gpu.config import HeadSpec, RasterSpec
from rescue_gpu.errors import ModelError
from rescue_gpu.flow.record import ENSEMBLE_ROUTE, ModelRecord, build_model
from rescue_gpu.nn.diagnostics import small_cohort_warnings, unstable_curve_warnings
from rescue_gpu.nn.ensemble import EnsembleNetwork

SIZE, CHANNELS = 32, 2


def _members(n: int = 3) -> list:
    out = []
    for k in range(n):
        torch.manual_seed(100 + k)
        out.append(build_model(in_channels=CHANNELS, head=HeadSpec()).eval())
    return out


def _images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, CHANNELS, SIZE, SIZE), dtype=np.float32)


def _record(model) -> ModelRecord:
    raster = RasterSpec(size=SIZE, channels=("density", "scatter"))
    return ModelRecord(model=model, in_channels=CHANNELS, image_size=SIZE, head=HeadSpec(), raster=raster,
                       reference_fingerprint="f" * 64, threshold=0.4, temperature=1.7,
                       calibration_route=ENSEMBLE_ROUTE)


def test_ensemble_mean_logits_equal_members_mean() -> None:
    from rescue_gpu.engine.torch_engine import TorchEngine

    members = _members()
    x = torch.from_numpy(_images())
    with torch.inference_mode():
        each = [m(x) for m in members]  # every member on its own
        feats = [m.forward_features(x) for m in members]
        ens = EnsembleNetwork(members).eval()
        torch.testing.assert_close(ens(x), sum(each) / 3)
        z, f = ens.forward_with_features(x)
    torch.testing.assert_close(z, sum(each) / 3)
    torch.testing.assert_close(f, sum(feats) / 3)
    assert not torch.allclose(each[0], each[1])  # the members differ, so the mean is a real test
    eng = TorchEngine(_record(ens), device=torch.device("cpu"), channels_last=False)
    want = (sum(each) / 3).double().numpy()
    np.testing.assert_allclose(eng.logits(x.numpy()), want, rtol=1e-5, atol=1e-6)
    lz, lf = eng.logits_and_features(x.numpy())
    np.testing.assert_allclose(lz, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lf, (sum(feats) / 3).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eng.predict(x.numpy()), 1 / (1 + np.exp(-want / 1.7)), rtol=1e-6)


def test_ensemble_refuses_mixed_members() -> None:
    a = build_model(in_channels=CHANNELS, head=HeadSpec())
    b = build_model(in_channels=CHANNELS + 1, head=HeadSpec())
    with pytest.raises(ModelError, match="differs from member 0"):
        EnsembleNetwork([a, b])
    with pytest.raises(ModelError, match="at least one"):
        EnsembleNetwork([])


def test_ensemble_record_round_trip_and_checksums(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    rec = _record(EnsembleNetwork(_members()).eval())
    rec.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["ensemble_members"] == 3 and meta["calibration_route"] == ENSEMBLE_ROUTE
    loaded = ModelRecord.load(tmp_path / "m")
    assert loaded.n_members == 3 and loaded.checksum == rec.checksum
    x = torch.from_numpy(_images())
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), rec.model(x))
    # a fold model's weights edited: the sha256 no longer matches
    path = tmp_path / "m" / "weights.safetensors"
    sd = load_file(str(path))
    key = "members.1.head.0.bias"
    assert key in sd
    sd[key] = sd[key] + 0.5
    save_file(sd, str(path))
    with pytest.raises(ModelError, match="sha256"):
        ModelRecord.load(tmp_path / "m")
    # member count or calibration route edited in model.json: the checksum no longer matches
    rec.save(tmp_path / "m2")
    for change in ({"calibration_route": "something else"}, {"ensemble_members": 3, "threshold": 0.41}):
        meta = json.loads((tmp_path / "m2" / "model.json").read_text())
        edited = tmp_path / f"m2-{len(change)}"
        edited.mkdir()
        (edited / "weights.safetensors").write_bytes((tmp_path / "m2" / "weights.safetensors").read_bytes())
        (edited / "model.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(ModelError, match="checksum"):
            ModelRecord.load(edited)


def test_single_network_record_has_no_ensemble_fields(tmp_path: Path) -> None:
    rec = _record(_members(1)[0])
    rec = ModelRecord(**{**rec.__dict__, "calibration_route": ""})
    assert "ensemble_members" not in rec.checksum_fields() and "calibration_route" not in rec.checksum_fields()
    rec.save(tmp_path / "one")
    assert ModelRecord.load(tmp_path / "one").n_members == 1


def test_grad_cam_of_an_ensemble_is_the_mean_of_its_members() -> None:
    from rescue_gpu.nn.saliency import cam_blocks, grad_cam

    members = _members(2)
    ens = EnsembleNetwork(members).eval()
    assert len(cam_blocks(ens)) == 2 and len(cam_blocks(members[0])) == 1
    img = _images(1)[0]
    maps = grad_cam(ens, img)
    assert maps.shape == (SIZE, SIZE) and np.all(maps >= 0) and maps.sum() > 0


def test_small_cohort_warning_fires_only_when_too_few_patients() -> None:
    groups = np.repeat([f"P{i}" for i in range(8)], 2)
    labels = np.repeat([0, 1] * 4, 2)
    folds = [(np.arange(8, 16), np.arange(0, 8)), (np.arange(0, 8), np.arange(8, 16))]
    got = small_cohort_warnings(labels=labels, groups=groups, folds=folds, min_patients_per_class_per_fold=2)
    assert got == []
    got = small_cohort_warnings(labels=labels, groups=groups, folds=folds, min_patients_per_class_per_fold=20)
    assert len(got) == 2 and got[0].startswith("fold 0:") and "2 negative, 2 positive" in got[0]
    assert "fewer folds" in got[0] and "Add patients" in got[0]


def test_unstable_curve_warning() -> None:
    fine = [[0.6, 0.7, 0.75, 0.72, 0.74], [0.5, float("nan"), 0.6, 0.65]]
    assert unstable_curve_warnings(fine) == []
    falls = [[0.6, 0.9, 0.55], [0.7, 0.8]]
    got = unstable_curve_warnings(falls)
    assert len(got) == 1 and got[0].startswith("fold 0: validation AUC falls from its best 0.900 to 0.550")
    assert "Lower the learning rate" in got[0]
    below = unstable_curve_warnings([[0.45, 0.62, 0.48]])
    assert len(below) == 1 and "goes below 0.5" in below[0]
    assert unstable_curve_warnings([[0.4, 0.45, 0.3]]) == []  # never above chance: nothing learned, no fall to flag
    assert unstable_curve_warnings([[0.6, 0.9, 0.55]], drop=0.4) == []


def test_ensemble_exports_to_onnx_as_one_graph() -> None:
    pytest.importorskip("onnxruntime")
    from rescue_gpu.engine.onnxrt import OnnxEngine

    ens = EnsembleNetwork(_members(2)).eval()
    x = _images(3, seed=4)
    with torch.inference_mode():
        want = ((ens.members[0](torch.from_numpy(x)) + ens.members[1](torch.from_numpy(x))) / 2).double().numpy()
    got = OnnxEngine(_record(ens), device=torch.device("cpu")).logits(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
