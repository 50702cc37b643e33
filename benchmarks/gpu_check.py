"""One-shot GPU check: install from wheels, GPU tests, sized throughput; one JSON + a log.

Run on the GPU machine (no network, see ../shared/GPU.md) from the repository root::

    make gpu-check                  # = python3 benchmarks/gpu_check.py --out $OUT

Stages, each a subprocess with its own time limit (the whole run stays under
``--budget-s``, default 450 s, well inside the 8-minute rule):

1. ``install``  -- ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` when
   ``.whl/`` holds wheels. Fetch them beforehand, on a machine with network, with the
   packages our runtime and tests need beyond the script's default set::

       bash ../shared/gpu/fetch-wheels.sh rich markdown-it-py mdurl pygments safetensors \
           array-api-strict hypothesis sortedcontainers pytest-timeout tifffile

2. ``env``      -- versions, the device, and every import that fails (one look shows
   what is missing before the tests run);
3. ``tests``    -- ``pytest -m "gpu or gpusim"`` on the real device (real numba.cuda
   kernels, cupy, CUDA torch: fp16/bf16 parity, CUDA graphs, torch.compile);
4. ``projection`` -- events/s of ``transform(backend="gpu")`` on ``--events`` (1.5 M)
   against a ``--ref-events`` (30,000) reference, plus GPU-vs-CPU parity on a subset;
5. ``resnet``   -- ResNet-34 images/s (fp32, fp16 and bf16 autocast, channels_last) at the
   configured raster size and at 224 px, with fp16/bf16 |dp| against fp32;
6. ``cohort``   -- a ``--cohort-samples`` (50) end-to-end cohort on ``LocalCUDACluster``:
   ``--workers`` GPU workers (one GPU each; counts above the visible GPUs are skipped
   and noted), every visible GPU (``CUDA_VISIBLE_DEVICES``) when there are more, and
   ``--workers-per-gpu`` samples in flight per GPU (see :func:`cohort_runs`).

Everything lands under ``--out`` (default ``$OUT``): ``gpu_check.json`` (schema
:data:`SCHEMA`, checked by :func:`validate_report`) and ``gpu_check.log``. A stage that
fails or times out is recorded and the next one runs. ``--dry-run`` writes the plan
without running anything; ``--cpu`` runs the throughput stages on the CPU at toy sizes
(how tests/test_gpu_check.py exercises this script without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "rescue_gpu.gpu_check/1"
STAGES = ("install", "env", "tests", "projection", "resnet", "cohort")
STATUSES = ("ok", "failed", "timeout", "skipped", "planned")
MARK = "GPU_CHECK_RESULT "
# Per-stage limits (s) for the GPU run; their sum is trimmed to --budget-s.
LIMITS = {"install": 40, "env": 30, "tests": 150, "projection": 90, "resnet": 60, "cohort": 150}
TARGETS = {"projection_events_per_s": 5_000_000, "resnet34_224_fp16_images_per_s": 40_000,
           "library_1361x500k_minutes": 5.0}


# ---------------------------------------------------------------- arguments and report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (validated; errors exit 2 with a message)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="results folder (default $OUT, else ./gpu-check-out)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-time budget of the whole run")
    ap.add_argument("--events", type=int, default=1_500_000, help="events projected in the throughput run")
    ap.add_argument("--ref-events", type=int, default=30_000)
    ap.add_argument("--dims", type=int, default=12)
    ap.add_argument("--image", type=int, default=None, help="raster size (default: the aml-mrd pipeline's)")
    ap.add_argument("--batch", type=int, default=512, help="ResNet images per batch")
    ap.add_argument("--cohort-samples", type=int, default=50)
    ap.add_argument("--cohort-events", type=int, default=20_000)
    ap.add_argument("--workers", default="1,2", help="LocalCUDACluster worker counts, comma-separated")
    ap.add_argument("--workers-per-gpu", default="2", help="samples in flight per GPU (>1) run on every visible GPU")
    ap.add_argument("--stages", default=",".join(STAGES), help="stages to run, comma-separated")
    ap.add_argument("--wheels", type=Path, default=ROOT / ".whl")
    ap.add_argument("--site", type=Path, default=Path("/tmp/site"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="write the plan (JSON + log) and run nothing")
    mode.add_argument("--cpu", action="store_true", help="CPU toy run of the throughput stages (no GPU needed)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
    try:
        workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    except ValueError:
        ap.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not workers or min(workers) < 1:
        ap.error("--workers needs at least one count >= 1")
    try:
        per_gpu = [int(w) for w in str(args.workers_per_gpu).split(",") if w.strip()]
    except ValueError:
        ap.error(f"--workers-per-gpu must be comma-separated integers, got {args.workers_per_gpu!r}")
    if per_gpu and min(per_gpu) < 1:
        ap.error("--workers-per-gpu counts must be >= 1")
    args.per_gpu_list = per_gpu
    for name in ("events", "ref_events", "dims", "batch", "cohort_samples", "cohort_events"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.budget_s <= 0:
        ap.error("--budget-s must be positive")
    args.stage_list, args.worker_list = stages, workers
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("gpu-check-out")
    if args.cpu:  # toy sizes unless given explicitly
        defaults = {"events": 1_500_000, "ref_events": 30_000, "batch": 512, "cohort_samples": 50, "cohort_events": 20_000}
        toy = {"events": 4000, "ref_events": 2000, "batch": 8, "cohort_samples": 2, "cohort_events": 2000}
        for k, v in toy.items():
            if getattr(args, k) == defaults[k]:
                setattr(args, k, v)
    return args


def stage_limits(stages: list[str], budget_s: float) -> dict[str, float]:
    """Per-stage limits, scaled down so that they sum to at most ``budget_s``."""
    want = {s: float(LIMITS[s]) for s in stages}
    total = sum(want.values())
    scale = min(1.0, budget_s / total) if total else 1.0
    return {s: round(v * scale, 1) for s, v in want.items()}


def new_report(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """The report skeleton."""
    return {
        "schema": SCHEMA, "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None,
        "host": {"node": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "command": [sys.executable, *sys.argv], "budget_s": args.budget_s,
        "sizes": {"events": args.events, "ref_events": args.ref_events, "dims": args.dims, "image": args.image,
                  "batch": args.batch, "cohort_samples": args.cohort_samples, "cohort_events": args.cohort_events,
                  "workers": args.worker_list, "workers_per_gpu": args.per_gpu_list},
        "targets": dict(TARGETS), "stages": [], "figures": {}, "ok": None,
    }


def validate_report(rep: dict[str, Any]) -> list[str]:
    """Problems with a report's structure (empty list: valid)."""
    problems = []
    for key, typ in (("schema", str), ("mode", str), ("started", str), ("host", dict), ("sizes", dict),
                     ("targets", dict), ("stages", list), ("figures", dict)):
        if not isinstance(rep.get(key), typ):
            problems.append(f"{key}: expected {typ.__name__}")
    if rep.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}")
    if rep.get("mode") not in ("gpu", "cpu", "dry-run"):
        problems.append("mode: expected gpu, cpu or dry-run")
    for i, st in enumerate(rep.get("stages") or []):
        for key, typ in (("name", str), ("status", str), ("limit_s", (int, float)), ("seconds", (int, float)),
                         ("result", dict)):
            if not isinstance(st.get(key), typ):
                problems.append(f"stages[{i}].{key}: wrong or missing")
        if st.get("name") not in STAGES:
            problems.append(f"stages[{i}].name: unknown {st.get('name')!r}")
        if st.get("status") not in STATUSES:
            problems.append(f"stages[{i}].status: unknown {st.get('status')!r}")
    if rep.get("finished") is not None and not isinstance(rep.get("ok"), bool):
        problems.append("ok: expected a bool once finished")
    return problems


# ---------------------------------------------------------------- orchestration


class Log:
    """Append-only log file, echoed to stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def __call__(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
        print(text, flush=True)


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    parts = [str(ROOT)] + ([str(args.site)] if args.site.is_dir() else []) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _run(cmd: list[str], limit: float, env: dict[str, str], log: Log) -> tuple[str, float, str]:
    """Run ``cmd`` with a time limit; (status, seconds, combined output)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        out, status = p.stdout + p.stderr, "ok" if p.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = "timeout"
    log(out)
    return status, round(time.perf_counter() - t0, 2), out


def _parse_result(out: str) -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {}


def _stage_cmd(name: str, args: argparse.Namespace) -> list[str]:
    if name == "install":
        wheels = sorted(str(p) for p in args.wheels.glob("*.whl"))
        return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                "--no-cache-dir", "--upgrade", "--target", str(args.site), *wheels]
    if name == "tests":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or gpusim",
                "--continue-on-collection-errors", f"--junitxml={args.out / 'junit.xml'}", "tests"]
    params = {k: getattr(args, k) for k in ("events", "ref_events", "dims", "image", "batch", "cohort_samples",
                                            "cohort_events", "worker_list", "per_gpu_list", "cpu")}
    return [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--params", json.dumps(params)]


def _junit_counts(path: Path) -> dict[str, int]:
    import xml.etree.ElementTree as ET

    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: int(suite.get(k, 0)) for k in keys} if suite is not None else {}


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or plan) every stage; write the JSON after each one; return the report."""
    args.out.mkdir(parents=True, exist_ok=True)
    mode = "dry-run" if args.dry_run else ("cpu" if args.cpu else "gpu")
    rep, log = new_report(args, mode), Log(args.out / "gpu_check.log")
    jpath = args.out / "gpu_check.json"
    limits = stage_limits(args.stage_list, args.budget_s)
    deadline = time.perf_counter() + args.budget_s
    log(f"# gpu_check {mode}  {rep['started']}  stages {', '.join(args.stage_list)}  limits {limits}")
    env = _child_env(args)
    for name in args.stage_list:
        st = {"name": name, "status": "planned", "limit_s": limits[name], "seconds": 0.0, "result": {}, "error": None}
        rep["stages"].append(st)
        left = deadline - time.perf_counter()
        if args.dry_run:
            st["result"] = {"command": _stage_cmd(name, args)}
        elif name == "install" and not any(args.wheels.glob("*.whl")):
            st["status"], st["error"] = "skipped", f"no wheels in {args.wheels}"
        elif (args.cpu and name == "tests") or left < 5:
            st["status"], st["error"] = "skipped", ("not in --cpu mode" if left >= 5 else "budget spent")
        else:
            log(f"## stage {name} (limit {min(limits[name], left):.0f} s)")
            st["status"], st["seconds"], out = _run(_stage_cmd(name, args), min(limits[name], left), env, log)
            st["result"] = _junit_counts(args.out / "junit.xml") if name == "tests" else _parse_result(out)
            if st["status"] != "ok":
                st["error"] = out.strip().splitlines()[-1][:500] if out.strip() else st["status"]
            if name == "install" and st["status"] == "ok":
                env = _child_env(args)
            rep["figures"].update({f"{name}.{k}": v for k, v in st["result"].items() if isinstance(v, (int, float))})
        jpath.write_text(json.dumps(rep, indent=2))
    rep["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    rep["ok"] = all(s["status"] in ("ok", "skipped", "planned") for s in rep["stages"])
    jpath.write_text(json.dumps(rep, indent=2))
    log(f"# done: ok={rep['ok']}  json {jpath}")
    return rep


# ---------------------------------------------------------------- stages (run in child processes)


def _emit(result: dict[str, Any]) -> None:
    print(MARK + json.dumps(result), flush=True)


def stage_env(p: dict[str, Any]) -> dict[str, Any]:
    """Versions and device."""
    import importlib.metadata as md

    res: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "torch", "torchvision", "dask", "dask-cuda",
                "zarr", "umap-learn"):
        try:
            res[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            res[pkg] = None
    missing = {}
    for mod in ("rescue_gpu.projection._cuda", "rescue_gpu.engine", "rescue_gpu.config", "cupy", "dask_cuda",
                "distributed", "umap", "zarr", "flowio", "rich", "safetensors", "array_api_strict", "hypothesis"):
        try:
            __import__(mod)
        except Exception as e:  # noqa: BLE001 - report every missing piece at once
            missing[mod] = f"{e.__class__.__name__}: {e}"[:200]
    res["import_errors"] = missing
    try:
        import torch

        res["cuda_available"] = bool(torch.cuda.is_available())
        res["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception as e:  # noqa: BLE001 - report, do not fail
        res["device"] = f"torch error: {e}"
    return res


def _sync(xp: Any) -> None:
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def stage_projection(p: dict[str, Any]) -> dict[str, Any]:
    """Events/s of the transform, and GPU-vs-CPU parity on a subset."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_projection import mixture

    from rescue_gpu.projection import UmapParams, UmapReference, transform

    backend = "cpu" if p["cpu"] else "gpu"
    xp = np
    if backend == "gpu":
        import cupy as xp
    train = mixture(p["ref_events"], dims=p["dims"], seed=1)
    emb = (train[:, :2] + np.random.default_rng(0).normal(0, 0.2, (len(train), 2))).astype(np.float32)
    ref = UmapReference(train, emb, UmapParams(random_state=0))
    new = mixture(p["events"], dims=p["dims"], seed=2)
    sub = new[: min(20_000, len(new))]
    t0 = time.perf_counter()
    warm = transform(ref, xp.asarray(sub[:2000]), seed=0, backend=backend)  # compile
    res = {"warmup_s": round(time.perf_counter() - t0, 2), "backend": backend}
    x = xp.asarray(new)
    _sync(xp)
    t0 = time.perf_counter()
    out = transform(ref, x, seed=0, backend=backend)
    _sync(xp)
    dt = time.perf_counter() - t0
    res.update(events=len(new), ref_events=len(train), seconds=round(dt, 3), events_per_s=round(len(new) / dt))
    # Parity on the subset as a batch of its own (mean distance, max weight and epochs are batch-wide).
    g = transform(ref, xp.asarray(sub), seed=0, backend=backend)
    gpu_sub = np.asarray(g.get() if hasattr(g, "get") else g)
    cpu_sub = transform(ref, sub, seed=0, backend="cpu", knn_method="tiled")  # exact, as the GPU's search
    d = np.abs(gpu_sub.astype(np.float64) - cpu_sub)
    res.update(parity_events=len(sub), parity_max_abs=float(np.nanmax(d)), parity_frac_over_1e_3=float(np.mean(d.max(1) > 1e-3)))
    del warm, out
    return res


def _resnet_rate(model: Any, x: Any, dtype: Any, torch: Any, reps: int) -> tuple[float, Any]:
    dev = x.device.type
    with torch.inference_mode(), torch.autocast(dev, dtype=dtype, enabled=dtype is not None):
        model(x)
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            y = model(x)
        if dev == "cuda":
            torch.cuda.synchronize()
    return x.shape[0] * reps / (time.perf_counter() - t0), torch.softmax(y.float(), dim=1)


def stage_resnet(p: dict[str, Any]) -> dict[str, Any]:
    """ResNet-34 images/s: fp32, fp16 and bf16 autocast, channels_last; |dp| vs fp32."""
    import torch
    import torchvision

    dev = "cpu" if p["cpu"] or not torch.cuda.is_available() else "cuda"
    size = p["image"] or _pipeline_size()
    res: dict[str, Any] = {"device": dev}
    sizes = [size] if p["cpu"] else [size, 224]
    for s in sizes:
        m = torchvision.models.resnet34(num_classes=2).to(dev).eval().to(memory_format=torch.channels_last)
        x = torch.rand(p["batch"], 3, s, s, device=dev).to(memory_format=torch.channels_last)
        reps = 2 if p["cpu"] else 20
        r32, p32 = _resnet_rate(m, x, None, torch, reps)
        res[f"resnet34_{s}_fp32_images_per_s"] = round(r32, 1)
        for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            if dev == "cpu" and name == "fp16":
                continue
            r, pp = _resnet_rate(m, x, dt, torch, reps)
            res[f"resnet34_{s}_{name}_images_per_s"] = round(r, 1)
            res[f"resnet34_{s}_{name}_max_dp"] = float((pp - p32).abs().max())
    return res


def _pipeline_size() -> int:
    try:
        from rescue_gpu.config import load_pipeline

        return int(load_pipeline("aml-mrd").raster.size)
    except Exception:  # noqa: BLE001 - fall back to the documented default
        return 128


def _score_fn() -> Any:
    """The flow cohort scorer (options and entry point)."""
    from rescue_gpu.flow.assay import ScoreOptions, score_cohort
    return ScoreOptions, score_cohort


def cohort_runs(workers: list[int], per_gpu: list[int], n_gpus: int, *, cpu: bool
                ) -> tuple[list[tuple[str, str, int]], list[str]]:
    """The cohort stage's runs as ``(label, workers, workers_per_gpu)``, and the counts skipped (with why).

    CPU mode: one LocalCluster run per count in ``workers``. GPU mode: a count is a number
    of GPU workers, one GPU each, so counts above ``n_gpus`` are skipped (a one-GPU machine
    runs ``workers1`` only); every visible GPU is run too when there are more than the
    largest count; each ``per_gpu`` above 1 runs on every visible GPU with that many
    samples in flight per GPU.
    """
    if cpu:
        return [(f"workers{w}", str(w), 1) for w in workers], []
    runs = [(f"workers{w}", str(w), 1) for w in workers if w <= n_gpus]
    skipped = [f"workers{w}: only {n_gpus} GPU(s) visible" for w in workers if w > n_gpus]
    if n_gpus > max(workers, default=0):
        runs.append((f"gpus{n_gpus}", "auto", 1))
    runs += [(f"gpus{n_gpus}_per_gpu{k}", "auto", k) for k in per_gpu if k > 1]
    return runs, skipped


def stage_cohort(p: dict[str, Any]) -> dict[str, Any]:
    """End-to-end cohort on LocalCUDACluster (LocalCluster in --cpu mode): the runs of :func:`cohort_runs`."""
    import shutil
    import tempfile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_cohort import _assets

    from rescue_gpu.config import ClusterConfig, RuntimeConfig

    ScoreOptions, score_cohort = _score_fn()
    backend = "cpu" if p["cpu"] else "gpu"
    res: dict[str, Any] = {"backend": backend, "samples": p["cohort_samples"], "events_per_sample": p["cohort_events"]}
    n_gpus = 0
    if not p["cpu"]:
        from rescue_gpu.runner.gpus import gpu_count, visible_gpus

        n_gpus = len(visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), gpu_count()))
        res["visible_gpus"] = n_gpus
    runs, skipped = cohort_runs(p["worker_list"], p.get("per_gpu_list", []), n_gpus, cpu=p["cpu"])
    res["skipped"] = skipped
    with tempfile.TemporaryDirectory() as tmp:
        a = _assets(Path(tmp) / "a", n_samples=p["cohort_samples"], n_events=p["cohort_events"], ref_events=30_000 if not p["cpu"] else 2000,
                    image=p["image"] or _pipeline_size())
        for label, w, k in runs:
            out = Path(tmp) / f"run-{label}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            s = score_cohort(a["manifest"], reference=a["ref"], model=a["model"], out=out,
                             options=ScoreOptions(pipeline=a["pipe"], samples_per_task=2, report=False),
                             runtime=RuntimeConfig(backend=backend, workers=w,
                                                   cluster=ClusterConfig(workers_per_gpu=k)),
                             in_process=False, dashboard_address=":0")
            res[f"{label}_wall_s"] = round(time.perf_counter() - t0, 2)
            res[f"{label}_processing_s"] = round(s.seconds, 2)
            res[f"{label}_samples_per_s"] = round(s.n_processed / s.seconds, 3)
            res[f"{label}_events_per_s"] = round(s.events_processed / s.seconds)
            res[f"{label}_n_processed"] = s.n_processed
            res[f"{label}_cluster"] = s.cluster
        rate = max(v for k, v in res.items() if k.endswith("_events_per_s"))
        res["library_1361x500k_minutes_extrapolated"] = round(1361 * 500_000 / rate / 60.0, 2)
    return res


STAGE_FUNCS = {"env": stage_env, "projection": stage_projection, "resnet": stage_resnet, "cohort": stage_cohort}


def main(argv: list[str] | None = None) -> int:
    """Entry point: orchestrate, or run one stage when called with ``--stage``."""
    args = parse_args(argv)
    if args.stage:
        import warnings

        warnings.filterwarnings("ignore")
        _emit(STAGE_FUNCS[args.stage](json.loads(args.params)))
        return 0
    rep = orchestrate(args)
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
