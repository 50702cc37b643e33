"""``rescue score``: the cohort runner's command line.

:func:`register` adds the command to the main ``rescue`` app. Run as a module
(``python -m rescue_gpu.cohort.cli score ...``) it behaves like ``rescue score`` even
before the main app registers it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cliutil import EXIT_SAMPLES_FAILED, RunProgress, err_console, print_run

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
    config: Annotated[Optional[Path], typer.Option("--config", help="Runtime config TOML ([runtime]).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Existing Dask scheduler: tcp://host:8786 or a scheduler JSON file.")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="No Dask: score in this process (debugging).")] = False,
    backend: Annotated[Optional[str], typer.Option("--backend", help="auto | cpu | gpu")] = None,
    workers: Annotated[Optional[str], typer.Option("--workers", help="Embedded cluster workers: 'auto' or a number.")] = None,
    threads_per_worker: Annotated[Optional[int], typer.Option("--threads-per-worker")] = None,
    memory_limit: Annotated[Optional[str], typer.Option("--memory-limit", help="Per worker: auto, 0.8, 24GB.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per forward pass.")] = None,
    samples_per_task: Annotated[int, typer.Option("--samples-per-task", help="Samples per Dask task (one inference batch).")] = 4,
    window: Annotated[int, typer.Option("--window", help="Tasks in flight (0: twice the workers).")] = 0,
    engine: Annotated[str, typer.Option("--engine", help="auto | torch | compiled | cuda-graphs | onnx | tensorrt")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto | fp32 | fp16 | bf16")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the UMAP transform.")] = 0,
    keep_coords: Annotated[bool, typer.Option("--keep-coords", help="Store projected coordinates per sample.")] = False,
    keep_identifiers: Annotated[bool, typer.Option("--keep-identifiers", help="Copy identifying FCS keywords and paths into outputs.")] = False,
    flag_events: Annotated[bool, typer.Option("--flag-events", help="Write flagged/<sample>.fcs for positive samples.")] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write report.html.")] = True,
    dashboard_address: Annotated[str, typer.Option("--dashboard-address", help="Embedded cluster dashboard (':0' any port).")] = ":8787",
) -> None:
    """Score a cohort: read, preprocess, project, rasterise and classify every sample on Dask."""
    from ..config import load_runtime
    from ..reference.pipeline import resolve_pipeline
    from .runner import ScoreOptions, score_cohort

    runtime = load_runtime(config, backend=backend, workers=workers, threads_per_worker=threads_per_worker,
                           memory_limit=memory_limit, batch_size=batch_size)
    resolved = resolve_pipeline(reference, pipeline)
    if resolved.note:
        err_console.print(resolved.note, markup=False, highlight=False, soft_wrap=True)
    options = ScoreOptions(pipeline=resolved.pipeline, seed=seed, engine=engine, precision=precision,
                           samples_per_task=samples_per_task, window=window, keep_coords=keep_coords,
                           keep_identifiers=keep_identifiers, flag_events=flag_events, report=report)
    with RunProgress() as bar:
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
    from .. import cli

    if not any((c.name or getattr(c.callback, "__name__", "")) == "score" for c in cli.app.registered_commands):
        register(cli.app)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(_main())
