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
                              "loaded": state["loaded"]}) for t in tasks]

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
