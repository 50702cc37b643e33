"""Model directories written by the code before the nn/ redesign still load and predict the same.

The fixture (``tests/fixtures/legacy-nn``, made by its ``make_legacy.py`` with main at
commit dfedec1) holds an MRD model (ResNet-34) and a cell model (ResNet-18), each in
format version 2 and version 1, with the logits and probabilities the old code computed.
"""

import json
import lzma
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from rescue_gpu.artifacts import RecordFormatWarning
from rescue_gpu.cells.record import CellModelRecord
from rescue_gpu.engine import make_engine
from rescue_gpu.flow.record import ModelRecord

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-nn"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


def _images(n: int, c: int, s: int, seed: int) -> np.ndarray:
    k = (np.arange(n * c * s * s, dtype=np.int64) * 389 + seed) % 997
    return (k / 997.0).astype(np.float32).reshape(n, c, s, s)


def _unpack(name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(FIXTURE / name, out)
    xz = out / "weights.safetensors.xz"
    (out / "weights.safetensors").write_bytes(lzma.decompress(xz.read_bytes()))
    xz.unlink()
    return out


@pytest.mark.parametrize("assay,cls", [("flow", ModelRecord), ("cells", CellModelRecord)])
@pytest.mark.parametrize("version", [2, 1])
def test_legacy_model_loads_and_predicts_the_same(assay, cls, version, tmp_path):
    d = _unpack(f"{assay}-v{version}", tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = cls.load(d)
    assert any(issubclass(w.category, RecordFormatWarning) for w in caught) == (version == 1)
    exp = EXPECTED[assay]
    assert rec.sha256 == exp["sha256"]
    assert rec.checksum == exp["checksum"]
    x = _images(*exp["images"])
    with torch.no_grad():
        logits = rec.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, np.asarray(exp["logits"]), rtol=1e-5, atol=1e-7)
    engine = make_engine(rec, kind="torch", device="cpu", precision="fp32", batch_size=2)
    np.testing.assert_allclose(engine.predict(x), np.asarray(exp["predict"]), rtol=1e-5, atol=1e-7)


def test_legacy_v1_upgrades_to_the_same_checksum(tmp_path):
    d = _unpack("flow-v1", tmp_path)
    rec = ModelRecord.upgrade(d)
    assert rec.checksum == EXPECTED["flow"]["checksum"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordFormatWarning)
        assert ModelRecord.load(d).checksum == EXPECTED["flow"]["checksum"]
