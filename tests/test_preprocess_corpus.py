"""Preprocessing on real FCS files, against flowio (decoding) and flowutils (compensation, logicle).

Files are read with flowio, an independent reader, so these tests do not depend on ours.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from flowutils import compensate as fuc
from flowutils import transforms as fut

from rescue_gpu.config import PanelSpec, PreprocessSpec, QcSpec
from rescue_gpu.errors import PanelError
from rescue_gpu.fcs.types import FcsData, Spillover
from rescue_gpu.preprocess import compensate, decode_amplification, logicle, match_panel, preprocess

flowio = pytest.importorskip("flowio")
pytestmark = pytest.mark.corpus

LOG_FILES = [
    "RGLab+flowCore/0877408774.B08", "RGLab+flowCore/060909.001", "cytoflow+cytoflow/itn_02.fcs",
    "taborlab+FlowCal/Data001.fcs", "taborlab+FlowCal/Data002.fcs", "cytoflow+cytoflow/itn_03.fcs",
    "fcsparser-0.2.8/Sample_Well_A02.fcs", "RGLab+flowCore/0877408774.E07", "whitews+FlowIO/data1.fcs",
    "whitews+FlowIO/3FITC_4PE_004.fcs",
]
SPILL_FILES = [
    "whitews+FlowKit/test_comp_example.fcs", "whitews+FlowIO/100715.fcs", "saeyslab+FlowSOM_Python/ff.fcs",
    "fcsparser-0.2.8/facs_diva_test.fcs", "FlowCytometryTools-0.5.1/HTS_BD_LSR_II_Mixed_Specimen_001_D6_D06.fcs",
    "taborlab+FlowCal/Data004.fcs", "whitews+FlowIO/G11.fcs",
    "fcsparser-0.2.8/FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs",
]


def _flowio(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flowio.FlowData(str(path), ignore_offset_error=True)


def _keywords(text: dict[str, str]) -> dict[str, str]:
    """flowio lower-cases keys and drops '$'; restore the standard ones."""
    std = re.compile(r"^(p\d+[a-z]|datatype|par|tot|mode|byteord)$")
    return {("$" + k if std.match(k) else k).upper(): str(v) for k, v in text.items()}


def _spill(text: dict[str, str]) -> Spillover | None:
    for key in ("spill", "spillover"):
        if key in text:
            matrix, names = fuc.get_spill(text[key])
            return Spillover(channels=tuple(names), matrix=matrix, source=key.upper())
    return None


def _fcs(corpus_dir: Path, name: str) -> tuple[FcsData, object]:
    fd = _flowio(corpus_dir / name)
    n = fd.channel_count
    channels = [fd.text.get(f"p{i}n", f"P{i}") for i in range(1, n + 1)]
    markers = [fd.text.get(f"p{i}s", "").strip() for i in range(1, n + 1)]
    raw = fd.as_array(preprocess=False)
    return FcsData(events=raw, channels=channels, markers=markers, keywords=_keywords(fd.text),
                   version=f"FCS{fd.version}", spillover=_spill(fd.text), path=name), fd


@pytest.mark.parametrize("name", LOG_FILES)
def test_decoding_matches_flowio(corpus_dir, name):
    fcs, fd = _fcs(corpus_dir, name)
    amp = fcs.amplification()
    assert any(f1 > 0 for f1, _ in amp), "expected a log-amplified parameter"
    ours = decode_amplification(fcs.events, decades_offsets=amp, ranges=fcs.ranges(), gains=fcs.gains())
    ref = fd.as_array(preprocess=True)
    gains = fcs.gains()
    for j, (f1, _) in enumerate(amp):
        if f1 > 0 and gains[j] not in (0.0, 1.0):
            ref[:, j] *= gains[j]  # flowio also divides log channels by $PnG; the FCS standard does not
    time = [j for j, c in enumerate(fcs.channels) if c.lower().startswith("time")]
    cols = [j for j in range(fcs.n_parameters) if j not in time]
    np.testing.assert_allclose(ours[:, cols], ref[:, cols], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", SPILL_FILES)
def test_compensation_and_logicle_match_flowutils(corpus_dir, name):
    fcs, _ = _fcs(corpus_dir, name)
    assert fcs.spillover is not None
    linear = decode_amplification(fcs.events, decades_offsets=[(0.0, 0.0)] * fcs.n_parameters,
                                  ranges=fcs.ranges(), gains=fcs.gains())
    idx = [fcs.channels.index(c) for c in fcs.spillover.channels]
    ours = compensate(linear, channels=fcs.channels, spillover=fcs.spillover)
    ref = fuc.compensate(linear, fcs.spillover.matrix, idx)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-6)
    fluo = ref[:, idx]
    assert (fluo < 0).any(), "compensated data should include negative values"
    expected = fut.logicle(fluo, None)
    got = logicle(fluo)
    finite = expected != -1  # flowutils marks non-convergence with -1; none expected here
    assert finite.all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_panel_matching_on_real_markers(corpus_dir):
    fcs, _ = _fcs(corpus_dir, "whitews+FlowKit/test_comp_example.fcs")
    idx = match_panel(fcs.channels, fcs.markers, PanelSpec(markers=("CD3", "CD33", "CD4", "CD20")))
    assert [fcs.channels[i] for i in idx] == ["PE-Cy7-A", "PE-A", "PacBlu-A", "PerCP-Cy55-A"]


def test_duplicate_pns_in_real_file_is_ambiguous(corpus_dir):
    fcs, _ = _fcs(corpus_dir, "fcsparser-0.2.8/SG_2014-09-26_Duplicate_Names.fcs")
    with pytest.raises(PanelError, match=r"'GFP' is ambiguous.*8 FL7-A \(GFP/FITC-A\), 9 FL7-H \(GFP/FITC-H\)"):
        match_panel(fcs.channels, fcs.markers, PanelSpec(markers=("GFP",)))
    assert match_panel(fcs.channels, fcs.markers, PanelSpec(markers=("GFP/FITC-A",))) == [7]


def test_full_stage_on_a_real_file(corpus_dir):
    fcs, _ = _fcs(corpus_dir, "whitews+FlowKit/test_comp_example.fcs")
    panel = PanelSpec(markers=("CD3", "CD4", "CD33"), scatter=("FSC-A", "SSC-A"))
    ev = preprocess(fcs, panel=panel, spec=PreprocessSpec())
    qc = ev.qc
    assert qc["n_events_in"] == fcs.n_events
    assert qc["n_events_in"] == sum(qc[k] for k in ("non_finite", "saturated", "debris", "doublets")) + qc["n_events_out"]
    assert qc["qc_skipped"] == ["doublets: channel(s) 'FSC-H' not in sample"]
    assert qc["compensation"] == "file:SPILL"
    assert ev.values.shape == (qc["n_events_out"], 5) and np.isfinite(ev.values).all()


def test_full_stage_on_fcs2_log_file(corpus_dir):
    fcs, _ = _fcs(corpus_dir, "RGLab+flowCore/0877408774.B08")
    ev = preprocess(fcs, panel=PanelSpec(), spec=PreprocessSpec(qc=QcSpec(fsc_area="FSC-H")))
    assert ev.markers == ("FSC-H", "SSC-H", "FL1-H", "FL2-H", "FL3-H", "P6", "FL4-H")  # no $P6N
    assert ev.qc["compensation"] == "file:none"
    assert 0 < ev.qc["n_events_out"] <= 10000
