"""The FCS reader against small files crafted byte by byte, one quirk per test.

Every synthetic file is built by :func:`build_fcs` from known values, so the expected
events are exact; where flowio can read the same bytes it is checked as an independent peer.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.errors import FcsFormatError
from rescue_gpu.fcs import describe, inspect_many, parse_spillover, parse_text, read_fcs

OffsetsFn = Callable[[int, int], dict[str, tuple[int, int]]]


# --------------------------------------------------------------------------- builder


def pack_events(values: np.ndarray, kinds: Sequence[str], widths: Sequence[int], order: str) -> bytes:
    """Events as DATA bytes: ``kinds`` "u"/"f", ``widths`` in bytes, ``order`` "<"/">"."""
    n = values.shape[0]
    cols = []
    for j, (kind, width) in enumerate(zip(kinds, widths)):
        if width == 3:
            b = values[:, j].astype("<u4").view(np.uint8).reshape(n, 4)[:, :3]
            cols.append(b if order == "<" else b[:, ::-1])
        else:
            cols.append(values[:, j].astype(f"{order}{kind}{width}").view(np.uint8).reshape(n, width))
    return np.ascontiguousarray(np.hstack(cols)).tobytes() if cols else b""


def _text(keywords: dict[str, str], delim: bytes) -> bytes:
    d = delim.decode("latin-1")
    body = "".join(f"{k.replace(d, d + d)}{d}{v.replace(d, d + d)}{d}" for k, v in keywords.items())
    return (d + body).encode("latin-1")


def build_fcs(
    values: np.ndarray,
    *,
    version: str = "FCS3.1",
    delim: bytes = b"/",
    byteord: str = "1,2,3,4",
    datatype: str | None = "I",
    bits: Sequence[int] | None = None,
    ranges: Sequence[float | str] | None = None,
    names: Sequence[str] | None = None,
    keywords: dict[str, str] | None = None,
    offsets: OffsetsFn | None = None,
    nextdata: int = 0,
    tot: int | None = None,
    trailing: bytes = b"",
    data: bytes | None = None,
) -> bytes:
    """An FCS file (bytes) holding ``values`` (events x parameters).

    ``offsets(start, end)`` may return ``{"header": (s, e), "text": (s, e)}`` to write
    wrong DATA offsets on purpose; ``data`` replaces the packed DATA bytes.
    """
    n, p = values.shape
    kind = "f" if datatype in ("F", "D") else "u"
    bits = list(bits or [{"F": 32, "D": 64}.get(datatype or "I", 16)] * p)
    widths = [-(-b // 8) for b in bits]
    order = "<" if byteord.startswith("1") else ">"
    if data is None:
        data = pack_events(values, [kind] * p, widths, order)
    kw: dict[str, str] = {
        "$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$BEGINSTEXT": "0", "$ENDSTEXT": "0",
        "$BEGINDATA": "0" * 20, "$ENDDATA": "0" * 20, "$BYTEORD": byteord, "$MODE": "L",
        "$NEXTDATA": str(nextdata).zfill(20), "$PAR": str(p), "$TOT": str(n if tot is None else tot),
    }
    if datatype is not None:
        kw["$DATATYPE"] = datatype
    for i in range(p):
        kw[f"$P{i + 1}N"] = names[i] if names else f"CH{i + 1}"
        kw[f"$P{i + 1}B"] = str(bits[i])
        kw[f"$P{i + 1}E"] = "0,0"
        kw[f"$P{i + 1}R"] = str(ranges[i]) if ranges else str(2 ** bits[i] if kind == "u" else 262144)
    kw.update(keywords or {})
    text_len = len(_text(kw, delim))
    start, end = 58 + text_len, 58 + text_len + len(data) - 1
    where = (offsets or (lambda s, e: {}))(start, end)
    hs, he = where.get("header", (start, end))
    ts, te = where.get("text", (start, end))
    kw["$BEGINDATA"], kw["$ENDDATA"] = str(ts).zfill(20), str(te).zfill(20)
    text = _text(kw, delim)
    assert len(text) == text_len
    header = f"{version:<10}" + "".join(f"{v:>8d}" for v in (58, 57 + text_len, hs, he, 0, 0))
    return header.encode("ascii") + text + data + trailing


def write(tmp_path: Path, content: bytes, name: str = "x.fcs") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def flowio_events(path: Path) -> np.ndarray | None:
    """flowio's stored values, or None when flowio cannot read the file."""
    flowio = pytest.importorskip("flowio")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fd = flowio.FlowData(str(path))
            return np.asarray(fd.as_array(preprocess=False))
    except Exception:
        return None


def random_ints(n: int, p: int, high: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=(n, p), dtype=np.uint64)


# --------------------------------------------------------------------------- TEXT


def test_escaped_delimiters_in_values_and_keys(tmp_path: Path) -> None:
    vals = random_ints(5, 2, 1000)
    extra = {"$P1S": "CD3/CD4", "MY/KEY": "ends with/", "$COM": "a//b"}
    path = write(tmp_path, build_fcs(vals, keywords=extra))
    fd = read_fcs(path)
    assert fd.markers == ["CD3/CD4", ""]
    assert fd.keywords["MY/KEY"] == "ends with/"
    assert fd.keywords["$COM"] == "a//b"
    np.testing.assert_array_equal(fd.events, vals)


@pytest.mark.parametrize("delim", [b"/", b"\\", b"|", b"!", b"\x0c", b"*"])
def test_any_delimiter(tmp_path: Path, delim: bytes) -> None:
    vals = random_ints(7, 3, 1024)
    path = write(tmp_path, build_fcs(vals, delim=delim, keywords={"$P2S": "x" + delim.decode() + "y"}))
    fd = read_fcs(path)
    assert fd.markers[1] == "x" + delim.decode() + "y"
    np.testing.assert_array_equal(fd.events, vals)


def test_parse_text_keys_uppercased_and_stripped() -> None:
    kw = parse_text(b"/  $par/3/$p1n/FSC-A/key//x/v/")
    assert kw == {"$PAR": "3", "$P1N": "FSC-A", "KEY/X": "v"}


def test_parse_text_rejects_alphanumeric_delimiter() -> None:
    with pytest.raises(FcsFormatError, match="delimiter"):
        parse_text(b"a$PARa3a", path="f.fcs")


# --------------------------------------------------------------------------- byte order and widths


@pytest.mark.parametrize("byteord", ["1,2,3,4", "4,3,2,1", "1,2", "2,1"])
@pytest.mark.parametrize("datatype", ["I", "F", "D"])
def test_byte_orders(tmp_path: Path, byteord: str, datatype: str) -> None:
    if datatype == "I":
        vals = random_ints(50, 4, 65536)
    else:
        vals = np.random.default_rng(1).normal(size=(50, 4)) * 1e4
        vals = vals.astype(np.float32 if datatype == "F" else np.float64)
    version = "FCS2.0" if len(byteord) == 3 else "FCS3.0"
    path = write(tmp_path, build_fcs(vals, datatype=datatype, byteord=byteord, version=version))
    fd = read_fcs(path)
    assert fd.events.dtype == {"I": np.uint16, "F": np.float32, "D": np.float64}[datatype]
    assert fd.events.dtype.isnative
    np.testing.assert_array_equal(fd.events, vals)
    peer = flowio_events(path)
    if peer is not None:
        np.testing.assert_array_equal(peer, fd.events)


@pytest.mark.parametrize("byteord", ["1,2,3,4", "4,3,2,1"])
def test_24_bit_integers(tmp_path: Path, byteord: str) -> None:
    vals = random_ints(1000, 5, 2**24)
    vals[0] = 2**24 - 1
    path = write(tmp_path, build_fcs(vals, bits=[24] * 5, byteord=byteord, version="FCS3.0"))
    fd = read_fcs(path)
    assert fd.events.dtype == np.uint32
    np.testing.assert_array_equal(fd.events, vals)


def test_mixed_widths_with_masks(tmp_path: Path) -> None:
    bits, ranges = [8, 16, 32, 16, 24], [256, 1024, 2147483647, 65536, 262144]
    vals = np.stack([random_ints(300, 1, 2**b, seed=b)[:, 0] for b in bits], axis=1)
    path = write(tmp_path, build_fcs(vals, bits=bits, ranges=ranges, version="FCS3.0"))
    fd = read_fcs(path)
    assert fd.events.dtype == np.uint32
    masks = np.array([255, 1023, 2**31 - 1, 65535, 2**18 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(fd.events, vals & masks)


def test_mixed_widths_match_flowio(tmp_path: Path) -> None:
    bits = [8, 16, 32, 16]
    vals = np.stack([random_ints(200, 1, 2**b, seed=b)[:, 0] for b in bits], axis=1)
    path = write(tmp_path, build_fcs(vals, bits=bits, version="FCS3.0"))
    fd = read_fcs(path)
    np.testing.assert_array_equal(fd.events, vals)
    peer = flowio_events(path)
    if peer is not None:
        np.testing.assert_array_equal(peer, fd.events)


@pytest.mark.parametrize(("rng", "mask"), [(1024, 1023), (1000, 1023), (30000, 32767), (65536, 65535), (1, 65535)])
def test_range_bit_mask(tmp_path: Path, rng: int, mask: int) -> None:
    vals = random_ints(200, 2, 65536)
    path = write(tmp_path, build_fcs(vals, ranges=[rng, 65536]))
    fd = read_fcs(path)
    np.testing.assert_array_equal(fd.events[:, 0], vals[:, 0] & mask)
    np.testing.assert_array_equal(fd.events[:, 1], vals[:, 1])


def test_range_mask_matches_flowio(tmp_path: Path) -> None:
    vals = random_ints(200, 3, 65536)
    path = write(tmp_path, build_fcs(vals, ranges=[1024, 4096, 65536], version="FCS3.0"))
    peer = flowio_events(path)
    if peer is None:
        pytest.skip("flowio cannot read the file")
    np.testing.assert_array_equal(read_fcs(path).events, peer)


def test_10_bit_values_stored_in_16_bits(tmp_path: Path) -> None:
    vals = random_ints(100, 4, 2**16)
    path = write(tmp_path, build_fcs(vals, bits=[10] * 4, ranges=[1024] * 4, byteord="1,2", version="FCS2.0"))
    fd = read_fcs(path)
    assert fd.events.dtype == np.uint16
    np.testing.assert_array_equal(fd.events, vals & 1023)


def test_fcs32_per_parameter_datatype(tmp_path: Path) -> None:
    ints = random_ints(40, 2, 2**16)
    floats = np.random.default_rng(3).normal(size=(40, 1)).astype(np.float32)
    n = 40
    cols = np.hstack([ints[:, :1].astype("<u2").view(np.uint8).reshape(n, 2),
                      floats.astype("<f4").view(np.uint8).reshape(n, 4),
                      ints[:, 1:].astype("<u2").view(np.uint8).reshape(n, 2)])
    data = np.ascontiguousarray(cols).tobytes()
    vals = np.zeros((n, 3))
    content = build_fcs(vals, version="FCS3.2", bits=[16, 32, 16], data=data,
                        keywords={"$P2DATATYPE": "F"})
    fd = read_fcs(write(tmp_path, content))
    assert fd.events.dtype == np.float64
    np.testing.assert_array_equal(fd.events[:, 0], ints[:, 0])
    np.testing.assert_array_equal(fd.events[:, 1], floats[:, 0].astype(np.float64))
    np.testing.assert_array_equal(fd.events[:, 2], ints[:, 1])


def test_missing_datatype_inferred_for_16_bit(tmp_path: Path) -> None:
    vals = random_ints(30, 3, 4096)
    fd = read_fcs(write(tmp_path, build_fcs(vals, datatype=None, version="FCS2.0")))
    np.testing.assert_array_equal(fd.events, vals)


def test_missing_datatype_refused_for_32_bit(tmp_path: Path) -> None:
    vals = random_ints(30, 3, 4096)
    path = write(tmp_path, build_fcs(vals, datatype=None, bits=[32] * 3))
    with pytest.raises(FcsFormatError, match=r"\$DATATYPE is missing") as err:
        read_fcs(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- offsets


def test_header_offsets_zero_text_right(tmp_path: Path) -> None:
    vals = random_ints(20, 3, 1024)
    path = write(tmp_path, build_fcs(vals, offsets=lambda s, e: {"header": (0, 0)}))
    np.testing.assert_array_equal(read_fcs(path).events, vals)


def test_header_right_text_points_into_text(tmp_path: Path) -> None:
    vals = random_ints(20, 3, 1024)
    path = write(tmp_path, build_fcs(vals, offsets=lambda s, e: {"text": (s - 434, e - 434)}))
    np.testing.assert_array_equal(read_fcs(path).events, vals)


def test_text_right_header_wrong_length(tmp_path: Path) -> None:
    vals = random_ints(20, 3, 1024)
    content = build_fcs(vals, offsets=lambda s, e: {"header": (s, e + 700)}, trailing=b"\0" * 800)
    np.testing.assert_array_equal(read_fcs(write(tmp_path, content)).events, vals)


@pytest.mark.parametrize("slack", [1, -1])
def test_enddata_off_by_one(tmp_path: Path, slack: int) -> None:
    vals = random_ints(20, 3, 1024)
    content = build_fcs(vals, offsets=lambda s, e: {"header": (0, 0), "text": (s, e + slack)}, trailing=b"\0")
    np.testing.assert_array_equal(read_fcs(write(tmp_path, content)).events, vals)


def test_missing_tot_counts_events_from_data_length(tmp_path: Path) -> None:
    vals = random_ints(33, 2, 1024)
    content = build_fcs(vals, version="FCS2.0", keywords={"$TOT": " "})
    np.testing.assert_array_equal(read_fcs(write(tmp_path, content)).events, vals)


def test_zero_events(tmp_path: Path) -> None:
    vals = np.zeros((0, 3), dtype=np.uint64)
    content = build_fcs(vals, offsets=lambda s, e: {"header": (0, 0), "text": (0, 0)})
    fd = read_fcs(write(tmp_path, content))
    assert fd.events.shape == (0, 3)


# --------------------------------------------------------------------------- data sets


def two_datasets(a: np.ndarray, b: np.ndarray) -> bytes:
    first_len = len(build_fcs(a))
    return build_fcs(a, nextdata=first_len) + build_fcs(b, datatype="F", version="FCS3.0")


def test_nextdata_chain(tmp_path: Path) -> None:
    a = random_ints(10, 2, 1024)
    b = np.random.default_rng(2).normal(size=(7, 4)).astype(np.float32)
    path = write(tmp_path, two_datasets(a, b))
    first, second = read_fcs(path), read_fcs(path, dataset=1)
    assert first.n_datasets == second.n_datasets == 2
    np.testing.assert_array_equal(first.events, a)
    np.testing.assert_array_equal(second.events, b)
    assert second.dataset == 1 and second.version == "FCS3.0"


def test_dataset_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path, two_datasets(random_ints(3, 2, 9), np.ones((2, 2), np.float32)))
    with pytest.raises(FcsFormatError, match="data set 2 requested but the file holds 2"):
        read_fcs(path, dataset=2)


def test_nextdata_cycle_is_refused(tmp_path: Path) -> None:
    vals = random_ints(5, 2, 1024)
    first_len = len(build_fcs(vals))
    # data set 0 points forward to data set 1, which points back to data set 0
    content = build_fcs(vals, nextdata=first_len) + build_fcs(vals, nextdata=-first_len)
    path = write(tmp_path, content)
    with pytest.raises(FcsFormatError, match="points back to byte 0: a cycle") as err:
        read_fcs(path)
    assert str(path) in str(err.value)


def test_nextdata_outside_file(tmp_path: Path) -> None:
    vals = random_ints(5, 2, 1024)
    path = write(tmp_path, build_fcs(vals, nextdata=10**9))
    fd = read_fcs(path)
    assert fd.n_datasets == 1 and any("outside the file" in w for w in fd.extra["warnings"])
    with pytest.raises(FcsFormatError, match="past the end of the file"):
        read_fcs(path, dataset=1)


# --------------------------------------------------------------------------- refusals


def assert_refused(path: Path, pattern: str) -> FcsFormatError:
    with pytest.raises(FcsFormatError, match=pattern) as err:
        read_fcs(path)
    assert str(path) in str(err.value)
    return err.value


def test_ten_byte_file(tmp_path: Path) -> None:
    assert_refused(write(tmp_path, b"oi21j0(*&^"), "only 10 bytes")


def test_empty_file(tmp_path: Path) -> None:
    assert_refused(write(tmp_path, b""), "only 0 bytes")


def test_garbage(tmp_path: Path) -> None:
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert_refused(write(tmp_path, b"PK" + junk), "not an FCS file")


def test_garbage_header_offsets(tmp_path: Path) -> None:
    content = bytearray(build_fcs(random_ints(5, 2, 9)))
    content[10:18] = b"  12ab34"
    assert_refused(write(tmp_path, bytes(content)), "HEADER offset field 1 is not a number")


def test_unsupported_version(tmp_path: Path) -> None:
    content = b"FCS9.9" + build_fcs(random_ints(5, 2, 9))[6:]
    assert_refused(write(tmp_path, content), "unsupported FCS version")


def test_truncated_data(tmp_path: Path) -> None:
    content = build_fcs(random_ints(100, 4, 1024))
    assert_refused(write(tmp_path, content[:-50]), "truncated")


def test_truncated_text(tmp_path: Path) -> None:
    content = build_fcs(random_ints(100, 4, 1024))
    assert_refused(write(tmp_path, content[:100]), "truncated: TEXT ends")


def test_header_and_text_only(tmp_path: Path) -> None:
    vals = random_ints(100, 4, 1024)
    content = build_fcs(vals)
    text_end = int(content[18:26])
    path = write(tmp_path, content[: text_end + 1])
    assert_refused(path, "HEADER and TEXT only")
    fd = read_fcs(path, only_text=True)
    assert fd.events.shape == (0, 4) and fd.channels == ["CH1", "CH2", "CH3", "CH4"]


def test_tot_too_large(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, tot=11)), r"\$TOT=11 events need 44 bytes")


def test_unknown_datatype(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$DATATYPE": "Q"})), "unknown data type 'Q'")


def test_ascii_datatype_refused(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$DATATYPE": "A"})), "ASCII")


def test_histogram_mode_refused(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$MODE": "C"})), r"\$MODE 'C'")


def test_par_inconsistent_with_keywords(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$PAR": "3"})), r"\$P3B is missing")


def test_bad_byteord(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$BYTEORD": "3,4,1,2"})), "unsupported \\$BYTEORD")


def test_non_numeric_tot(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$TOT": "many"})), r"\$TOT is not a number")


def test_missing_file_is_fcs_error(tmp_path: Path) -> None:
    assert_refused(tmp_path / "absent.fcs", "cannot read the file")


# --------------------------------------------------------------------------- only_text, spillover, inspect


def test_only_text_fills_names_and_spillover(tmp_path: Path) -> None:
    vals = random_ints(10, 3, 1024)
    spill = "2,A,C,1,0.1,0.2,1"
    path = write(tmp_path, build_fcs(vals, names=["A", "B", "C"], keywords={"$SPILLOVER": spill, "$P2S": "CD3"}))
    fd = read_fcs(path, only_text=True)
    assert fd.events.shape == (0, 3)
    assert fd.channels == ["A", "B", "C"] and fd.markers == ["", "CD3", ""]
    assert fd.spillover is not None and fd.spillover.channels == ("A", "C")
    np.testing.assert_array_equal(fd.spillover.matrix, [[1, 0.1], [0.2, 1]])


def test_spillover_index_based() -> None:
    sp = parse_spillover({"$SPILLOVER": "2,3,1,1,0.5,0,1"}, ["FSC", "SSC", "FL1"])
    assert sp is not None and sp.channels == ("FL1", "FSC") and sp.source == "$SPILLOVER"


def test_spillover_names_only_is_none() -> None:
    assert parse_spillover({"$SPILLOVER": "2,FL1,FL2"}, ["FL1", "FL2"]) is None


def test_spillover_malformed() -> None:
    with pytest.raises(FcsFormatError, match="2 names \\+ 4 values expected"):
        parse_spillover({"SPILL": "2,FL1,FL2,1,0,0"}, ["FL1", "FL2"], path="s.fcs")
    with pytest.raises(FcsFormatError, match="absent from"):
        parse_spillover({"SPILL": "1,FLX,1"}, ["FL1"], path="s.fcs")


def test_spillover_comp_maps_to_fluorescence() -> None:
    sp = parse_spillover({"$COMP": "2,1,0.1,0.2,1"}, ["FSC-H", "SSC-H", "FL1-H", "FL2-H", "Time"])
    assert sp is not None and sp.channels == ("FL1-H", "FL2-H") and sp.source == "$COMP"
    assert sp.matrix[0, 1] == pytest.approx(0.1)


def test_spillover_dfc_percent() -> None:
    kw = {"$DFC1TO2": "11.2", "$DFC2TO1": "0.9", "$DFC3TO1": "5.0"}
    sp = parse_spillover(kw, ["FS Lin", "SS Lin", "FL1 Log", "FL2 Log"])
    assert sp is not None and sp.channels == ("FL1 Log", "FL2 Log") and sp.source == "$DFC"
    np.testing.assert_allclose(sp.matrix, [[1, 0.112], [0.009, 1]])


def test_bad_spillover_does_not_refuse_the_file(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    fd = read_fcs(write(tmp_path, build_fcs(vals, keywords={"SPILL": "1,NOPE,1"})))
    assert fd.spillover is None
    assert any("spillover ignored" in w for w in fd.extra["warnings"])
    np.testing.assert_array_equal(fd.events, vals)


def test_describe_and_inspect_many(tmp_path: Path) -> None:
    good = write(tmp_path, build_fcs(random_ints(10, 2, 1024), names=["FSC-A", "CD3"]), "good.fcs")
    bad = write(tmp_path, b"0123456789", "bad.fcs")
    text = describe(good)
    assert "FCS3.1" in text and "events:     10" in text and "FSC-A" in text and "spillover:  none" in text
    out, refused = inspect_many([good, bad])
    assert refused == 1 and "REFUSED: file has only 10 bytes" in out and str(bad) in out


# --------------------------------------------------------------------------- hostile input (issue 11, part 1)


def with_keyword_first(content: bytes, key: str, value: str) -> bytes:
    """``content`` (from :func:`build_fcs`, '/' delimiter) with ``/key/value`` put at the start of
    its TEXT; the HEADER and the 20-digit ``$BEGINDATA``/``$ENDDATA`` are moved to match."""
    extra = f"{key}/{value}/".encode("utf-8")
    t0, t1 = int(content[10:18]), int(content[18:26])
    text = content[t0 : t1 + 1]
    for k in (b"$BEGINDATA", b"$ENDDATA"):
        old = text[text.index(k + b"/") + len(k) + 1 :][:20]
        text = text.replace(k + b"/" + old, k + b"/" + str(int(old) + len(extra)).zfill(20).encode())
    text = text[:1] + extra + text[1:]
    fields = [int(content[10 + 8 * i : 18 + 8 * i]) for i in range(6)]
    fields[1] += len(extra)
    fields[2:4] = [f + len(extra) if f else 0 for f in fields[2:4]]
    header = content[:10] + "".join(f"{v:>8d}" for v in fields).encode()
    return header + text + content[t1 + 1 :]


def build_utf8(values: np.ndarray, utf8: dict[str, str], **kwargs) -> bytes:
    """:func:`build_fcs` with the keywords ``utf8`` written in UTF-8 (``build_fcs`` writes Latin-1)."""
    holders = {k: "#" * len(v.encode("utf-8")) for k, v in utf8.items()}
    content = build_fcs(values, keywords={**kwargs.pop("keywords", {}), **holders}, **kwargs)
    for key, value in utf8.items():
        old = f"/{key}/{holders[key]}/".encode()
        assert content.count(old) == 1
        content = content.replace(old, f"/{key}/{value}/".encode("utf-8"))
    return content


# item 1: numbers in keywords are plain ASCII


@pytest.mark.parametrize("name", ["\u00b3", "\u0663", "1\u00b3", "\uff13"])
def test_spillover_index_with_unicode_digit_is_format_error(name: str) -> None:
    """'³'.isdigit() is true but int('³') fails; int('٣') is 3: neither is a channel index."""
    with pytest.raises(FcsFormatError, match="absent from") as err:
        parse_spillover({"$SPILLOVER": f"2,{name},FL1,1,0,0,1"}, ["FSC", "SSC", "FL1"], path="s.fcs")
    assert "s.fcs" in str(err.value)


@pytest.mark.parametrize("value", ["\u0661", "nan", "inf", "1e999", "1_0", "0x1"])
def test_spillover_number_not_plain_ascii_is_format_error(value: str) -> None:
    with pytest.raises(FcsFormatError, match=r"SPILL holds .* not a finite number") as err:
        parse_spillover({"SPILL": f"2,FL1,FL2,1,{value},0,1"}, ["FL1", "FL2"], path="s.fcs")
    assert "s.fcs" in str(err.value)


@pytest.mark.parametrize("count", ["\u00b2", "\u0662", "2_"])
def test_spillover_count_not_plain_ascii_is_format_error(count: str) -> None:
    with pytest.raises(FcsFormatError, match="does not start with a channel count"):
        parse_spillover({"$SPILLOVER": f"{count},FL1,FL2,1,0,0,1"}, ["FL1", "FL2"])
    with pytest.raises(FcsFormatError, match="does not start with a channel count"):
        parse_spillover({"$COMP": f"{count},1,0,0,1"}, ["FL1", "FL2"])


def test_spillover_repeated_channel_is_format_error() -> None:
    with pytest.raises(FcsFormatError, match="more than once"):
        parse_spillover({"$SPILLOVER": "2,FL1,fl1,1,0,0,1"}, ["FL1", "FL2"])


def test_dfc_with_non_ascii_index_is_ignored() -> None:
    """'$DFC١TO2' (Arabic-Indic one) is not a $DFCiTOj keyword: \\d would have matched it."""
    assert parse_spillover({"$DFC\u0661TO2": "10"}, ["FL1 Log", "FL2 Log"]) is None


def test_bit_flipped_spillover_name_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    """The fuzz finding: the top bit of the byte '3' of an index-based name makes it '³'."""
    vals = random_ints(10, 3, 1024)
    content = build_fcs(vals, names=["FSC", "SSC", "FL1"], keywords={"$SPILLOVER": "2,3,1,1,0,0,1"})
    flipped = content.replace(b"$SPILLOVER/2,3,", b"$SPILLOVER/2,\xb3,")
    assert len(flipped) == len(content) and flipped != content
    fd = read_fcs(write(tmp_path, flipped))
    assert fd.spillover is None and any("spillover ignored" in w for w in fd.extra["warnings"])
    np.testing.assert_array_equal(fd.events, vals)
    assert "REFUSED" not in describe(tmp_path / "x.fcs")


@pytest.mark.parametrize(("key", "value"), [("$TOT", "\u0661\u0660"), ("$TOT", "1_0"), ("$PAR", "\u0662"),
                                            ("$P1B", "\uff11\uff16"), ("$TOT", "10\u00b3"), ("$BEGINSTEXT", "\u00b3")])
def test_keyword_numbers_must_be_plain_ascii(tmp_path: Path, key: str, value: str) -> None:
    """int('١٠') == int('1_0') == 10 in Python; an FCS file must spell numbers in ASCII."""
    vals = random_ints(10, 2, 1024)
    err = assert_refused(write(tmp_path, build_utf8(vals, {key: value})), rf"\{key} is not a number")
    assert value in str(err)


def test_nextdata_not_plain_ascii_ends_the_chain_with_a_warning(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    path = write(tmp_path, build_utf8(vals, {"$NEXTDATA": "\u00b3"}))
    fd = read_fcs(path)
    np.testing.assert_array_equal(fd.events, vals)
    assert any("$NEXTDATA of data set 0 is not a number: '\u00b3'" in w for w in fd.extra["warnings"])
    with pytest.raises(FcsFormatError, match="data set 1 cannot be reached"):
        read_fcs(path, dataset=1)


def test_fractional_integer_keyword_is_refused(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$TOT": "10.5"})), r"\$TOT is not an integer")


def test_integral_float_spelling_is_accepted(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    np.testing.assert_array_equal(read_fcs(write(tmp_path, build_fcs(vals, keywords={"$TOT": "1E1"}))).events, vals)


@pytest.mark.parametrize("rng", ["\u0661\u0660\u0662\u0664", "nan", "1e999", "1_024"])
def test_range_not_plain_ascii_keeps_every_bit(tmp_path: Path, rng: str) -> None:
    vals = random_ints(50, 2, 65536)
    content = build_utf8(vals, {"$P1R": rng}) if not rng.isascii() else build_fcs(vals, ranges=[rng, 65536])
    fd = read_fcs(write(tmp_path, content))
    np.testing.assert_array_equal(fd.events, vals)
    assert np.isnan(fd.ranges()[0]) and fd.ranges()[1] == 65536


def test_amplification_and_gain_not_plain_ascii_read_as_defaults(tmp_path: Path) -> None:
    vals = random_ints(5, 2, 1024)
    fd = read_fcs(write(tmp_path, build_utf8(vals, {"$P1E": "\u0664,1", "$P1G": "\u0662"}, keywords={"$P2G": "2.5"})))
    assert fd.amplification()[0] == (0.0, 0.0)
    np.testing.assert_array_equal(fd.gains(), [1.0, 2.5])


# item 2: sizes are checked before anything is built or allocated


@pytest.mark.parametrize("par", ["99999999", "999999999999", "9" * 30])
def test_huge_par_without_datatype_is_refused_at_once(tmp_path: Path, par: str) -> None:
    """Once: > 3 GB in 60 s building per-parameter lists over range(1, $PAR + 1)."""
    vals = random_ints(10, 2, 1024)
    path = write(tmp_path, build_fcs(vals, datatype=None, keywords={"$PAR": par}))
    err = assert_refused(path, rf"\$PAR is {par} but the TEXT holds only \d+ keywords")
    assert "every parameter needs its own" in str(err)


def test_par_larger_than_its_pnb_keywords_names_the_missing_ones(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    path = write(tmp_path, build_fcs(vals, keywords={"$PAR": "9"}))
    assert_refused(path, r"\$P3B, \$P4B, \$P5B, \$P6B, \$P7B and 2 more are missing: \$PAR says 9 parameters")


@pytest.mark.parametrize("tot", ["1" + "0" * 30, str(2**63), "4294967296"])
def test_huge_tot_is_refused_without_allocating(tmp_path: Path, tot: str) -> None:
    import tracemalloc

    vals = random_ints(10, 2, 1024)
    path = write(tmp_path, build_fcs(vals, keywords={"$TOT": tot}))
    tracemalloc.start()
    try:
        assert_refused(path, "no DATA segment fits|truncated")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_pnb_is_refused(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    assert_refused(write(tmp_path, build_fcs(vals, keywords={"$P1B": "99999999999"})), r"\$P1B is 99999999999")


# item 3: only the data set asked for is parsed


def stacked_headers(count: int, text_pad: int) -> bytes:
    """``count`` HEADERs 58 bytes apart, each ``$NEXTDATA`` 58 on, all sharing one padded TEXT."""
    vals = random_ints(20, 2, 1024)
    one = build_fcs(vals, nextdata=58, keywords={"$COM": "x" * text_pad}, offsets=lambda s, e: {"header": (0, 0)})
    t0, t1 = int(one[10:18]), int(one[18:26])
    shift = 58 * (count - 1)
    text = one[t0 : t1 + 1]
    for k in (b"$BEGINDATA", b"$ENDDATA"):  # data set 0's DATA moves by shift
        old = text[text.index(k + b"/") + len(k) + 1 :][:20]
        text = text.replace(k + b"/" + old, k + b"/" + str(int(old) + shift).zfill(20).encode())
    headers = [one[:10] + "".join(f"{v:>8d}" for v in (t0 + shift - 58 * k, t1 + shift - 58 * k, 0, 0, 0, 0)).encode()
               for k in range(count)]
    return b"".join(headers) + text + one[t1 + 1 :]


def test_stacked_headers_sharing_one_text_are_not_all_parsed(tmp_path: Path) -> None:
    """Once: 46 s and 3.95 GB for data set 0 of 10,000 HEADERs sharing a 400 kB TEXT."""
    import time

    path = write(tmp_path, stacked_headers(10_000, 400_000))
    t0 = time.perf_counter()
    fd = read_fcs(path)
    assert time.perf_counter() - t0 < 2.0
    assert fd.n_datasets == 1 and fd.events.shape == (20, 2)
    assert any("$NEXTDATA of data set 0 is 58" in w and "chain ends at data set 0" in w for w in fd.extra["warnings"])
    with pytest.raises(FcsFormatError, match="data set 1 cannot be reached"):
        read_fcs(path, dataset=1)


def chain_of(vals: np.ndarray, copies: int, last: int | None = None) -> tuple[bytes, int]:
    """``copies`` equal data sets chained by ``$NEXTDATA``; the last link is ``last`` (0: none)."""
    length = len(build_fcs(vals, nextdata=1))
    sets = [build_fcs(vals, nextdata=length) for _ in range(copies - 1)]
    sets.append(build_fcs(vals, nextdata=0 if last is None else last))
    return b"".join(sets), length


def test_long_chain_reads_any_data_set(tmp_path: Path) -> None:
    vals = random_ints(7, 3, 1024)
    content, _ = chain_of(vals, 50)
    path = write(tmp_path, content)
    for k in (0, 17, 49):
        fd = read_fcs(path, dataset=k)
        assert fd.n_datasets == 50 and fd.dataset == k
        np.testing.assert_array_equal(fd.events, vals)
    with pytest.raises(FcsFormatError, match="data set 50 requested but the file holds 50"):
        read_fcs(path, dataset=50)


def test_chain_loop_to_an_earlier_data_set_is_refused(tmp_path: Path) -> None:
    vals = random_ints(7, 3, 1024)
    length = len(build_fcs(vals, nextdata=1))
    content, _ = chain_of(vals, 3, last=-length)  # data set 2 points back to data set 1
    assert_refused(write(tmp_path, content), r"\$NEXTDATA of data set 2 points back to byte \d+: a cycle \(data set 1")


def test_chain_pointing_back_into_a_text_ends_with_a_warning(tmp_path: Path) -> None:
    vals = random_ints(7, 3, 1024)
    length = len(build_fcs(vals, nextdata=1))
    content, _ = chain_of(vals, 3, last=-2 * length + 100)  # into data set 0's TEXT
    path = write(tmp_path, content)
    fd = read_fcs(path, dataset=1)
    assert fd.n_datasets == 3 and any("not past the HEADER and TEXT already read" in w for w in fd.extra["warnings"])
    np.testing.assert_array_equal(fd.events, vals)


def test_only_the_requested_data_set_keeps_its_keywords(tmp_path: Path) -> None:
    a = random_ints(10, 2, 1024)
    b = np.random.default_rng(2).normal(size=(7, 4)).astype(np.float32)
    fd = read_fcs(write(tmp_path, two_datasets(a, b)), dataset=1)
    assert fd.keywords["$PAR"] == "4" and fd.keywords["$DATATYPE"] == "F"


def test_broken_link_after_the_requested_data_set_is_a_warning(tmp_path: Path) -> None:
    """A data set after the one read that is not FCS ends the chain; the ones before are intact."""
    vals = random_ints(5, 2, 1024)
    first = build_fcs(vals, nextdata=len(build_fcs(vals)))
    path = write(tmp_path, first + b"NOTFCS" + b"\0" * 100)
    fd = read_fcs(path)
    assert fd.n_datasets == 1
    assert any("data set 1 (at byte" in w and "not an FCS file" in w for w in fd.extra["warnings"])
    np.testing.assert_array_equal(fd.events, vals)
    with pytest.raises(FcsFormatError, match="data set 1 cannot be reached"):
        read_fcs(path, dataset=1)


# item 4: a keyword written twice must agree with itself


def test_conflicting_duplicate_datatype_is_refused(tmp_path: Path) -> None:
    """Once: '/$DATATYPE/I' before a float file's TEXT read it as uint32 garbage."""
    vals = np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32)
    content = with_keyword_first(build_fcs(vals, datatype="F"), "$DATATYPE", "I")
    err = assert_refused(write(tmp_path, content), r"keyword \$DATATYPE is given twice with different values, 'I' and 'F'")
    assert "re-export" in str(err)


def test_identical_duplicate_keyword_is_fine(tmp_path: Path) -> None:
    vals = np.random.default_rng(1).normal(size=(30, 3)).astype(np.float32)
    for value in ("F", " F "):
        content = with_keyword_first(build_fcs(vals, datatype="F"), "$DATATYPE", value)
        np.testing.assert_array_equal(read_fcs(write(tmp_path, content)).events, vals)


def test_duplicate_keys_differing_in_case_conflict() -> None:
    with pytest.raises(FcsFormatError, match=r"\$P1N is given twice with different values, 'A' and 'B'"):
        parse_text(b"/$P1N/A/$p1n/B/", path="f.fcs")
    assert parse_text(b"/$P1N/A/ $p1n /A/") == {"$P1N": "A"}


def test_supplemental_text_contradicting_the_primary_is_refused(tmp_path: Path) -> None:
    vals = random_ints(10, 2, 1024)
    pad = {"$BEGINSTEXT": "0" * 10, "$ENDSTEXT": "0" * 10}
    supplemental = b"/$DATATYPE/F/$COM/extra/"
    start = len(build_fcs(vals, keywords=pad))
    where = {"$BEGINSTEXT": str(start).zfill(10), "$ENDSTEXT": str(start + len(supplemental) - 1).zfill(10)}
    path = write(tmp_path, build_fcs(vals, keywords=where, trailing=supplemental))
    assert_refused(path, r"\$DATATYPE is given twice with different values, 'I' and 'F' \(in the TEXT and in the supplemental TEXT\)")
    same = build_fcs(vals, keywords=where, trailing=supplemental.replace(b"/F/", b"/I/"))
    fd = read_fcs(write(tmp_path, same, "same.fcs"))
    assert fd.keywords["$COM"] == "extra"
    np.testing.assert_array_equal(fd.events, vals)


# item 5: $NEXTDATA into the HEADER


@pytest.mark.parametrize("nextdata", [1, 2, 57])
def test_nextdata_into_the_header_reads_data_set_0_with_a_warning(tmp_path: Path, nextdata: int) -> None:
    """Once: "not an FCS file: it starts with b'S3.1  '" for an intact data set 0."""
    vals = random_ints(5, 2, 1024)
    path = write(tmp_path, build_fcs(vals, nextdata=nextdata))
    fd = read_fcs(path)
    np.testing.assert_array_equal(fd.events, vals)
    assert fd.n_datasets == 1
    assert any(f"$NEXTDATA of data set 0 is {nextdata}, which points into that data set's own HEADER" in w
               for w in fd.extra["warnings"])
    with pytest.raises(FcsFormatError, match="own HEADER") as err:
        read_fcs(path, dataset=1)
    assert "not an FCS file" not in str(err.value)
    assert "warning:    $NEXTDATA of data set 0" in describe(path)


def test_nextdata_into_its_own_text_reads_data_set_0_with_a_warning(tmp_path: Path) -> None:
    vals = random_ints(5, 2, 1024)
    fd = read_fcs(write(tmp_path, build_fcs(vals, nextdata=100)))
    np.testing.assert_array_equal(fd.events, vals)
    assert any("is 100, which points to byte 100, not past the HEADER and TEXT" in w for w in fd.extra["warnings"])


def test_negative_nextdata_before_the_file_is_a_warning(tmp_path: Path) -> None:
    vals = random_ints(5, 2, 1024)
    fd = read_fcs(write(tmp_path, build_fcs(vals, nextdata=-5)))
    assert any("outside the file: byte -5 is before its start" in w for w in fd.extra["warnings"])


# item 6: paths that are not readable files


def test_directory_is_refused_as_a_directory(tmp_path: Path) -> None:
    err = assert_refused(tmp_path, "is a directory, not an FCS file")
    assert "IsADirectoryError" not in str(err) and "pass the FCS files inside it" in str(err)


def test_missing_file_says_it_does_not_exist(tmp_path: Path) -> None:
    assert_refused(tmp_path / "absent.fcs", "cannot read the file: file not found; check the path")


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root reads files whatever their permissions")
def test_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    path = write(tmp_path, build_fcs(random_ints(5, 2, 1024)))
    path.chmod(0)
    try:
        assert_refused(path, "permission denied")
    finally:
        path.chmod(0o600)


def test_inspect_many_reports_a_directory_and_goes_on(tmp_path: Path) -> None:
    good = write(tmp_path, build_fcs(random_ints(10, 2, 1024)), "good.fcs")
    out, refused = inspect_many([tmp_path, good])
    assert refused == 1 and "REFUSED: is a directory" in out and "events:     10" in out


# item 7: one masking rule for integer columns, mixed file or not


def test_mixed_file_masks_integer_columns_like_a_uniform_file(tmp_path: Path) -> None:
    """Once: integer columns of a $PnDATATYPE file were not masked (output float64)."""
    n = 60
    ints = random_ints(n, 2, 2**16, seed=5)  # high bits set, $PnR 1024 and 4096 drop them
    floats = np.random.default_rng(3).normal(size=(n, 1)).astype(np.float32)
    ranges = [1024, 262144, 4096]
    cols = np.hstack([ints[:, :1].astype("<u2").view(np.uint8).reshape(n, 2),
                      floats.astype("<f4").view(np.uint8).reshape(n, 4),
                      ints[:, 1:].astype("<u2").view(np.uint8).reshape(n, 2)])
    mixed = build_fcs(np.zeros((n, 3)), version="FCS3.2", bits=[16, 32, 16], ranges=ranges,
                      data=np.ascontiguousarray(cols).tobytes(), keywords={"$P2DATATYPE": "F"})
    uniform = build_fcs(ints, bits=[16, 16], ranges=[1024, 4096])
    got = read_fcs(write(tmp_path, mixed, "mixed.fcs")).events
    ref = read_fcs(write(tmp_path, uniform, "uniform.fcs")).events
    assert got.dtype == np.float64 and ref.dtype == np.uint16
    np.testing.assert_array_equal(got[:, [0, 2]], ref.astype(np.float64))
    np.testing.assert_array_equal(ref, ints & np.array([1023, 4095], dtype=np.uint64))
    np.testing.assert_array_equal(got[:, 1], floats[:, 0].astype(np.float64))


def test_mixed_file_masks_24_bit_and_8_bit_columns(tmp_path: Path) -> None:
    n = 40
    a = random_ints(n, 1, 2**24, seed=1)[:, 0]
    b = random_ints(n, 1, 2**8, seed=2)[:, 0]
    f = np.random.default_rng(4).normal(size=n).astype(np.float32)
    cols = np.hstack([a.astype("<u4").view(np.uint8).reshape(n, 4)[:, :3], b.astype(np.uint8).reshape(n, 1),
                      f.astype("<f4").view(np.uint8).reshape(n, 4)])
    content = build_fcs(np.zeros((n, 3)), version="FCS3.2", bits=[24, 8, 32], ranges=[2**20, 16, 262144],
                        data=np.ascontiguousarray(cols).tobytes(), keywords={"$P3DATATYPE": "F"})
    got = read_fcs(write(tmp_path, content)).events
    np.testing.assert_array_equal(got[:, 0], (a & (2**20 - 1)).astype(np.float64))
    np.testing.assert_array_equal(got[:, 1], (b & 15).astype(np.float64))


def test_mixed_file_refuses_64_bit_integers_float64_cannot_hold(tmp_path: Path) -> None:
    n = 4
    big = np.array([1, 2, 3, 2**60 + 1], dtype=np.uint64)
    f = np.ones(n, dtype="<f8")
    cols = np.hstack([big.astype("<u8").view(np.uint8).reshape(n, 8), f.view(np.uint8).reshape(n, 8)])
    content = build_fcs(np.zeros((n, 2)), version="FCS3.2", bits=[64, 64], ranges=[2**63, 262144],
                        data=np.ascontiguousarray(cols).tobytes(), keywords={"$P2DATATYPE": "D"})
    assert_refused(write(tmp_path, content), "above 2\\*\\*53 .* cannot be returned exactly as float64")
