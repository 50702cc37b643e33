"""ModelRecord (flow.record over nn.record): save/load, sha256, compatibility checks, import of external weights, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from rescue_gpu.config import HeadSpec, RasterSpec
from rescue_gpu.errors import ConfigError, ModelError
from rescue_gpu.flow.model_cli import parse_head_spec, register
from rescue_gpu.flow.record import ModelRecord, build_model, expected_channels, import_state_dict
from rescue_gpu.nn.network import Network
from rescue_gpu.projection.transform import UmapParams
from rescue_gpu.reference.store import Reference

HEAD = HeadSpec(hidden=(32,), dropout=0.1)
SIZE = 32


def make_reference(*, size: int = SIZE, channels: tuple[str, ...] = ("density",), point_radius: int = 1) -> Reference:
    rng = np.random.default_rng(0)
    return Reference(train_events=rng.random((40, 3), dtype=np.float32), embedding=rng.random((40, 2), dtype=np.float32),
                     params=UmapParams(), markers=("CD34", "CD117", "CD45"),
                     raster=RasterSpec(size=size, channels=channels, point_radius=point_radius))


@pytest.fixture(scope="module")
def reference() -> Reference:
    return make_reference()


@pytest.fixture(scope="module")
def record(reference: Reference) -> ModelRecord:
    torch.manual_seed(0)
    return ModelRecord(model=build_model(in_channels=1, head=HEAD).eval(), in_channels=1, image_size=SIZE, head=HEAD,
                       raster=reference.raster, reference_fingerprint=reference.fingerprint, threshold=0.4,
                       temperature=1.7, metrics={"auc": 0.91}, provenance={"n_samples": 12})


def _out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


def test_save_load_round_trip(tmp_path, record: ModelRecord) -> None:
    path = record.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "weights.safetensors"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["sha256"] == record.sha256 and meta["architecture"] == "resnet34"
    assert meta["head"] == {"hidden": [32], "dropout": 0.1, "activation": "relu"}
    assert "torch" in meta["software"] and meta["raster"]["size"] == SIZE
    back = ModelRecord.load(path)
    x = torch.randn(3, 1, SIZE, SIZE)
    assert torch.equal(_out(back.model, x), _out(record.model, x))
    assert back.sha256 == record.sha256
    assert (back.head, back.raster, back.threshold, back.temperature) == (HEAD, record.raster, 0.4, 1.7)
    assert (back.metrics, back.provenance, back.reference_fingerprint) == (record.metrics, record.provenance,
                                                                          record.reference_fingerprint)
    with pytest.raises(ModelError, match="already exists"):
        record.save(path)
    record.save(path, overwrite=True)


def test_sha256_tamper_detected(tmp_path, record: ModelRecord) -> None:
    path = record.save(tmp_path / "m")
    raw = bytearray((path / "weights.safetensors").read_bytes())
    raw[-5] ^= 0xFF  # a byte of tensor data
    (path / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="sha256.*does not match"):
        ModelRecord.load(path)


def test_sha256_follows_weights(record: ModelRecord) -> None:
    model = build_model(in_channels=1, head=HEAD)
    model.load_state_dict(record.model.state_dict())
    rec = ModelRecord(model=model, in_channels=1, image_size=SIZE, head=HEAD, raster=record.raster,
                      reference_fingerprint="x")
    before = rec.sha256
    assert before == record.sha256
    with torch.no_grad():
        model.head[0].bias[0] += 1.0
    assert rec.sha256 != before


def test_load_weights_pt_with_weights_only(tmp_path, record: ModelRecord) -> None:
    path = record.save(tmp_path / "m")
    (path / "weights.safetensors").unlink()
    torch.save(record.model.state_dict(), path / "weights.pt")
    back = ModelRecord.load(path)
    x = torch.randn(2, 1, SIZE, SIZE)
    assert torch.equal(_out(back.model, x), _out(record.model, x))
    torch.save({"obj": HeadSpec()}, path / "weights.pt")  # a pickled object: weights_only refuses it
    with pytest.raises(ModelError, match="cannot read weights"):
        ModelRecord.load(path)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="no model.json"):
        ModelRecord.load(tmp_path)


def test_check_compatible_lists_every_mismatch(record: ModelRecord, reference: Reference) -> None:
    record.check_compatible(reference)  # fits
    other = make_reference(size=64, channels=("density", "markers"), point_radius=2)
    assert expected_channels(other.raster, other.markers) == 4
    with pytest.raises(ModelError) as info:
        record.check_compatible(other)
    msg = str(info.value)
    for part in ("raster channels ['density'] (model) vs ['density', 'markers']", "raster size 32 (model) vs 64",
                 "raster point_radius 1 (model) vs 2", "image size 32", "channel count 1 (model) vs 4",
                 "reference fingerprint"):
        assert part in msg, part


def test_probabilities_and_calls(record: ModelRecord) -> None:
    logits = np.array([-3.4, 0.0, 1.7 * np.log(0.4 / 0.6), 5.0], dtype=np.float32)
    p = record.probabilities(logits)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-logits.astype(np.float64) / 1.7)), rtol=1e-12)
    assert list(record.calls(np.array([0.1, 0.5, 0.4, 0.39999]))) == ["negative", "positive", "positive", "negative"]


def _torchvision_style(model: Network) -> dict[str, torch.Tensor]:
    return {k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items()}


def test_import_state_dict(tmp_path, reference: Reference) -> None:
    torch.manual_seed(3)
    src = build_model(in_channels=1, head=HEAD).eval()
    torch.save(_torchvision_style(src), tmp_path / "ext.pt")
    rec = import_state_dict(tmp_path / "ext.pt", head=HEAD, reference=reference, out=tmp_path / "m", threshold=0.3)
    assert (rec.in_channels, rec.image_size, rec.raster, rec.threshold) == (1, SIZE, reference.raster, 0.3)
    back = ModelRecord.load(tmp_path / "m")
    x = torch.randn(2, 1, SIZE, SIZE)
    assert torch.equal(_out(back.model, x), _out(src, x))
    back.check_compatible(reference)


def test_import_strict_keys_listed(tmp_path, reference: Reference) -> None:
    sd = _torchvision_style(build_model(in_channels=1, head=HEAD))
    del sd["layer2.0.bn1.running_var"]
    sd["head.9.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "ext.pt")
    with pytest.raises(ModelError, match=r"missing keys \['backbone.layer2.0.bn1.running_var'\]; "
                                         r"unexpected keys \['head.9.weight'\]"):
        import_state_dict(tmp_path / "ext.pt", head=HEAD, reference=reference, out=tmp_path / "m")
    wide = _torchvision_style(build_model(in_channels=1, head=HeadSpec(hidden=(64, 16))))
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(ModelError, match=r"unexpected keys \['head.3.bias', 'head.3.weight', 'head.6.bias', 'head.6.weight'\]"):
        import_state_dict(tmp_path / "wide.pt", head=HeadSpec(hidden=()), reference=reference, out=tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_import_channel_count_from_conv1(tmp_path, reference: Reference) -> None:
    torch.save(_torchvision_style(build_model(in_channels=3, head=HEAD)), tmp_path / "rgb.pt")
    with pytest.raises(ModelError, match="channel count 3 \\(model\\) vs 1"):
        import_state_dict(tmp_path / "rgb.pt", head=HEAD, reference=reference, out=tmp_path / "m")


def test_parse_head_spec() -> None:
    assert parse_head_spec("hidden=256,128;dropout=0.2;activation=gelu") == HeadSpec((256, 128), 0.2, "gelu")
    assert parse_head_spec("hidden=") == HeadSpec(hidden=())
    assert parse_head_spec("pipelines/aml-mrd.toml") == HeadSpec(hidden=(256,), dropout=0.3, activation="relu")
    for bad in ("width=3", "dropout=x", "activation=tanh", "hidden=0"):
        with pytest.raises(ConfigError):
            parse_head_spec(bad)


def test_cli_import_and_export(tmp_path, reference: Reference) -> None:
    import onnx

    app = typer.Typer()
    register(app)
    ref_dir = reference.save(tmp_path / "ref")
    torch.save(build_model(in_channels=1, head=HEAD).state_dict(), tmp_path / "ext.pt")
    runner = CliRunner()
    res = runner.invoke(app, ["model", "import", str(tmp_path / "ext.pt"), "--head", "hidden=32;dropout=0.1",
                              "--reference", str(ref_dir), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and ModelRecord.load(tmp_path / "m").head == HEAD
    res = runner.invoke(app, ["model", "export-onnx", str(tmp_path / "m"), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["rescue.sha256"] == ModelRecord.load(tmp_path / "m").sha256
    res = runner.invoke(app, ["model", "import", str(tmp_path / "ext.pt"), "--head", "hidden=8",
                              "--reference", str(ref_dir), "--out", str(tmp_path / "m2")])
    assert res.exit_code != 0 and isinstance(res.exception, ModelError)


# ----------------------------------------------------------------------------- checksum of the whole record


def test_checksum_covers_every_setting_that_changes_a_call(record: ModelRecord) -> None:
    import dataclasses

    base = record.checksum
    for change in ({"threshold": 0.0}, {"temperature": 1.0}, {"reference_fingerprint": "0" * 64},
                   {"raster": dataclasses.replace(record.raster, point_radius=2)}, {"image_size": 64},
                   {"head": HeadSpec(hidden=(32,), dropout=0.2)}):
        other = dataclasses.replace(record, **change)
        assert other.checksum != base, change
    assert dataclasses.replace(record, metrics={"auc": 0.5}, provenance={}).checksum == base  # informational only


@pytest.mark.parametrize("key, value", [("threshold", 0.0), ("temperature", 3.0), ("reference_fingerprint", "0" * 64),
                                        ("head", {"hidden": [32], "dropout": 0.5, "activation": "relu"}),
                                        ("raster", "point_radius=3"), ("image_size", 64)])
def test_edited_model_json_is_refused(tmp_path, record: ModelRecord, key: str, value) -> None:
    path = record.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    meta[key] = {**meta["raster"], "point_radius": 3} if value == "point_radius=3" else value
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.json: its settings \(threshold .*do not match the record's "
                                         r"checksum.*edited.*restore the original model\.json.*retrain"):
        ModelRecord.load(path)


def test_deleted_checksum_is_refused(tmp_path, record: ModelRecord) -> None:
    path = record.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["checksum"] == record.checksum
    del meta["checksum"]
    meta["threshold"] = 0.0
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="no 'checksum'.*cannot be verified"):
        ModelRecord.load(path)


def _as_format_1(path) -> None:
    """Rewrite a model.json as the previous rescue_gpu wrote it: format version 1, no checksum."""
    meta = json.loads((path / "model.json").read_text())
    del meta["checksum"]
    (path / "model.json").write_text(json.dumps({**meta, "format_version": 1}, indent=2, sort_keys=True))


def test_format_1_model_loads_with_a_warning_then_upgrades(tmp_path, record: ModelRecord) -> None:
    import warnings

    from rescue_gpu.artifacts import RecordFormatWarning

    path = record.save(tmp_path / "m")
    _as_format_1(path)
    with pytest.warns(RecordFormatWarning, match=r"format version 1 predates checksummed settings.*threshold 0\.4.*"
                                                 r"rescue model upgrade"):
        old = ModelRecord.load(path)
    assert old.checksum == record.checksum and old.threshold == 0.4  # computed at load

    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["model", "upgrade", str(path)])
    assert res.exit_code == 0, res.output
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == 2 and meta["checksum"] == record.checksum and meta["metrics"] == record.metrics
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ModelRecord.load(path).checksum == record.checksum
    (path / "model.json").write_text(json.dumps({**meta, "threshold": 0.9}))
    with pytest.raises(ModelError, match="edited"):
        ModelRecord.load(path)
