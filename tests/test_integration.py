"""Simulator -> FCS file -> reader -> preprocessing, for every simulated instrument."""

import numpy as np
import pytest

from rescue_gpu.config import load_pipeline
from rescue_gpu.fcs import read_fcs, write_fcs
from rescue_gpu.preprocess import preprocess
from rescue_gpu.simulate import INSTRUMENTS, LABEL_NAMES, draw_patient, simulate_sample


@pytest.mark.parametrize("instrument", range(len(INSTRUMENTS)))
def test_simulated_files_preprocess_on_every_instrument(tmp_path, instrument):
    pipe = load_pipeline("aml-mrd")
    patient = draw_patient(11 + instrument, instrument=instrument)
    s = simulate_sample(patient, kind="diagnosis", n_events=20000, seed=5)
    path = write_fcs(tmp_path / "s.fcs", s.events, channels=s.channels, markers=s.markers, keywords=s.keywords)
    fcs = read_fcs(path)
    np.testing.assert_array_equal(fcs.events, s.events)
    assert fcs.spillover is not None and fcs.spillover.channels == s.spillover.channels
    np.testing.assert_allclose(fcs.spillover.matrix, s.spillover.matrix, rtol=1e-6)
    ev = preprocess(fcs, panel=pipe.panel, spec=pipe.preprocess)
    assert tuple(ev.markers) == pipe.panel.markers + pipe.panel.scatter
    assert ev.values.dtype == np.float32 and np.isfinite(ev.values).all()
    assert ev.qc["compensation"].startswith("file:")
    assert ev.qc["n_events_in"] == 20000 and ev.qc["n_events_out"] == ev.values.shape[0]


def test_qc_gates_find_the_simulated_debris_and_doublets(tmp_path):
    pipe = load_pipeline("aml-mrd")
    s = simulate_sample(draw_patient(3), kind="mrd_negative", n_events=40000, seed=9)
    names = list(LABEL_NAMES)
    labels = s.truth["labels"]
    true_doublets = int((labels == names.index("doublet")).sum())
    true_debris = int((labels == names.index("debris")).sum())
    path = write_fcs(tmp_path / "s.fcs", s.events, channels=s.channels, markers=s.markers, keywords=s.keywords)
    qc = preprocess(read_fcs(path), panel=pipe.panel, spec=pipe.preprocess).qc
    # The gates are simple thresholds, so they are judged against the truth, loosely.
    assert 0.5 * true_debris <= qc["debris"] <= 2.0 * true_debris
    assert 0.3 * true_doublets <= qc["doublets"] <= 3.0 * true_doublets
