"""The preprocess stage end to end on synthetic samples, checked against flowutils step by step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flowutils import compensate as fuc
from flowutils import transforms as fut

from rescue_gpu.device import to_numpy
from rescue_gpu.config import PanelSpec, PreprocessSpec, QcSpec, TransformSpec, load_pipeline
from rescue_gpu.errors import CompensationError, PanelError, PreprocessError
from rescue_gpu.fcs.types import FcsData, Spillover
from rescue_gpu.preprocess import preprocess, preprocess_fingerprint
from tests.conftest import xp_params

CHANNELS = ["FSC-A", "FSC-H", "SSC-A", "FITC-A", "PE-A", "APC-A", "PerCP-A", "Time"]
MARKERS = ["", "", "", "CD45 FITC", "CD34 PE", "HLA-DR APC", "CD33 PerCP", ""]
PANEL = PanelSpec(markers=("CD34", "CD45", "HLA-DR", "CD33"), scatter=("FSC-A", "SSC-A"))
SPILL = Spillover(channels=("FITC-A", "PE-A", "APC-A"),
                  matrix=np.array([[1.0, 0.15, 0.0], [0.02, 1.0, 0.05], [0.0, 0.01, 1.0]]), source="$SPILLOVER")
N = 2000


def _sample(seed: int = 0, spill: Spillover | None = SPILL) -> FcsData:
    rng = np.random.default_rng(seed)
    ev = np.empty((N, len(CHANNELS)), dtype=np.float32)
    ev[:, 1] = rng.uniform(40000, 120000, N)
    ev[:, 0] = ev[:, 1] * rng.uniform(1.1, 1.3, N)
    ev[:, 2] = rng.uniform(10000, 150000, N)
    ev[:, 3:7] = np.minimum(rng.lognormal(7, 1.5, (N, 4)), 200000) - 300
    ev[:, 7] = np.arange(N)
    ev[:10, 0] = 1000.0  # debris
    ev[10:15, 4] = np.nan  # non-finite
    ev[15:21, 5] = 262143.0  # saturated
    ev[21:25, 0] = ev[21:25, 1] * 2  # doublets (FSC-A stays below $PnR)
    kw = {"$DATATYPE": "F"} | {f"$P{i}R": "262144" for i in range(1, 9)}
    return FcsData(events=ev, channels=list(CHANNELS), markers=list(MARKERS), keywords=kw, version="FCS3.1",
                   spillover=spill, path="sample_01.fcs")


def _expected(fcs: FcsData, spec: PreprocessSpec) -> np.ndarray:
    """Independent computation: flowutils compensation and logicle on the known kept rows."""
    kept = fcs.events[25:].astype(np.float64)
    idx = [CHANNELS.index(c) for c in SPILL.channels]
    comp = fuc.compensate(kept, SPILL.matrix, idx)
    f = spec.fluorescence
    fluo = fut.logicle(comp[:, [4, 3, 5, 6]], None, t=f.t, w=f.w, m=f.m, a=f.a)
    scatter = comp[:, [0, 2]] / spec.scatter.scale
    return np.hstack([fluo, scatter])


@pytest.mark.parametrize("xp", xp_params())
def test_preprocess_matches_independent_computation(xp):
    fcs = _sample()
    spec = load_pipeline("aml-mrd").preprocess
    ev = preprocess(fcs, panel=PANEL, spec=spec, xp=xp)
    assert type(ev.values).__module__.split(".")[0] == xp.__name__.split(".")[0]
    values = to_numpy(ev.values)
    assert values.dtype == np.float32 and values.shape == (N - 25, 6)
    assert ev.markers == ("CD34", "CD45", "HLA-DR", "CD33", "FSC-A", "SSC-A")
    assert ev.channels == ("PE-A", "FITC-A", "APC-A", "PerCP-A", "FSC-A", "SSC-A")
    np.testing.assert_allclose(values, _expected(fcs, spec), rtol=0, atol=1e-6)
    assert {k: ev.qc[k] for k in ("n_events_in", "non_finite", "saturated", "debris", "doublets", "n_events_out")} == {
        "n_events_in": N, "non_finite": 5, "saturated": 6, "debris": 10, "doublets": 4, "n_events_out": N - 25}
    assert ev.qc["compensation"] == "file:$SPILLOVER" and ev.qc["qc_skipped"] == []
    assert ev.fingerprint == preprocess_fingerprint(PANEL, spec)


def test_per_marker_transform_override_and_no_compensation():
    fcs = _sample()
    spec = PreprocessSpec(compensation="none", transforms={"CD33": TransformSpec(kind="arcsinh", cofactor=150.0)})
    ev = preprocess(fcs, panel=PANEL, spec=spec)
    kept = fcs.events[25:].astype(np.float64)
    np.testing.assert_allclose(ev.values[:, 3], np.arcsinh(kept[:, 6] / 150.0), atol=1e-6)
    np.testing.assert_allclose(ev.values[:, 0], fut.logicle(kept[:, 4], None), atol=1e-6)
    assert ev.qc["compensation"] == "none"


def test_compensation_override_and_file_without_matrix():
    fcs = _sample(spill=None)
    ev = preprocess(fcs, panel=PANEL, spec=PreprocessSpec())
    assert ev.qc["compensation"] == "file:none"
    ev2 = preprocess(fcs, panel=PANEL, spec=PreprocessSpec(), compensation_override=SPILL)
    assert ev2.qc["compensation"] == "override:$SPILLOVER"
    np.testing.assert_allclose(ev2.values, _expected(_sample(), PreprocessSpec()), atol=1e-6)


def test_log_amplified_integer_sample_is_decoded():
    rng = np.random.default_rng(5)
    ev = rng.integers(0, 1023, size=(300, 3)).astype(np.float64)
    ev[:, 0] = rng.integers(200, 900, 300)  # FSC above the debris cut
    kw = {"$DATATYPE": "I", "$P1R": "1024", "$P2R": "1024", "$P3R": "1024",
          "$P1E": "0,0", "$P2E": "4,0", "$P3E": "4,1", "$P1G": "2"}
    fcs = FcsData(events=ev, channels=["FSC-H", "FL1-H", "FL2-H"], markers=["", "CD45", "CD34"], keywords=kw,
                  version="FCS2.0")
    spec = PreprocessSpec(qc=QcSpec(remove_doublets=False, debris_fsc_min=0.0))
    out = preprocess(fcs, panel=PanelSpec(markers=("CD34", "CD45"), scatter=("FSC-H",)), spec=spec)
    linear = 10 ** (4 * ev[:, [2, 1]] / 1024)
    np.testing.assert_allclose(out.values[:, :2], fut.logicle(linear, None), atol=1e-6)
    np.testing.assert_allclose(out.values[:, 2], ev[:, 0] / 2 / 262144, rtol=1e-6)
    assert out.qc["qc_skipped"] == []


def test_mixed_data_types_decode_pne_per_column():
    """FCS 3.2 ``$PnDATATYPE``: ``$PnE`` applies to an integer column even when ``$DATATYPE`` is F."""
    rng = np.random.default_rng(6)
    ev = rng.integers(0, 1023, size=(300, 3)).astype(np.float64)
    ev[:, 0] = rng.uniform(200, 900, 300)  # FSC stored as float, above the debris cut
    ev[:, 2] = rng.uniform(0, 1000, 300)  # a float fluorescence column: $PnE must not apply
    kw = {"$DATATYPE": "F", "$P2DATATYPE": "I", "$P1R": "1024", "$P2R": "1024", "$P3R": "1024",
          "$P2E": "4,0", "$P3E": "4,1"}
    fcs = FcsData(events=ev, channels=["FSC-H", "FL1-H", "FL2-H"], markers=["", "CD45", "CD34"], keywords=kw,
                  version="FCS3.2")
    spec = PreprocessSpec(qc=QcSpec(remove_doublets=False, debris_fsc_min=0.0))
    out = preprocess(fcs, panel=PanelSpec(markers=("CD34", "CD45"), scatter=("FSC-H",)), spec=spec)
    np.testing.assert_allclose(out.values[:, 1], fut.logicle(10 ** (4 * ev[:, 1:2] / 1024), None)[:, 0], atol=1e-6)
    np.testing.assert_allclose(out.values[:, 0], fut.logicle(ev[:, 2:3], None)[:, 0], atol=1e-6)


def test_empty_panel_uses_all_but_time():
    ev = preprocess(_sample(), panel=PanelSpec(), spec=PreprocessSpec())
    assert ev.markers == tuple(CHANNELS[:7])
    np.testing.assert_allclose(ev.values[:, 1], _sample().events[25:, 1] / 262144, rtol=1e-6)


def test_errors_name_the_sample():
    fcs = _sample()
    with pytest.raises(PanelError, match=r"^sample_01\.fcs: panel marker 'CD19' not found"):
        preprocess(fcs, panel=PanelSpec(markers=("CD19",)), spec=PreprocessSpec())
    bad = Spillover(channels=("FITC-A", "BV421-A"), matrix=np.eye(2), source="SPILL")
    with pytest.raises(CompensationError, match=r"^sample_01\.fcs: spillover matrix \(SPILL\) names channel"):
        preprocess(fcs, panel=PANEL, spec=PreprocessSpec(), compensation_override=bad)
    strict = PreprocessSpec(qc=QcSpec(debris_fsc_min=0.99))
    with pytest.raises(PreprocessError, match=r"^sample_01\.fcs: no events left after QC \(n_events_in=2000"):
        preprocess(fcs, panel=PANEL, spec=strict)


def test_fingerprint_is_stable_and_sensitive():
    spec = PreprocessSpec()
    a = preprocess_fingerprint(PANEL, spec)
    assert a == preprocess_fingerprint(PanelSpec(markers=PANEL.markers, scatter=PANEL.scatter), PreprocessSpec())
    assert len(a) == 64 and int(a, 16) >= 0
    changed = dataclasses.replace(spec, fluorescence=TransformSpec(kind="logicle", w=0.75))
    assert preprocess_fingerprint(PANEL, changed) != a
    assert preprocess_fingerprint(PanelSpec(markers=("CD45", "CD34")), spec) != preprocess_fingerprint(
        PanelSpec(markers=("CD34", "CD45")), spec)


def test_round_trip_through_an_fcs_file(tmp_path):
    fcs_mod = pytest.importorskip("rescue_gpu.fcs")
    if not hasattr(fcs_mod, "read_fcs"):
        pytest.skip("rescue_gpu.fcs.read_fcs not available yet")
    src = _sample()
    path = fcs_mod.write_fcs(tmp_path / "s.fcs", src.events, channels=CHANNELS, markers=MARKERS,
                             keywords={f"$P{i}R": "262144" for i in range(1, 9)}, spillover=SPILL)
    read = fcs_mod.read_fcs(path)
    a = preprocess(read, panel=PANEL, spec=PreprocessSpec())
    b = preprocess(src, panel=PANEL, spec=PreprocessSpec())
    np.testing.assert_array_equal(a.values, b.values)
    assert a.qc["n_events_out"] == b.qc["n_events_out"]
