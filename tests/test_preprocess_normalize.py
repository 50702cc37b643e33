"""``[preprocess.normalize]``: per-sample landmark registration onto a reference's landmarks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.config import (ConfigError, NormalizeSpec, PanelSpec, PreprocessSpec, QcSpec, TransformSpec,
                               from_mapping, load_pipeline, pipeline_from_record, pipeline_record)
from rescue_gpu.errors import PreprocessError
from rescue_gpu.fcs.types import FcsData
from rescue_gpu.preprocess import (landmark_targets, normalize_events, normalize_toml, preprocess,
                                   preprocess_fingerprint, register_channel)

Q = (0.1, 0.5, 0.9)
NAMES = ("CD45", "CD34", "SSC-A")


def _mixture(n: int = 4000, seed: int = 0) -> np.ndarray:
    """Three channels of a two-population sample on a 0..1-like display scale."""
    rng = np.random.default_rng(seed)
    big = rng.random(n) < 0.7
    centres = np.where(big[:, None], [0.7, 0.2, 0.15], [0.45, 0.6, 0.4])
    return (centres + rng.normal(0, 0.05, (n, 3))).astype(np.float32)


def _percentiles(x: np.ndarray) -> np.ndarray:
    """The peer: numpy's percentiles, one row per column."""
    return np.percentile(x.astype(np.float64), [100 * q for q in Q], axis=0).T


def test_shifted_scaled_copy_is_mapped_onto_the_originals_landmarks():
    x = _mixture()
    gain, offset = np.array([0.8, 1.3, 0.65]), np.array([-0.05, 0.04, 0.0])
    copy = (x * gain + offset).astype(np.float32)
    spec = NormalizeSpec(method="landmarks", quantiles=Q,
                         targets={n: tuple(row) for n, row in zip(NAMES, _percentiles(x))})
    out = normalize_events(copy, NAMES, spec)
    np.testing.assert_allclose(_percentiles(out), _percentiles(x), atol=2e-6)
    np.testing.assert_allclose(out, x, atol=5e-6)   # an affine copy is undone exactly
    assert np.abs(copy - x).max() > 0.05


def test_register_channel_is_monotone_and_linear_beyond_the_end_landmarks():
    src, tgt = np.array([0.2, 0.5, 0.7]), np.array([0.1, 0.3, 0.9])
    x = np.array([0.0, 0.2, 0.35, 0.5, 0.6, 0.7, 1.0])
    y = register_channel(x, src, tgt)
    expected = [0.1 - 0.2 * (0.2 / 0.3), 0.1, 0.2, 0.3, 0.6, 0.9, 0.9 + 0.3 * 3.0]
    np.testing.assert_allclose(y, expected, atol=1e-12)


def test_channels_without_targets_and_method_none_are_untouched():
    x = _mixture()
    spec = NormalizeSpec(method="landmarks", quantiles=Q, targets={"SSC-A": (0.1, 0.2, 0.3)})
    out = normalize_events(x, NAMES, spec)
    np.testing.assert_array_equal(out[:, :2], x[:, :2])
    assert not np.allclose(out[:, 2], x[:, 2])
    assert normalize_events(x, NAMES, NormalizeSpec()) is x


def test_landmark_targets_are_the_mean_of_each_samples_percentiles():
    samples = [_mixture(seed=s) * (1 + 0.1 * s) for s in range(3)]
    got = landmark_targets(samples, NAMES, ["SSC-A", "CD45"], Q)
    peer = np.mean([_percentiles(s) for s in samples], axis=0)
    assert list(got) == ["SSC-A", "CD45"]
    np.testing.assert_allclose(got["SSC-A"], peer[2], atol=1e-9)
    np.testing.assert_allclose(got["CD45"], peer[0], atol=1e-9)


# --------------------------------------------------------------------------- through preprocess

CHANNELS = ["FSC-A", "SSC-A", "FITC-A"]
PANEL = PanelSpec(markers=("CD45",), scatter=("FSC-A", "SSC-A"))
NO_QC = QcSpec(remove_saturated=False, remove_debris=False, remove_doublets=False)


def _fcs(scatter_gain: float, seed: int = 1) -> FcsData:
    """A float sample; ``scatter_gain`` scales the stored scatter (another instrument's gain)."""
    rng = np.random.default_rng(seed)
    n = 3000
    big = rng.random(n) < 0.75
    fsc = np.where(big, 0.35, 0.6) + rng.normal(0, 0.04, n)
    ssc = np.where(big, 0.15, 0.45) + rng.normal(0, 0.04, n)
    cd45 = rng.uniform(100, 50_000, n)
    ev = np.column_stack([fsc * 262144 * scatter_gain, ssc * 262144 * scatter_gain, cd45]).astype(np.float32)
    kw = {"$DATATYPE": "F"} | {f"$P{i}R": "262144" for i in range(1, 4)}
    return FcsData(events=ev, channels=list(CHANNELS), markers=["", "", "CD45 FITC"], keywords=kw,
                   version="FCS3.1", spillover=None, path=f"gain{scatter_gain}.fcs")


def _spec(normalize: NormalizeSpec) -> PreprocessSpec:
    return PreprocessSpec(compensation="none", qc=NO_QC, scatter=TransformSpec(kind="linear"), normalize=normalize)


def test_preprocess_registers_another_instruments_scatter_onto_the_reference():
    ref = preprocess(_fcs(1.0), panel=PANEL, spec=_spec(NormalizeSpec())).values
    targets = landmark_targets([ref], ("CD45", "FSC-A", "SSC-A"), ["FSC-A", "SSC-A"], Q)
    on = _spec(NormalizeSpec(method="landmarks", quantiles=Q, targets=targets))
    other = preprocess(_fcs(0.6), panel=PANEL, spec=on).values
    np.testing.assert_allclose(_percentiles(other[:, 1:]), _percentiles(ref[:, 1:]), atol=1e-5)
    np.testing.assert_allclose(other, ref, atol=1e-5)
    raw_other = preprocess(_fcs(0.6), panel=PANEL, spec=_spec(NormalizeSpec())).values
    assert np.abs(raw_other[:, 1:] - ref[:, 1:]).max() > 0.05


def test_preprocess_registers_scatter_peaks_and_reports_an_unmatched_channel_as_a_warning():
    ref = preprocess(_fcs(1.0), panel=PANEL, spec=_spec(NormalizeSpec())).values
    targets = landmark_targets([ref], ("CD45", "FSC-A", "SSC-A"), ["FSC-A", "SSC-A"], method="peaks")
    assert [len(t) for t in targets.values()] == [2, 2]   # the two scatter populations of _fcs
    ev = preprocess(_fcs(0.85), panel=PANEL, spec=_spec(NormalizeSpec(method="peaks", targets=targets)))
    for j, name in ((1, "FSC-A"), (2, "SSC-A")):
        hi = ev.values[:, j] > np.mean(targets[name])
        np.testing.assert_allclose([np.median(ev.values[~hi, j]), np.median(ev.values[hi, j])], targets[name], atol=0.01)
    assert ev.warnings == ()
    far = _spec(NormalizeSpec(method="peaks", targets={**targets, "CD45": (5.0,)}))
    ev = preprocess(_fcs(0.85), panel=PANEL, spec=far)
    assert any("'CD45' left unregistered" in w for w in ev.warnings)


def test_coinciding_landmarks_fail_the_sample_with_its_name():
    fcs = _fcs(1.0)
    fcs = dataclasses.replace(fcs, events=fcs.events.copy())
    fcs.events[:, 2] = 5000.0
    spec = _spec(NormalizeSpec(method="landmarks", quantiles=Q, targets={"CD45": (0.2, 0.4, 0.6)}))
    with pytest.raises(PreprocessError, match=r"gain1\.0\.fcs.*'CD45'.*coincide.*drop it"):
        preprocess(fcs, panel=PANEL, spec=spec)


# --------------------------------------------------------------------------- the pipeline file

BASE = """
name = "lab"

[panel]
markers = ["CD45"]
scatter = ["FSC-A", "SSC-A"]
"""


def test_pipeline_file_round_trip_and_fingerprint(tmp_path):
    targets = {"SSC-A": (0.1, 0.2, 0.45), "CD45": (0.3, 0.6, 0.8)}
    path = tmp_path / "lab.toml"
    path.write_text(BASE + "\n" + normalize_toml(NormalizeSpec(method="landmarks", quantiles=Q, targets=targets)), encoding="utf-8")
    p = load_pipeline(path)
    assert p.preprocess.normalize == NormalizeSpec(method="landmarks", quantiles=Q, targets=targets)
    back = pipeline_from_record(json.loads(json.dumps(pipeline_record(p))), file=str(path))
    assert back == p
    off = dataclasses.replace(p.preprocess, normalize=NormalizeSpec())
    fp_on, fp_off = preprocess_fingerprint(p.panel, p.preprocess), preprocess_fingerprint(p.panel, off)
    assert fp_on != fp_off
    moved = dataclasses.replace(p.preprocess, normalize=dataclasses.replace(
        p.preprocess.normalize, targets={**targets, "SSC-A": (0.1, 0.2, 0.5)}))
    assert preprocess_fingerprint(p.panel, moved) not in (fp_on, fp_off)


def test_stored_pipelines_from_before_normalize_still_load_with_it_off():
    p = load_pipeline("aml-mrd")
    record = json.loads(json.dumps(pipeline_record(p)))   # as a reference or model directory stores it
    del record["preprocess"]["normalize"]
    old = pipeline_from_record(record)
    assert old.preprocess.normalize == NormalizeSpec()
    assert preprocess_fingerprint(old.panel, old.preprocess) == preprocess_fingerprint(p.panel, p.preprocess)


@pytest.mark.parametrize(("table", "message"), [
    ({"quantiles": [0.5, 0.1]}, r"quantiles needs at least 2 strictly increasing"),
    ({"quantiles": [0.0, 0.5]}, r"quantiles needs at least 2 strictly increasing"),
    ({"method": "landmarks"}, r"needs \[preprocess.normalize.targets\]"),
    ({"targets": {"CD45": [0.1, 0.2, 0.3]}}, r"method = \"none\"; set method = \"landmarks\""),
    ({"method": "landmarks", "targets": {"CD45": [0.1, 0.2]}}, r"targets.CD45 needs 3 finite strictly increasing"),
    ({"method": "landmarks", "targets": {"CD45": [0.3, 0.2, 0.4]}}, r"targets.CD45 needs 3"),
    ({"method": "zscore"}, r"method.*'none', 'landmarks'"),
])
def test_normalize_settings_are_validated(table, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(NormalizeSpec, table, file="lab.toml", prefix="preprocess.normalize")


def test_targets_must_name_panel_channels(tmp_path):
    path = tmp_path / "lab.toml"
    path.write_text(BASE + "\n" + normalize_toml(NormalizeSpec(method="landmarks", quantiles=Q, targets={"CD99": (0.1, 0.2, 0.3)})), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"lab\.toml.*'CD99', not a panel marker or scatter channel"):
        load_pipeline(path)


# --------------------------------------------------------------------------- rescue reference landmarks


def test_reference_landmarks_command_writes_the_table_the_pipeline_uses(tmp_path, capsys):
    from rescue_gpu.cli import main
    from rescue_gpu.flow.stages import load_events
    from rescue_gpu.runner.manifest import read_manifest

    cohort = tmp_path / "cohort"
    assert main(["simulate", str(cohort), "--samples", "2", "--events", "1500", "--seed", "4"]) == 0
    table = tmp_path / "landmarks.toml"
    rc = main(["reference", "landmarks", str(cohort / "manifest.csv"), "--channels", "SSC-A,CD45",
               "--quantiles", "0.25,0.5,0.75", "--out", str(table)])
    assert rc == 0, capsys.readouterr().err
    aml = load_pipeline("aml-mrd")
    pipe_file = tmp_path / "lab.toml"
    pipe_file.write_text(Path(aml.source).read_text(encoding="utf-8") + "\n" + table.read_text(), encoding="utf-8")
    lab = load_pipeline(pipe_file)
    # the peer: numpy's percentiles of each sample preprocessed without normalisation, averaged
    ev = [load_events(r.path, aml) for r in read_manifest(cohort / "manifest.csv")]
    for name in ("SSC-A", "CD45"):
        j = ev[0].markers.index(name)
        peer = np.mean([np.percentile(e.values[:, j].astype(np.float64), [25, 50, 75]) for e in ev], axis=0)
        np.testing.assert_allclose(lab.preprocess.normalize.targets[name], peer, atol=1e-9)
    assert lab.preprocess.normalize.quantiles == (0.25, 0.5, 0.75)
    # and the pipeline then registers each sample onto those landmarks
    got = load_events(read_manifest(cohort / "manifest.csv")[1].path, lab)
    j = got.markers.index("SSC-A")
    np.testing.assert_allclose(np.percentile(got.values[:, j], [25, 50, 75]), lab.preprocess.normalize.targets["SSC-A"],
                               atol=5e-5)  # float32 events
    capsys.readouterr()
    assert main(["reference", "landmarks", str(cohort / "manifest.csv"), "--channels", "CD99"]) == 2
    assert "'CD99' are not output columns" in " ".join(capsys.readouterr().err.split())
