"""Mutation fuzzing of the FCS reader, shared by ``tests/test_fcs_fuzz.py`` and ``benchmarks/fuzz_fcs.py``.

The promise of :func:`~rescue_gpu.fcs.read_fcs` is that every file is read right or refused
with an :class:`~rescue_gpu.errors.FcsFormatError`: never another exception, a hang, unbounded
memory or wrong numbers. This module checks it against mutated real files:

* :func:`make_case` derives case ``index`` of a campaign deterministically from ``(seed,
  index)`` and a list of seed files: one to three mutations, byte level (bit flips, the top
  bit of a digit, overwrites, truncations, splices, appended bytes) or structural (keyword
  values set to huge, negative, fractional or non-ASCII numbers, keywords deleted, duplicated
  with the same or a conflicting value, re-cased, a new delimiter; ``$PAR`` huge without
  ``$DATATYPE``; ``$SPILLOVER`` edits with Unicode digits, renamed or repeated channels and
  bad counts; ``$NEXTDATA`` into the HEADER or TEXT, past the end, loops, chains of copies
  and thousands of stacked HEADERs sharing one TEXT).
* :func:`run_cases` reads each mutated file in a forked child under a wall-clock limit and an
  address-space limit (``RLIMIT_AS``) and classifies the outcome (:data:`OUTCOMES`).
* A case whose mutations are all *benign* (an identical duplicate keyword, re-cased keys,
  another delimiter, bytes appended, a ``$NEXTDATA`` chain of copies appended) must give
  data set 0 exactly as the unmutated seed does: anything else is a ``mismatch``.

Every case can be rebuilt from ``(seed, index)`` alone, so a failure in a long campaign is
reproduced with ``python benchmarks/fuzz_fcs.py --seed S --case I``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RescueError
from .inspect import describe_data
from .numbers import ascii_int_or_none
from .reader import read_fcs, split_tokens

__all__ = [
    "Seed", "Case", "Result", "OUTCOMES", "FAILURES", "MUTATIONS", "NotApplicable", "load_corpus",
    "synthetic_seeds", "build_file", "stacked_headers", "make_case", "make_cases", "exercise", "run_cases",
    "run_inline", "effective_address_limit", "summarize",
]

OUTCOMES = ("ok", "refused", "crash", "mismatch", "timeout", "memory", "died")
FAILURES = frozenset({"crash", "mismatch", "timeout", "memory", "died"})
GIB = 1 << 30
_MAX_REPORT_CHARS = 4000  # keeps a child's report far below a pipe buffer


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Seed:
    """An unmutated file: its name (path below the corpus, or ``synthetic/...``) and bytes."""

    name: str
    data: bytes


@dataclass
class Case:
    """One mutated file and how to read it."""

    index: int
    seed: int  # index into the seed list
    seed_name: str
    mutations: list[str]
    data: bytes
    dataset: int = 0
    only_text: bool = False
    benign: bool = False  # every mutation keeps data set 0 as it was


@dataclass
class Result:
    """What reading one case gave."""

    index: int
    seed_name: str
    mutations: list[str]
    dataset: int
    only_text: bool
    outcome: str
    error_type: str = ""
    message: str = ""
    traceback: str = ""
    wall_s: float = 0.0
    max_rss_mb: float = 0.0


# --------------------------------------------------------------------------- seeds


def load_corpus(root: str | os.PathLike[str]) -> list[Seed]:
    """Every file below ``root`` except ``*.json`` and ``*.md``, sorted by path.

    Parameters
    ----------
    root
        The corpus folder (e.g. ``../shared/fcs-corpus``).

    Returns
    -------
    list of Seed
        Empty when ``root`` does not exist.
    """
    base = Path(root)
    if not base.is_dir():
        return []
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() not in (".json", ".md"))
    return [Seed(str(p.relative_to(base)), p.read_bytes()) for p in files]


def _text_bytes(keywords: dict[str, str], delim: str = "/") -> bytes:
    dd = delim * 2
    body = "".join(f"{k.replace(delim, dd)}{delim}{v.replace(delim, dd)}{delim}" for k, v in keywords.items())
    return (delim + body).encode("utf-8")


def build_file(
    keywords: dict[str, str], data: bytes, *, version: str = "FCS3.1", supplemental: dict[str, str] | None = None
) -> bytes:
    """A one-data-set FCS file with ``keywords`` (plus the offsets) and DATA ``data``.

    Parameters
    ----------
    keywords
        TEXT keywords other than the segment offsets, which are filled in (20 digits wide).
    data
        The DATA segment.
    version
        The HEADER version.
    supplemental
        Keywords for a supplemental TEXT written after DATA.

    Returns
    -------
    bytes
    """
    kw = {"$BEGINDATA": "0" * 20, "$ENDDATA": "0" * 20, "$BEGINSTEXT": "0" * 20, "$ENDSTEXT": "0" * 20,
          "$BEGINANALYSIS": "0", "$ENDANALYSIS": "0", "$NEXTDATA": "0" * 20, **keywords}
    length = len(_text_bytes(kw))
    start = 58 + length
    kw["$BEGINDATA"], kw["$ENDDATA"] = f"{start:020d}", f"{start + len(data) - 1:020d}"
    extra = _text_bytes(supplemental) if supplemental else b""
    if extra:
        s0 = start + len(data)
        kw["$BEGINSTEXT"], kw["$ENDSTEXT"] = f"{s0:020d}", f"{s0 + len(extra) - 1:020d}"
    text = _text_bytes(kw)
    header = f"{version:<10}" + "".join(f"{v:>8d}" for v in (58, 57 + len(text), start, start + len(data) - 1, 0, 0))
    return header.encode("ascii") + text + data + extra


def _params(
    names: Sequence[str], bits: Sequence[int], ranges: Sequence[int], types: Sequence[str] | None = None
) -> dict[str, str]:
    """``$PAR`` and the ``$PnN/B/E/R`` (and ``$PnDATATYPE``) keywords of parameters."""
    kw: dict[str, str] = {"$PAR": str(len(names))}
    for i, (name, b, r) in enumerate(zip(names, bits, ranges), start=1):
        kw.update({f"$P{i}N": name, f"$P{i}B": str(b), f"$P{i}E": "0,0", f"$P{i}R": str(r)})
        if types:
            kw[f"$P{i}DATATYPE"] = types[i - 1]
    return kw


def synthetic_seeds() -> list[Seed]:
    """Small files covering the reader's paths, for runs without the corpus.

    Returns
    -------
    list of Seed
        Uniform masked 16-bit integers with ``$SPILLOVER``; big-endian float32 with
        ``SPILL``; FCS 3.2 with ``$PnDATATYPE`` (16-bit, float and 24-bit columns);
        24-bit integers with ``$DFCiTOj``; two chained FCS 2.0/3.0 data sets with ``$COMP``;
        supplemental TEXT after DATA.
    """
    rng = np.random.default_rng(0)
    seeds = []
    ints = rng.integers(0, 65536, size=(200, 4), dtype=np.uint16)
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "I", "$MODE": "L", "$TOT": "200",
          **_params(["FSC-A", "SSC-A", "CH3", "CH4"], [16] * 4, [1024, 65536, 4096, 1024]),
          "$P3S": "CD34", "$SPILLOVER": "2,CH3,CH4,1,0.1,0.05,1"}
    seeds.append(Seed("synthetic/int16-masked.fcs", build_file(kw, ints.astype("<u2").tobytes())))
    floats = rng.normal(1000, 300, size=(150, 3)).astype(">f4")
    kw = {"$BYTEORD": "4,3,2,1", "$DATATYPE": "F", "$MODE": "L", "$TOT": "150",
          **_params(["FSC-H", "FL1-H", "FL2-H"], [32] * 3, [262144] * 3), "SPILL": "2,FL1-H,FL2-H,1,0.2,0,1"}
    seeds.append(Seed("synthetic/float32-be.fcs", build_file(kw, floats.tobytes(), version="FCS3.0")))
    n = 120
    a, c = rng.integers(0, 65536, n, dtype=np.uint16), rng.integers(0, 1 << 24, n, dtype=np.uint32)
    f = rng.normal(size=n).astype("<f4")
    cols = [a.astype("<u2").view(np.uint8).reshape(n, 2), f.view(np.uint8).reshape(n, 4),
            c.astype("<u4").view(np.uint8).reshape(n, 4)[:, :3]]
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "I", "$MODE": "L", "$TOT": str(n),
          **_params(["A", "B", "C"], [16, 32, 24], [1024, 262144, 1 << 20], ["I", "F", "I"])}
    seeds.append(Seed("synthetic/fcs32-mixed.fcs", build_file(kw, np.hstack(cols).tobytes(), version="FCS3.2")))
    v24 = rng.integers(0, 1 << 24, size=(100, 3), dtype=np.uint32)
    raw24 = v24.astype("<u4").view(np.uint8).reshape(100, 3, 4)[:, :, :3].reshape(100, 9)
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "I", "$MODE": "L", "$TOT": "100",
          **_params(["FS Lin", "FL1 Log", "FL2 Log"], [24] * 3, [1 << 24, 1 << 20, 1 << 24]),
          "$DFC1TO2": "11.2", "$DFC2TO1": "0.9"}
    seeds.append(Seed("synthetic/int24-dfc.fcs", build_file(kw, raw24.tobytes(), version="FCS3.0")))
    first_kw = {"$BYTEORD": "1,2", "$DATATYPE": "I", "$MODE": "L", "$TOT": "50",
                **_params(["FSC", "FL1", "FL2"], [10] * 3, [1024] * 3), "$COMP": "2,1,0.1,0.2,1"}
    first_data = rng.integers(0, 1 << 16, size=(50, 3), dtype=np.uint16).astype("<u2").tobytes()
    second = build_file({"$BYTEORD": "1,2,3,4", "$DATATYPE": "F", "$MODE": "L", "$TOT": "50",
                         **_params(["FSC", "FL1", "FL2"], [32] * 3, [262144] * 3)},
                        rng.normal(size=(50, 3)).astype("<f4").tobytes(), version="FCS3.0")
    probe = build_file(first_kw, first_data, version="FCS2.0")
    first = build_file({**first_kw, "$NEXTDATA": f"{len(probe):020d}"}, first_data, version="FCS2.0")
    seeds.append(Seed("synthetic/two-datasets.lmd", first + second))
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "I", "$MODE": "L", "$TOT": "80",
          **_params(["FSC-A", "PE-A"], [16, 16], [65536, 1024])}
    data = rng.integers(0, 65536, size=(80, 2), dtype=np.uint16).astype("<u2").tobytes()
    seeds.append(Seed("synthetic/supplemental.fcs",
                      build_file(kw, data, supplemental={"$COM": "supplemental", "$SPILLOVER": "1,PE-A,1"})))
    return seeds


# --------------------------------------------------------------------------- a mutable view of TEXT


class NotApplicable(Exception):
    """A structural mutation cannot apply to this file (no parsable HEADER/TEXT, no such keyword)."""


@dataclass
class _Text:
    """Data set 0's primary TEXT: absolute span, delimiter and raw (key, value) pairs in order."""

    t0: int
    t1: int
    delim: bytes
    pairs: list[list[bytes]]

    def find(self, key: str) -> int | None:
        """Index of the first pair whose key is ``key`` (case and white space ignored)."""
        want = key.upper().encode()
        return next((i for i, (k, _) in enumerate(self.pairs) if k.strip().upper() == want), None)

    def get(self, key: str) -> bytes | None:
        i = self.find(key)
        return None if i is None else self.pairs[i][1]

    def set(self, key: str, value: bytes) -> int:
        """Set (or append) ``key``; returns the pair's index."""
        i = self.find(key)
        if i is None:
            self.pairs.append([key.encode(), value])
            return len(self.pairs) - 1
        self.pairs[i][1] = value
        return i


def _header_int(blob: bytes, start: int) -> int | None:
    field_ = blob[start : start + 8].strip()
    return int(field_) if field_.isdigit() else (0 if not field_ else None)


def _parse(blob: bytes) -> _Text:
    """Data set 0's TEXT, or :class:`NotApplicable`."""
    if len(blob) < 58 or not blob.startswith(b"FCS"):
        raise NotApplicable
    t0, t1 = _header_int(blob, 10), _header_int(blob, 18)
    if t0 is None or t1 is None or not 58 <= t0 < t1 < len(blob):
        raise NotApplicable
    delim = blob[t0 : t0 + 1]
    toks = split_tokens(blob[t0 + 1 : t1 + 1], delim)
    pairs = [[k, v] for k, v in zip(toks[0::2], toks[1::2])]
    if not pairs or delim.isalnum():
        raise NotApplicable
    return _Text(t0, t1, delim, pairs)


def _serialize(pairs: Sequence[Sequence[bytes]], delim: bytes) -> bytes:
    dd = delim + delim
    return delim + b"".join(k.replace(delim, dd) + delim + v.replace(delim, dd) + delim for k, v in pairs)


_OFFSET_KEYS = {b"$BEGINDATA", b"$ENDDATA", b"$BEGINSTEXT", b"$ENDSTEXT", b"$BEGINANALYSIS", b"$ENDANALYSIS",
                b"$NEXTDATA"}


def _shifted(value: bytes, after: int, size: int, delta: int) -> bytes:
    """An offset value moved by ``delta`` when it points past byte ``after`` (and not past
    the end, ``size``, where a mutation may have put it on purpose), width kept."""
    s = value.strip()
    if not s.isdigit() or len(s) > 30 or not after < int(s) <= size or delta == 0:
        return value
    return str(int(s) + delta).zfill(len(s)).encode()


def _rewrite(blob: bytes, text: _Text, fixed: Iterable[int] = ()) -> bytes:
    """``blob`` with data set 0's TEXT replaced by ``text.pairs``, later bytes moved to fit.

    Offsets that point past the old TEXT (HEADER DATA/ANALYSIS, ``$BEGINDATA`` & co.,
    ``$NEXTDATA``) are moved with it, except in the pairs listed in ``fixed`` (the values a
    mutation set on purpose).
    """
    keep = set(fixed)
    old_len = text.t1 - text.t0 + 1

    def build(delta: int) -> bytes:
        pairs = [[k, v if i in keep or k.strip().upper() not in _OFFSET_KEYS
                  else _shifted(v, text.t1, len(blob), delta)] for i, (k, v) in enumerate(text.pairs)]
        return _serialize(pairs, text.delim)

    delta = len(build(0)) - old_len
    for _ in range(6):
        new = build(delta)
        if len(new) - old_len == delta:
            break
        delta = len(new) - old_len
    header = bytearray(blob[:58])
    header[18:26] = f"{text.t0 + len(new) - 1:>8d}".encode()[-8:]
    for at in (26, 34, 42, 50):
        value = _header_int(blob, at)
        if value is not None and value > text.t1:
            moved = value + delta
            header[at : at + 8] = f"{moved if moved <= 99_999_999 else 0:>8d}".encode()
    return bytes(header) + blob[58 : text.t0] + new + blob[text.t1 + 1 :]


# --------------------------------------------------------------------------- mutations

Mutation = Callable[[random.Random, bytes, Sequence[Seed]], tuple[bytes, str, bool]]

NUMBERS = [
    "0", "1", "-1", "-58", "2", "57", "58", "255", "4294967295", "4294967296", "9223372036854775807",
    "18446744073709551616", "99999999999999999999", "1" + "0" * 30, "9" * 400, "9" * 5000, "1.5", "1e3",
    "1E300", "1e400", "-0", "+7", "nan", "inf", "-inf", "1_000", "0x10", " 12 ", "1 2", "\u00b3", "3\u00b3",
    "\u0663", "\u0661\u0666", "\uff11\uff16", "\u00b9\u2076", "", " ", "abc", "16,16", "16.0", "16.5",
]
_DATATYPES = ["I", "F", "D", "A", "Q", "i", " ", "f", "\u0130"]
_BYTEORDS = ["1,2,3,4", "4,3,2,1", "1,2", "2,1", "1", "3,4,1,2", "1,2,3", "x", "1,2,3,4,5,6,7,8"]
_STRUCTURAL = ["$PAR", "$TOT", "$DATATYPE", "$BYTEORD", "$MODE", "$NEXTDATA", "$BEGINDATA", "$ENDDATA",
               "$BEGINSTEXT", "$ENDSTEXT", "$BEGINANALYSIS", "$ENDANALYSIS"]
_PER_PARAMETER = ["B", "R", "N", "S", "E", "G", "DATATYPE"]
_SPILL_KEYS = ["$SPILLOVER", "SPILL", "SPILLOVER", "$COMP"]
_ODD_DIGITS = ["\u00b3", "\u0663", "\uff13", "\u00b9"]  # superscript 3, Arabic-Indic 3, fullwidth 3, superscript 1


def _encode(value: str, rng: random.Random) -> bytes:
    """UTF-8, or (sometimes) Latin-1 as some writers use, for a mutated value."""
    if rng.random() < 0.3:
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            pass
    return value.encode("utf-8")


def _small_int(raw: bytes | str, default: int) -> int:
    """A plain ASCII integer below 10**9 (``default`` otherwise): the fuzzer's own parsing."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    value = ascii_int_or_none(text)
    return value if value is not None and abs(value) < 10**9 else default


def _par(text: _Text) -> int:
    return min(max(_small_int(text.get("$PAR") or b"", 4), 1), 64)


def _value_for(key: str, rng: random.Random) -> str:
    if key.endswith("DATATYPE"):
        return rng.choice(_DATATYPES + NUMBERS[:6])
    if key == "$BYTEORD":
        return rng.choice(_BYTEORDS)
    if key == "$MODE":
        return rng.choice(["L", "C", "U", "l", ""])
    return rng.choice(NUMBERS)


def _pick_key(rng: random.Random, text: _Text) -> str:
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(_STRUCTURAL)
    if roll < 0.85:
        return f"$P{rng.randint(1, _par(text) + 1)}{rng.choice(_PER_PARAMETER)}"
    return text.pairs[rng.randrange(len(text.pairs))][0].decode("latin-1").strip()


def _region(rng: random.Random, blob: bytes) -> tuple[int, int]:
    """A byte range to mutate: HEADER, TEXT, DATA or anywhere (TEXT the most often)."""
    try:
        text = _parse(blob)
        spans = [(0, 58), (text.t0, text.t1 + 1), (text.t0, text.t1 + 1), (text.t1 + 1, len(blob)), (0, len(blob))]
    except NotApplicable:
        spans = [(0, min(58, len(blob))), (0, len(blob))]
    lo, hi = rng.choice(spans)
    return (lo, hi) if hi > lo else (0, len(blob))


def m_bit_flip(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Flip one to four bits in one region."""
    if not blob:
        raise NotApplicable
    out, (lo, hi) = bytearray(blob), _region(rng, blob)
    flips = [(rng.randrange(lo, hi), rng.randrange(8)) for _ in range(rng.randint(1, 4))]
    for at, bit in flips:
        out[at] ^= 1 << bit
    return bytes(out), "bit_flip " + ",".join(f"{a}:{b}" for a, b in flips), False


def m_high_bit_digit(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Set the top bit of an ASCII digit of TEXT ('3' -> 0xB3, Latin-1 superscript three)."""
    text = _parse(blob)
    lo, hi = text.t0, text.t1 + 1
    spill = next((k for k in _SPILL_KEYS if text.get(k)), None)
    if spill and rng.random() < 0.6:
        value = text.get(spill) or b""
        at = blob.find(value, lo, hi)
        lo, hi = (at, at + len(value)) if at >= 0 else (lo, hi)
    digits = [i for i in range(lo, hi) if 0x30 <= blob[i] <= 0x39]
    if not digits:
        raise NotApplicable
    at = rng.choice(digits)
    out = bytearray(blob)
    out[at] |= 0x80
    return bytes(out), f"high_bit_digit at {at}" + (f" in {spill}" if spill and lo != text.t0 else ""), False


def m_overwrite(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Overwrite one to eight bytes with telling values (0, 0xFF, delimiter, digits, space)."""
    if not blob:
        raise NotApplicable
    out, (lo, hi) = bytearray(blob), _region(rng, blob)
    try:
        delim = _parse(blob).delim[0]
    except NotApplicable:
        delim = 0x2F
    choices = [0, 0xFF, delim, 0x30, 0x39, 0x2D, 0x20, 0x2E, rng.randrange(256)]
    edits = [(rng.randrange(lo, hi), rng.choice(choices)) for _ in range(rng.randint(1, 8))]
    for at, value in edits:
        out[at] = value
    return bytes(out), "overwrite " + ",".join(f"{a}={v}" for a, v in edits), False


def m_truncate(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Cut the file in its HEADER, TEXT, DATA or last bytes."""
    if len(blob) < 2:
        raise NotApplicable
    lo, hi = _region(rng, blob)
    at = rng.choice([rng.randrange(lo, hi), len(blob) - rng.randint(1, min(16, len(blob) - 1))])
    return blob[:at], f"truncate to {at} of {len(blob)}", False


def m_append(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Append zeros or random bytes (trailing padding some writers leave).

    Not benign: a DATA offset that pointed past the old end may now fit inside the file.
    """
    n = rng.choice([1, 7, 58, 4096])
    extra = bytes(n) if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(n))
    return blob + extra, f"append {n} bytes", False


def m_splice(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Delete or duplicate a span of TEXT without fixing any offset."""
    text = _parse(blob)
    a = rng.randrange(text.t0, text.t1 + 1)
    b = min(text.t1 + 1, a + rng.randint(1, 64))
    if rng.random() < 0.5:
        return blob[:a] + blob[b:], f"splice delete [{a}, {b})", False
    return blob[:b] + blob[a:b] + blob[b:], f"splice duplicate [{a}, {b})", False


def m_set_value(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Set a structural, per-parameter or random keyword to a hostile value."""
    text = _parse(blob)
    key = _pick_key(rng, text)
    value = _value_for(key, rng)
    i = text.set(key, _encode(value, rng))
    return _rewrite(blob, text, fixed=[i]), f"set {key}={value[:24]!r}{'...' if len(value) > 24 else ''}", False


def m_delete_key(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Delete a structural, per-parameter or random keyword."""
    text = _parse(blob)
    key = _pick_key(rng, text)
    i = text.find(key)
    if i is None:
        raise NotApplicable
    del text.pairs[i]
    return _rewrite(blob, text), f"delete {key}", False


def m_duplicate_key(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Repeat a keyword, before or after it, with the same value (benign) or another one."""
    text = _parse(blob)
    key = _pick_key(rng, text)
    i = text.find(key)
    if i is None:
        raise NotApplicable
    same = rng.random() < 0.4
    value = text.pairs[i][1] if same else _encode(_value_for(key, rng), rng)
    where = 0 if rng.random() < 0.5 else len(text.pairs)
    text.pairs.insert(where, [text.pairs[i][0], value])
    fixed = [] if same else [where]
    desc = f"duplicate {key} {'same' if same else repr(value[:24])} {'first' if where == 0 else 'last'}"
    return _rewrite(blob, text, fixed=fixed), desc, same and value.strip() != b""


def m_key_case(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Lower-case a key or pad it with spaces (keys are case-blind and stripped): benign."""
    text = _parse(blob)
    i = rng.randrange(len(text.pairs))
    key = text.pairs[i][0]
    text.pairs[i][0] = key.lower() if rng.random() < 0.5 else b" " + key + b"  "
    return _rewrite(blob, text), f"re-case key {key[:24]!r}", True


def m_delimiter(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Re-write TEXT with another delimiter (benign when no key or value touches it and there is
    no supplemental TEXT, which shares the primary delimiter)."""
    text = _parse(blob)
    new = rng.choice([b"|", b"\\", b"!", b"\x0c", b"*", b"/", b","])
    supplemental = (text.get("$BEGINSTEXT") or b"0").strip(b" 0") != b""
    benign = not supplemental and not any(t[:1] == new or t[-1:] == new or not t for pair in text.pairs for t in pair)
    text.delim = new
    return _rewrite(blob, text), f"delimiter {new!r}", benign


def m_par_huge(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """A huge ``$PAR`` with no ``$DATATYPE`` (once: > 3 GB and no end in sight)."""
    text = _parse(blob)
    value = rng.choice(["99999999", "2147483647", "999999999999", "9" * 30, "100000"])
    i = text.set("$PAR", value.encode())
    j = text.find("$DATATYPE")
    if j is not None and rng.random() < 0.8:
        del text.pairs[j]
        i = text.find("$PAR") or 0
    return _rewrite(blob, text, fixed=[i]), f"$PAR={value} without $DATATYPE", False


def _spill_value(rng: random.Random, value: str, text: _Text) -> tuple[str, str]:
    """A mutated spillover value and what was done."""
    parts = value.split(",")
    n = max(_small_int(parts[0], 0), 0)
    kind = rng.choice(["digit", "digit", "index", "rename", "repeat", "count", "number", "drop", "add"])
    if kind == "digit":
        spots = [i for i, ch in enumerate(value) if ch.isascii() and ch.isdigit()]
        if spots:
            at = rng.choice(spots)
            odd = rng.choice(_ODD_DIGITS)
            return value[:at] + odd + value[at + 1 :], f"digit {value[at]!r}->{odd!r} at {at}"
    if kind in ("index", "rename", "repeat") and n >= 1 and len(parts) > n:
        j = rng.randint(1, n)
        if kind == "index":  # a channel named by a 1-based index, with a digit that is not ASCII
            name = rng.choice(["\u00b3", "\u0663", "1\u00b3", "\uff13", "\u00b2\u00b3", "3"])
        elif kind == "repeat":
            name = parts[rng.randint(1, n)]
        else:
            name = rng.choice(["NOPE", "3", "0", "99", parts[j].lower(), "", "-1", "99999999999"])
        return ",".join(parts[:j] + [name] + parts[j + 1 :]), f"{kind} name {j} -> {name!r}"
    if kind == "count":
        new = rng.choice([str(n + 1), str(max(n - 1, 0)), "0", "-1", "99999999", "\u00b3", f"{n}.0"])
        return ",".join([new] + parts[1:]), f"count -> {new!r}"
    if kind == "number" and len(parts) > 1:
        j = rng.randrange(max(1, len(parts) - n * n), len(parts))
        new = rng.choice(["nan", "inf", "1e999", "", "x", "1_0", "\u0661", "-0.5", "1e-320"])
        return ",".join(parts[:j] + [new] + parts[j + 1 :]), f"item {j} -> {new!r}"
    if kind == "drop":
        return ",".join(parts[:-1]), "drop last item"
    return value + ",0.5", "add an item"


def m_spillover(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Edit ``$SPILLOVER``/``SPILL``/``$COMP`` (Unicode digits, renamed or repeated channels,
    counts, numbers), or add a ``$SPILLOVER`` to a file without one."""
    text = _parse(blob)
    key = next((k for k in _SPILL_KEYS if text.get(k)), None)
    if key is None:
        names = [(text.get(f"$P{i}N") or f"P{i}".encode()).decode("latin-1").strip() for i in (1, 2)]
        value = f"2,{names[0]},{names[1]},1,0.1,0.2,1"
        key = "$SPILLOVER"
    else:
        value = (text.get(key) or b"").decode("utf-8", "replace")
    new, what = _spill_value(rng, value, text)
    i = text.set(key, _encode(new, rng))
    return _rewrite(blob, text, fixed=[i]), f"spillover {key}: {what}", False


def m_nextdata(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Point data set 0's ``$NEXTDATA`` into its HEADER or TEXT, to the end, before the start..."""
    text = _parse(blob)
    n = len(blob)
    target = rng.choice([1, 2, 57, 58, text.t0, text.t0 + 7, text.t1, n - 58, n - 57, n - 1, n, n + 1,
                         -1, -n, 10**12, 2**63])
    value = str(target) if rng.random() < 0.85 else rng.choice(["\u00b3", "1e3", "-0", "2.5", " "])
    i = text.set("$NEXTDATA", value.encode("utf-8"))
    return _rewrite(blob, text, fixed=[i]), f"$NEXTDATA={value}", False


def _with_nextdata(blob: bytes, value: int) -> bytes:
    """``blob`` with data set 0's ``$NEXTDATA`` set to ``value``, 21 characters wide."""
    text = _parse(blob)
    formatted = f"{value:021d}" if value >= 0 else "-" + f"{-value:020d}"
    i = text.set("$NEXTDATA", formatted.encode())
    return _rewrite(blob, text, fixed=[i])


def m_chain(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Append copies of the file as a ``$NEXTDATA`` chain whose last link ends the chain, loops
    back, or points into a HEADER or TEXT or past the end. Data set 0 is unchanged (benign)
    unless the chain loops, which the reader must refuse."""
    text = _parse(blob)
    length = len(_with_nextdata(blob, 0))
    copies = rng.choice([1, 2, 3, 8])
    mode = rng.choice(["end", "end", "loop", "loop_previous", "into_header", "into_text", "past_end"])
    last = {"end": 0, "loop": -copies * length, "loop_previous": -length, "into_header": -copies * length + 2,
            "into_text": -copies * length + text.t0 + 9, "past_end": length + 100}[mode]
    pieces = [_with_nextdata(blob, length) for _ in range(copies)] + [_with_nextdata(blob, last)]
    return b"".join(pieces), f"chain of {copies + 1} data sets, last link {mode} ({last})", not mode.startswith("loop")


def stacked_headers(blob: bytes, count: int) -> bytes:
    """``count`` HEADERs 58 bytes apart, each ``$NEXTDATA`` 58 on, all pointing at ``blob``'s TEXT.

    Parameters
    ----------
    blob
        A file whose data set 0 is copied.
    count
        How many HEADERs.

    Returns
    -------
    bytes
        The HEADERs, then ``blob`` after its own HEADER; data set 0 is ``blob``'s (its DATA
        found through the HEADER, whose offsets are moved).

    Raises
    ------
    NotApplicable
        When ``blob`` has no parsable TEXT or an offset would not fit a HEADER field.
    """
    blob = _with_nextdata(blob, 58)
    text = _parse(blob)
    shift = 58 * (count - 1)
    data = [(_header_int(blob, at) or 0) for at in (26, 34)]
    headers = []
    for k in range(count):
        rel = shift - 58 * k
        d0, d1 = (data[0] + rel, data[1] + rel) if data != [0, 0] else (0, 0)
        fields = (text.t0 + rel, text.t1 + rel, d0, d1, 0, 0)
        if max(fields) > 99_999_999:
            raise NotApplicable
        headers.append(blob[:10] + "".join(f"{v:>8d}" for v in fields).encode())
    return b"".join(headers) + blob[58:]


def m_stacked_headers(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Thousands of HEADERs, each ``$NEXTDATA`` 58 bytes on, all pointing at one TEXT."""
    count = rng.choice([2, 100, 1000, 10_000])
    return stacked_headers(blob, count), f"{count} stacked HEADERs sharing one TEXT", False


def m_graft(rng: random.Random, blob: bytes, seeds: Sequence[Seed]) -> tuple[bytes, str, bool]:
    """Swap data set 0's TEXT for another seed's (keywords that do not fit the DATA)."""
    text = _parse(blob)
    other = seeds[rng.randrange(len(seeds))]
    donor = _parse(other.data)
    text.pairs = [list(p) for p in donor.pairs]
    text.delim = donor.delim
    return _rewrite(blob, text), f"TEXT of {other.name}", False


MUTATIONS: list[tuple[Mutation, int]] = [
    (m_bit_flip, 4), (m_high_bit_digit, 3), (m_overwrite, 2), (m_truncate, 2), (m_append, 1), (m_splice, 1),
    (m_set_value, 8), (m_delete_key, 3), (m_duplicate_key, 4), (m_key_case, 1), (m_delimiter, 1),
    (m_par_huge, 1), (m_spillover, 5), (m_nextdata, 2), (m_chain, 2), (m_stacked_headers, 1), (m_graft, 1),
]


def make_case(seeds: Sequence[Seed], seed: int, index: int) -> Case:
    """Case ``index`` of the campaign ``seed``: a seed file, its mutations, what to read.

    Parameters
    ----------
    seeds
        The seed files (the same list, in the same order, reproduces the same cases).
    seed
        The campaign's random seed.
    index
        The case number.

    Returns
    -------
    Case
    """
    rng = random.Random(f"rescue-fcs-fuzz:{seed}:{index}")
    k = rng.randrange(len(seeds))
    blob, mutations, benign = seeds[k].data, [], True
    funcs, weights = zip(*MUTATIONS)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        for _attempt in range(8):
            mutate = rng.choices(funcs, weights=weights)[0]
            try:
                blob, desc, ok = mutate(rng, blob, seeds)
            except NotApplicable:
                continue
            mutations.append(f"{mutate.__name__[2:]}: {desc}")
            benign = benign and ok
            break
    dataset = rng.choices([0, 1, 2, 5], weights=[86, 10, 2, 2])[0]
    only_text = rng.random() < 0.15
    return Case(index, k, seeds[k].name, mutations, blob, dataset, only_text, benign and bool(mutations))


def make_cases(seeds: Sequence[Seed], seed: int, n: int, start: int = 0) -> Iterator[Case]:
    """Cases ``start`` .. ``start + n - 1`` of campaign ``seed``, generated lazily."""
    for index in range(start, start + n):
        yield make_case(seeds, seed, index)


# --------------------------------------------------------------------------- reading a case


def exercise(path: str, dataset: int, only_text: bool) -> np.ndarray:
    """What a user of the reader does with a file: read it, summarise it, decode its keywords.

    Returns
    -------
    numpy.ndarray
        The events read.

    Raises
    ------
    AssertionError
        When the result is inconsistent (events, channels and markers of different widths).
    """
    fd = read_fcs(path, dataset=dataset, only_text=only_text)
    assert fd.events.ndim == 2 and fd.events.shape[1] == len(fd.channels) == len(fd.markers), "inconsistent widths"
    describe_data(fd)
    fd.ranges(), fd.amplification(), fd.gains()
    if fd.spillover is not None:
        assert set(fd.spillover.channels) <= set(fd.channels), "spillover names a channel the file lacks"
        assert np.all(np.isfinite(fd.spillover.matrix)), "spillover matrix not finite"
    return fd.events


def _same_events(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _classify(case: Case, path: str, seed_path: str | None) -> dict:
    """Read one case in this process; the outcome as a JSON-able dict."""
    try:
        events = exercise(path, case.dataset, case.only_text)
    except MemoryError as exc:
        return {"outcome": "memory", "error_type": "MemoryError", "message": str(exc)}
    except RescueError as exc:
        if isinstance(exc.__cause__, MemoryError):
            return {"outcome": "memory", "error_type": type(exc).__name__, "message": str(exc)}
        return {"outcome": "refused", "error_type": type(exc).__name__, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the point is to catch what the reader lets through
        return {"outcome": "crash", "error_type": type(exc).__name__, "message": str(exc),
                "traceback": traceback.format_exc()}
    if case.benign and case.dataset == 0 and seed_path is not None:
        try:
            reference = exercise(seed_path, 0, case.only_text)
        except RescueError:
            return {"outcome": "ok"}
        if not _same_events(events, reference):
            return {"outcome": "mismatch", "error_type": "",
                    "message": f"benign mutations changed data set 0: {events.shape} {events.dtype} "
                               f"vs {reference.shape} {reference.dtype}"}
    return {"outcome": "ok"}


def _clip(report: dict) -> dict:
    for key in ("message", "traceback"):
        if key in report:
            report[key] = str(report[key])[-_MAX_REPORT_CHARS:]
    return report


def run_inline(case: Case, workdir: str | os.PathLike[str], seed_path: str | None = None) -> Result:
    """Read one case in this process, without limits (to reproduce a failure with a traceback)."""
    path = Path(workdir) / f"case-{case.index}.fcs"
    path.write_bytes(case.data)
    t0 = time.perf_counter()
    report = _classify(case, str(path), seed_path)
    return _result(case, report, time.perf_counter() - t0, 0.0)


def _result(case: Case, report: dict, wall: float, rss_mb: float) -> Result:
    return Result(case.index, case.seed_name, case.mutations, case.dataset, case.only_text,
                  report.get("outcome", "died"), report.get("error_type", ""), report.get("message", ""),
                  report.get("traceback", ""), round(wall, 4), round(rss_mb, 1))


def _address_space_now() -> int:
    """This process's virtual memory size in bytes (0 where /proc is absent)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def effective_address_limit(requested: int) -> int:
    """``requested``, raised above what this process already maps when that leaves < 1 GiB.

    A forked child starts with the parent's mappings; a limit below them would make every
    case fail for reasons that have nothing to do with the file.
    """
    now = _address_space_now()
    return requested if now + GIB <= requested else now + requested


def _child(case: Case, path: str, seed_path: str | None, fd: int, address_limit: int) -> None:
    """Body of a forked child: limit memory, read the case, report on ``fd``, exit."""
    try:
        import resource
        import warnings

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))
        warnings.simplefilter("ignore")
        report = _clip(_classify(case, path, seed_path))
        os.write(fd, json.dumps(report).encode())
    except BaseException as exc:  # noqa: BLE001 - report, never return into the parent's code
        try:
            report = {"outcome": "died", "error_type": type(exc).__name__, "message": str(exc)[:500]}
            os.write(fd, json.dumps(report).encode())
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(0)


@dataclass
class _Running:
    case: Case
    path: Path
    fd: int
    start: float
    chunks: list[bytes] = field(default_factory=list)


def _drain(job: _Running) -> None:
    while True:
        try:
            chunk = os.read(job.fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            return
        job.chunks.append(chunk)


def _finish(job: _Running, status: int, rusage, timed_out: bool) -> Result:
    _drain(job)
    os.close(job.fd)
    job.path.unlink(missing_ok=True)
    wall = time.monotonic() - job.start
    rss = rusage.ru_maxrss / 1024 if rusage is not None else 0.0
    if timed_out:
        return _result(job.case, {"outcome": "timeout", "message": f"still running after {wall:.1f} s"}, wall, rss)
    try:
        report = json.loads(b"".join(job.chunks).decode())
    except ValueError:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        outcome = "memory" if sig in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS) else "died"
        report = {"outcome": outcome, "message": f"child ended without a report (status {status}, signal {sig})"}
    return _result(job.case, report, wall, rss)


def run_cases(
    cases: Iterable[Case],
    *,
    seeds: Sequence[Seed],
    jobs: int = 1,
    timeout: float = 5.0,
    address_limit: int = 4 * GIB,
    workdir: str | os.PathLike[str] | None = None,
    compare: bool = True,
) -> Iterator[Result]:
    """Read every case in a forked child with a wall-clock and an address-space limit.

    Parameters
    ----------
    cases
        The cases (e.g. :func:`make_cases`).
    seeds
        The seed list the cases were made from (benign cases are compared with their seed).
    jobs
        Children at a time.
    timeout
        Wall-clock seconds a child may take before it is killed (``timeout``).
    address_limit
        ``RLIMIT_AS`` of each child in bytes (see :func:`effective_address_limit`).
    workdir
        Where the mutated files are written (a temporary folder by default).
    compare
        Check benign cases against their seed.

    Yields
    ------
    Result
        In completion order, one per case.
    """
    if not hasattr(os, "fork"):
        raise RuntimeError("fuzzing needs os.fork (Linux or macOS)")
    with tempfile.TemporaryDirectory(prefix="fcs-fuzz-", dir=workdir) as tmp:
        seed_paths: dict[int, str] = {}
        running: dict[int, _Running] = {}
        pending = iter(cases)
        exhausted = False
        while running or not exhausted:
            while not exhausted and len(running) < max(1, jobs):
                case = next(pending, None)
                if case is None:
                    exhausted = True
                    break
                seed_path = _seed_file(tmp, case.seed, seeds, seed_paths) if compare and case.benign else None
                running.update(_spawn(case, Path(tmp), seed_path, address_limit))
            for pid, job in list(running.items()):
                _drain(job)
                done, status, rusage = os.wait4(pid, os.WNOHANG)
                if done == 0 and time.monotonic() - job.start <= timeout:
                    continue
                if done == 0:
                    os.kill(pid, signal.SIGKILL)
                    _, status, rusage = os.wait4(pid, 0)
                del running[pid]
                yield _finish(job, status, rusage, timed_out=done == 0)
            if running:
                time.sleep(0.001)


def _seed_file(tmp: str, k: int, seeds: Sequence[Seed], cache: dict[int, str]) -> str:
    if k not in cache:
        path = Path(tmp) / f"seed-{k}.fcs"
        path.write_bytes(seeds[k].data)
        cache[k] = str(path)
    return cache[k]


def _spawn(case: Case, tmp: Path, seed_path: str | None, address_limit: int) -> dict[int, _Running]:
    path = tmp / f"case-{case.index}.fcs"
    path.write_bytes(case.data)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        _child(case, str(path), seed_path, w, address_limit)
    os.close(w)
    os.set_blocking(r, False)
    return {pid: _Running(case, path, r, time.monotonic())}


# --------------------------------------------------------------------------- summary


def summarize(results: Sequence[Result]) -> dict:
    """Counts by outcome, refusals by error class, the failures and the slowest cases.

    Parameters
    ----------
    results
        Every case's result.

    Returns
    -------
    dict
        ``counts`` (every outcome of :data:`OUTCOMES`), ``refused_by_type``, ``failures``
        (full records, for reproduction), ``slowest`` (ten), ``max_wall_s``, ``max_rss_mb``.
    """
    counts = Counter(r.outcome for r in results)
    return {
        "cases": len(results),
        "counts": {o: counts.get(o, 0) for o in OUTCOMES},
        "refused_by_type": dict(Counter(r.error_type for r in results if r.outcome == "refused").most_common()),
        "failures": [asdict(r) for r in results if r.outcome in FAILURES],
        "slowest": [{"index": r.index, "seed": r.seed_name, "wall_s": r.wall_s, "mutations": r.mutations}
                    for r in sorted(results, key=lambda r: -r.wall_s)[:10]],
        "max_wall_s": max((r.wall_s for r in results), default=0.0),
        "max_rss_mb": max((r.max_rss_mb for r in results), default=0.0),
    }
