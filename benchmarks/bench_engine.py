"""Benchmark the inference engines: images/s by batch size and engine, ratios vs torch eager fp32.

For each image size (default: the pipeline's raster size, and 64) a random-weight
flow model record is built; each engine is warmed up, then a batch of ``b`` images is
predicted repeatedly for at least ``--min-time`` seconds. Engines: torch eager fp32
(NCHW), torch eager fp32 channels_last, onnxruntime (CPU provider, or CUDA when
available); on a GPU also torch fp16 autocast, CUDA graphs fp16, torch.compile fp16
and TensorRT fp16 when importable. The last column of the second table is the largest
|delta logit| of the engine vs eager fp32 on the last batch's images (logits, not
probabilities: a random-weight net's probabilities sit near 0 or 1 and would hide
differences).

Example::

    .venv/bin/python benchmarks/bench_engine.py --size 128 --size 64 --channels 1 --batches 1,8,32,64

``--threads 1`` sets torch's and onnxruntime's intra-op threads: on a shared, busy CPU,
torch with 2 threads measured ~10x slower per image than with 1 (OpenMP threads fighting
other processes), so compare engines at the same thread count.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def images_per_second(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, *, min_time: float) -> tuple[float, np.ndarray]:
    """Warm up once, then call ``predict(x)`` until ``min_time`` has passed; images/s and the last output."""
    out = predict(x)
    reps, t0 = 0, time.perf_counter()
    while True:
        out = predict(x)
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return reps * len(x) / dt, out


def make_record(size: int, channels: int) -> Any:
    """A random-weight flow model record (the pipeline's head) at ``size`` x ``size``."""
    from rescue_gpu.config import RasterSpec, load_pipeline
    from rescue_gpu.flow.record import ModelRecord, build_model

    head = load_pipeline("aml-mrd").model.head
    torch.manual_seed(0)
    model = build_model(in_channels=channels, head=head).eval()
    return ModelRecord(model=model, in_channels=channels, image_size=size, head=head,
                       raster=RasterSpec(size=size), reference_fingerprint="bench")


def engine_factories(record: Any, onnx_file: Path, device: torch.device, threads: int = 0) -> dict[str, Callable[[int], Any]]:
    """Engine name to ``factory(batch_size)``."""
    from rescue_gpu.engine import make_engine
    from rescue_gpu.engine.onnxrt import OnnxEngine
    from rescue_gpu.engine.torch_engine import TorchEngine

    cpu = torch.device("cpu")
    out: dict[str, Callable[[int], Any]] = {
        "torch eager fp32": lambda b: TorchEngine(record, device=device if device.type == "cuda" else cpu,
                                                  batch_size=b, channels_last=False),
        "torch eager fp32 channels_last": lambda b: TorchEngine(record, device=device, batch_size=b, channels_last=True),
        "onnxruntime fp32": lambda b: OnnxEngine(record, device=device, batch_size=b, onnx_path=onnx_file,
                                                 intra_op_threads=threads),
    }
    if device.type == "cuda":
        out["torch fp16 autocast"] = lambda b: make_engine(record, kind="torch", device="cuda", precision="fp16", batch_size=b)
        out["cuda-graphs fp16"] = lambda b: make_engine(record, kind="cuda-graphs", device="cuda", precision="fp16", batch_size=b)
        out["torch.compile fp16"] = lambda b: make_engine(record, kind="compiled", device="cuda", precision="fp16", batch_size=b)
        from rescue_gpu.engine.tensorrt import is_available

        if is_available():
            out["tensorrt fp16"] = lambda b: make_engine(record, kind="tensorrt", device="cuda", precision="fp16", batch_size=b)
    return out


def run_size(size: int, channels: int, batches: list[int], *, device: torch.device, min_time: float,
             only: list[str], threads: int = 0) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """Images/s per engine and batch size, and max |delta logit| vs eager at the last batch size."""
    from rescue_gpu.engine.onnxrt import export_onnx

    record = make_record(size, channels)
    rates: dict[str, dict[int, float]] = {}
    dp: dict[str, float] = {}
    x_all = np.random.default_rng(0).random((max(batches), channels, size, size), dtype=np.float32)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(record, Path(tmp) / "m.onnx")
        for name, factory in engine_factories(record, onnx_file, device, threads).items():
            if only and not any(o in name for o in only):
                continue
            rates[name] = {}
            for b in batches:
                eng = factory(b)
                rates[name][b], _ = images_per_second(eng.predict, x_all[:b], min_time=min_time)
            out = eng.logits(x_all[:b])
            base = out if base is None else base
            dp[name] = float(np.abs(out - base).max())
            print(f"  size {size}: {name}: " + ", ".join(f"b={b} {r:.1f}/s" for b, r in rates[name].items()), flush=True)
    return rates, dp


def print_tables(size: int, rates: dict[str, dict[int, float]], dp: dict[str, float], batches: list[int]) -> None:
    """Images/s and ratio vs the first engine (eager fp32) as markdown tables."""
    base = next(iter(rates.values()))
    cols = " | ".join(f"b={b}" for b in batches)
    print(f"\n### {size} x {size}: images/s\n\n| engine | {cols} |\n|---|" + "---|" * len(batches))
    for name, r in rates.items():
        print(f"| {name} | " + " | ".join(f"{r[b]:.1f}" for b in batches) + " |")
    print(f"\n### {size} x {size}: ratio vs eager fp32\n\n| engine | {cols} | max abs dlogit |\n|---|" + "---|" * (len(batches) + 1))
    for name, r in rates.items():
        print(f"| {name} | " + " | ".join(f"{r[b] / base[b]:.2f}x" for b in batches) + f" | {dp[name]:.1e} |")


def main() -> None:
    """Parse options, run every size and print the tables."""
    from rescue_gpu.config import load_pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, action="append", help="image size (repeatable); default: pipeline size and 64")
    ap.add_argument("--channels", type=int, default=0, help="image channels; default: the pipeline's raster channels")
    ap.add_argument("--batches", default="1,8,32,64", help="comma-separated batch sizes")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement (after one warm-up call)")
    ap.add_argument("--engines", default="", help="comma-separated substrings selecting engines (default all)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch and onnxruntime intra-op threads (0: defaults)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline("aml-mrd")
    sizes = args.size or [pipe.raster.size, 64]
    channels = args.channels or len(pipe.raster.channels)
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device("cuda" if (args.device != "cpu" and torch.cuda.is_available()) else "cpu")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"device {device} (GPU: {gpu}); CPU {platform.processor() or platform.machine()}, torch threads "
          f"{torch.get_num_threads()}; torch {torch.__version__}; channels {channels}; batches {batches}", flush=True)
    for size in sizes:
        rates, dp = run_size(size, channels, batches, device=device, min_time=args.min_time,
                             only=[e for e in args.engines.split(",") if e], threads=args.threads)
        print_tables(size, rates, dp, batches)


if __name__ == "__main__":
    main()
