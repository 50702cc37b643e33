"""Compensation against flowutils and an independent inverse; CSV matrices; errors."""

from __future__ import annotations

import numpy as np
import pytest
from flowutils import compensate as fuc

from rescue_gpu.device import to_numpy
from rescue_gpu.errors import CompensationError
from rescue_gpu.fcs.types import FcsData, Spillover
from rescue_gpu.preprocess.compensation import compensate, resolve_spillover, spillover_from_csv
from tests.conftest import xp_params

CHANNELS = ["FSC-A", "SSC-A", "FITC-A", "PE-A", "APC-A", "Time"]
SPILL = Spillover(
    channels=("PE-A", "FITC-A", "APC-A"),  # deliberately not in file order
    matrix=np.array([[1.0, 0.02, 0.01], [0.21, 1.0, 0.0], [0.05, 0.003, 1.0]]),
)


def _events(n: int = 500, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(2000.0, 3000.0, size=(n, len(CHANNELS)))


@pytest.mark.parametrize("xp", xp_params())
def test_compensate_matches_flowutils_and_explicit_inverse(xp):
    raw = _events()
    ours = to_numpy(compensate(xp.asarray(raw), channels=CHANNELS, spillover=SPILL))
    idx = [CHANNELS.index(c) for c in SPILL.channels]
    ref = fuc.compensate(raw, SPILL.matrix, idx)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-9)
    manual = raw.copy()
    manual[:, idx] = raw[:, idx] @ np.linalg.inv(SPILL.matrix)
    np.testing.assert_allclose(ours, manual, rtol=1e-12, atol=1e-9)
    untouched = [CHANNELS.index(c) for c in ("FSC-A", "SSC-A", "Time")]
    np.testing.assert_array_equal(ours[:, untouched], raw[:, untouched])


def test_compensate_undoes_spillover():
    rng = np.random.default_rng(3)
    true = np.zeros((200, len(CHANNELS)))
    idx = [CHANNELS.index(c) for c in SPILL.channels]
    true[:, idx] = rng.uniform(0, 1e4, size=(200, 3))
    observed = true.copy()
    observed[:, idx] = true[:, idx] @ SPILL.matrix
    np.testing.assert_allclose(compensate(observed, channels=CHANNELS, spillover=SPILL), true, atol=1e-8)


def test_missing_channel_lists_missing_and_available():
    spill = Spillover(channels=("FITC-A", "BV421-A"), matrix=np.eye(2))
    with pytest.raises(CompensationError) as err:
        compensate(_events(), channels=CHANNELS, spillover=spill)
    msg = str(err.value)
    assert "not in the sample: 'BV421-A'" in msg
    assert "the sample has: 'FSC-A', 'SSC-A', 'FITC-A', 'PE-A', 'APC-A', 'Time'" in msg


def test_singular_matrix_is_a_compensation_error():
    spill = Spillover(channels=("FITC-A", "PE-A"), matrix=np.array([[1.0, 0.5], [2.0, 1.0]]))
    with pytest.raises(CompensationError, match=r"is singular \(condition number"):
        compensate(_events(), channels=CHANNELS, spillover=spill)


def test_non_finite_matrix_is_a_compensation_error():
    spill = Spillover(channels=("FITC-A", "PE-A"), matrix=np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(CompensationError, match="non-finite entries"):
        compensate(_events(), channels=CHANNELS, spillover=spill)


def test_index_named_and_case_insensitive_channels_resolve():
    by_number = Spillover(channels=("4", "3"), matrix=np.array([[1.0, 0.1], [0.2, 1.0]]))
    by_case = Spillover(channels=("pe-a", "fitc-a"), matrix=by_number.matrix)
    raw = _events()
    a = compensate(raw, channels=CHANNELS, spillover=by_number)
    b = compensate(raw, channels=CHANNELS, spillover=by_case)
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, fuc.compensate(raw, by_number.matrix, [3, 2]))


def test_csv_round_trip_with_header_only(tmp_path):
    path = tmp_path / "spill.csv"
    lines = [",".join(SPILL.channels)] + [",".join(repr(float(v)) for v in row) for row in SPILL.matrix]
    path.write_text("\n".join(lines) + "\n")
    spill = spillover_from_csv(path)
    assert spill.channels == SPILL.channels
    np.testing.assert_array_equal(spill.matrix, SPILL.matrix)
    assert spill.source == f"csv:{path}"


def test_csv_with_row_names_in_another_order_is_reordered(tmp_path):
    path = tmp_path / "spill.csv"
    order = [2, 0, 1]
    lines = ["," + ",".join(SPILL.channels)]
    lines += [SPILL.channels[i] + "," + ",".join(repr(float(v)) for v in SPILL.matrix[i]) for i in order]
    path.write_text("\n".join(lines) + "\n")
    spill = spillover_from_csv(path)
    np.testing.assert_array_equal(spill.matrix, SPILL.matrix)


def test_tab_separated_csv_is_read(tmp_path):
    path = tmp_path / "spill.tsv"
    lines = ["\t".join(SPILL.channels)] + ["\t".join(repr(float(v)) for v in row) for row in SPILL.matrix]
    path.write_text("\n".join(lines))
    np.testing.assert_array_equal(spillover_from_csv(path).matrix, SPILL.matrix)


@pytest.mark.parametrize("text,message", [
    ("A,B\n1,0\n", "not square"),
    ("A,B\n1,0\n0,x\n", "non-numeric value"),
    ("A,B\nA,1,0\nC,0,1\n", "do not match the header"),
    ("A,B\n", "needs a header of channel names"),
])
def test_bad_csv_matrices_name_the_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CompensationError) as err:
        spillover_from_csv(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_csv_file_is_a_compensation_error(tmp_path):
    with pytest.raises(CompensationError, match="cannot read spillover CSV"):
        spillover_from_csv(tmp_path / "absent.csv")


def _fcs(spillover: Spillover | None) -> FcsData:
    return FcsData(events=_events(10), channels=CHANNELS, markers=[""] * 6, keywords={}, version="FCS3.1",
                   spillover=spillover)


def test_resolve_spillover_modes(tmp_path):
    with_spill = Spillover(channels=SPILL.channels, matrix=SPILL.matrix, source="SPILL")
    assert resolve_spillover(_fcs(with_spill), "file") == (with_spill, "file:SPILL")
    assert resolve_spillover(_fcs(None), "file") == (None, "file:none")
    assert resolve_spillover(_fcs(with_spill), "none") == (None, "none")
    path = tmp_path / "m.csv"
    path.write_text("FITC-A,PE-A\n1,0.1\n0.2,1\n")
    spill, source = resolve_spillover(_fcs(None), str(path))
    assert source == f"csv:{path}" and spill.channels == ("FITC-A", "PE-A")


# ----------------------------------------------------------------------------- a file's own matrix that does not fit


def _file_with_spillover(tmp_path, names, *, name="s.fcs"):
    """An FCS file of CHANNELS whose ``$SPILLOVER`` names ``names`` (None: no matrix at all)."""
    from rescue_gpu.fcs import write_fcs
    from rescue_gpu.fcs.writer import spillover_value

    rng = np.random.default_rng(0)
    events = rng.uniform(1000.0, 50000.0, size=(300, len(CHANNELS))).astype(np.float32)
    kw = {} if names is None else {"$SPILLOVER": spillover_value(Spillover(tuple(names), SPILL.matrix))}
    return write_fcs(tmp_path / name, events, channels=CHANNELS, markers=["", "", "CD7", "CD56", "CD33", ""],
                     keywords=kw)


def _preprocess_file(path, compensation="file"):
    from rescue_gpu.config import PanelSpec, PreprocessSpec, QcSpec
    from rescue_gpu.fcs import read_fcs
    from rescue_gpu.preprocess import preprocess

    spec = PreprocessSpec(compensation=compensation, qc=QcSpec(remove_debris=False, remove_doublets=False))
    return preprocess(read_fcs(path), panel=PanelSpec(markers=("CD7", "CD56", "CD33")), spec=spec)


def test_file_matrix_with_a_changed_channel_name_fails_the_sample(tmp_path):
    path = _file_with_spillover(tmp_path, ("PE-A", "FITC-X", "APC-A"))  # one $SPILLOVER name changed
    with pytest.raises(CompensationError) as err:
        _preprocess_file(path)
    msg = str(err.value)
    assert str(path) in msg and "'FITC-X'" in msg  # the file and the name that does not fit
    assert "'FITC-A'" in msg  # the file's channels, to compare with
    assert 'compensation = "file"' in msg and '"none"' in msg and "CSV" in msg  # the fixes


def test_malformed_file_matrix_is_irrelevant_without_file_compensation(tmp_path):
    path = _file_with_spillover(tmp_path, ("PE-A", "FITC-X", "APC-A"))
    events = _preprocess_file(path, compensation="none")
    assert events.qc["compensation"] == "none" and events.warnings == ()


def test_file_without_matrix_is_processed_with_a_warning(tmp_path):
    from rescue_gpu.preprocess.compensation import NO_FILE_MATRIX

    none = _preprocess_file(_file_with_spillover(tmp_path, None, name="none.fcs"))
    assert none.qc["compensation"] == "file:none" and none.warnings == (NO_FILE_MATRIX,)
    assert ";" not in NO_FILE_MATRIX  # the warnings column joins warnings with "; "
    good = _preprocess_file(_file_with_spillover(tmp_path, SPILL.channels, name="good.fcs"))
    assert good.qc["compensation"] == "file:$SPILLOVER" and good.warnings == ()


def test_qc_gate_that_cannot_run_is_a_warning(tmp_path):
    from rescue_gpu.config import PanelSpec, PreprocessSpec
    from rescue_gpu.fcs import read_fcs
    from rescue_gpu.preprocess import preprocess

    fcs = read_fcs(_file_with_spillover(tmp_path, SPILL.channels))
    events = preprocess(fcs, panel=PanelSpec(markers=("CD7", "CD56", "CD33")), spec=PreprocessSpec())
    assert any(w.startswith("QC gate not run: doublets") and "FSC-H" in w for w in events.warnings)
