"""The FCS reader against every file of the real corpus and its ``truth.json``.

Two documented departures from the oracle (fcsparser), each checked another way:

* 32-bit integer files whose values exceed 2**24 (MoFlo Astrios, MoFlo XDP): the oracle
  returned float32, so its numbers are our exact integers rounded to float32. We compare
  our values rounded the same way, and keep the exact integers.
* ``Beckman Coulter - Cytomics FC500.LMD`` has ``$PnB=10``: the oracle read one byte per
  value (half the DATA segment, low bytes of the first events). The DATA length says two
  bytes per value, and the file's second data set (the same events at 20-bit resolution)
  agrees with our reading; :func:`test_fc500_10_bit_agrees_with_its_fcs3_data_set`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.errors import FcsFormatError
from rescue_gpu.fcs import read_fcs
from tests.conftest import corpus_truth

pytestmark = pytest.mark.corpus

RECORDS = corpus_truth()
ORACLE_MISREAD = {"bpteague+cytoflow/Beckman Coulter - Cytomics FC500.LMD"}
SPILL_KEYS = ("SPILL", "$SPILLOVER")


def _ids(records: list[dict]) -> list[str]:
    return [r["file"] for r in records]


def _as_oracle(events: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Our values, rounded to float32 where the oracle evidently did (ints above 2**24)."""
    exact = events.astype(np.float64)
    if events.dtype.kind == "u" and not np.array_equal(exact, truth):
        return events.astype(np.float32).astype(np.float64)
    return exact


def check_against_truth(events: np.ndarray, rec: dict) -> None:
    """Shape, column sums and the first and last two events as ``truth.json`` has them."""
    assert list(events.shape) == rec["shape"]
    first, last = np.array(rec["first"], dtype=np.float64), np.array(rec["last"], dtype=np.float64)
    np.testing.assert_array_equal(_as_oracle(events[:2], first), first)
    np.testing.assert_array_equal(_as_oracle(events[-2:], last), last)
    colsum = np.array(rec["colsum"], dtype=np.float64)
    ours = events.sum(axis=0, dtype=np.float64)
    if events.dtype.kind == "u" and not np.array_equal(ours, colsum):
        ours = events.astype(np.float32).sum(axis=0, dtype=np.float64)
    if events.dtype.kind == "u" and events.max(initial=0) < 2**24:
        np.testing.assert_array_equal(ours, colsum)  # exact for integers
    else:
        np.testing.assert_allclose(ours, colsum, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rec", RECORDS, ids=_ids(RECORDS))
def test_corpus_file(corpus_dir: Path, rec: dict) -> None:
    path = corpus_dir / rec["file"]
    if rec["status"] == "error":
        with pytest.raises(FcsFormatError) as err:
            read_fcs(path)
        assert str(path) in str(err.value)
        return
    if rec["status"] == "error-or-ok":
        try:
            fd = read_fcs(path)
        except FcsFormatError as err:
            assert str(path) in str(err)
            return
        assert fd.events.shape[1] == len(fd.channels)
        if "shape" in rec:
            check_against_truth(fd.events, rec)
        return
    fd = read_fcs(path)
    assert fd.events.shape[1] == len(fd.channels) == len(fd.markers)
    if rec["file"] in ORACLE_MISREAD:
        assert list(fd.events.shape) == rec["shape"]
        return
    check_against_truth(fd.events, rec)


@pytest.mark.parametrize("rec", [r for r in RECORDS if r["status"] == "ok"], ids=_ids([r for r in RECORDS if r["status"] == "ok"]))
def test_corpus_only_text(corpus_dir: Path, rec: dict) -> None:
    fd = read_fcs(corpus_dir / rec["file"], only_text=True)
    assert fd.events.shape == (0, rec["shape"][1])
    assert len(fd.channels) == rec["shape"][1]


def _spill_records() -> list[dict]:
    return [r for r in RECORDS if r["status"] == "ok"]


@pytest.mark.parametrize("rec", _spill_records(), ids=_ids(_spill_records()))
def test_corpus_spillover(corpus_dir: Path, rec: dict) -> None:
    fd = read_fcs(corpus_dir / rec["file"], only_text=True)
    kw = fd.keywords
    has_matrix_key = any(k in kw for k in SPILL_KEYS) or any(k.startswith("$DFC") for k in kw)
    if not has_matrix_key:
        assert fd.spillover is None
        return
    if fd.spillover is None:
        # allowed only when the file's own keyword is unusable, and then said so
        names_only = any(len(kw.get(k, "").split(",")) == int(kw.get(k, "0,").split(",")[0]) + 1 for k in SPILL_KEYS if k in kw)
        assert names_only or any("spillover ignored" in w for w in fd.extra["warnings"])
        return
    sp = fd.spillover
    n = len(sp.channels)
    assert sp.matrix.shape == (n, n) and n > 0
    assert set(sp.channels) <= set(fd.channels)
    assert np.all(np.isfinite(sp.matrix))


def test_corpus_spillover_sources(corpus_dir: Path) -> None:
    """Every source of the corpus parses: SPILL, names, 1-based indices (Accuri), $DFC (Beckman)."""
    cases = {
        "fcsparser-0.2.8/facs_diva_test.fcs": ("SPILL", 8),
        "cytoflow+cytoflow/Cytek NL-2000.fcs": ("$SPILLOVER", 22),
        "bpteague+cytoflow/Accuri - C6.fcs": ("$SPILLOVER", 8),
        "bpteague+cytoflow/Beckman Coulter - Cytomics FC500.LMD": ("$DFC", 2),
        "bpteague+cytoflow/System II listmode with extra info in bits D10-D15.LMD": ("$DFC", 4),
    }
    for name, (source, n) in cases.items():
        sp = read_fcs(corpus_dir / name, only_text=True).spillover
        assert sp is not None and sp.source == source and len(sp.channels) == n, name
    accuri = read_fcs(corpus_dir / "bpteague+cytoflow/Accuri - C6.fcs", only_text=True)
    assert accuri.spillover.channels[0] == accuri.channels[2]  # index "3" -> $P3N
    fc500 = read_fcs(corpus_dir / "bpteague+cytoflow/Beckman Coulter - Cytomics FC500.LMD", only_text=True)
    assert fc500.spillover.matrix[0, 1] == pytest.approx(0.112)  # $DFC1TO2 = 11.20 (%)
    assert fc500.spillover.matrix[1, 0] == pytest.approx(0.009)


def test_guava_muse_four_data_sets(corpus_dir: Path) -> None:
    path = corpus_dir / "fcsparser-0.2.8/Guava Muse.fcs"
    fd = read_fcs(path)
    assert fd.n_datasets == 4
    second = read_fcs(path, dataset=1)
    assert second.dataset == 1 and second.n_datasets == 4
    assert second.events.shape == (int(second.keywords["$TOT"]), len(second.channels))
    assert np.all(np.isfinite(second.events))
    last = read_fcs(path, dataset=3)
    assert last.events.shape[0] == int(last.keywords["$TOT"])
    with pytest.raises(FcsFormatError, match="data set 4 requested"):
        read_fcs(path, dataset=4)


@pytest.mark.parametrize("name", ["bpteague+cytoflow/Beckman Coulter - Gallios.LMD", "whitews+FlowIO/coulter.lmd"])
def test_beckman_lmd_two_data_sets(corpus_dir: Path, name: str) -> None:
    first = read_fcs(corpus_dir / name)
    second = read_fcs(corpus_dir / name, dataset=1)
    assert first.n_datasets == 2 and first.version == "FCS2.0" and second.version == "FCS3.0"
    assert first.events.shape[0] == second.events.shape[0]


def test_fc500_10_bit_agrees_with_its_fcs3_data_set(corpus_dir: Path) -> None:
    """The 10-bit FS/SS of data set 0 are data set 1's 20-bit values divided by 1024."""
    path = corpus_dir / "bpteague+cytoflow/Beckman Coulter - Cytomics FC500.LMD"
    low, high = read_fcs(path).events, read_fcs(path, dataset=1).events
    assert low.dtype == np.uint16 and low.max() <= 1023
    for j in (0, 1):  # FS, SS: linear in both data sets
        np.testing.assert_array_less(np.abs(high[:, j] // 1024 - low[:, j].astype(np.int64)), 2)


def test_header_only_file_reads_with_only_text(corpus_dir: Path) -> None:
    path = corpus_dir / "fcsparser-0.2.8/sample_header.fcs"
    with pytest.raises(FcsFormatError, match="HEADER and TEXT only"):
        read_fcs(path)
    fd = read_fcs(path, only_text=True)
    assert fd.events.shape == (0, 27) and fd.spillover is not None
