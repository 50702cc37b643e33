"""Shared pieces of the command line, below every command: consoles, exit codes, progress bars,
the run options both ``score`` commands share, and the error-to-exit-code mapping.

Each assay's CLI (``rescue_gpu.flow.cli``, ``rescue_gpu.cells.cli``) and the ``rescue`` app
(``rescue_gpu.cli.app``) import this module; it imports none of them, so the app can import
the assays' commands without an import cycle.

Exit codes: 0 success, 2 usage or configuration errors and environment faults (a read-only
or full file system: a clear one-line message, no traceback), 3 some samples failed, 130
interrupted (Ctrl-C; a line says that a score run resumes), 1 anything unexpected.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from .errors import OutputError, RescueError, os_errno

if TYPE_CHECKING:
    from .config import RuntimeConfig

__all__ = ["EXIT_OK", "EXIT_UNEXPECTED", "EXIT_USAGE", "EXIT_SAMPLES_FAILED", "console", "err_console", "progress",
           "RunProgress", "print_run", "run_app", "runtime_from", "ConfigOpt", "SchedulerOpt", "InProcessOpt",
           "BackendOpt", "WorkersOpt", "ThreadsOpt", "MemoryLimitOpt", "BatchSizeOpt", "SamplesPerTaskOpt",
           "WindowOpt", "EngineOpt", "PrecisionOpt", "SeedOpt", "KeepIdentifiersOpt", "ReportOpt", "DashboardOpt",
           "ClusterOpt", "WorkersPerGpuOpt", "SlurmPartitionOpt", "SlurmAccountOpt", "SlurmWorkersOpt", "SlurmCoresOpt",
           "SlurmMemoryOpt", "SlurmGpusOpt", "SlurmWalltimeOpt", "VerboseOpt", "cluster_overrides", "set_verbose"]

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_SAMPLES_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
INTERRUPTED = ("interrupted: rescue score and rescue cells score keep every sample finished so far, so the same "
               "command resumes the run; other commands start again")


class _Console(Console):
    """A rich ``Console`` that never hard-wraps printed text when its file is not a terminal.

    Piped, redirected or captured (logs, scripts, tests), a message stays one line however
    long its paths are; tables are still laid out to the console's width. On a terminal,
    rich wraps as usual. Decided at each print, as the file (``sys.stderr``) may change.
    """

    @property  # type: ignore[override]
    def soft_wrap(self) -> bool:
        """Soft wrap (no inserted line breaks): as set, and always when not writing to a terminal."""
        return self._soft_wrap_set or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap_set = bool(value)


console = _Console()
if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    console = _Console(width=140)
err_console = _Console(stderr=True)


class progress:
    """A rich progress bar (on stderr) as a context manager yielding ``advance(i, n, **fields)``.

    ``advance`` marks item ``i`` of ``n`` done; extra keyword fields (e.g. ``failed=2``,
    ``rate="1.2 M ev/s"``) are shown after the bar.
    """

    def __init__(self, what: str, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err_console,
                             transient=True)
        self._task = self._bar.add_task(what, total=total, info="")
        self._shown = False

    def __enter__(self) -> Callable[..., None]:
        self._shown = err_console.is_terminal  # piped or captured: no bar (rich would leave an empty line in logs)
        if self._shown:
            self._bar.start()
        return self.advance

    def advance(self, i: int, n: int, **fields: Any) -> None:
        """Mark item ``i`` (0-based) of ``n`` done and show ``fields``."""
        info = "  ".join(f"{k}={v}" for k, v in fields.items())
        self._bar.update(self._task, completed=i + 1, total=n, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._shown:
            self._bar.stop()


class RunProgress:
    """Callbacks of a scoring run: print the cluster and sample counts at start, then a progress bar.

    Use as a context manager; pass :meth:`on_start` and :meth:`on_progress` to the runner.
    ``show=False`` (``progress = false`` in config.toml) prints the counts but no bar.
    """

    def __init__(self, what: str = "scoring", *, show: bool = True) -> None:
        self.what, self.show, self._bar = what, show, None

    def on_start(self, cluster: str, n_todo: int, n_skipped: int) -> None:
        """Say where the run goes and how much there is to do; open the bar."""
        console.print(f"cluster: {cluster}", markup=False, highlight=False)
        console.print(f"samples: {n_todo} to score, {n_skipped} already done (skipped)")
        if n_todo and self.show:
            self._bar = progress(self.what, n_todo)
            self._bar.__enter__()

    def on_progress(self, i: int, n: int, **fields: Any) -> None:
        """Advance the bar (see :meth:`progress.advance`)."""
        if self._bar is not None:
            self._bar.advance(i, n, **fields)

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def print_run(summary: Any, rate: str, table: Any) -> None:
    """Print a scoring run's counts and ``rate``, where its outputs are, and each failed sample's error.

    ``table`` is the run's score table (a DataFrame with ``sample_id``, ``status``, ``error``).
    """
    console.print(f"scored {summary.n_scored}/{summary.n_samples} samples ({summary.n_failed} failed, "
                  f"{summary.n_skipped} skipped as already done) in {summary.seconds:.1f} s: {rate}")
    for kind, path in summary.outputs.items():
        console.print(f"{kind}: {path}", markup=False, highlight=False)
    for _, row in table[table["status"] != "scored"].iterrows():
        err_console.print(f"failed: {row['sample_id']}: {row['error']}", markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------- run options (both score commands)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Runtime config TOML ([runtime]).")]
SchedulerOpt = Annotated[Optional[str], typer.Option(
    "--scheduler", help="Existing Dask scheduler: tcp://host:8786 or a scheduler JSON file.")]
InProcessOpt = Annotated[bool, typer.Option("--in-process", help="No Dask: score in this process (debugging).")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="auto | cpu | gpu")]
WorkersOpt = Annotated[Optional[str], typer.Option("--workers", help="Embedded cluster workers: 'auto' or a number.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads-per-worker", help="Threads per embedded worker.")]
MemoryLimitOpt = Annotated[Optional[str], typer.Option("--memory-limit", help="Per worker: auto, 0.8, 24GB.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Images (flow) or cells per forward pass.")]
SamplesPerTaskOpt = Annotated[int, typer.Option("--samples-per-task", help="Samples per Dask task (one inference batch).")]
WindowOpt = Annotated[int, typer.Option("--window", help="Tasks in flight (0: twice the workers).")]
EngineOpt = Annotated[str, typer.Option("--engine", help="auto | torch | compiled | cuda-graphs | onnx | tensorrt")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto | fp32 | fp16 | bf16")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the run's randomness (same seed, same scores).")]
KeepIdentifiersOpt = Annotated[bool, typer.Option(
    "--keep-identifiers", help="Copy identifying keywords and input paths into outputs.")]
ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="Write report.html.")]
DashboardOpt = Annotated[str, typer.Option("--dashboard-address", help="Embedded cluster dashboard (':0' any port).")]
ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", help="local (this machine: one worker per GPU, else CPU processes) | slurm (workers as SLURM jobs).")]
WorkersPerGpuOpt = Annotated[Optional[int], typer.Option(
    "--workers-per-gpu", help="Samples in flight per GPU (task slots per GPU worker; processes per SLURM GPU job).")]
SlurmPartitionOpt = Annotated[Optional[str], typer.Option("--slurm-partition", help="sbatch -p.")]
SlurmAccountOpt = Annotated[Optional[str], typer.Option("--slurm-account", help="sbatch -A.")]
SlurmWorkersOpt = Annotated[Optional[int], typer.Option("--slurm-workers", help="Worker jobs to submit.")]
SlurmCoresOpt = Annotated[Optional[int], typer.Option("--slurm-cores", help="CPUs per worker job.")]
SlurmMemoryOpt = Annotated[Optional[str], typer.Option("--slurm-memory", help="Memory per worker job, e.g. 16GB.")]
SlurmGpusOpt = Annotated[Optional[int], typer.Option("--slurm-gpus-per-worker", help="GPUs per worker job: 0 or 1.")]
SlurmWalltimeOpt = Annotated[Optional[str], typer.Option("--slurm-walltime", help="sbatch -t: HH:MM:SS.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Say more: e.g. the SLURM job script.")]


def cluster_overrides(*, cluster: str | None = None, workers_per_gpu: int | None = None,
                      slurm_partition: str | None = None, slurm_account: str | None = None,
                      slurm_workers: int | None = None, slurm_cores: int | None = None,
                      slurm_memory: str | None = None, slurm_gpus_per_worker: int | None = None,
                      slurm_walltime: str | None = None) -> dict[str, Any]:
    """The ``--cluster``/``--slurm-*`` options as overrides of ``[cluster]`` (None: keep the file's value)."""
    return {"kind": cluster, "workers_per_gpu": workers_per_gpu,
            "slurm": {"partition": slurm_partition, "account": slurm_account, "workers": slurm_workers,
                      "cores": slurm_cores, "memory": slurm_memory, "gpus_per_worker": slurm_gpus_per_worker,
                      "walltime": slurm_walltime}}


def set_verbose(verbose: bool) -> None:
    """With ``verbose``, show rescue_gpu's INFO messages (the SLURM job script, ...) on stderr."""
    if not verbose:
        return
    import logging

    log = logging.getLogger("rescue_gpu")
    log.setLevel(logging.INFO)
    if not any(getattr(h, "_rescue_verbose", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._rescue_verbose = True  # type: ignore[attr-defined]
        log.addHandler(handler)


def runtime_from(config: Path | None, *, backend: str | None = None, workers: str | None = None,
                 threads_per_worker: int | None = None, memory_limit: str | None = None,
                 batch_size: int | None = None, cluster: dict[str, Any] | None = None) -> RuntimeConfig:
    """The runtime config of a ``score`` command: ``config`` (or the defaults) with the given options over it.

    ``cluster``: overrides of ``[cluster]`` (:func:`cluster_overrides`).

    Raises
    ------
    ConfigError
        The file or a value is invalid (the message says which and how to fix it).
    """
    from .config import load_runtime

    return load_runtime(config, backend=backend, workers=workers, threads_per_worker=threads_per_worker,
                        memory_limit=memory_limit, batch_size=batch_size, cluster=cluster)


# OSErrors that only writing raises (read-only, full, quota, too large): one line and exit 2, wherever they come from
_WRITE_FAULTS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def run_app(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a typer app and map errors to exit codes (see the module docstring)."""
    try:
        rc = app(args=argv, standalone_mode=False)
    except RescueError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        return EXIT_USAGE
    except typer.Exit as exc:
        rc = int(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        return EXIT_USAGE
    except OSError as exc:
        if os_errno(exc) not in _WRITE_FAULTS:
            raise
        err_console.print(f"error: {OutputError(exc.filename, exc)}", markup=False, highlight=False)
        return EXIT_USAGE
    except Exception as exc:
        # click's (vendored by typer) usage errors: they know how to show themselves
        if hasattr(exc, "show") and getattr(exc, "exit_code", None) == EXIT_USAGE:
            exc.show()
            return EXIT_USAGE
        raise
    if rc == EXIT_INTERRUPTED:  # click returns (or raises Exit with) 130 on Ctrl-C (KeyboardInterrupt)
        err_console.print(INTERRUPTED, markup=False, highlight=False, soft_wrap=True)
    return rc if isinstance(rc, int) else EXIT_OK
