"""Cell classifier: network shapes, local pretrained weights, the CellModelRecord, metrics vs scikit-learn."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.special import softmax
from sklearn import metrics as skm
from torch import nn

from rescue_gpu.cells.metrics import grouped_binary_metrics, grouped_rates
from rescue_gpu.nn.metrics import confusion_matrix, per_class_metrics
from rescue_gpu.nn.network import build_backbone
from rescue_gpu.cells.record import FORMAT, CellModelRecord, build_cell_model
from rescue_gpu.cells.spec import (
    CellClassesSpec, CellInputSpec, CellModelSpec, CellPipeline, CellPreprocessSpec,
)
from rescue_gpu.errors import ModelError

CLASSES = ("blast", "lymphocyte", "granulocyte")


def _pipeline(*, size: int = 32, arch: str = "resnet18") -> CellPipeline:
    return CellPipeline(name="tiny", classes=CellClassesSpec(names=CLASSES, leukaemic=("blast",)),
                        input=CellInputSpec(channels=("Ch1", "Ch6", "Ch9"), use_channels=("Ch1", "Ch6")),
                        preprocess=CellPreprocessSpec(size=size), model=CellModelSpec(architecture=arch))


@pytest.fixture(scope="module")
def record() -> CellModelRecord:
    torch.manual_seed(3)
    pipe = _pipeline()
    model = build_cell_model(architecture="resnet18", in_channels=2, n_classes=3, dropout=0.1).eval()
    return CellModelRecord.from_pipeline(model, pipe, temperature=1.7, rates={"tpr": 0.9, "fpr": 0.05, "n_pos": 10,
                                                                              "n_neg": 40},
                                         metrics={"val": {"accuracy": 0.9}}, provenance={"pipeline": "tiny"})


# --------------------------------------------------------------------------- network

@pytest.mark.parametrize("arch,width", [("resnet50", 2048), ("resnext50_32x4d", 2048), ("resnet34", 512),
                                        ("resnet18", 512)])
def test_backbone_width_and_identity_fc(arch: str, width: int) -> None:
    module, f = build_backbone(arch)
    assert f == width
    assert isinstance(module.fc, nn.Identity)
    assert module.conv1.in_channels == 3


@pytest.mark.parametrize("arch", ["resnet50", "resnext50_32x4d"])
@pytest.mark.parametrize("c", [1, 2, 5])
def test_forward_shapes_48px(arch: str, c: int) -> None:
    k = 2 + c  # 3, 4, 7 classes
    model = build_cell_model(architecture=arch, in_channels=c, n_classes=k, dropout=0.2).eval()
    x = torch.randn(2, c, 48, 48)
    with torch.inference_mode():
        f = model.forward_features(x)
        out = model(x)
        assert f.shape == (2, 2048) and out.shape == (2, k)
        assert torch.allclose(model.forward_head(f), out)
    conv = model.backbone.conv1
    assert (conv.in_channels, conv.kernel_size, conv.stride, conv.padding) == (c, (7, 7), (2, 2), (3, 3))
    assert conv.bias is None
    assert (model.in_channels, model.n_outputs, model.architecture, model.num_features) == (c, k, arch, 2048)
    assert isinstance(model.head[0], nn.Dropout) and model.head[0].p == 0.2
    assert (model.head[1].in_features, model.head[1].out_features) == (2048, k)


def test_small_architectures_and_16px() -> None:
    model = build_cell_model(architecture="resnet34", in_channels=2, n_classes=4).eval()
    with torch.inference_mode():
        assert model.forward_features(torch.randn(3, 2, 48, 48)).shape == (3, 512)
        assert model(torch.randn(3, 2, 16, 16)).shape == (3, 4)


@pytest.mark.parametrize("kwargs,match", [
    ({"architecture": "vgg16", "in_channels": 2, "n_classes": 3}, "unknown architecture 'vgg16'"),
    ({"architecture": "resnet18", "in_channels": 0, "n_classes": 3}, "in_channels must be >= 1"),
    ({"architecture": "resnet18", "in_channels": 2, "n_classes": 1}, "n_classes must be >= 2"),
])
def test_bad_network_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        build_cell_model(**kwargs)


@pytest.fixture(scope="module")
def tv_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path, Path]:
    """A seeded torchvision resnet18 state dict as .pth and .safetensors."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    sd = resnet18(weights=None).state_dict()
    d = tmp_path_factory.mktemp("tv18")
    torch.save(sd, d / "resnet18.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "resnet18.safetensors"))
    return sd, d / "resnet18.pth", d / "resnet18.safetensors"


@pytest.mark.parametrize("c", [1, 3, 5])
@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_pretrained_local_weights(tv_resnet18: tuple, c: int, kind: str) -> None:
    sd, pth, st = tv_resnet18
    path = pth if kind == "pth" else st
    model = build_cell_model(architecture="resnet18", in_channels=c, n_classes=3, pretrained=path)
    got = model.backbone.state_dict()
    for name in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.weight"):
        assert torch.equal(got[name], sd[name])
    rgb = sd["conv1.weight"]
    expected = rgb if c == 3 else rgb.mean(dim=1, keepdim=True).repeat(1, c, 1, 1) * (3 / c)
    assert torch.allclose(got["conv1.weight"], expected)
    # the sum over input planes is preserved: a grey image gives the RGB net's response
    assert torch.allclose(got["conv1.weight"].sum(1), rgb.sum(1), atol=1e-6)
    assert model.head[1].out_features == 3  # fc (1000 classes) ignored


def test_pretrained_wrong_keys_listed(tv_resnet18: tuple, tmp_path: Path) -> None:
    sd = dict(tv_resnet18[0])
    sd.pop("layer2.0.downsample.1.running_mean")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ModelError) as err:
        build_cell_model(architecture="resnet18", in_channels=2, n_classes=3, pretrained=path)
    msg = str(err.value)
    assert str(path) in msg and "layer2.0.downsample.1.running_mean" in msg and "extra.weight" in msg
    with pytest.raises(ModelError, match="not a torchvision resnet50 state dict"):
        build_cell_model(architecture="resnet50", in_channels=2, n_classes=3, pretrained=tv_resnet18[1])
    with pytest.raises(ModelError, match="not found.*nothing is downloaded"):
        build_cell_model(architecture="resnet18", in_channels=2, n_classes=3, pretrained=tmp_path / "none.pth")


# --------------------------------------------------------------------------- record

def test_probabilities_softmax_and_temperature(record: CellModelRecord) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (50, 3)).astype(np.float32)
    p = record.probabilities(z)
    assert p.dtype == np.float64 and p.shape == (50, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(p, softmax(z.astype(np.float64) / 1.7, axis=1), rtol=1e-12)
    hot = dataclasses.replace(record, temperature=5.0).probabilities(z)
    cold = dataclasses.replace(record, temperature=0.5).probabilities(z)
    assert np.all(hot.max(1) <= p.max(1) + 1e-12) and np.all(cold.max(1) >= p.max(1) - 1e-12)
    np.testing.assert_array_equal(hot.argmax(1), cold.argmax(1))  # ranking unchanged
    huge = record.probabilities(np.array([[1e4, -1e4, 0.0]]))
    assert np.all(np.isfinite(huge)) and huge[0, 0] == pytest.approx(1.0)
    with pytest.raises(ModelError, match=r"\(N, 3\)"):
        record.probabilities(np.zeros((4, 2)))


def test_record_properties(record: CellModelRecord) -> None:
    assert (record.in_channels, record.n_classes, record.image_size) == (2, 3, 32)
    assert record.channels == ("Ch1", "Ch6") and record.leukaemic_index == (0,)
    sha = record.sha256
    assert len(sha) == 64 and record.sha256 == sha
    with pytest.raises(ModelError, match="3 outputs but there are 4 classes"):
        dataclasses.replace(record, classes=(*CLASSES, "other"))
    with pytest.raises(ModelError, match="takes 2 planes"):
        dataclasses.replace(record, channels=("Ch1",))
    with pytest.raises(ModelError, match="proper subset"):
        dataclasses.replace(record, leukaemic=CLASSES)


def test_sha256_follows_weight_changes() -> None:
    model = build_cell_model(architecture="resnet18", in_channels=2, n_classes=3)
    rec = CellModelRecord.from_pipeline(model, _pipeline())
    before = rec.sha256
    with torch.no_grad():
        model.head[1].bias.add_(1.0)
    assert rec.sha256 != before


def test_save_load_round_trip(record: CellModelRecord, tmp_path: Path) -> None:
    out = record.save(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "weights.safetensors"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == FORMAT and meta["format_version"] == 2 and meta["sha256"] == record.sha256
    assert meta["classes"] == list(CLASSES) and meta["channels"] == ["Ch1", "Ch6"] and meta["preprocess"]["size"] == 32
    assert {"torch", "numpy"} <= set(meta["software"])
    back = CellModelRecord.load(out)
    assert back.sha256 == record.sha256 and not back.model.training
    for name in ("architecture", "classes", "leukaemic", "channels", "image_size", "preprocess", "temperature",
                 "rates", "metrics", "provenance"):
        assert getattr(back, name) == getattr(record, name), name
    x = torch.randn(4, 2, 32, 32)
    with torch.inference_mode():
        a, b = record.model.eval()(x).numpy(), back.model(x).numpy()
    np.testing.assert_array_equal(record.probabilities(a), back.probabilities(b))
    with pytest.raises(ModelError, match="already exists"):
        record.save(out)


def test_load_rejects_tampered_and_broken_directories(record: CellModelRecord, tmp_path: Path) -> None:
    out = record.save(tmp_path / "m")
    weights = out / "weights.safetensors"
    sd = load_file(str(weights))
    sd["head.1.bias"] = sd["head.1.bias"] + 1e-3
    save_file(sd, str(weights))
    with pytest.raises(ModelError, match=f"{out}.*sha256.*altered or corrupted"):
        CellModelRecord.load(out)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read weights"):
        CellModelRecord.load(out)
    weights.unlink()
    with pytest.raises(ModelError, match="no weights file"):
        CellModelRecord.load(out)
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "format": "rescue-model"}))
    with pytest.raises(ModelError, match="is not 'rescue-cell-model'"):
        CellModelRecord.load(out)
    (out / "model.json").unlink()
    with pytest.raises(ModelError, match="not a cell model directory"):
        CellModelRecord.load(out)


def test_load_rejects_inconsistent_json(record: CellModelRecord, tmp_path: Path) -> None:
    out = record.save(tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "classes": ["a", "b"], "leukaemic": ["a"]}))
    with pytest.raises(ModelError, match="do not fit together"):
        CellModelRecord.load(out)


def test_check_pipeline_lists_every_mismatch(record: CellModelRecord) -> None:
    pipe = _pipeline()
    record.check_pipeline(pipe)  # the training pipeline fits
    other = dataclasses.replace(
        pipe, name="other",
        classes=CellClassesSpec(names=("lymphocyte", "blast", "granulocyte"), leukaemic=("blast", "granulocyte")),
        input=CellInputSpec(channels=("Ch1", "Ch6", "Ch9"), use_channels=("Ch1", "Ch9")),
        preprocess=CellPreprocessSpec(size=48, pad="edge", high_percentile=99.0))
    with pytest.raises(ModelError) as err:
        record.check_pipeline(other)
    msg = str(err.value)
    for part in ("'other'", "classes ['blast', 'lymphocyte', 'granulocyte'] (model)", "leukaemic classes",
                 "input channels ['Ch1', 'Ch6'] (model) vs ['Ch1', 'Ch9']",
                 "image size 32 (model) vs preprocess.size 48",
                 "preprocess.pad 'noise' (model) vs 'edge'", "preprocess.high_percentile 99.5 (model) vs 99.0",
                 "retrain"):
        assert part in msg, part
    assert "preprocess.stretch" not in msg


# --------------------------------------------------------------------------- metrics vs scikit-learn

def _y(seed: int = 0, n: int = 300, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k - 1, n)           # class k-1 never occurs in the truth
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    pred[pred == 1] = 2                      # class 1 is never predicted
    return y, pred


def test_per_class_metrics_match_sklearn() -> None:
    names = ["a", "b", "c", "d"]
    y, pred = _y()
    got = per_class_metrics(y, pred, classes=names)
    labels = list(range(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = skm.classification_report(y, pred, labels=labels, target_names=names, output_dict=True,
                                        zero_division=np.nan)
        bal = skm.balanced_accuracy_score(y, pred)
        macro = skm.f1_score(y, pred, labels=labels, average="macro", zero_division=np.nan)
    for name in names:
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            want = rep[name][sk_key]
            assert (got["per_class"][name][key] is None) == bool(np.isnan(want)), (name, key)
            if not np.isnan(want):
                assert got["per_class"][name][key] == pytest.approx(want), (name, key)
        assert got["per_class"][name]["support"] == rep[name]["support"]
    assert got["per_class"]["b"]["precision"] is None and got["per_class"]["d"]["recall"] is None
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(bal)
    assert got["macro_f1"] == pytest.approx(macro)
    assert got["confusion"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    np.testing.assert_array_equal(confusion_matrix(y, pred, n_classes=4), skm.confusion_matrix(y, pred, labels=labels))
    json.dumps(got)


def test_per_class_metrics_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="0..2"):
        per_class_metrics(np.array([0, 3]), np.array([0, 1]), classes=["a", "b", "c"])


def test_grouped_binary_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4)) + 2.0 * np.eye(4)[y]
    probs = softmax(logits, axis=1)
    got = grouped_binary_metrics(y, probs, leukaemic_index=[0, 2], threshold=0.4)
    yb = np.isin(y, [0, 2]).astype(int)
    score = probs[:, 0] + probs[:, 2]
    tn, fp, fn, tp = skm.confusion_matrix(yb, score >= 0.4).ravel()
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
    assert got["sensitivity"] == pytest.approx(skm.recall_score(yb, score >= 0.4))
    assert got["specificity"] == pytest.approx(skm.recall_score(1 - yb, score < 0.4))
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(yb, score))
    assert (got["n_positive"], got["n_negative"]) == (yb.sum(), (1 - yb).sum())
    rates = grouped_rates(got)
    assert rates == {"tpr": got["sensitivity"], "fpr": pytest.approx(1 - got["specificity"]),
                     "n_pos": int(yb.sum()), "n_neg": int((1 - yb).sum())}
    only_neg = grouped_binary_metrics(np.array([1, 1, 3]), probs[:3], leukaemic_index=[0])
    assert only_neg["sensitivity"] is None and only_neg["roc_auc"] is None and only_neg["specificity"] is not None


@pytest.mark.parametrize("edit", [{"temperature": 1.0}, {"rates": {"tpr": 1.0, "fpr": 0.0, "n_pos": 10, "n_neg": 40}},
                                  {"leukaemic": ["lymphocyte"]}, {"preprocess": "stretch"}])
def test_edited_cell_model_json_is_refused(record: CellModelRecord, tmp_path: Path, edit: dict) -> None:
    out = record.save(tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    if edit == {"preprocess": "stretch"}:
        key = next(k for k, v in meta["preprocess"].items() if isinstance(v, float))
        edit = {"preprocess": {**meta["preprocess"], key: meta["preprocess"][key] + 0.5}}
    (out / "model.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(ModelError, match=r"model\.json: its settings \(temperature .*do not match the record's "
                                         r"checksum.*restore the original model\.json.*retrain"):
        CellModelRecord.load(out)


def test_format_1_cell_model_loads_with_a_warning_then_upgrades(record: CellModelRecord, tmp_path: Path) -> None:
    from rescue_gpu.artifacts import RecordFormatWarning

    out = record.save(tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    del meta["checksum"]
    (out / "model.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.warns(RecordFormatWarning, match="format version 1 predates checksummed settings"):
        assert CellModelRecord.load(out).checksum == record.checksum
    CellModelRecord.upgrade(out)
    assert json.loads((out / "model.json").read_text())["checksum"] == record.checksum
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CellModelRecord.load(out)
