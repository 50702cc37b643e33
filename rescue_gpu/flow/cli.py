"""``rescue score``: the flow assay's scoring command.

:func:`register` adds the command to the ``rescue`` app (:mod:`rescue_gpu.cli.app`). Run as
a module (``python -m rescue_gpu.flow.cli score ...``; ``rescue_gpu.cohort.cli`` before the
runner/flow/cells split) it behaves like ``rescue score``. The run options it shares with
``rescue cells score`` are defined once, in :mod:`rescue_gpu.cliutil`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cliutil import (EXIT_SAMPLES_FAILED, BackendOpt, BatchSizeOpt, ClusterOpt, ConfigOpt, DashboardOpt,
                       EngineOpt, InProcessOpt, KeepIdentifiersOpt, MemoryLimitOpt, PrecisionOpt, ReportOpt,
                       RunProgress, SamplesPerTaskOpt, SchedulerOpt, SeedOpt, SlurmAccountOpt, SlurmCoresOpt,
                       SlurmGpusOpt, SlurmMemoryOpt, SlurmPartitionOpt, SlurmWalltimeOpt, SlurmWorkersOpt, ThreadsOpt,
                       VerboseOpt, WindowOpt, WorkersOpt, WorkersPerGpuOpt, cluster_overrides, err_console,
                       print_run, run_app, runtime_from, set_verbose)

__all__ = ["register", "score", "print_warnings"]


def score(
    inputs: Annotated[Path, typer.Argument(help="Manifest CSV (sample_id,path[,patient_id,timepoint,label]) or a folder of FCS files.")],
    reference: Annotated[Path, typer.Option("--reference", help="Reference directory.")],
    model: Annotated[Path, typer.Option("--model", help="Model directory.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (store.zarr, scores, report); run again to resume.")],
    pipeline: Annotated[Optional[str], typer.Option(
        "--pipeline", help="Pipeline name or TOML path. Default: the pipeline the reference was built with "
                           "(stored in it); one given here must have the reference's panel, preprocessing and raster.",
        show_default=False)] = None,
    config: ConfigOpt = None,
    scheduler: SchedulerOpt = None,
    in_process: InProcessOpt = False,
    backend: BackendOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
    memory_limit: MemoryLimitOpt = None,
    batch_size: BatchSizeOpt = None,
    samples_per_task: SamplesPerTaskOpt = 4,
    window: WindowOpt = 0,
    engine: EngineOpt = "auto",
    precision: PrecisionOpt = "auto",
    seed: SeedOpt = 0,
    keep_coords: Annotated[bool, typer.Option("--keep-coords", help="Store projected coordinates per sample.")] = False,
    keep_identifiers: KeepIdentifiersOpt = False,
    flag_events: Annotated[bool, typer.Option("--flag-events", help="Write flagged/<sample>.fcs for positive samples.")] = False,
    report: ReportOpt = True,
    dashboard_address: DashboardOpt = ":8787",
    cluster: ClusterOpt = None,
    workers_per_gpu: WorkersPerGpuOpt = None,
    slurm_partition: SlurmPartitionOpt = None,
    slurm_account: SlurmAccountOpt = None,
    slurm_workers: SlurmWorkersOpt = None,
    slurm_cores: SlurmCoresOpt = None,
    slurm_memory: SlurmMemoryOpt = None,
    slurm_gpus_per_worker: SlurmGpusOpt = None,
    slurm_walltime: SlurmWalltimeOpt = None,
    verbose: VerboseOpt = False,
    mrd_model: Annotated[Optional[Path], typer.Option("--mrd-model", help="DfN normal-marrow model directory "
                         "(rescue_gpu.flow.mrd): add the event-level MRD % (DfN, plus LAIP from the patient's "
                         "diagnosis sample) to scores and flagged files.")] = None,
) -> None:
    """Score a cohort: read, preprocess, project, rasterise and classify every sample on Dask."""
    from ..reference.pipeline import resolve_pipeline
    from .assay import ScoreOptions, score_cohort

    set_verbose(verbose)
    runtime = runtime_from(config, backend=backend, workers=workers, threads_per_worker=threads_per_worker,
                           memory_limit=memory_limit, batch_size=batch_size,
                           cluster=cluster_overrides(cluster=cluster, workers_per_gpu=workers_per_gpu,
                                                     slurm_partition=slurm_partition, slurm_account=slurm_account,
                                                     slurm_workers=slurm_workers, slurm_cores=slurm_cores,
                                                     slurm_memory=slurm_memory,
                                                     slurm_gpus_per_worker=slurm_gpus_per_worker,
                                                     slurm_walltime=slurm_walltime))
    resolved = resolve_pipeline(reference, pipeline)
    if resolved.note:
        err_console.print(resolved.note, markup=False, highlight=False, soft_wrap=True)
    options = ScoreOptions(pipeline=resolved.pipeline, seed=seed, engine=engine, precision=precision,
                           samples_per_task=samples_per_task, window=window, keep_coords=keep_coords,
                           keep_identifiers=keep_identifiers, flag_events=flag_events, report=report,
                           mrd_model=str(mrd_model) if mrd_model is not None else None)
    with RunProgress(show=runtime.progress) as bar:
        summary = score_cohort(inputs, reference=reference, model=model, out=out, options=options, runtime=runtime,
                               scheduler=scheduler, in_process=in_process, dashboard_address=dashboard_address,
                               on_start=bar.on_start, on_progress=bar.on_progress)
    _print_summary(summary)
    if summary.n_failed:
        raise typer.Exit(EXIT_SAMPLES_FAILED)


def _print_summary(summary) -> None:  # noqa: ANN001 (RunSummary, imported lazily)
    import pandas as pd

    table = pd.read_csv(summary.outputs["csv"], keep_default_na=False)
    print_run(summary, f"{summary.samples_per_s:.2f} samples/s, {summary.events_per_s:,.0f} events/s", table)
    print_warnings(table)


def print_warnings(table) -> None:  # noqa: ANN001 (a pandas DataFrame, imported lazily)
    """Print each sample's warnings (the ``warnings`` column, ``"; "``-joined) on stderr, one per line."""
    if "warnings" not in table.columns:
        return
    flagged = table[table["warnings"].astype(str) != ""]
    for _, row in flagged.iterrows():
        for text in str(row["warnings"]).split("; "):
            err_console.print(f"warning: {row['sample_id']}: {text}", markup=False, highlight=False, soft_wrap=True)
    if len(flagged):
        err_console.print(f"{len(flagged)} sample(s) with warnings: see the 'warnings' column of scores.csv and report.html",
                          markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``score`` to ``app`` (the main ``rescue`` command line)."""
    app.command("score")(score)


def _main(argv: list[str] | None = None) -> int:
    """``python -m rescue_gpu.flow.cli score ...``: ``rescue score`` without the rest of the app."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help="rescue_gpu: score a flow cohort.")
    app.callback()(lambda: None)  # keep ``score`` a sub-command, as in ``rescue score``
    register(app)
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(_main())
