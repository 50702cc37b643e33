"""The ``rescue`` app: a thin layer that mirrors the Python API.

This module holds the commands that belong to no assay (``fcs inspect``, ``simulate``,
``preprocess``, ``demo``, ``reference ...``, ``project``, ``config``) and adds each
assay's and the model's commands (``score``, ``cells ...``, ``train``, ``model ...``, ``mrd ...``)
from the modules that define them next to their code. Exit codes: see
:mod:`rescue_gpu.cliutil`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..cliutil import EXIT_SAMPLES_FAILED, console, err_console, progress, run_app

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="rescue_gpu: MRD detection at cohort scale.")
fcs_app = typer.Typer(no_args_is_help=True, help="Read and check FCS files.")
ref_app = typer.Typer(no_args_is_help=True, help="Build, import and check reference UMAPs.")
app.add_typer(fcs_app, name="fcs")
app.add_typer(ref_app, name="reference")

PipelineOpt = Annotated[str, typer.Option("--pipeline", help="Pipeline name in pipelines/ or a TOML path.")]


@fcs_app.command("inspect")
def fcs_inspect(files: Annotated[list[Path], typer.Argument(help="FCS files to describe.")]) -> None:
    """Print version, events, parameters, channels/markers and spillover; say why a file is refused."""
    from ..fcs.inspect import inspect_many

    text, n_refused = inspect_many(files)
    console.print(text, markup=False, highlight=False)
    if n_refused:
        raise typer.Exit(EXIT_SAMPLES_FAILED)


@app.command("simulate")
def simulate(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the FCS files and manifest.csv.")],
    samples: Annotated[int, typer.Option("--samples", help="Number of samples.")] = 20,
    events: Annotated[int, typer.Option("--events", help="Events per sample.")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same files).")] = 0,
) -> None:
    """Simulate an AML-MRD cohort: FCS 3.1 files plus manifest.csv and truth."""
    from ..simulate import simulate_cohort

    t0 = time.perf_counter()
    with progress("simulating", samples) as advance:
        summary = simulate_cohort(out_dir, n_samples=samples, n_events=events, seed=seed, on_sample=advance)
    dt = time.perf_counter() - t0
    console.print(f"wrote {samples} samples x {events:,} events to {out_dir} in {dt:.1f} s "
                  f"({samples * events / dt / 1e6:.2f} M events/s)")
    console.print(str(summary), markup=False, highlight=False)


@app.command("preprocess")
def preprocess_cmd(
    inputs: Annotated[Path, typer.Argument(help="A manifest CSV, a folder of FCS files, or one FCS file.")],
    pipeline: PipelineOpt = "aml-mrd",
) -> None:
    """Preprocess samples (compensation, transforms, QC, panel) and print a QC summary per sample."""
    from ..config import load_pipeline

    pipe = load_pipeline(pipeline)
    rows = _rows_for(inputs)
    results = _preprocess_rows(rows, pipe)
    _print_qc_table(results, pipe)
    if any(r["error"] for r in results):
        raise typer.Exit(EXIT_SAMPLES_FAILED)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the demo cohort, reference, model and run.")] = Path("demo-out"),
    samples: Annotated[int, typer.Option("--samples", help="Simulated samples.")] = 30,
    events: Annotated[int, typer.Option("--events", help="Events per sample.")] = 5000,
    seed: Annotated[int, typer.Option("--seed")] = 7,
) -> None:
    """Simulate a small cohort, build a reference, train a model, score held-out patients; print the report path."""
    from ..flow.demo import run_demo

    t0 = time.perf_counter()
    report = run_demo(out, samples=samples, events=events, seed=seed)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s; report: {report}")


@ref_app.command("build")
def reference_build(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV or folder of FCS files.")],
    out: Annotated[Path, typer.Option("--out", help="Reference directory to create.")],
    events_per_sample: Annotated[Optional[int], typer.Option("--events-per-sample", help="Events pooled per sample.")] = None,
    max_events: Annotated[Optional[int], typer.Option(
        "--max-events", help="Total events in the reference (0: no cap; default from the pipeline, 150,000), "
                             "balanced across timepoint/label groups.")] = None,
    pipeline: PipelineOpt = "aml-mrd",
    backend: Annotated[str, typer.Option("--backend", help="auto | cpu | gpu (cuML when installed).")] = "cpu",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing reference directory.")] = False,
) -> None:
    """Preprocess samples, pool an even subsample of each, fit UMAP, write a reference directory."""
    from ..flow.stages import build_reference_from_rows
    from ..config import load_pipeline

    pipe = load_pipeline(pipeline)
    rows = _rows_for(manifest)
    with progress("preprocessing", len(rows)) as advance:
        ref = build_reference_from_rows(rows, pipe, events_per_sample=events_per_sample, max_events=max_events,
                                        backend=backend, on_sample=advance)
    ref.save(out, overwrite=overwrite)
    failed = ref.provenance.get("failed_samples", {})
    console.print(f"reference: {ref.train_events.shape[0]:,} events x {len(ref.markers)} markers from "
                  f"{len(ref.provenance['events_per_sample'])} samples -> {out}")
    console.print(f"fingerprint {ref.fingerprint[:16]}, extent {tuple(round(v, 2) for v in ref.extent)}")
    for sid, err in failed.items():
        err_console.print(f"skipped {sid}: {err}", markup=False, highlight=False)
    for sid, texts in ref.provenance.get("sample_warnings", {}).items():
        for text in texts:
            err_console.print(f"warning: {sid}: {text}", markup=False, highlight=False, soft_wrap=True)


@ref_app.command("landmarks")
def reference_landmarks_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV or folder of FCS files: the reference cohort.")],
    pipeline: PipelineOpt = "aml-mrd",
    method: Annotated[str, typer.Option("--method", help="landmarks: mean quantiles; peaks: density peaks "
                                        "(robust where a quantile falls between populations).")] = "landmarks",
    quantiles: Annotated[str, typer.Option("--quantiles", help="Comma-separated landmark quantiles in (0, 1) (landmarks).")] = "0.1,0.5,0.9",
    bandwidth: Annotated[float, typer.Option("--bandwidth", help="Density smoothing SD on the transformed scale (peaks).")] = 0.02,
    min_height: Annotated[float, typer.Option("--min-height", help="Smallest peak, as a fraction of the tallest (peaks).")] = 0.05,
    max_shift: Annotated[float, typer.Option("--max-shift", help="Farthest a sample peak may lie from its reference peak (peaks).")] = 0.2,
    channels: Annotated[str, typer.Option("--channels", help="Comma-separated channels to register (default: all).")] = "",
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the table to this file instead of printing it.")] = None,
) -> None:
    """Compute the reference's landmarks and print the [preprocess.normalize] table for the pipeline file."""
    import dataclasses

    from ..config import NormalizeSpec, load_pipeline
    from ..errors import ConfigError
    from ..flow.stages import reference_landmarks
    from ..preprocess import normalize_toml

    pipe = load_pipeline(pipeline)
    if method not in ("landmarks", "peaks"):
        raise ConfigError(f"--method must be 'landmarks' or 'peaks', got {method!r}")
    try:
        q = tuple(float(v) for v in quantiles.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--quantiles must be comma-separated numbers, got {quantiles!r}") from None
    # validates the settings before any file is read
    settings = NormalizeSpec(quantiles=q, bandwidth=bandwidth, min_height=min_height, max_shift=max_shift)
    rows = _rows_for(manifest)
    with progress("preprocessing", len(rows)) as advance:
        targets, failed = reference_landmarks(rows, pipe, quantiles=q, on_sample=advance, method=method,
                                              bandwidth=bandwidth, min_height=min_height,
                                              channels=[c.strip() for c in channels.split(",") if c.strip()])
    text = normalize_toml(dataclasses.replace(settings, method=method, targets=targets))
    if out is None:
        console.print(text, markup=False, highlight=False, end="")
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"landmarks of {len(rows) - len(failed)} samples -> {out}")
    for sid, err in failed.items():
        err_console.print(f"skipped {sid}: {err}", markup=False, highlight=False)


@ref_app.command("import-umap")
def reference_import_umap(
    model: Annotated[Path, typer.Argument(help="A pickled, fitted umap.UMAP (the published pipeline's format).")],
    markers: Annotated[str, typer.Option("--markers", help="Comma-separated names of the model's input columns, in order.")],
    out: Annotated[Path, typer.Option("--out", help="Reference directory to create.")],
    trust: Annotated[bool, typer.Option("--trust", help="Allow unpickling, which runs code from the file.")] = False,
    pipeline: PipelineOpt = "aml-mrd",
) -> None:
    """Import a fitted umap-learn model as a reference (unpickling needs --trust)."""
    from ..config import load_pipeline
    from ..reference import import_umap_pickle

    pipe = load_pipeline(pipeline)
    names = [m.strip() for m in markers.split(",") if m.strip()]
    ref = import_umap_pickle(model, markers=names, trust=trust, raster=pipe.raster)
    ref.save(out)
    console.print(f"imported {ref.train_events.shape[0]:,} reference events x {len(names)} markers -> {out}")


@app.command("project")
def project_cmd(
    sample: Annotated[Path, typer.Argument(help="An FCS file.")],
    reference: Annotated[Path, typer.Option("--reference", help="Reference directory.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for coords.npy and image PNGs.")],
    pipeline: Annotated[Optional[str], typer.Option(
        "--pipeline", help="Pipeline name or TOML path. Default: the one the reference was built with.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    backend: Annotated[str, typer.Option("--backend", help="auto | cpu | gpu")] = "auto",
) -> None:
    """Project one sample into a reference and write its coordinates and image(s) as PNG."""
    import numpy as np

    from ..device import to_numpy
    from ..flow.stages import load_events, project, rasterise
    from ..raster import save_png
    from ..reference import Reference
    from ..reference.pipeline import resolve_pipeline

    resolved = resolve_pipeline(reference, pipeline)
    if resolved.note:
        err_console.print(resolved.note, markup=False, highlight=False, soft_wrap=True)
    ref = Reference.load(reference)
    events = load_events(sample, resolved.pipeline)
    for text in events.warnings:
        err_console.print(f"warning: {sample.name}: {text}", markup=False, highlight=False, soft_wrap=True)
    t0 = time.perf_counter()
    coords = project(ref, events, seed=seed, backend=backend)
    image, outside = rasterise(ref, coords, events)
    dt = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "coords.npy", to_numpy(coords))
    np.save(out / "image.npy", to_numpy(image))
    for c, kind in enumerate(_channel_names(ref)):
        save_png(image, out / f"image_{c}_{kind}.png", channels=[c])
    console.print(f"{sample.name}: {events.values.shape[0]:,} events projected in {dt:.1f} s; "
                  f"{outside} outside the canvas; wrote {out}")


def _channel_names(ref) -> list[str]:
    names: list[str] = []
    for kind in ref.raster.channels:
        names.extend([f"mean-{m}" for m in ref.markers] if kind == "markers" else [kind])
    return names


@app.command("config")
def config_check(
    config: Annotated[Optional[Path], typer.Option("--config", help="Runtime config TOML.")] = None,
    pipeline: PipelineOpt = "aml-mrd",
) -> None:
    """Validate config.toml and a pipeline file and print the resolved settings."""
    from ..config import load_pipeline, load_runtime

    console.print(load_runtime(config))
    console.print(load_pipeline(pipeline))


def _register_subsystems() -> None:
    """Add the commands each subsystem defines next to its code."""
    from ..cells.cli import register as register_cells
    from ..flow.bench import register as register_bench
    from ..flow.cli import register as register_score
    from ..flow.model_cli import register as register_model
    from ..flow.mrd_cli import register as register_mrd
    from ..flow.train_cli import register as register_train

    register_score(app)
    register_model(app)
    register_mrd(app)
    register_train(app)
    register_cells(app)
    register_bench(app)


_register_subsystems()


# ----------------------------------------------------------------------------- helpers


def _rows_for(inputs: Path) -> list:
    from ..runner.manifest import ManifestRow, read_manifest

    if inputs.is_file() and inputs.suffix.lower() != ".csv":
        return [ManifestRow(sample_id=inputs.stem, path=inputs)]
    return read_manifest(inputs)


def _preprocess_rows(rows: list, pipe) -> list[dict]:
    """Read and preprocess each row; a failing sample is recorded, never fatal."""
    from ..flow.stages import iter_events

    with progress("preprocessing", len(rows)) as advance:
        return [{"row": row, "events": ev, "error": err} for row, ev, err in iter_events(rows, pipe, on_sample=advance)]


def _print_qc_table(results: list[dict], pipe) -> None:
    table = Table(title=f"preprocessing with pipeline '{pipe.name}'")
    for col in ("sample", "timepoint", "label"):
        table.add_column(col)
    for col in ("events in", "saturated", "debris", "doublets", "non-finite", "events out"):
        table.add_column(col, justify="right")
    table.add_column("status")
    for rec in results:
        row, ev = rec["row"], rec["events"]
        qc = ev.qc if ev is not None else {}
        cells = [str(qc.get(k, "")) for k in ("n_events_in", "saturated", "debris", "doublets", "non_finite", "n_events_out")]
        table.add_row(row.sample_id, row.timepoint, row.label, *cells, "failed" if rec["error"] else "ok")
    console.print(table)
    for rec in results:
        if rec["error"]:
            err_console.print(f"failed: {rec['row'].sample_id}: {rec['error']}", markup=False, highlight=False)
        for text in (rec["events"].warnings if rec["events"] is not None else ()):
            err_console.print(f"warning: {rec['row'].sample_id}: {text}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rescue`` console script; maps errors to exit codes."""
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
