"""Read FCS 2.0, 3.0, 3.1 and 3.2 files into :class:`FcsData`.

The reader returns the *stored* values: integers masked to the bits their ``$PnR``
range needs, floats as written, with no ``$PnE``/``$PnG`` scaling. It is tolerant of the
known quirks of real cytometers (HEADER and TEXT offsets that disagree, ``$ENDDATA`` off
by one, offsets of 0 in the HEADER, keys padded with spaces, ``$PnB`` not a multiple of 8)
and refuses everything else with an :class:`~rescue_gpu.errors.FcsFormatError` that names
the file and the problem, never with wrong numbers, a crash or a hang.

Hostile input is bounded by the file's size: every number in a keyword is parsed as plain
ASCII (:mod:`.numbers`); ``$PAR`` is checked against the keywords the TEXT holds before any
per-parameter work, and ``$TOT`` x bytes per event against the DATA segment and the file
before anything is allocated; a keyword written twice with different values is refused.
Of a ``$NEXTDATA`` chain only the requested data set is parsed in full; the others are
tokenised only to follow the chain, each must start after every HEADER and TEXT already
seen (so no byte of TEXT is read twice), and a link that points back to the start of a
data set already seen (a loop) is refused. A link that points outside the file, into a
HEADER or TEXT already seen, or at something that is not a data set ends the chain with a
warning: the data sets before it are read as usual.

Decoding is vectorised: uniform 8/16/32/64-bit layouts are read straight into the output
array (one copy of the DATA segment in memory, masked and byte-swapped in place); 24-bit
and mixed-width layouts are assembled column by column from chunks of the file, each
integer column masked to its ``$PnR`` bits exactly as in a uniform file.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from ..errors import FcsFormatError
from .numbers import ascii_float_or_none, ascii_int
from .spillover import parse_spillover
from .types import FcsData, Spillover

__all__ = ["read_fcs", "parse_text", "check_readable"]

HEADER_BYTES = 58
_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")
_BYTEORDERS = {"1,2,3,4": "<", "1,2": "<", "4,3,2,1": ">", "2,1": ">", "1": "<"}
_CHUNK_BYTES = 1 << 23  # 8 MiB of DATA per chunk on the column-by-column path
_MAX_DATASETS = 10_000
_EXACT_IN_FLOAT64 = 1 << 53

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class _Header:
    """The fixed 58-byte HEADER of one data set; offsets relative to its start."""

    version: str
    text: tuple[int, int]
    data: tuple[int, int]
    analysis: tuple[int, int]


@dataclass
class _Dataset:
    """One data set's location in the file and its parsed TEXT."""

    base: int
    header: _Header
    keywords: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    @property
    def end_of_text(self) -> int:
        """Absolute offset of the last byte of its HEADER and primary TEXT."""
        return self.base + max(HEADER_BYTES - 1, self.header.text[1])


@dataclass(frozen=True)
class _Layout:
    """How one event is laid out in DATA."""

    kinds: tuple[str, ...]  # "u" or "f" per parameter
    widths: tuple[int, ...]  # stored bytes per parameter
    masks: tuple[int, ...]  # bit mask per integer parameter (0 for floats)
    order: str  # "<" or ">"

    @property
    def event_bytes(self) -> int:
        """Bytes per event."""
        return sum(self.widths)

    @property
    def out_dtype(self) -> np.dtype:
        """Native dtype of the decoded array (float64 for mixed integer/float layouts)."""
        if all(k == "u" for k in self.kinds):
            itemsize = {1: 1, 2: 2, 3: 4, 4: 4}.get(max(self.widths), 8)
            return np.dtype(f"u{itemsize}")
        if all(k == "f" for k in self.kinds) and max(self.widths) == 4:
            return np.dtype("f4")
        return np.dtype("f8")

    @property
    def uniform(self) -> bool:
        """True when every parameter shares one kind and a numpy-native width."""
        return len(set(zip(self.kinds, self.widths))) == 1 and self.widths[0] in (1, 2, 4, 8)


# --------------------------------------------------------------------------- opening


def check_readable(path: PathLike) -> None:
    """Refuse, with a clear message, a path that is not a readable regular file.

    Parameters
    ----------
    path
        The path given as an FCS file.

    Raises
    ------
    FcsFormatError
        When ``path`` does not exist, is a directory or another non-regular file (a FIFO
        or a device, which could block a read forever), or cannot be opened for reading.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FcsFormatError(path, "cannot read the file: file not found; check the path") from None
    except PermissionError:
        raise FcsFormatError(path, "cannot read the file: permission denied on a directory of its path") from None
    except OSError as exc:
        raise FcsFormatError(path, f"cannot read the file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FcsFormatError(path, "is a directory, not an FCS file: pass the FCS files inside it "
                                   "(e.g. DIR/*.fcs) instead of the directory")
    if not stat.S_ISREG(st.st_mode):
        raise FcsFormatError(path, "is not a regular file (a FIFO, socket or device): copy the FCS file "
                                   "to disk and pass that path")
    if not os.access(path, os.R_OK):
        raise FcsFormatError(path, "cannot read the file: permission denied; check its permissions "
                                   "(the user running rescue needs read access)")


def _open(path: str) -> BinaryIO:
    """Open ``path`` for reading after :func:`check_readable`; OS errors become FcsFormatError."""
    check_readable(path)
    try:
        return open(path, "rb")
    except PermissionError:
        raise FcsFormatError(path, "cannot read the file: permission denied; check its permissions") from None
    except OSError as exc:
        raise FcsFormatError(path, f"cannot read the file: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- HEADER


def _parse_header(raw: bytes, path: PathLike) -> _Header:
    """Parse the 58 HEADER bytes (version and three offset pairs)."""
    if len(raw) < HEADER_BYTES:
        raise FcsFormatError(path, f"only {len(raw)} bytes where a 58-byte FCS HEADER is required")
    version = raw[:6].decode("latin-1")
    if not version.startswith("FCS"):
        raise FcsFormatError(path, f"not an FCS file: it starts with {raw[:6]!r}, not 'FCSx.y'")
    if version not in _VERSIONS:
        raise FcsFormatError(path, f"unsupported FCS version {version!r} (2.0, 3.0, 3.1, 3.2 are)")
    offsets = []
    for i in range(6):
        field_ = raw[10 + 8 * i : 18 + 8 * i].strip()
        if field_ and not field_.isdigit():  # bytes.isdigit() is ASCII-only
            raise FcsFormatError(path, f"HEADER offset field {i + 1} is not a number: {field_!r}")
        offsets.append(int(field_ or 0))
    return _Header(version, (offsets[0], offsets[1]), (offsets[2], offsets[3]), (offsets[4], offsets[5]))


# --------------------------------------------------------------------------- TEXT


def _decode(token: bytes) -> str:
    try:
        return token.decode("utf-8")
    except UnicodeDecodeError:
        return token.decode("latin-1")


def split_tokens(body: bytes, delim: bytes) -> list[bytes]:
    """Split on single delimiters; a run of 2k (+1) delimiters is k literal ones (+ a split)."""
    pieces = re.split(b"(" + re.escape(delim) + b"+)", body)
    tokens: list[bytes] = []
    cur = bytearray()
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            cur += piece
            continue
        cur += delim * (len(piece) // 2)
        if len(piece) % 2:
            tokens.append(bytes(cur))
            cur = bytearray()
    if cur.strip(b" \x00\r\n\t"):
        tokens.append(bytes(cur))
    return tokens


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _add_keyword(keywords: dict[str, str], key: str, value: str, path: PathLike | None, where: str) -> None:
    """Add ``key`` unless present; a repeat with a different value is an error."""
    old = keywords.get(key)
    if old is None:
        keywords[key] = value
    elif old.strip() != value.strip():
        raise FcsFormatError(path, f"keyword {key} is given twice with different values, {_short(old)} and "
                                   f"{_short(value)} ({where}): the file is inconsistent and it is not known "
                                   f"which is right; fix or re-export the file")


def parse_text(raw: bytes, *, path: PathLike | None = None, delimiter: bytes | None = None) -> dict[str, str]:
    """Parse a TEXT (or supplemental TEXT) segment into a keyword dictionary.

    Parameters
    ----------
    raw
        The segment's bytes; its first byte is the delimiter unless ``delimiter`` is given.
    path
        The file, for error messages.
    delimiter
        The delimiter to use (for supplemental TEXT, the primary one); a leading
        delimiter in ``raw`` is then skipped.

    Returns
    -------
    dict
        Keys upper-cased and stripped of surrounding white space (``$`` kept); values
        as written. Doubled delimiters inside keys or values stand for one delimiter.
        A keyword written twice with the same value (up to surrounding white space) is
        kept once.

    Raises
    ------
    FcsFormatError
        When the segment is empty, its delimiter is a printable letter or digit, or a
        keyword is written twice with different values.
    """
    if not raw:
        raise FcsFormatError(path, "the TEXT segment is empty")
    delim = delimiter if delimiter is not None else raw[:1]
    if delim.isalnum():
        raise FcsFormatError(path, f"TEXT delimiter {delim!r} is a letter or digit: the TEXT is garbled")
    body = raw[1:] if raw[:1] == delim else raw
    tokens = split_tokens(body, delim)
    if len(tokens) % 2:
        tokens = tokens[:-1]  # a dangling key without value (trailing padding)
    keywords: dict[str, str] = {}
    for key, value in zip(tokens[0::2], tokens[1::2]):
        k = _decode(key).strip().upper()
        if k:
            _add_keyword(keywords, k, _decode(value), path, "in the same TEXT segment")
    return keywords


def _read_at(fh: BinaryIO, start: int, stop: int) -> bytes:
    """Bytes ``start`` .. ``stop`` inclusive."""
    fh.seek(start)
    return fh.read(stop - start + 1)


def _int_keyword(kw: dict[str, str], key: str, path: PathLike, default: int | None = None) -> int:
    """Keyword ``key`` as a plain ASCII integer (``default`` when absent or blank)."""
    return ascii_int(kw.get(key), key, path, default=default)


def _read_dataset(fh: BinaryIO, base: int, size: int, path: PathLike, *, supplemental: bool) -> _Dataset:
    """Read the HEADER and TEXT (+ supplemental TEXT when asked) of the data set at ``base``."""
    fh.seek(base)
    header = _parse_header(fh.read(HEADER_BYTES), path)
    t0, t1 = header.text
    if t0 < HEADER_BYTES or t1 <= t0:
        raise FcsFormatError(path, f"HEADER gives an impossible TEXT segment [{t0}, {t1}]")
    if base + t1 >= size:
        raise FcsFormatError(path, f"file is truncated: TEXT ends at byte {base + t1} but the file has {size} bytes")
    raw = _read_at(fh, base + t0, base + t1)
    ds = _Dataset(base, header, parse_text(raw, path=path))
    if supplemental:
        _merge_supplemental(fh, ds, raw[:1], size, path)
    return ds


def _merge_supplemental(fh: BinaryIO, ds: _Dataset, delim: bytes, size: int, path: PathLike) -> None:
    """Add supplemental TEXT keywords; one that contradicts the primary TEXT is an error."""
    s0 = _int_keyword(ds.keywords, "$BEGINSTEXT", path, 0)
    s1 = _int_keyword(ds.keywords, "$ENDSTEXT", path, 0)
    if s0 == 0 and s1 == 0:
        return
    t0, t1 = ds.header.text
    if t0 <= s0 and s1 <= t1:
        return  # some writers point it at the primary TEXT itself
    if s0 < HEADER_BYTES or s1 < s0 or ds.base + s1 >= size or _overlaps((s0, s1), ds.header.text):
        ds.warnings.append(f"supplemental TEXT [{s0}, {s1}] is out of bounds; ignored")
        return
    raw = _read_at(fh, ds.base + s0, ds.base + s1)
    if raw[:1] != delim:
        ds.warnings.append(f"supplemental TEXT [{s0}, {s1}] does not start with the delimiter; ignored")
        return
    extra = parse_text(raw, path=path, delimiter=delim)
    for key, value in extra.items():
        _add_keyword(ds.keywords, key, value, path, "in the TEXT and in the supplemental TEXT")


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


# --------------------------------------------------------------------------- data sets


@dataclass
class _Chain:
    """What following ``$NEXTDATA`` has found so far."""

    bases: list[int] = field(default_factory=list)  # start of every data set seen
    frontier: int = -1  # last byte of every HEADER and TEXT seen
    chosen: _Dataset | None = None


def _link_problem(chain: _Chain, index: int, nxt: int, size: int) -> str | None:
    """What is wrong with data set ``index``'s ``$NEXTDATA`` (None when it is a usable link)."""
    base = chain.bases[index]
    target = base + nxt
    head = f"$NEXTDATA of data set {index} is {nxt}"
    if target < 0:
        return f"{head}, which points outside the file: byte {target} is before its start"
    if target + HEADER_BYTES > size:
        return (f"{head}, which points outside the file: byte {target} is past the end of the file "
                f"({size} bytes, and a data set needs a 58-byte HEADER)")
    if base <= target < base + HEADER_BYTES:
        return (f"{head}, which points into that data set's own HEADER (bytes {base}-{base + HEADER_BYTES - 1}), "
                f"not to a next data set")
    if target <= chain.frontier:
        return (f"{head}, which points to byte {target}, not past the HEADER and TEXT already read (they end "
                f"at byte {chain.frontier}): a next data set must follow them")
    if index + 1 >= _MAX_DATASETS:
        return f"the file chains more than {_MAX_DATASETS} data sets through $NEXTDATA"
    return None


def _chain_broken(chain: _Chain, index: int, wanted: int, problem: str, path: PathLike) -> int:
    """Handle a broken link after data set ``index``: warn (returning the count) or refuse."""
    if chain.chosen is None:
        raise FcsFormatError(path, f"{problem}; data set {wanted} cannot be reached, the file holds "
                                   f"{index + 1} readable data set(s)")
    chain.chosen.warnings.append(f"{problem}; the data set chain ends at data set {index}")
    return index + 1


def _next_offset(ds: _Dataset, index: int, path: PathLike) -> int:
    """``$NEXTDATA`` of data set ``index`` (0 when absent)."""
    raw = ds.keywords.get("$NEXTDATA")
    try:
        return _int_keyword(ds.keywords, "$NEXTDATA", path, 0)
    except FcsFormatError:
        raise FcsFormatError(path, f"$NEXTDATA of data set {index} is not a number: {_short(raw or '')}") from None


def _select(fh: BinaryIO, size: int, path: PathLike, wanted: int) -> tuple[_Dataset, int]:
    """Follow ``$NEXTDATA`` from the first data set; return data set ``wanted`` and the count.

    Only data set ``wanted`` is parsed in full (with its supplemental TEXT); the others are
    tokenised for their ``$NEXTDATA`` and dropped. Every data set must start after all the
    HEADER and TEXT bytes seen before it, so the work is bounded by the file size.
    """
    if size < HEADER_BYTES:
        raise FcsFormatError(path, f"file has only {size} bytes, fewer than the 58-byte FCS HEADER")
    if wanted < 0:
        raise FcsFormatError(path, f"data set index {wanted} is negative")
    chain = _Chain(bases=[0])
    index = 0
    while True:
        base = chain.bases[index]
        try:
            ds = _read_dataset(fh, base, size, path, supplemental=index == wanted)
        except FcsFormatError as exc:
            if index == 0:
                raise
            problem = (f"data set {index} (at byte {base}, where $NEXTDATA of data set {index - 1} points) "
                       f"is unreadable: {exc.reason}")
            return _finish(chain, _chain_broken(chain, index - 1, wanted, problem, path), wanted, path)
        if index == wanted:
            chain.chosen = ds
        try:
            nxt = _next_offset(ds, index, path)
        except FcsFormatError as exc:
            return _finish(chain, _chain_broken(chain, index, wanted, exc.reason, path), wanted, path)
        if nxt == 0:
            return _finish(chain, index + 1, wanted, path)
        chain.frontier = max(chain.frontier, ds.end_of_text)
        if base + nxt <= chain.frontier and base + nxt in chain.bases:  # only earlier bases lie there
            j = chain.bases.index(base + nxt)
            raise FcsFormatError(path, f"$NEXTDATA of data set {index} points back to byte {base + nxt}: a cycle "
                                       f"(data set {j} starts there); the file's data set chain is damaged")
        problem = _link_problem(chain, index, nxt, size)
        if problem is not None:
            return _finish(chain, _chain_broken(chain, index, wanted, problem, path), wanted, path)
        chain.bases.append(base + nxt)
        index += 1


def _finish(chain: _Chain, count: int, wanted: int, path: PathLike) -> tuple[_Dataset, int]:
    if chain.chosen is None:
        raise FcsFormatError(path, f"data set {wanted} requested but the file holds {count}")
    return chain.chosen, count


# --------------------------------------------------------------------------- layout


def _range_mask(kw: dict[str, str], n: int, bits: int) -> int:
    """Bit mask of parameter ``n``: the bits its ``$PnR`` needs, at most ``bits``."""
    full = (1 << bits) - 1
    rng = ascii_float_or_none(kw.get(f"$P{n}R", ""))
    if rng is None or rng <= 1 or rng >= 2.0**bits:
        return full
    needed = (int(np.ceil(rng)) - 1).bit_length()
    return min((1 << needed) - 1, full)


def _param_kind(kw: dict[str, str], n: int, default: str | None, path: PathLike) -> str:
    kind = kw.get(f"$P{n}DATATYPE", "").strip().upper() or default
    if kind is None:
        raise FcsFormatError(path, "keyword $DATATYPE is missing")
    if kind == "A":
        raise FcsFormatError(path, "ASCII ($DATATYPE A) data is not supported")
    if kind not in ("I", "F", "D"):
        raise FcsFormatError(path, f"unknown data type {kind!r} for parameter {n} (I, F or D expected)")
    return kind


def _param_layout(kw: dict[str, str], n: int, default: str | None, path: PathLike) -> tuple[str, int, int]:
    """(kind, stored bytes, mask) of parameter ``n`` (1-based)."""
    bits = _int_keyword(kw, f"$P{n}B", path)
    kind = _param_kind(kw, n, default, path)
    if kind in ("F", "D"):
        if bits not in (32, 64):
            raise FcsFormatError(path, f"$P{n}B is {bits} for float data (32 or 64 expected)")
        return "f", bits // 8, 0
    if bits <= 0 or bits > 64:
        raise FcsFormatError(path, f"$P{n}B is {bits}: integers of 1 to 64 bits are supported")
    nbytes = -(-bits // 8)  # e.g. 10-bit values are stored in 2 bytes
    nbytes = 8 if nbytes > 4 else nbytes
    return "u", nbytes, _range_mask(kw, n, min(bits, 8 * nbytes))


def _default_datatype(kw: dict[str, str], n_par: int, path: PathLike) -> str | None:
    """``$DATATYPE``, or ``I`` inferred when absent and every ``$PnB`` rules out floats."""
    dtype = kw.get("$DATATYPE", "").strip().upper()
    if dtype:
        return dtype
    bits = [kw.get(f"$P{n}B", "").strip() for n in range(1, n_par + 1)]
    if all(not kw.get(f"$P{n}DATATYPE") for n in range(1, n_par + 1)) and any(b in ("32", "64") for b in bits):
        raise FcsFormatError(path, "keyword $DATATYPE is missing and 32/64-bit parameters could be integer or float")
    return "I"


def _parameter_count(kw: dict[str, str], path: PathLike) -> int:
    """``$PAR``, checked against the keywords before anything is built per parameter.

    Every parameter needs its own ``$PnB``, so ``$PAR`` cannot exceed the number of
    keywords in the TEXT (itself bounded by the file size); then each ``$PnB`` must exist.
    """
    n_par = _int_keyword(kw, "$PAR", path)
    if n_par <= 0:
        raise FcsFormatError(path, f"$PAR is {n_par}: no parameters")
    if n_par > len(kw):
        raise FcsFormatError(path, f"$PAR is {n_par} but the TEXT holds only {len(kw)} keywords, while every "
                                   f"parameter needs its own ($PnB at least): $PAR is wrong or the TEXT is cut short")
    missing = [f"$P{n}B" for n in range(1, n_par + 1) if not kw.get(f"$P{n}B", "").strip()]
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        verb = "is" if len(missing) == 1 else "are"
        raise FcsFormatError(path, f"required keyword {listed} {verb} missing: $PAR says {n_par} parameters")
    return n_par


def _layout(kw: dict[str, str], path: PathLike) -> _Layout:
    """Work out the event layout from ``$PAR``, ``$PnB``, ``$DATATYPE``, ``$BYTEORD``."""
    n_par = _parameter_count(kw, path)
    mode = kw.get("$MODE", "L").strip().upper() or "L"
    if mode != "L":
        raise FcsFormatError(path, f"$MODE {mode!r} (histogram data) is not supported; only list mode (L) is")
    default = _default_datatype(kw, n_par, path)
    params = [_param_layout(kw, n, default, path) for n in range(1, n_par + 1)]
    byteord = re.sub(r"\s", "", kw.get("$BYTEORD", ""))
    widths = [p[1] for p in params]
    if byteord not in _BYTEORDERS:
        if max(widths) > 1:
            raise FcsFormatError(path, f"unsupported $BYTEORD {kw.get('$BYTEORD')!r}")
        byteord = "1"
    kinds, masks = (tuple(p[0] for p in params), tuple(p[2] for p in params))
    return _Layout(kinds, tuple(widths), masks, _BYTEORDERS[byteord])


# --------------------------------------------------------------------------- DATA location


def _data_candidates(ds: _Dataset, path: PathLike) -> list[tuple[str, int, int]]:
    """(source, start, end) pairs for DATA, HEADER first, relative to the data set."""
    cands = []
    if ds.header.data != (0, 0):
        cands.append(("HEADER", *ds.header.data))
    b = _int_keyword(ds.keywords, "$BEGINDATA", path, 0)
    e = _int_keyword(ds.keywords, "$ENDDATA", path, 0)
    if (b, e) != (0, 0) and ("HEADER", b, e) not in cands:
        cands.append(("TEXT", b, e))
    if not cands:
        raise FcsFormatError(path, "neither HEADER nor TEXT ($BEGINDATA/$ENDDATA) locates the DATA segment")
    return cands


def _event_count(ds: _Dataset, layout: _Layout, cands: list[tuple[str, int, int]], path: PathLike) -> int:
    """``$TOT``, or (FCS 2.0 without it) the DATA length over the bytes per event."""
    if "$TOT" in ds.keywords and ds.keywords["$TOT"].strip():
        tot = _int_keyword(ds.keywords, "$TOT", path)
        if tot < 0:
            raise FcsFormatError(path, f"$TOT is negative ({tot})")
        return tot
    for _, start, end in cands:
        for length in (end - start + 1, end - start):
            if length > 0 and length % layout.event_bytes == 0:
                return length // layout.event_bytes
    raise FcsFormatError(path, "$TOT is missing and the DATA length is not a whole number of events")


def _locate_data(ds: _Dataset, need: int, size: int, path: PathLike, cands: list[tuple[str, int, int]]) -> int:
    """Absolute start of a DATA segment that holds ``need`` bytes and does not overlap TEXT."""
    for slack in (0, 1, -1):  # exact length, then $ENDDATA one too far, then one short
        for _, start, end in cands:
            if end - start + 1 != need + slack or start < HEADER_BYTES:
                continue
            if _overlaps((start, start + need - 1), ds.header.text) or ds.base + start + need > size:
                continue
            return ds.base + start
    raise FcsFormatError(path, _locate_failure(ds, need, size, cands))


def _locate_failure(ds: _Dataset, need: int, size: int, cands: list[tuple[str, int, int]]) -> str:
    spans = ", ".join(f"{src} [{s}, {e}]" for src, s, e in cands)
    tot, ends = ds.keywords.get("$TOT", "?").strip(), [ds.base + e for _, _, e in cands]
    if all(end >= size for end in ends):
        return (f"file is truncated: DATA ({spans}) ends past the end of the file ({size} bytes); "
                f"it may hold HEADER and TEXT only")
    return (f"$TOT={tot[:40]} events need {need} bytes of DATA but no DATA segment fits "
            f"({spans}; file has {size} bytes)")


# --------------------------------------------------------------------------- decoding


def _read_exact(fh: BinaryIO, buf: memoryview, path: PathLike) -> None:
    got = fh.readinto(buf)
    if got != len(buf):
        raise FcsFormatError(path, f"file is truncated: expected {len(buf)} bytes of DATA, read {got}")


def _apply_masks(out: np.ndarray, layout: _Layout) -> None:
    """AND every column of a uniform integer array with its mask, in place, when one drops bits."""
    if out.dtype.kind != "u":
        return
    full = np.iinfo(out.dtype).max
    masks = np.array(layout.masks, dtype=out.dtype)
    if (masks != full).any():
        np.bitwise_and(out, masks, out=out)


def _decode_uniform(fh: BinaryIO, n: int, layout: _Layout, path: PathLike) -> np.ndarray:
    """Read straight into the output array, then byte-swap and mask in place."""
    native = np.dtype(f"{layout.kinds[0]}{layout.widths[0]}")
    out = np.empty((n, len(layout.widths)), dtype=native)
    _read_exact(fh, memoryview(out).cast("B"), path)
    if layout.order != ("<" if np.little_endian else ">") and native.itemsize > 1:
        out.byteswap(inplace=True)
    _apply_masks(out, layout)
    return out


def _column(chunk: np.ndarray, offset: int, width: int, kind: str, order: str) -> np.ndarray:
    """One parameter's values from a ``(rows, event_bytes)`` uint8 chunk."""
    raw = chunk[:, offset : offset + width]
    if width == 3:
        b = raw.astype(np.uint32)
        lo, hi = (b[:, 0], b[:, 2]) if order == "<" else (b[:, 2], b[:, 0])
        return lo | (b[:, 1] << 8) | (hi << 16)
    dtype = np.dtype(f"{order}{kind}{width}")
    return np.ascontiguousarray(raw).view(dtype)[:, 0]


def _masked_column(values: np.ndarray, mask: int, width: int, out_kind: str, j: int, path: PathLike) -> np.ndarray:
    """An integer column masked to its ``$PnR`` bits (the rule of a uniform integer file).

    A 64-bit value that float64 cannot hold exactly (at or above 2**53) in a mixed
    integer/float file is refused rather than rounded.
    """
    full = (1 << (8 * width)) - 1
    if mask != full:
        values = np.bitwise_and(values, values.dtype.type(mask))
    if out_kind == "f" and width == 8 and values.size and int(values.max()) >= _EXACT_IN_FLOAT64:
        raise FcsFormatError(path, f"parameter {j + 1} holds 64-bit integers above 2**53 in a file that mixes "
                                   f"integers and floats: they cannot be returned exactly as float64")
    return values


def _decode_columns(fh: BinaryIO, n: int, layout: _Layout, path: PathLike) -> np.ndarray:
    """Assemble mixed-width or 24-bit events column by column, a chunk of events at a time."""
    out = np.empty((n, len(layout.widths)), dtype=layout.out_dtype)
    eb = layout.event_bytes
    offsets = np.concatenate([[0], np.cumsum(layout.widths)[:-1]]).tolist()
    rows = max(1, _CHUNK_BYTES // eb)
    buf = np.empty(min(rows, max(n, 1)) * eb, dtype=np.uint8)
    columns = list(zip(offsets, layout.widths, layout.kinds, layout.masks))
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        view = buf[: (r1 - r0) * eb]
        _read_exact(fh, memoryview(view), path)
        chunk = view.reshape(r1 - r0, eb)
        for j, (off, width, kind, mask) in enumerate(columns):
            values = _column(chunk, off, width, kind, layout.order)
            if kind == "u":
                values = _masked_column(values, mask, width, out.dtype.kind, j, path)
            out[r0:r1, j] = values
    return out


def _decode_data(fh: BinaryIO, start: int, n: int, layout: _Layout, path: PathLike) -> np.ndarray:
    fh.seek(start)
    if layout.uniform:
        return _decode_uniform(fh, n, layout, path)
    return _decode_columns(fh, n, layout, path)


# --------------------------------------------------------------------------- public


def _names(kw: dict[str, str], n_par: int) -> tuple[list[str], list[str]]:
    channels = [kw.get(f"$P{n}N", f"P{n}").strip() or f"P{n}" for n in range(1, n_par + 1)]
    markers = [kw.get(f"$P{n}S", "").strip() for n in range(1, n_par + 1)]
    return channels, markers


def _events(fh: BinaryIO, ds: _Dataset, layout: _Layout, size: int, path: PathLike) -> np.ndarray:
    """Decode DATA after checking that the events it must hold lie inside the file.

    Nothing is allocated before :func:`_locate_data` has found a DATA segment of exactly
    ``$TOT`` x bytes-per-event bytes inside the file, so the output is bounded by the file size
    (at most 8 output bytes per stored byte, for 1-byte integers in a mixed float64 file).
    """
    if _int_keyword(ds.keywords, "$TOT", path, -1) == 0:
        return np.empty((0, len(layout.widths)), dtype=layout.out_dtype)
    cands = _data_candidates(ds, path)
    n = _event_count(ds, layout, cands, path)
    start = _locate_data(ds, n * layout.event_bytes, size, path, cands)  # in the file, or refused
    return _decode_data(fh, start, n, layout, path)


def _spillover(ds: _Dataset, channels: list[str], path: PathLike) -> Spillover | None:
    try:
        return parse_spillover(ds.keywords, channels, path=path)
    except FcsFormatError as exc:
        ds.warnings.append(f"spillover ignored: {exc.reason}")
        return None


def read_fcs(path: PathLike, *, dataset: int = 0, only_text: bool = False) -> FcsData:
    """Read one data set of an FCS file.

    Parameters
    ----------
    path
        The FCS file.
    dataset
        Which data set of a ``$NEXTDATA`` chain to read (0-based).
    only_text
        Parse HEADER and TEXT only: ``events`` is then an empty ``(0, n_parameters)``
        array and the DATA segment is not touched (nor required to exist).

    Returns
    -------
    FcsData
        Stored events (integers as the narrowest unsigned type that holds them,
        masked to their ``$PnR`` bits; floats as float32/float64; a file mixing
        integer and float parameters as float64), names, keywords, spillover and
        ``n_datasets``. Non-fatal oddities (a broken ``$NEXTDATA`` link after this data
        set, an unusable spillover keyword) are listed in ``extra["warnings"]``;
        ``extra["byteorder"]`` is ``"<"`` or ``">"``.

    Raises
    ------
    FcsFormatError
        When the path is not a readable file (missing, a directory, no permission), or
        the file is truncated, not FCS, inconsistent or uses an unsupported feature; the
        message names the file and the problem.
    """
    path = os.fspath(path)
    fh = _open(path)
    try:
        with fh:
            size = os.fstat(fh.fileno()).st_size
            ds, n_datasets = _select(fh, size, path, dataset)
            layout = _layout(ds.keywords, path)
            channels, markers = _names(ds.keywords, len(layout.widths))
            if only_text:
                events = np.empty((0, len(channels)), dtype=layout.out_dtype)
            else:
                events = _events(fh, ds, layout, size, path)
    except OSError as exc:
        raise FcsFormatError(path, f"cannot read the file: {exc.strerror or exc}") from exc
    except MemoryError as exc:
        raise FcsFormatError(path, "not enough memory for the DATA segment its keywords describe") from exc
    return FcsData(
        events=events, channels=channels, markers=markers, keywords=ds.keywords,
        version=ds.header.version, n_datasets=n_datasets,
        spillover=_spillover(ds, channels, path), path=path, dataset=dataset,
        extra={"warnings": ds.warnings, "byteorder": layout.order},
    )
