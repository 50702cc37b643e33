"""The runner's executors on a real Dask cluster: the worker plugin loads each worker's state once,
also on a worker that joins mid-run; in-process and Dask give the same results."""

from __future__ import annotations

import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import pytest

from rescue_gpu.runner.assay import AssayJob, SampleResult, SampleTask
from rescue_gpu.runner.executors import run_in_process, run_on_client
from rescue_gpu.runner.worker import cached_keys


@dataclass(frozen=True)
class ToyJob:
    """A minimal :class:`AssayJob`: its state is the process id; each sample sleeps a little."""

    tag: str
    pause: float = 0.0
    keep_identifiers: bool = False

    def state_key(self) -> Hashable:
        return ("toy", self.tag)

    def load_state(self) -> dict:
        return {"pid": os.getpid(), "loaded": time.time()}

    def process(self, tasks: Sequence[SampleTask], state: dict) -> list[SampleResult]:
        time.sleep(self.pause)
        return [SampleResult({"sample_id": t.sample_id, "status": "scored", "n_events": 1, "pid": state["pid"],
                              "loaded": state["loaded"], "provenance": {"settings_hash": self.tag}}) for t in tasks]

    def lost(self, task: SampleTask, text: str) -> SampleResult:
        return SampleResult({"sample_id": task.sample_id, "status": "failed", "error": text})


def _batches(n: int) -> list[list[SampleTask]]:
    return [[SampleTask(sample_id=f"S{i:03d}", path=f"/nowhere/{i}")] for i in range(n)]


def test_toy_job_is_an_assay_job() -> None:
    assert isinstance(ToyJob("x"), AssayJob)


def test_in_process_runs_every_batch_with_one_state() -> None:
    results = list(run_in_process(_batches(5), ToyJob("in-process")))
    assert [r.record["sample_id"] for r in results] == [f"S{i:03d}" for i in range(5)]
    assert {r.record["loaded"] for r in results} == {results[0].record["loaded"]}  # loaded once


def _has_plugin(dask_worker) -> bool:  # noqa: ANN001
    from rescue_gpu.runner.executors import PLUGIN_NAME

    return PLUGIN_NAME in dask_worker.plugins


def _keys_on(client, address: str) -> list:  # noqa: ANN001
    return client.run(cached_keys, workers=[address])[address]


def test_plugin_loads_state_on_every_worker_including_one_that_joins_mid_run() -> None:
    from distributed import Client, LocalCluster

    job = ToyJob("dask", pause=0.3)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
        first = next(iter(client.scheduler_info()["workers"]))
        results = run_on_client(client, _batches(12), job, window=1)
        got = [next(results)]  # the plugin is registered and the first worker's state loaded
        assert _keys_on(client, first) == [job.state_key()]
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
        second = next(a for a in client.scheduler_info()["workers"] if a != first)
        deadline = time.time() + 30
        while not _keys_on(client, second) and time.time() < deadline:
            time.sleep(0.2)  # setup runs as the worker starts, before it takes any task
        assert _keys_on(client, second) == [job.state_key()]
        got += list(results)
        assert sorted(r.record["sample_id"] for r in got) == [f"S{i:03d}" for i in range(12)]
        assert not any(r.failed for r in got)
        loads = {}
        for r in got:  # one state per worker process, loaded once
            loads.setdefault(r.record["pid"], set()).add(r.record["loaded"])
        assert all(len(v) == 1 for v in loads.values())
        assert not any(client.run(_has_plugin).values())  # removed when the run ended


@pytest.mark.parametrize("window", [1, 3])
def test_dask_and_in_process_give_the_same_records(window: int) -> None:
    from distributed import Client, LocalCluster

    job = ToyJob("parity")
    local = {r.record["sample_id"]: r.record["status"] for r in run_in_process(_batches(6), job)}
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,  # inproc: nothing listens
                      dashboard_address=None, silence_logs=40) as cluster, Client(cluster) as client:
        remote = {r.record["sample_id"]: r.record["status"] for r in run_on_client(client, _batches(6), job,
                                                                                   window=window)}
    assert remote == local


@dataclass
class ToyAssay:
    """A minimal :class:`Assay` over :class:`ToyJob`: inputs are files, identity is the settings hash."""

    tag: str = "toy"
    kind: str = "toy"
    unit: str = "events"
    packages: tuple[str, ...] = ("rescue_gpu",)
    engine: str = "torch"
    precision: str = "auto"
    samples_per_task: int = 2
    window: int = 0

    def settings(self, device) -> dict:  # noqa: ANN001
        return {"tag": self.tag, **device.record()}

    def worker_job(self, context) -> ToyJob:  # noqa: ANN001
        return ToyJob(context.settings_hash)

    def identity(self, job: ToyJob) -> dict[str, str]:
        return {"settings_hash": job.tag}

    def same_input(self, path, provenance) -> bool:  # noqa: ANN001
        return True

    def run_record(self) -> dict:
        return {"kind": self.kind}

    def write_outputs(self, rows, store, run_dir, *, provenance):  # noqa: ANN001, ANN201
        import pandas as pd

        from rescue_gpu.runner.tables import write_table

        df = pd.DataFrame([{"sample_id": r.sample_id, "status": (store.record(r.sample_id) or {}).get("status", "failed")}
                           for r in rows])
        return df, write_table(df, run_dir)


def test_run_cohort_drives_any_assay_and_resumes(tmp_path) -> None:  # noqa: ANN001
    from pathlib import Path

    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.runner.assay import Assay
    from rescue_gpu.runner.manifest import ManifestRow
    from rescue_gpu.runner.run import run_cohort

    rows = [ManifestRow(sample_id=f"S{i}", path=Path(f"/nowhere/{i}")) for i in range(5)]
    assay = ToyAssay()
    assert isinstance(assay, Assay)
    first = run_cohort(assay, rows, out=tmp_path / "run", runtime=RuntimeConfig(backend="cpu"), in_process=True)
    assert (first.n_samples, first.n_scored, first.n_skipped, first.n_processed) == (5, 5, 0, 5)
    assert first.events_processed == 5 and first.outputs["csv"].is_file()
    again = run_cohort(assay, rows, out=tmp_path / "run", runtime=RuntimeConfig(backend="cpu"), in_process=True)
    assert (again.n_skipped, again.n_processed, again.n_scored) == (5, 0, 5)
    other = run_cohort(ToyAssay(tag="changed"), rows, out=tmp_path / "run", runtime=RuntimeConfig(backend="cpu"),
                       in_process=True)
    assert (other.n_skipped, other.n_processed) == (0, 5)  # another identity: every sample again
