"""``top = "file"``: transforms scaled to each file's own top of scale ($PnR decoded)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flowutils import transforms as fut

from rescue_gpu.config import ConfigError, PanelSpec, PreprocessSpec, QcSpec, TransformSpec, from_mapping, load_pipeline
from rescue_gpu.errors import PreprocessError
from rescue_gpu.fcs.types import FcsData
from rescue_gpu.preprocess import preprocess, preprocess_fingerprint
from rescue_gpu.preprocess.pipeline import channel_tops

CHANNELS = ["FSC-A", "SSC-A", "FITC-A", "PE-A"]
MARKERS = ["", "", "CD45 FITC", "CD34 PE"]
PANEL = PanelSpec(markers=("CD45", "CD34"), scatter=("FSC-A", "SSC-A"))
NO_QC = QcSpec(remove_saturated=False, remove_debris=False, remove_doublets=False)
N = 500


def _sample(top: int, seed: int = 0, extra: dict[str, str] | None = None) -> FcsData:
    """A float sample whose values are the same fractions of ``top`` for any ``top``."""
    rng = np.random.default_rng(seed)
    frac = np.column_stack([rng.uniform(0.05, 0.9, (N, 2)), rng.uniform(-0.001, 0.8, (N, 2))])
    kw = {"$DATATYPE": "F"} | {f"$P{i}R": str(top) for i in range(1, 5)} | (extra or {})
    return FcsData(events=(frac * top).astype(np.float32), channels=list(CHANNELS), markers=list(MARKERS),
                   keywords=kw, version="FCS3.1", spillover=None, path=f"s{top}.fcs")


def _spec(top: str) -> PreprocessSpec:
    return PreprocessSpec(compensation="none", qc=NO_QC,
                          fluorescence=TransformSpec(kind="logicle", top=top),
                          scatter=TransformSpec(kind="linear", top=top))


def test_file_top_gives_one_scale_across_instrument_ranges():
    a = preprocess(_sample(2 ** 18), panel=PANEL, spec=_spec("file")).values
    b = preprocess(_sample(2 ** 20), panel=PANEL, spec=_spec("file")).values
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the fixed default does not: the 2**20 file's values sit far above the 2**18 scale
    fa = preprocess(_sample(2 ** 18), panel=PANEL, spec=_spec("fixed")).values
    fb = preprocess(_sample(2 ** 20), panel=PANEL, spec=_spec("fixed")).values
    assert np.abs(fa - fb).max() > 0.1


def test_file_top_matches_flowutils_with_the_files_range():
    fcs = _sample(2 ** 20, seed=3)
    ev = preprocess(fcs, panel=PANEL, spec=_spec("file")).values
    raw = fcs.events.astype(np.float64)
    expected_fluo = fut.logicle(raw[:, [2, 3]], None, t=2.0 ** 20, w=0.5, m=4.5, a=0.0)
    np.testing.assert_allclose(ev[:, :2], expected_fluo, atol=2e-6)
    np.testing.assert_allclose(ev[:, 2:], raw[:, [0, 1]] / 2.0 ** 20, rtol=1e-6)


def test_channel_tops_decode_log_amplification_and_gain():
    fcs = _sample(1024, extra={"$DATATYPE": "I", "$P3E": "4,1", "$P4G": "2"})
    fcs = dataclasses.replace(fcs, events=np.zeros((N, 4), dtype=np.uint16))
    tops = channel_tops(fcs)
    assert tops[0] == pytest.approx(1024.0)
    assert tops[2] == pytest.approx(10.0 ** 4)   # log amplified: 10**(4 * 1024/1024) * 1
    assert tops[3] == pytest.approx(512.0)        # linear with $PnG = 2


def test_unusable_top_is_a_clear_error():
    fcs = _sample(2 ** 18, extra={"$P3R": "1"})
    with pytest.raises(PreprocessError, match=r"s262144\.fcs.*FITC-A.*top = \"fixed\""):
        preprocess(fcs, panel=PANEL, spec=_spec("file"))


def test_top_is_validated_and_fixed_fingerprints_are_unchanged():
    with pytest.raises(ConfigError, match="top.*'fixed', 'file'"):
        from_mapping(TransformSpec, {"top": "auto"}, file="lab.toml", prefix="preprocess.fluorescence")
    p = load_pipeline("aml-mrd")
    # the fingerprint aml-mrd had before `top` existed (references and caches keep matching)
    assert preprocess_fingerprint(p.panel, p.preprocess) == "65d50e3758bab1cde3c18204fee87daeb5793379ec7ff8cc4d7fb904ce6d8f5b"
    file_top = dataclasses.replace(p.preprocess, fluorescence=dataclasses.replace(p.preprocess.fluorescence, top="file"))
    assert preprocess_fingerprint(p.panel, file_top) != preprocess_fingerprint(p.panel, p.preprocess)
