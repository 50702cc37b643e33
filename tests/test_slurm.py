"""``rescue score --cluster slurm`` on a real one-node SLURM started by the test.

The fixture starts Debian's ``munged``, ``slurmctld`` and ``slurmd`` in the foreground
with a private ``slurm.conf`` for localhost (127.0.0.1, free ports, state in tmp, the
machine's real CPUs and memory), runs the CLI against it and compares with
``--in-process``; at the end it cancels every job and stops every daemon. Skipped, with
the reason, where the packages or root are missing (``make slurm-deps`` installs them)
or the daemons do not come up. The code path up to job submission is tested everywhere
in tests/test_cluster_config.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .test_cohort_fixtures import N_SAMPLES
from .test_external_cluster import _args, _assert_equal, _env, _free_port, assets, in_process  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slurm

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
UP_WAIT = 60.0


def _why_not() -> str:
    """Why a one-node SLURM cannot be started here ("" when it can)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not os.path.exists(f"/usr/sbin/{d}")]
    if missing:
        return (f"SLURM/munge not installed ({', '.join(missing)} missing): run `make slurm-deps` "
                "(apt-get install slurmctld slurmd slurm-client munge, as root)")
    if os.geteuid() != 0:
        return "a one-node SLURM needs root here (slurmd starts jobs as their user; SlurmUser=root)"
    return ""


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _node_line() -> str:
    """``NodeName=localhost ...`` with this machine's CPUs and memory (``slurmd -C``), 90 % of the memory."""
    out = subprocess.run([_exe("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    mem = int(int(fields["RealMemory"]) * 0.9)
    keep = " ".join(f"{k}={fields[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                 "ThreadsPerCore") if k in fields)
    return f"NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost {keep} RealMemory={mem} State=UNKNOWN"


class OneNodeSlurm:
    """munged + slurmctld + slurmd on 127.0.0.1 with state under ``root``; each daemon in its own process group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**_env(), "SLURM_CONF": str(self.conf)}

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                            start_new_session=True)
        log.close()

    def start(self) -> None:
        r = self.root
        for d in ("state", "spool", "jobs"):
            (r / d).mkdir()
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        sock = r / "munge.sock"
        self._spawn("munged", [_exe("munged"), "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                               f"--pid-file={r / 'munged.pid'}", f"--seed-file={r / 'munge.seed'}",
                               f"--log-file={r / 'munged.log'}"])
        self._until(lambda: sock.exists(), "munged did not create its socket")
        self.conf.write_text("\n".join([
            "ClusterName=rescuetest", "SlurmctldHost=localhost(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}", f"SlurmdLogFile={r / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none", "SwitchType=switch/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "SchedulerType=sched/backfill",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "ReturnToService=2", "MinJobAge=3600", "MailProg=/bin/true",
            _node_line(), "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""]))
        self._spawn("slurmctld", [_exe("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_exe("slurmd"), "-D", "-N", "localhost"])
        self._until(lambda: self.sinfo_state() == "idle", "the node did not become idle")

    def _until(self, ok, what: str) -> None:  # noqa: ANN001 (a predicate)
        began = time.monotonic()
        while not ok():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() - began > UP_WAIT:
                logs = " | ".join(f"{n}: {' '.join((self.root / f'{n}.out').read_text().split()[-40:])}"
                                  for n in self.procs)
                raise RuntimeError(f"{what} ({'exited: ' + ', '.join(dead) if dead else 'timed out'}); {logs}")
            time.sleep(0.3)

    def run(self, *args: str) -> str:
        return subprocess.run([_exe(args[0]), *args[1:]], capture_output=True, text=True, env=self.env,
                              timeout=60).stdout

    def sinfo_state(self) -> str:
        return self.run("sinfo", "-h", "-o", "%T").strip()

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld knows (kept an hour: MinJobAge), as ``scontrol show job`` fields."""
        out = self.run("scontrol", "show", "job", "--oneliner")
        return [dict(re.findall(r"(\w+)=(\S+)", line)) for line in out.splitlines() if line.startswith("JobId=")]

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run([_exe("scancel"), "--full", "--user=root"], env=self.env, capture_output=True, timeout=60)
            began = time.monotonic()
            while any(j.get("JobState") in ("RUNNING", "PENDING", "COMPLETING") for j in self.jobs()) \
                    and time.monotonic() - began < 60:
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)


@pytest.fixture
def slurm(tmp_path: Path):
    why = _why_not()
    if why:
        pytest.skip(why)
    node = OneNodeSlurm(tmp_path / "slurm")
    node.root.mkdir()
    try:
        try:
            node.start()
        except RuntimeError as exc:
            pytest.skip(f"one-node SLURM did not start here: {exc}")
        yield node
    finally:
        node.stop()


def test_rescue_score_on_one_node_slurm_equals_in_process(assets: dict[str, Path], slurm: OneNodeSlurm,  # noqa: F811
                                                          in_process: pd.DataFrame, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rescue_gpu.flow.cli",
                           *_args(assets["manifest"], assets, out, "--cluster", "slurm", "--slurm-workers", "2",
                                  "--slurm-partition", "debug", "--slurm-walltime", "00:10:00", "--slurm-memory", "3GB",
                                  "--dashboard-address", "127.0.0.1:0", "--samples-per-task", "1", "--verbose")],
                          capture_output=True, text=True, env=slurm.env, cwd=tmp_path, timeout=600)
    wall = time.monotonic() - began
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    # the job script, printed by --verbose, and where the run went
    assert "#SBATCH -J rescue-worker" in text and "#SBATCH -p debug" in text and "#SBATCH -t 00:10:00" in text
    assert re.search(r"dask_worker tcp://127\.0\.0\.1:\d+ .*--host 127\.0\.0\.1", text), text[-4000:]
    assert "cluster: SLURMCluster at tcp://127.0.0.1:" in " ".join(text.split())
    _assert_equal(pd.read_parquet(out / "scores.parquet"), in_process)

    jobs = [j for j in slurm.jobs() if j.get("JobName") == "rescue-worker"]
    assert len(jobs) == 2, jobs
    assert all(j["JobState"] in ("CANCELLED", "COMPLETED") for j in jobs), jobs  # the run stopped its jobs
    print(f"one-node SLURM: {len(jobs)} worker jobs, rescue score wall time {wall:.1f} s")  # shown with -s

    # the same run from config.toml's [cluster] table resumes: nothing left to do, so no job is submitted
    cfg = tmp_path / "config.toml"
    cfg.write_text('[runtime]\nbackend = "cpu"\n\n[cluster]\nkind = "slurm"\n\n[cluster.slurm]\npartition = "debug"\n'
                   'workers = 2\nmemory = "3GB"\nwalltime = "00:10:00"\n')
    again = subprocess.run([sys.executable, "-m", "rescue_gpu.flow.cli",
                            *_args(assets["manifest"], assets, out, "--config", str(cfg))],
                           capture_output=True, text=True, env=slurm.env, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"0 to score, {N_SAMPLES} already done (skipped)" in " ".join(again.stdout.split())
    assert len([j for j in slurm.jobs() if j.get("JobName") == "rescue-worker"]) == 2


def test_the_skip_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where SLURM cannot run, the test skips saying exactly why (checked here without touching SLURM)."""
    monkeypatch.setattr(shutil, "which", lambda name: None if name in ("slurmd", "munged") else f"/usr/bin/{name}")
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    why = _why_not()
    assert "(munged, slurmd missing)" in why and "make slurm-deps" in why
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in _why_not()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert _why_not() == ""
