"""Where the workers come from, without a cluster or a device: ``[cluster]``, SLURM up to job submission, many GPUs.

* ``[cluster]`` / ``[cluster.slurm]`` in config.toml and the ``--cluster``/``--slurm-*``
  options: parsed once, every bad value a ConfigError naming it;
* ``SLURMCluster``'s arguments and the job script it writes (dask-jobqueue's real
  class; nothing is submitted), the errors before submission;
* ``CUDA_VISIBLE_DEVICES`` parsing and ``LocalCUDACluster``'s arguments (one worker per
  visible GPU, ``--workers-per-gpu`` threads each).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rescue_gpu.cliutil import cluster_overrides
from rescue_gpu.config import ClusterConfig, RuntimeConfig, SlurmConfig, load_runtime
from rescue_gpu.errors import ConfigError
from rescue_gpu.runner.cluster import ALLOWED_FAILURES
from rescue_gpu.runner.gpus import cuda_cluster_kwargs, visible_gpus
from rescue_gpu.runner.slurm import JOB_NAME, job_script, slurm_cluster_kwargs, slurm_probes

CONFIG = """[runtime]
backend = "cpu"

[cluster]
kind = "slurm"
workers_per_gpu = 2

[cluster.slurm]
partition = "gpu"
account = "haem-lab"
workers = 4
cores = 8
memory = "64GB"
gpus_per_worker = 1
walltime = "1-04:00:00"
python = "/shared/rescue/.venv/bin/python"
prologue = ["module load cuda/12", "source /shared/rescue/.venv/bin/activate"]
directives = ["--constraint=a100"]
log_directory = "/shared/rescue/logs"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- config


def test_cluster_table_is_read_once_into_typed_values(tmp_path: Path) -> None:
    rt = load_runtime(_write(tmp_path, CONFIG))
    assert rt.backend == "cpu"
    assert rt.cluster == ClusterConfig(kind="slurm", workers_per_gpu=2, slurm=SlurmConfig(
        partition="gpu", account="haem-lab", workers=4, cores=8, memory="64GB", gpus_per_worker=1,
        walltime="1-04:00:00", python="/shared/rescue/.venv/bin/python",
        prologue=("module load cuda/12", "source /shared/rescue/.venv/bin/activate"),
        directives=("--constraint=a100",), log_directory="/shared/rescue/logs"))


def test_defaults_without_a_cluster_table_are_local_on_loopback(tmp_path: Path) -> None:
    rt = load_runtime(_write(tmp_path, '[runtime]\nbackend = "cpu"\n'))
    assert rt.cluster == ClusterConfig() and rt.cluster.kind == "local" and rt.cluster.host == "127.0.0.1"
    assert load_runtime(Path(__file__).resolve().parents[1] / "config.toml").cluster.kind == "local"  # the shipped file


def test_cli_options_override_the_file_key_by_key(tmp_path: Path) -> None:
    over = cluster_overrides(cluster=None, slurm_workers=2, slurm_walltime="00:30:00", slurm_partition="debug")
    rt = load_runtime(_write(tmp_path, CONFIG), cluster=over)
    s = rt.cluster.slurm
    assert (rt.cluster.kind, s.workers, s.walltime, s.partition) == ("slurm", 2, "00:30:00", "debug")
    assert (s.cores, s.memory, s.account) == (8, "64GB", "haem-lab")  # untouched keys keep the file's values
    rt = load_runtime(None, cluster=cluster_overrides(cluster="slurm", slurm_gpus_per_worker=1, workers_per_gpu=3))
    assert (rt.cluster.kind, rt.cluster.slurm.gpus_per_worker, rt.cluster.workers_per_gpu) == ("slurm", 1, 3)


@pytest.mark.parametrize(("over", "match"), [
    ({"kind": "pbs"}, r"cluster\.kind' must be one of 'local', 'slurm'"),
    ({"workers_per_gpu": 0}, "workers_per_gpu must be >= 1"),
    ({"host": "tcp://10.0.0.1"}, "cluster host must be an address"),
    ({"slurm": {"walltime": "90"}}, "walltime must be HH:MM:SS or D-HH:MM:SS"),
    ({"slurm": {"walltime": "01:75:00"}}, "walltime must be HH:MM:SS"),
    ({"slurm": {"gpus_per_worker": 2}}, "gpus_per_worker must be 0 or 1.*workers = N"),
    ({"slurm": {"workers": 0}}, "workers and cores must be >= 1"),
    ({"slurm": {"memory": "0.5"}}, "memory must be a size like '16GB'"),
    ({"slurm": {"memory": "lots"}}, "cannot parse memory size 'lots'"),
    ({"slurm": {"cores": "8"}}, r"cluster\.slurm\.cores' must be an integer"),
    ({"slurm": {"queue": "gpu"}}, r"unknown key 'cluster\.slurm\.queue'.*partition"),
    ({"kind": "slurm", "workers_per_gpu": 2}, "workers_per_gpu > 1 needs GPU jobs"),
])
def test_bad_cluster_values_are_config_errors_naming_the_key(over: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_runtime(None, cluster=over)


def test_cluster_inside_runtime_or_slurm_not_a_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"write \[cluster\], not runtime.cluster"):
        load_runtime(_write(tmp_path, '[runtime]\ncluster = "slurm"\n'))
    with pytest.raises(ConfigError, match=r"cluster.slurm' must be a table"):
        load_runtime(_write(tmp_path, '[cluster]\nslurm = "gpu"\n'))
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['slurm'\]"):
        load_runtime(_write(tmp_path, '[slurm]\nworkers = 2\n'))


# ----------------------------------------------------------------------------- SLURM up to submission


def _gpu_cluster(**slurm) -> ClusterConfig:
    return ClusterConfig(kind="slurm", workers_per_gpu=2, slurm=SlurmConfig(**{
        "partition": "gpu", "account": "haem", "workers": 4, "cores": 8, "memory": "64GB", "gpus_per_worker": 1,
        "walltime": "04:00:00", "python": "/venv/bin/python", "prologue": ("source /venv/bin/activate",),
        "directives": ("--constraint=a100",), **slurm}))


def test_slurm_options_map_to_slurmcluster_arguments() -> None:
    kw = slurm_cluster_kwargs(_gpu_cluster(), allowed_failures=ALLOWED_FAILURES, dashboard_address=":8787")
    assert kw["cores"] == 8 and kw["processes"] == 2  # workers_per_gpu processes share the job's GPU
    assert kw["memory"] == "64000000000B" and kw["walltime"] == "04:00:00"
    assert (kw["queue"], kw["account"], kw["python"], kw["job_name"]) == ("gpu", "haem", "/venv/bin/python", JOB_NAME)
    assert kw["job_extra_directives"] == ["--gres=gpu:1", "--constraint=a100"]
    assert kw["job_script_prologue"] == ["source /venv/bin/activate"]
    assert kw["scheduler_options"] == {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:8787",
                                       "allowed_failures": ALLOWED_FAILURES}
    assert kw["worker_extra_args"] == ["--host", "127.0.0.1"]


def test_cpu_jobs_and_a_routable_host() -> None:
    c = ClusterConfig(kind="slurm", host="10.1.2.3", slurm=SlurmConfig(workers=3, cores=4))
    kw = slurm_cluster_kwargs(c, allowed_failures=1, dashboard_address=":0")
    assert kw["processes"] == 1 and kw["job_extra_directives"] == [] and kw["queue"] is None and kw["account"] is None
    assert kw["scheduler_options"]["host"] == "10.1.2.3" and kw["scheduler_options"]["dashboard_address"] == "10.1.2.3:0"
    assert kw["worker_extra_args"] == []  # workers on other nodes listen on their own address


def test_more_processes_than_cores_and_a_portless_dashboard_are_refused() -> None:
    with pytest.raises(ConfigError, match="workers_per_gpu = 2 needs at least as many cores.*--slurm-cores"):
        slurm_cluster_kwargs(_gpu_cluster(cores=1), allowed_failures=1)
    with pytest.raises(ConfigError, match="needs a port"):
        slurm_cluster_kwargs(_gpu_cluster(), allowed_failures=1, dashboard_address="127.0.0.1:")


def test_job_script_from_dask_jobqueue_has_every_option() -> None:
    script = job_script(_gpu_cluster(log_directory=""), allowed_failures=ALLOWED_FAILURES)
    lines = script.splitlines()
    for directive in ("-J rescue-worker", "-p gpu", "-A haem", "--cpus-per-task=8", "-t 04:00:00",
                      "--gres=gpu:1", "--constraint=a100"):
        assert f"#SBATCH {directive}" in lines, script
    assert any(re.fullmatch(r"#SBATCH --mem=(59|60|6\d)G", line) for line in lines), script  # 64 GB in GiB, rounded
    assert "source /venv/bin/activate" in lines
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert worker.startswith("/venv/bin/python -m distributed.cli.dask_worker tcp://127.0.0.1:")
    assert "--nworkers 2" in worker and "--nthreads 4" in worker and "--host 127.0.0.1" in worker
    assert lines.index("source /venv/bin/activate") < lines.index(worker)


def test_slurm_device_plan_comes_from_the_gpu_request() -> None:
    from rescue_gpu.engine import plan_run_device

    gpu, cpu = slurm_probes(_gpu_cluster()), slurm_probes(ClusterConfig(kind="slurm"))
    assert gpu["slurm"]["gpu"] is True and "--gres=gpu:1" in gpu["slurm"]["reason"]
    assert cpu["slurm"]["gpu"] is False
    assert plan_run_device("auto", probes=gpu).backend == "gpu"
    with pytest.warns(Warning):
        assert plan_run_device("auto", probes=cpu).backend == "cpu"


def test_no_sbatch_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rescue_gpu.runner.cluster import open_client

    monkeypatch.setenv("PATH", "/nonexistent")
    rt = RuntimeConfig(backend="cpu", cluster=ClusterConfig(kind="slurm"))
    with pytest.raises(ConfigError, match="'sbatch' is not on PATH; run on a SLURM login node"):
        with open_client(rt, dashboard_address=":0"):
            pass


def test_scheduler_and_slurm_together_are_refused(tmp_path: Path) -> None:
    from rescue_gpu.runner.run import run_cohort

    rt = RuntimeConfig(backend="cpu", cluster=ClusterConfig(kind="slurm"))
    with pytest.raises(ConfigError, match="--scheduler .* and --cluster slurm .* exclude each other"):
        run_cohort(object(), [], out=tmp_path / "run", runtime=rt, scheduler="tcp://127.0.0.1:1")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- many GPUs


@pytest.mark.parametrize(("env", "n", "expected"), [
    (None, 4, ["0", "1", "2", "3"]),
    ("2,0", 4, ["2", "0"]),
    (" 1 , 3 ", 4, ["1", "3"]),
    ("GPU-8e2c1f3a-77aa-4d2b-9c1e-0123456789ab", 1, ["GPU-8e2c1f3a-77aa-4d2b-9c1e-0123456789ab"]),
    ("MIG-GPU-8e2c1f3a-77aa/1/0,3", -1, ["MIG-GPU-8e2c1f3a-77aa/1/0", "3"]),  # count unknown: indices unchecked
])
def test_visible_gpus(env: str | None, n: int, expected: list[str]) -> None:
    assert visible_gpus(env, n) == expected


@pytest.mark.parametrize(("env", "n", "match"), [
    (None, 0, "no GPU could be found"),
    (None, -1, "no GPU could be found"),
    ("", 2, "hides every GPU"),
    ("-1", 2, "hides every GPU"),
    ("0,x", 2, "'x' is neither a GPU index"),
    ("0,5", 2, "GPU 5 does not exist here .2 GPU"),
    ("1,1", 2, "names 1 twice.*--workers-per-gpu"),
])
def test_bad_visible_gpus(env: str | None, n: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        visible_gpus(env, n)


def test_cuda_cluster_is_one_worker_per_visible_gpu_with_workers_per_gpu_threads() -> None:
    rt = RuntimeConfig(backend="gpu", cluster=ClusterConfig(workers_per_gpu=3))
    kw = cuda_cluster_kwargs(rt, ["2", "0"], dashboard_address=":0", memory_limit="auto", rmm=True, allowed_failures=2)
    assert kw["CUDA_VISIBLE_DEVICES"] == ["2", "0"] and kw["n_workers"] == 2 and kw["threads_per_worker"] == 3
    assert kw["rmm_pool_size"] == 0.5 and kw["scheduler_kwargs"] == {"allowed_failures": 2}
    kw = cuda_cluster_kwargs(RuntimeConfig(workers="1", threads_per_worker=2), ["2", "0"], dashboard_address=":0",
                             memory_limit=10**9, rmm=False, allowed_failures=2)
    assert kw["CUDA_VISIBLE_DEVICES"] == ["2"] and kw["n_workers"] == 1 and kw["threads_per_worker"] == 2
    assert kw["rmm_pool_size"] is None and kw["memory_limit"] == 10**9


def test_more_gpu_workers_than_gpus_is_refused() -> None:
    with pytest.raises(ConfigError, match="--workers 3 asks for more GPU workers than the 2 visible GPU.*workers-per-gpu"):
        cuda_cluster_kwargs(RuntimeConfig(workers="3"), ["0", "1"], dashboard_address=":0", memory_limit="auto",
                            rmm=False, allowed_failures=2)


def test_local_cuda_cluster_gets_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_client on a (faked) GPU machine hands LocalCUDACluster the parsed CUDA_VISIBLE_DEVICES."""
    import sys
    import types

    import rescue_gpu.device as device
    import rescue_gpu.runner.gpus as gpus
    from rescue_gpu.runner.cluster import open_client

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake_cluster(**kwargs):
        seen.update(kwargs)
        raise Stop  # never a real cluster here

    fake = types.ModuleType("dask_cuda")
    fake.LocalCUDACluster = fake_cluster
    monkeypatch.setitem(sys.modules, "dask_cuda", fake)
    monkeypatch.setattr(device, "device_probe", lambda: {"gpu": True, "reason": "4 CUDA device(s)", "tensorrt": False})
    monkeypatch.setattr(gpus, "gpu_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    rt = RuntimeConfig(backend="gpu", cluster=ClusterConfig(workers_per_gpu=2))
    with pytest.raises(ConfigError, match="LocalCUDACluster could not start"):
        with open_client(rt, dashboard_address=":0"):
            pass
    assert seen["CUDA_VISIBLE_DEVICES"] == ["3", "1"] and seen["n_workers"] == 2 and seen["threads_per_worker"] == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="hides every GPU"):
        with open_client(rt, dashboard_address=":0"):
            pass
