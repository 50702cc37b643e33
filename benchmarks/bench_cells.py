"""Benchmark the single-cell image path: cells/s of the networks and of a whole scoring run.

1. Network throughput, per assay: ResNet-50 on 2-plane 48 x 48 imaging-flow crops and
   ResNeXt-50 (32x4d) on 3-plane smear crops (224 x 224 by default, ``--smear-size``).
   Ours: :func:`rescue_gpu.engine.make_engine` (torch eager, channels_last, batches of
   ``--batch``), with and without the penultimate features. Peer in the same run: the
   plain torchvision model in NCHW under ``torch.inference_mode`` (what a user would write),
   same batch. On a GPU also fp16 autocast and CUDA graphs (never run here: no GPU).
2. End to end (``--e2e``): ``score_cells`` in-process on simulated imaging-flow samples
   (read channel TIFFs, prepare, ResNet-50, readout, Grad-CAM gallery, store, report),
   as cells/s over the processing phase.

Random weights: speed does not depend on them. Example::

    .venv/bin/python benchmarks/bench_cells.py --threads 1 --batch 64 --e2e
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import images_per_second  # noqa: E402


def make_cell_record(pipeline: Any) -> Any:
    """A random-weight cell model record for ``pipeline``."""
    from rescue_gpu.cells.record import build_cell_model
    from rescue_gpu.cells.record import CellModelRecord

    torch.manual_seed(0)
    net = build_cell_model(architecture=pipeline.model.architecture, in_channels=pipeline.in_channels,
                           n_classes=len(pipeline.classes.names)).eval()
    return CellModelRecord(model=net, architecture=pipeline.model.architecture, classes=pipeline.classes.names,
                           leukaemic=pipeline.classes.leukaemic, channels=pipeline.input.network_channels,
                           image_size=pipeline.preprocess.size, preprocess=pipeline.preprocess)


def network_rows(name: str, pipeline: Any, *, batch: int, min_time: float, device: str) -> list[dict[str, Any]]:
    """cells/s of our engine (with and without features) and of the plain torchvision peer."""
    from rescue_gpu.engine import make_engine

    rec = make_cell_record(pipeline)
    s, c = pipeline.preprocess.size, pipeline.in_channels
    x = np.random.default_rng(0).random((batch, c, s, s), dtype=np.float32)
    peer_model = rec.model.to(device).eval()

    def peer(a: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return peer_model(torch.from_numpy(a).to(device)).float().cpu().numpy()

    peer_rate, _ = images_per_second(peer, x, min_time=min_time)
    rows = [{"assay": name, "engine": "peer: torchvision eager NCHW fp32", "cells_per_s": peer_rate}]
    precisions = ["fp32"] + (["fp16"] if device == "cuda" else [])
    for prec in precisions:
        kinds = ["torch"] + (["cuda-graphs"] if device == "cuda" else [])
        for kind in kinds:
            eng = make_engine(rec, kind=kind, device=device, precision=prec, batch_size=batch)
            rate, _ = images_per_second(eng.logits, x, min_time=min_time)
            rows.append({"assay": name, "engine": f"ours: {eng.name}", "cells_per_s": rate})
            if kind == "torch":
                rate, _ = images_per_second(lambda a, e=eng: e.logits_and_features(a)[0], x, min_time=min_time)
                rows.append({"assay": name, "engine": f"ours: {eng.name} + features", "cells_per_s": rate})
    for r in rows:
        r["ratio_vs_peer"] = r["cells_per_s"] / peer_rate
        r.update(architecture=pipeline.model.architecture, size=s, planes=c, batch=batch)
    return rows


def e2e(*, samples: int, cells: int, threads: int) -> dict[str, Any]:
    """Simulate imaging-flow samples and score them in-process with a random ResNet-50; cells/s."""
    from rescue_gpu.cells.assay import CellScoreOptions, score_cells
    from rescue_gpu.cells.spec import load_cell_pipeline
    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.simulate.cells import simulate_cell_library

    pipe = load_cell_pipeline("ifc-labelfree")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lib = simulate_cell_library(root / "lib", assay="ifc", layout="channel-tiffs", n_train_patients=3,
                                    cells_per_class=1, n_samples=samples, cells_per_sample=cells, seed=1)
        make_cell_record(pipe).save(root / "model")
        t0 = time.perf_counter()
        summary = score_cells(lib.samples_manifest, model=root / "model", out=root / "run",
                              options=CellScoreOptions(pipeline=pipe), runtime=RuntimeConfig(backend="cpu"),
                              in_process=True)
        wall = time.perf_counter() - t0
    return {"samples": samples, "cells_per_sample": cells, "processing_s": round(summary.seconds, 2),
            "wall_s_incl_outputs": round(wall, 2), "cells_per_s": round(summary.cells_per_s, 1),
            "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--smear-size", type=int, default=224)
    ap.add_argument("--min-time", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--e2e", action="store_true", help="also time score_cells end to end")
    ap.add_argument("--e2e-samples", type=int, default=4)
    ap.add_argument("--e2e-cells", type=int, default=2000)
    args = ap.parse_args()
    import dataclasses

    from rescue_gpu.cells.spec import load_cell_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, device {device}, "
          f"threads {torch.get_num_threads()}, batch {args.batch}")
    smear = load_cell_pipeline("smear-cytomorphology")
    smear = dataclasses.replace(smear, preprocess=dataclasses.replace(smear.preprocess, size=args.smear_size,
                                                                      resize=args.smear_size))
    rows = network_rows("ifc 48px", load_cell_pipeline("ifc-labelfree"), batch=args.batch, min_time=args.min_time,
                        device=device)
    rows += network_rows(f"smear {args.smear_size}px", smear, batch=max(1, args.batch // 4), min_time=args.min_time,
                         device=device)
    print(f"{'assay':<12} {'architecture':<16} {'batch':>5} {'engine':<44} {'cells/s':>10} {'vs peer':>8}")
    for r in rows:
        print(f"{r['assay']:<12} {r['architecture']:<16} {r['batch']:>5} {r['engine']:<44} "
              f"{r['cells_per_s']:>10.1f} {r['ratio_vs_peer']:>7.2f}x")
    if args.e2e:
        res = e2e(samples=args.e2e_samples, cells=args.e2e_cells, threads=torch.get_num_threads())
        print(f"end to end (score_cells in-process, ResNet-50 48px, channel TIFFs, gallery + report): {res}")


if __name__ == "__main__":
    main()
