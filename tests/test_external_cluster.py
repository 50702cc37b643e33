"""``rescue score --scheduler`` on a real external cluster: ``dask scheduler`` and ``dask worker`` processes.

Everything listens on 127.0.0.1 with free ports; every process a test starts is in its
own process group, killed by the fixture's finalizer (also on failure). Covers: parity
with ``--in-process``, a scheduler file, the worker plugin loading state once per worker
(also on a worker that joins mid-run), a worker SIGKILLed mid-run, a sample too large
for its worker's ``--memory-limit`` (its worker dies ``allowed-failures + 1`` times:
``KilledWorker``, only that sample fails, exit 3), and the scheduler going away (exit 2,
then a re-run resumes).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rescue_gpu.runner.store import RunStore

from .test_cohort_fixtures import N_SAMPLES, build_assets, stored_samples as _done

ROOT = Path(__file__).resolve().parents[1]
WAIT = 180.0  # seconds: 2 shared CPU cores, each worker imports torch and JIT-compiles


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class Cluster:
    """A ``dask scheduler`` and its ``dask worker`` processes on 127.0.0.1, each in its own process group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.scheduler_file = workdir / "scheduler.json"
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs: list = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        fh = open(self.workdir / log, "w")
        self._logs.append(fh)
        return subprocess.Popen([sys.executable, "-m", *args], stdout=fh, stderr=subprocess.STDOUT, env=_env(),
                                cwd=self.workdir, start_new_session=True)

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard", "--scheduler-file", str(self.scheduler_file)], "scheduler.log")
        began = time.monotonic()
        while not self.scheduler_file.exists():
            assert self.scheduler.poll() is None, (self.workdir / "scheduler.log").read_text()
            assert time.monotonic() - began < WAIT, "the scheduler did not start"
            time.sleep(0.1)

    def add_worker(self, memory_limit: str = "0") -> subprocess.Popen:
        proc = self._spawn(["distributed.cli.dask_worker", self.address, "--host", "127.0.0.1", "--nworkers", "1",
                            "--nthreads", "1", "--no-dashboard", "--memory-limit", memory_limit,
                            "--local-directory", str(self.workdir / "dask-worker-space")],
                           f"worker-{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def client(self):
        from distributed import Client

        return Client(self.address, timeout="30s")

    def wait_for_workers(self, n: int) -> None:
        with self.client() as c:
            c.wait_for_workers(n, timeout=WAIT)

    def kill_scheduler(self) -> None:
        _killpg(self.scheduler)

    def stop(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            _killpg(proc)
        for fh in self._logs:
            fh.close()


def _killpg(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    try:
        c.start_scheduler()
        yield c
    finally:
        c.stop()


def _args(manifest: Path, assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["score", str(manifest), "--reference", str(assets["reference"]), "--model", str(assets["model"]),
            "--out", str(out), "--backend", "cpu", "--no-report", *extra]


def _popen_cli(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rescue_gpu.flow.cli", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def _wait_stored(proc: subprocess.Popen, store_dir: Path, n: int) -> int:
    began = time.monotonic()
    while _done(store_dir) < n and proc.poll() is None:
        assert time.monotonic() - began < WAIT, "no sample was stored in time"
        time.sleep(0.05)
    return _done(store_dir)


def _finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=2 * WAIT)
    finally:
        _killpg(proc)
    return rc, " ".join(log.read_text().split())


@pytest.fixture(scope="module")
def in_process(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The cohort scored ``--in-process`` (the reference every cluster run is compared with)."""
    from rescue_gpu.flow.cli import _main

    out = tmp_path_factory.mktemp("in-process") / "run"
    assert _main(_args(assets["manifest"], assets, out, "--in-process")) == 0
    return pd.read_parquet(out / "scores.parquet")


def _assert_equal(run: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert run["sample_id"].is_unique and len(run) == len(ref)
    assert (run["status"] == "scored").all(), run[["sample_id", "error"]]
    a, b = run.set_index("sample_id").loc[ref["sample_id"]], ref.set_index("sample_id")
    np.testing.assert_allclose(a["p_mrd"], b["p_mrd"], rtol=0, atol=1e-5)
    assert list(a["call"]) == list(b["call"])


def _stored_once(store_dir: Path, n: int) -> None:
    ids = [s.sample_id for s in RunStore(store_dir)]
    assert len(ids) == len(set(ids)) == n
    assert len([p for p in (store_dir / "samples").iterdir() if p.is_dir()]) == n  # no stray groups


def _state_stats(cluster: Cluster) -> dict[str, dict[str, int]]:
    from rescue_gpu.runner.worker import state_stats

    with cluster.client() as c:
        return c.run(state_stats)


def test_external_cluster_equals_in_process_and_loads_state_once_per_worker(
        assets: dict[str, Path], cluster: Cluster, in_process: pd.DataFrame, tmp_path: Path) -> None:
    cluster.add_worker()
    cluster.add_worker()
    cluster.wait_for_workers(2)
    out, log = tmp_path / "run", tmp_path / "cli.log"
    proc = _popen_cli(_args(assets["manifest"], assets, out, "--scheduler", cluster.address,
                            "--samples-per-task", "1", "--window", "1"), log)
    assert _wait_stored(proc, out / "store.zarr", 1) >= 1
    cluster.add_worker()  # joins mid-run: the plugin loads its state before its first task
    joined = False
    began = time.monotonic()
    while proc.poll() is None and not joined and time.monotonic() - began < WAIT:
        with cluster.client() as c:
            joined = len(c.scheduler_info(n_workers=-1)["workers"]) == 3
        time.sleep(0.2)
    rc, text = _finish(proc, log)
    assert rc == 0, text[-3000:]
    assert f"scheduler at {cluster.address}: " in text and f"{N_SAMPLES} to score" in text
    _assert_equal(pd.read_parquet(out / "scores.parquet"), in_process)
    _stored_once(out / "store.zarr", N_SAMPLES)

    stats = _state_stats(cluster)
    assert sum(s["samples"] for s in stats.values()) == N_SAMPLES
    if joined:  # the third worker registered while the run was going: it loaded the state too, once
        assert len(stats) == 3
    assert all(s["loads"] == 1 for s in stats.values()), stats  # once per worker, however many batches


def test_scheduler_file_and_a_worker_killed_mid_run(assets: dict[str, Path], cluster: Cluster,
                                                    in_process: pd.DataFrame, tmp_path: Path) -> None:
    cluster.add_worker()
    cluster.add_worker()
    cluster.wait_for_workers(2)
    out, log = tmp_path / "run", tmp_path / "cli.log"
    proc = _popen_cli(_args(assets["manifest"], assets, out, "--scheduler", str(cluster.scheduler_file),
                            "--samples-per-task", "1"), log)
    assert _wait_stored(proc, out / "store.zarr", 1) < N_SAMPLES
    with cluster.client() as c:
        pids = c.run(os.getpid)  # the worker processes (their nannies restart them)
    os.kill(sorted(pids.values())[0], signal.SIGKILL)
    rc, text = _finish(proc, log)
    assert rc == 0, text[-3000:]
    _assert_equal(pd.read_parquet(out / "scores.parquet"), in_process)
    _stored_once(out / "store.zarr", N_SAMPLES)


def _huge_sample(assets: dict[str, Path], path: Path, n_events: int) -> None:
    """A valid FCS file of the cohort's panel with ``n_events`` events (the first sample's, tiled)."""
    from rescue_gpu.fcs import read_fcs, write_fcs

    first = next(csv.DictReader(open(assets["manifest"])))
    sample = read_fcs(assets["cohort"] / first["path"])
    reps = -(-n_events // sample.n_events)
    write_fcs(path, np.tile(sample.events, (reps, 1))[:n_events], channels=sample.channels, markers=sample.markers,
              spillover=sample.spillover)


def test_a_sample_too_large_for_its_worker_fails_alone(assets: dict[str, Path], cluster: Cluster,
                                                       in_process: pd.DataFrame, tmp_path: Path) -> None:
    """One 2 GB worker; the huge sample shares a task with S0, and the next task (S1, S2) is queued on the same worker.

    Every death of the worker counts against both tasks (distributed's worker-saturation
    gives a one-thread worker two), so both end ``KilledWorker``; each of their samples is
    then run alone, and only the huge one fails. Before that isolation S0 failed with it.
    """
    from rescue_gpu.runner.cluster import ALLOWED_FAILURES

    _huge_sample(assets, tmp_path / "huge.fcs", 20_000_000)  # 1.2 GB of float32 events
    rows = list(csv.DictReader(open(assets["manifest"])))[:3]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["sample_id", "path"])
        w.writeheader()
        w.writerow({"sample_id": "huge", "path": str(tmp_path / "huge.fcs")})
        for r in rows:
            w.writerow({"sample_id": r["sample_id"], "path": str((assets["cohort"] / r["path"]).resolve())})
    cluster.add_worker(memory_limit="2GB")
    cluster.wait_for_workers(1)
    out, log = tmp_path / "run", tmp_path / "cli.log"
    proc = _popen_cli(_args(manifest, assets, out, "--scheduler", cluster.address, "--samples-per-task", "2",
                            "--window", "2"), log)
    rc, text = _finish(proc, log)
    assert rc == 3, text[-3000:]
    df = pd.read_csv(out / "scores.csv", keep_default_na=False).set_index("sample_id")
    assert list(df.index) == ["huge", *(r["sample_id"] for r in rows)]
    assert df.loc["huge", "status"] == "failed"
    assert "worker died" in df.loc["huge", "error"] and f"{ALLOWED_FAILURES + 1} tries" in df.loc["huge", "error"]
    good = df.drop(index="huge")
    assert (good["status"] == "scored").all(), good["error"]
    ref = in_process.set_index("sample_id").loc[good.index]
    np.testing.assert_allclose(good["p_mrd"].astype(float), ref["p_mrd"], rtol=0, atol=1e-5)
    assert "failed: huge: worker died" in text
    _stored_once(out / "store.zarr", len(rows) + 1)


def test_scheduler_gone_mid_run_exits_2_then_resumes(assets: dict[str, Path], cluster: Cluster,
                                                     in_process: pd.DataFrame, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    cluster.add_worker()
    cluster.wait_for_workers(1)
    out, log = tmp_path / "run", tmp_path / "cli.log"
    proc = _popen_cli(_args(assets["manifest"], assets, out, "--scheduler", cluster.address,
                            "--samples-per-task", "1", "--window", "1"), log)
    _wait_stored(proc, out / "store.zarr", 1)
    cluster.kill_scheduler()
    rc, text = _finish(proc, log)
    assert rc == 2, text[-3000:]
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    # one line of ours; distributed's client may also log its own reconnect/close tracebacks (logging, not a crash)
    assert len(errors) == 1 and "lost the Dask scheduler" in errors[0] and "Traceback (most recent call last) ─" not in log.read_text()
    n_before = _done(out / "store.zarr")
    assert 1 <= n_before < N_SAMPLES

    from rescue_gpu.flow.cli import _main

    capsys.readouterr()
    assert _main(_args(assets["manifest"], assets, out, "--in-process")) == 0  # the same run, resumed
    said = " ".join(capsys.readouterr().out.split())
    assert f"{N_SAMPLES - n_before} to score, {n_before} already done (skipped)" in said
    _assert_equal(pd.read_parquet(out / "scores.parquet"), in_process)
    _stored_once(out / "store.zarr", N_SAMPLES)
