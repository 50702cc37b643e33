"""``rescue score --scheduler`` on an external cluster vs ``--in-process``: wall time and parity.

Starts a ``dask scheduler`` and ``--workers`` ``dask worker`` processes (1 thread each) on
127.0.0.1 (free port, no dashboard), then, ``--repeats`` times, scores the tests' tiny
simulated cohort (6 samples x 2,500 events, 32-px images, PCA reference, untrained model;
``tests/test_cohort_fixtures.py``) with ``rescue score --scheduler`` and ``--in-process``
as subprocesses into fresh run folders. Reports each wall time (the whole command: python
start, imports, outputs) and the largest |p_mrd difference| between the two. The cluster
stays up between repeats, as an existing cluster does: its workers keep their loaded
state, so only the first cluster run pays the workers' warm-up. Every process is stopped
at the end.

Usage::

    python benchmarks/bench_external.py --repeats 3 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import pandas as pd
    from distributed import Client

    from tests.test_cohort_fixtures import build_assets

    base = Path(tempfile.mkdtemp(prefix="bench-external-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen] = []
    try:
        a = build_assets(base / "assets")
        addr = f"tcp://127.0.0.1:{_port()}"
        sched = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", addr.rsplit(":", 1)[1], "--no-dashboard"]
        procs.append(subprocess.Popen(sched, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        for _ in range(args.workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr, "--host",
                                           "127.0.0.1", "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                           "--local-directory", str(base / "dask")], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        time.sleep(2)
        with Client(addr, timeout="60s") as c:
            c.wait_for_workers(args.workers, timeout=180)

        def score(out: Path, *extra: str) -> float:
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rescue_gpu.flow.cli", "score", str(a["manifest"]), "--reference",
                            str(a["reference"]), "--model", str(a["model"]), "--out", str(out), "--backend", "cpu",
                            "--no-report", "--samples-per-task", "1", *extra], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - t0

        print("| repeat | cluster wall s | in-process wall s | samples | max abs dp_mrd |")
        print("|---:|---:|---:|---:|---:|")
        for i in range(args.repeats):
            tc = score(base / "cluster", "--scheduler", addr)
            ti = score(base / "inproc", "--in-process")
            x = pd.read_parquet(base / "cluster" / "scores.parquet").set_index("sample_id")
            y = pd.read_parquet(base / "inproc" / "scores.parquet").set_index("sample_id")
            d = float(np.max(np.abs(x.loc[y.index, "p_mrd"].to_numpy() - y["p_mrd"].to_numpy())))
            print(f"| {i + 1} | {tc:.1f} | {ti:.1f} | {int((x['status'] == 'scored').sum())} | {d:.2e} |", flush=True)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
