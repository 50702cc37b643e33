"""``[preprocess.normalize] method = "peaks"``: density-peak registration (gaussNorm-style landmarks)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.signal import find_peaks
from scipy.stats import gaussian_kde

from rescue_gpu.device import to_numpy
from rescue_gpu.config import ConfigError, NormalizeSpec, from_mapping, load_pipeline, pipeline_from_record, pipeline_record
from rescue_gpu.preprocess import (density_peaks, landmark_targets, match_peaks, normalize_events, normalize_toml,
                                   preprocess_fingerprint, register_peaks)

from tests.conftest import xp_params

BW = 0.02


def _cd7(n: int, pos_fraction: float, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    """One CD7-like channel: a negative population at 0.15 and CD7+ lymphocytes at 0.62."""
    rng = np.random.default_rng(seed)
    pos = rng.random(n) < pos_fraction
    return (np.where(pos, 0.62, 0.15) + rng.normal(0, np.where(pos, 0.05, 0.04)) + shift).astype(np.float32)


def _kde_peaks(x: np.ndarray, min_height: float, bandwidth: float = BW) -> np.ndarray:
    """The peer: scipy's Gaussian KDE (same kernel SD) on a fine grid and scipy's peak finder, keeping
    peaks of at least ``min_height`` of the tallest whose prominence is >= 20 % of their height."""
    x = np.asarray(x, dtype=np.float64)
    kde = gaussian_kde(x, bw_method=bandwidth / x.std(ddof=1))
    grid = np.linspace(x.min() - 0.1, x.max() + 0.1, 6001)
    dens = kde(grid)
    idx, props = find_peaks(dens, height=min_height * dens.max(), prominence=0.0)
    return grid[idx[props["prominences"] >= 0.2 * props["peak_heights"]]]


@pytest.mark.parametrize(("fraction", "seed"), [(0.3, 0), (0.12, 1), (0.5, 2)])
def test_density_peaks_match_scipys_kde_peaks(fraction, seed):
    x = _cd7(20000, fraction, seed=seed)
    pos, height = density_peaks(x, bandwidth=BW, min_height=0.05)
    peer = _kde_peaks(x, 0.05)
    assert len(pos) == len(peer) == 2
    np.testing.assert_allclose(pos, peer, atol=0.001)          # a fifth of a histogram bin
    np.testing.assert_allclose(pos, [0.15, 0.62], atol=0.01)   # and at the populations' centres
    assert height.max() == pytest.approx(1.0)
    assert height[1] < height[0]


def test_a_small_population_is_a_peak_only_above_min_height():
    x = _cd7(20000, 0.02, seed=3)
    assert len(density_peaks(x, bandwidth=BW, min_height=0.05)[0]) == 1
    pos, _ = density_peaks(x, bandwidth=BW, min_height=0.01)
    np.testing.assert_allclose(pos, [0.15, 0.62], atol=0.015)


def test_a_shoulder_is_not_a_second_peak():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0.3, 0.05, 15000), rng.normal(0.36, 0.05, 5000)])   # overlapping: one mode
    assert len(density_peaks(x, bandwidth=BW, min_height=0.05)[0]) == 1
    assert density_peaks(np.full(10, np.nan), bandwidth=BW, min_height=0.05)[0].size == 0


def test_match_peaks_keeps_order_and_prefers_the_closer_pairing():
    assert match_peaks([0.16, 0.61], [0.15, 0.62], max_shift=0.2) == [(0, 0), (1, 1)]
    assert match_peaks([0.17], [0.15, 0.62], max_shift=0.2) == [(0, 0)]            # CD7+ absent: one pair
    assert match_peaks([0.55], [0.15, 0.62], max_shift=0.2) == [(0, 1)]            # only the positive
    assert match_peaks([0.9], [0.15, 0.62], max_shift=0.2) == []                    # nothing within reach
    assert match_peaks([0.2, 0.28], [0.25], max_shift=0.2) == [(1, 0)]               # the closer one
    assert match_peaks([0.1, 0.3], [0.28, 0.32], max_shift=0.2) == [(0, 0), (1, 1)]  # two pairs beat one perfect one


def test_register_peaks_shifts_one_pair_and_maps_more_piecewise():
    x = np.array([0.0, 0.1, 0.2, 0.4, 0.6, 0.9])
    np.testing.assert_allclose(register_peaks(x, np.array([0.2]), np.array([0.15])), x - 0.05, atol=1e-12)
    y = register_peaks(x, np.array([0.2, 0.6]), np.array([0.15, 0.65]))
    np.testing.assert_allclose(y, [-0.05, 0.05, 0.15, 0.40, 0.65, 0.95], atol=1e-12)
    assert np.all(np.diff(y) > 0)


def test_peaks_register_a_low_cd7_marrow_where_quantiles_stretch_it():
    """The cause found in the transfer check: the 0.9 quantile falls between populations."""
    ref = [_cd7(20000, 0.3, seed=s) for s in range(3)]
    peaks = landmark_targets([r[:, None] for r in ref], ["CD7"], ["CD7"], method="peaks", bandwidth=BW)
    quant = landmark_targets([r[:, None] for r in ref], ["CD7"], ["CD7"], (0.1, 0.5, 0.9))
    np.testing.assert_allclose(peaks["CD7"], [0.15, 0.62], atol=0.01)
    low = _cd7(20000, 0.05, shift=0.04, seed=9)   # another site: few CD7+ events, negative level 0.04 higher
    is_pos = low > 0.4
    by_peaks = normalize_events(low[:, None], ["CD7"], NormalizeSpec(method="peaks", targets=peaks))[:, 0]
    by_quant = normalize_events(low[:, None], ["CD7"], NormalizeSpec(method="landmarks", targets=quant))[:, 0]
    # peaks: both populations back at the reference's places
    assert np.median(by_peaks[~is_pos]) == pytest.approx(0.15, abs=0.01)
    assert np.median(by_peaks[is_pos]) == pytest.approx(0.62, abs=0.02)
    # quantiles: the negative population's upper tail is stretched onto the positives' place
    assert np.median(by_quant[is_pos]) > 0.62 + 0.3


def test_no_matching_peak_leaves_the_channel_with_a_note_and_stretch_falls_back_to_a_shift():
    x = _cd7(5000, 0.3, seed=4)[:, None]
    notes: list[str] = []
    far = NormalizeSpec(method="peaks", targets={"CD7": (0.9,)}, max_shift=0.1)
    out = normalize_events(x, ["CD7"], far, notes=notes)
    np.testing.assert_array_equal(out, x)
    assert len(notes) == 1 and "'CD7' left unregistered" in notes[0] and "max_shift = 0.1" in notes[0]
    notes.clear()
    squeezed = NormalizeSpec(method="peaks", targets={"CD7": (0.15, 0.2)}, max_shift=0.5)   # 0.47 apart -> 0.05
    out = normalize_events(x, ["CD7"], squeezed, notes=notes)
    assert "only shifted" in notes[0]
    d = out[:, 0] - x[:, 0]
    np.testing.assert_allclose(d, d[0], atol=1e-6)   # one shift for every event
    assert abs(d[0]) < 0.01                           # by the tallest (negative) peak's offset


def test_peaks_pipeline_table_round_trip_and_fingerprints(tmp_path):
    spec = NormalizeSpec(method="peaks", targets={"CD45": (0.2, 0.7), "SSC-A": (0.15,)}, bandwidth=0.03, max_shift=0.15)
    path = tmp_path / "lab.toml"
    path.write_text('name = "lab"\n[panel]\nmarkers = ["CD45"]\nscatter = ["FSC-A", "SSC-A"]\n\n'
                    + normalize_toml(spec), encoding="utf-8")
    p = load_pipeline(path)
    assert p.preprocess.normalize == spec
    assert pipeline_from_record(json.loads(json.dumps(pipeline_record(p))), file=str(path)) == p
    fp = preprocess_fingerprint(p.panel, p.preprocess)
    wider = dataclasses.replace(p.preprocess, normalize=dataclasses.replace(spec, bandwidth=0.04))
    assert preprocess_fingerprint(p.panel, wider) != fp


def test_landmark_fingerprints_from_before_the_peak_settings_are_unchanged():
    p = load_pipeline("aml-mrd")
    on = dataclasses.replace(p.preprocess, normalize=NormalizeSpec(method="landmarks", targets={"CD45": (0.1, 0.2, 0.3)}))
    record = json.loads(json.dumps(pipeline_record(dataclasses.replace(p, preprocess=on))))
    for key in ("bandwidth", "min_height", "max_shift"):   # as stored before they existed
        del record["preprocess"]["normalize"][key]
    old = pipeline_from_record(record)
    assert old.preprocess == on
    assert preprocess_fingerprint(old.panel, old.preprocess) == preprocess_fingerprint(p.panel, on)
    moved = dataclasses.replace(on, normalize=dataclasses.replace(on.normalize, max_shift=0.3))
    assert preprocess_fingerprint(p.panel, moved) != preprocess_fingerprint(p.panel, on)


@pytest.mark.parametrize(("table", "message"), [
    ({"method": "peaks"}, r"method = \"peaks\" needs \[preprocess.normalize.targets\]"),
    ({"method": "peaks", "targets": {"CD45": []}}, r"targets.CD45 needs one or more finite strictly increasing peak"),
    ({"method": "peaks", "targets": {"CD45": [0.5, 0.2]}}, r"targets.CD45 needs one or more"),
    ({"bandwidth": 0.0}, r"bandwidth must be > 0"),
    ({"min_height": 1.0}, r"min_height must be in \(0, 1\)"),
    ({"max_shift": -0.1}, r"max_shift must be > 0"),
])
def test_peak_settings_are_validated(table, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(NormalizeSpec, table, file="lab.toml", prefix="preprocess.normalize")


def test_reference_landmarks_command_writes_a_peaks_table(tmp_path, capsys):
    from rescue_gpu.cli import main
    from rescue_gpu.flow.stages import load_events
    from rescue_gpu.runner.manifest import read_manifest

    cohort = tmp_path / "cohort"
    assert main(["simulate", str(cohort), "--samples", "2", "--events", "3000", "--seed", "4"]) == 0
    table = tmp_path / "peaks.toml"
    rc = main(["reference", "landmarks", str(cohort / "manifest.csv"), "--method", "peaks", "--channels", "CD45,SSC-A",
               "--bandwidth", "0.03", "--out", str(table)])
    assert rc == 0, capsys.readouterr().err
    aml = load_pipeline("aml-mrd")
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(open(aml.source, encoding="utf-8").read() + "\n" + table.read_text(), encoding="utf-8")
    lab = load_pipeline(lab_file)
    assert lab.preprocess.normalize.method == "peaks" and lab.preprocess.normalize.bandwidth == 0.03
    # the peer: the peaks of the two samples' pooled events, found by scipy's KDE
    ev = [load_events(r.path, aml) for r in read_manifest(cohort / "manifest.csv")]
    j = ev[0].markers.index("CD45")
    pooled = np.concatenate([e.values[:, j] for e in ev])
    peer = _kde_peaks(pooled, 0.05, bandwidth=0.03)
    got = lab.preprocess.normalize.targets["CD45"]
    assert len(got) == len(peer) >= 1
    np.testing.assert_allclose(got, peer, atol=0.006)
    capsys.readouterr()
    assert main(["reference", "landmarks", str(cohort / "manifest.csv"), "--method", "zscore"]) == 2
    assert "--method must be 'landmarks' or 'peaks'" in capsys.readouterr().err


@pytest.mark.parametrize("xp", xp_params())
def test_peak_registration_is_the_same_on_every_array_module(xp):
    """One code path for numpy and cupy: the same peaks, pairs and registered events."""
    ref = [_cd7(20000, 0.3, seed=s) for s in range(2)]
    spec = NormalizeSpec(method="peaks", targets=landmark_targets([r[:, None] for r in ref], ["CD7"], ["CD7"],
                                                                method="peaks", bandwidth=BW))
    x = np.column_stack([_cd7(20000, 0.2, shift=0.05, seed=7), _cd7(20000, 0.4, seed=8)])
    host = normalize_events(x, ["CD7", "other"], spec)
    dev = normalize_events(xp.asarray(x), ["CD7", "other"], spec, xp=xp)
    assert type(dev).__module__.split(".")[0] == xp.__name__.split(".")[0]
    np.testing.assert_allclose(to_numpy(dev), host, atol=1e-6)
    np.testing.assert_array_equal(to_numpy(dev)[:, 1], x[:, 1])
    np.testing.assert_allclose(density_peaks(xp.asarray(x[:, 0]), bandwidth=BW, min_height=0.05, xp=xp)[0],
                               density_peaks(x[:, 0], bandwidth=BW, min_height=0.05)[0], atol=1e-9)
