"""Benchmark: rescue_gpu.fcs.read_fcs against flowio on large synthetic FCS files.

Writes (to a temporary directory) an events x 20 FCS 3.1 file of 16-bit integers with
``$PnR=1024`` (so a 10-bit mask has to be applied) and one of float32; times
``read_fcs(path)`` and ``flowio.FlowData(path).as_array(preprocess=False)`` (best of
``--repeat``), checks that both give the same values, and measures the peak of
Python/numpy allocations during our read with tracemalloc.

Usage::

    python benchmarks/bench_fcs.py                 # 2,000,000 events x 20 parameters
    python benchmarks/bench_fcs.py --events 200000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import platform
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rescue_gpu.fcs import read_fcs


def write_case(path: Path, events: np.ndarray, *, datatype: str, bits: int, rng: int) -> int:
    """Write ``events`` little-endian as an FCS 3.1 file; returns the DATA size in bytes."""
    n, p = events.shape
    data = np.ascontiguousarray(events).tobytes()
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": datatype, "$MODE": "L", "$NEXTDATA": "0",
          "$PAR": str(p), "$TOT": str(n), "$BEGINDATA": "0" * 20, "$ENDDATA": "0" * 20}
    for i in range(1, p + 1):
        kw.update({f"$P{i}N": f"CH{i}", f"$P{i}B": str(bits), f"$P{i}E": "0,0", f"$P{i}R": str(rng)})
    text_len = len("/" + "".join(f"{k}/{v}/" for k, v in kw.items()))
    start = 58 + text_len
    kw["$BEGINDATA"], kw["$ENDDATA"] = str(start).zfill(20), str(start + len(data) - 1).zfill(20)
    text = ("/" + "".join(f"{k}/{v}/" for k, v in kw.items())).encode()
    hdr_data = (start, start + len(data) - 1) if start + len(data) <= 99_999_999 else (0, 0)
    header = "FCS3.1    " + "".join(f"{v:>8d}" for v in (58, 57 + text_len, *hdr_data, 0, 0))
    path.write_bytes(header.encode() + text + data)
    return len(data)


def best_of(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    """Fastest wall time of ``repeat`` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out  # type: ignore[return-value]


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak traced allocation during one call (numpy buffers are traced)."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return peak


def flowio_read(path: Path) -> np.ndarray:
    import flowio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(flowio.FlowData(str(path)).as_array(preprocess=False))


def run_case(name: str, path: Path, expected: np.ndarray, data_bytes: int, repeat: int) -> dict:
    ours_t, ours = best_of(lambda: read_fcs(path).events, repeat)
    peer_t, peer = best_of(lambda: flowio_read(path), repeat)
    same = np.array_equal(ours, expected) and np.array_equal(peer.astype(ours.dtype), ours)
    peak = peak_bytes(lambda: read_fcs(path))
    return {"case": name, "ours_s": ours_t, "flowio_s": peer_t, "speedup": peer_t / ours_t,
            "equal": same, "peak_mb": peak / 2**20, "data_mb": data_bytes / 2**20,
            "peak_over_data": peak / data_bytes, "dtype": str(ours.dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--params", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, p = args.events, args.params
    ints = rng.integers(0, 65536, size=(n, p), dtype=np.uint16)  # high bits set: mask matters
    floats = rng.normal(1000, 300, size=(n, p)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f_int, f_flt = Path(tmp) / "int16.fcs", Path(tmp) / "float32.fcs"
        size = write_case(f_int, ints, datatype="I", bits=16, rng=1024)
        rows.append(run_case("uint16, $PnR=1024", f_int, ints & 1023, size, args.repeat))
        f_int.unlink()
        size = write_case(f_flt, floats, datatype="F", bits=32, rng=262144)
        rows.append(run_case("float32", f_flt, floats, size, args.repeat))
    print(f"# {n:,} events x {p} parameters, best of {args.repeat}; {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}")
    print(f"{'case':<20} {'ours s':>8} {'flowio s':>9} {'speedup':>8} {'equal':>6} {'peak MiB':>9} "
          f"{'DATA MiB':>9} {'peak/DATA':>9}  dtype")
    for r in rows:
        print(f"{r['case']:<20} {r['ours_s']:>8.3f} {r['flowio_s']:>9.3f} {r['speedup']:>7.1f}x {str(r['equal']):>6} "
              f"{r['peak_mb']:>9.1f} {r['data_mb']:>9.1f} {r['peak_over_data']:>9.2f}  {r['dtype']}")


if __name__ == "__main__":
    main()
