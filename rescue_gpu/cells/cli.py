"""``rescue cells ...``: the single-cell image path's command line.

- ``rescue cells simulate OUT``: a procedural library (training tree + samples with known fractions);
- ``rescue cells simulate-subtype OUT``: AML subtype patients with the truth of which cells are abnormal;
- ``rescue cells train TRAIN --out MODEL``: train a cell classifier with patient-level splits;
- ``rescue cells score INPUTS --model MODEL --out RUN``: per-cell probabilities, per-sample readout,
  report, on the same runner, run store and run options as ``rescue score``;
- ``rescue cells demo``: all three on a small simulated library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cliutil import (EXIT_SAMPLES_FAILED, BackendOpt, BatchSizeOpt, ConfigOpt, DashboardOpt, EngineOpt,
                       InProcessOpt, KeepIdentifiersOpt, MemoryLimitOpt, PrecisionOpt, ReportOpt, RunProgress,
                       SamplesPerTaskOpt, SchedulerOpt, SeedOpt, ThreadsOpt, WindowOpt, WorkersOpt, console,
                       err_console, print_run, progress, runtime_from)

__all__ = ["register", "cells_app"]

cells_app = typer.Typer(no_args_is_help=True, help="Single-cell images: imaging flow cytometry and blood smears.")
PipelineOpt = Annotated[str, typer.Option("--pipeline", help="Cells pipeline name in pipelines/ or a TOML path.")]


@cells_app.command("simulate")
def simulate(
    out: Annotated[Path, typer.Argument(help="Folder for train/, samples/, samples.csv and truth.csv.")],
    assay: Annotated[str, typer.Option("--assay", help="ifc (bright-field + dark-field) or smear (RGB).")] = "ifc",
    layout: Annotated[str, typer.Option("--layout", help="tree | channel-tiffs (ifc) | numpy")] = "tree",
    patients: Annotated[int, typer.Option("--patients", help="Training patients.")] = 12,
    cells_per_class: Annotated[int, typer.Option("--cells-per-class", help="Training cells per class and patient.")] = 40,
    samples: Annotated[int, typer.Option("--samples", help="Unlabelled samples with known leukaemic fractions.")] = 8,
    cells_per_sample: Annotated[int, typer.Option("--cells-per-sample")] = 400,
    size: Annotated[Optional[int], typer.Option("--size", help="Crop size in pixels (default: the assay's).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Simulate a single-cell image library (no real data set can be downloaded here)."""
    from ..simulate.cells import simulate_cell_library

    with progress("simulating", 1) as advance:
        lib = simulate_cell_library(out, assay=assay, layout=layout, n_train_patients=patients,
                                    cells_per_class=cells_per_class, n_samples=samples,
                                    cells_per_sample=cells_per_sample, size=size, seed=seed, on_progress=advance)
    console.print(str(lib), markup=False, highlight=False)


@cells_app.command("simulate-subtype")
def simulate_subtype(
    out: Annotated[Path, typer.Argument(help="Folder for class/patient/cells, patients.csv and truth.csv.")],
    patients_per_class: Annotated[int, typer.Option("--patients-per-class")] = 12,
    cells: Annotated[int, typer.Option("--cells", help="Cells per patient.")] = 64,
    size: Annotated[Optional[int], typer.Option("--size", help="Crop size in pixels (default 224).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Simulate AML subtype patients: normal smear cells plus 10-60 % subtype-specific abnormal cells."""
    from ..simulate.cells.subtype import simulate_subtype_cohort

    with progress("simulating", 1) as advance:
        res = simulate_subtype_cohort(out, patients_per_class=patients_per_class, cells_per_patient=cells, size=size,
                                      seed=seed, on_progress=advance)
    console.print(str(res), markup=False, highlight=False)


@cells_app.command("train")
def train(
    train_data: Annotated[Path, typer.Argument(help="Labelled cells: class/patient/images folders, or an .npz stack.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    pipeline: PipelineOpt = "ifc-labelfree",
    architecture: Annotated[Optional[str], typer.Option("--architecture", help="Override: resnet50 | resnext50_32x4d | resnet34 | resnet18")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Override the pipeline's max_epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | gpu | cuda:N")] = "auto",
    level: Annotated[str, typer.Option("--level", help="cell (a cell classifier) | patient (attention MIL over a "
                                                        "cell model's features)")] = "cell",
    cell_model: Annotated[Optional[Path], typer.Option("--cell-model", help="--level patient: the cell model "
                                                                             "whose features the MIL model reads.")] = None,
    folds: Annotated[int, typer.Option("--folds", help="--level patient: cross-validation folds (1: none).")] = 5,
    bag_size: Annotated[int, typer.Option("--bag-size", help="--level patient: cells per training bag.")] = 32,
    pooling: Annotated[Optional[str], typer.Option("--pooling", help="--level patient: attention | attention+mean "
                                                   "(default attention+mean).")] = None,
    members: Annotated[Optional[int], typer.Option("--members", help="--level patient: ensemble members, each "
                                                   "trained from its own seed (default 1).")] = None,
) -> None:
    """Train a cell classifier (patient-level splits, class balancing, flips/rotations/shifts, early stopping).

    With ``--level patient``: a patient-level subtype model (gated-attention MIL over the
    penultimate features of ``--cell-model``), cross-validated over patients, then trained on all.
    Warnings about too few validation patients per class or an unstable validation curve
    are printed as ``warning: ...`` lines and stored in model.json (provenance ``warnings``).
    """
    from .spec import load_cell_pipeline
    from .workflow import train_cell_model, with_overrides

    if level not in ("cell", "patient"):
        raise typer.BadParameter(f"--level must be 'cell' or 'patient' (got {level!r})")
    if level == "patient":
        _train_patient(train_data, out, load_cell_pipeline(pipeline), cell_model, folds=folds, bag_size=bag_size,
                       epochs=epochs, device=device, pooling=pooling, members=members)
        return
    pipe = with_overrides(load_cell_pipeline(pipeline), architecture=architecture, epochs=epochs, batch_size=batch_size)
    record, report = train_cell_model(
        train_data, pipeline=pipe, out=out, device=device,
        on_epoch=lambda h: console.print(f"epoch {h['epoch']}: train loss {h['train_loss']:.4f}, "
                                         f"val loss {h['val_loss']:.4f}, val accuracy {h.get('val_accuracy', 0):.3f}"))
    summary = report.summary()
    for text in record.provenance.get("warnings", []):
        err_console.print(f"warning: {text}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"model: {out} ({record.architecture}, classes {list(record.classes)}, sha256 {record.sha256[:12]})",
                  markup=False, highlight=False)
    console.print(json.dumps({k: summary.get(k) for k in ("split", "best_epoch", "rates", "test") if k in summary},
                             indent=1, default=str)[:6000], markup=False, highlight=False)


def _train_patient(train_data: Path, out: Path, pipe, cell_model: Optional[Path], *, folds: int,  # noqa: ANN001
                   bag_size: int, epochs: Optional[int], device: str, pooling: Optional[str] = None,
                   members: Optional[int] = None) -> None:
    from .mil import MilTrainSpec
    from .patient import spec_with, train_patient_model

    if cell_model is None:
        raise typer.BadParameter("--level patient needs --cell-model CELL_MODEL_DIR (the cell network whose "
                                 "features the MIL model reads)")
    spec = spec_with(MilTrainSpec(), bag_size=bag_size, max_epochs=epochs, pooling=pooling, members=members)
    record, summary = train_patient_model(train_data, pipeline=pipe, cell_model=cell_model, out=out, spec=spec,
                                          folds=folds, device="cpu" if device == "auto" else device,
                                          say=lambda s: console.print(s, markup=False, highlight=False))
    console.print(f"patient model: {out} (classes {list(record.classes)}, cell model sha256 "
                  f"{record.cell_model_sha256[:12]}, sha256 {record.sha256[:12]})", markup=False, highlight=False)
    console.print(json.dumps({k: summary.get(k) for k in ("patients", "cells", "best_epoch", "cv") if k in summary},
                             indent=1, default=str)[:6000], markup=False, highlight=False)


@cells_app.command("score")
def score(
    inputs: Annotated[Path, typer.Argument(help="Manifest CSV (sample_id,path[,patient_id,label,true_fraction]) or a folder of samples.")],
    model: Annotated[Path, typer.Option("--model", help="Cell model directory.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory; run again to resume.")],
    pipeline: PipelineOpt = "ifc-labelfree",
    config: ConfigOpt = None,
    scheduler: SchedulerOpt = None,
    in_process: InProcessOpt = False,
    backend: BackendOpt = None,
    workers: WorkersOpt = None,
    threads_per_worker: ThreadsOpt = None,
    memory_limit: MemoryLimitOpt = None,
    batch_size: BatchSizeOpt = None,
    samples_per_task: SamplesPerTaskOpt = 1,
    window: WindowOpt = 0,
    engine: EngineOpt = "torch",
    precision: PrecisionOpt = "auto",
    embeddings: Annotated[bool, typer.Option("--embeddings/--no-embeddings", help="Store and export penultimate-layer features.")] = True,
    gallery: Annotated[Optional[int], typer.Option("--gallery", help="Cells per sample kept for the report gallery.")] = None,
    keep_identifiers: KeepIdentifiersOpt = False,
    seed: SeedOpt = 0,
    report: ReportOpt = True,
    dashboard_address: DashboardOpt = ":8787",
    level: Annotated[str, typer.Option("--level", help="cell (per-cell classes, per-sample readout) | patient "
                                                        "(--model is a MIL model: subtype per patient)")] = "cell",
    cell_model: Annotated[Optional[Path], typer.Option("--cell-model", help="--level patient: the cell model the "
                                                                             "MIL model was trained on.")] = None,
) -> None:
    """Classify every cell of every sample; write the per-sample leukaemic percentage, cells table and report.

    With ``--level patient``: INPUTS is a folder of patients (class/patient/images or
    patient/images); writes patients.csv (probabilities, call), cells.csv/.parquet (each
    cell's attention) and report.html (most-attended cells, confusion matrix with 95 %
    intervals when classes are known). Runner options do not apply.
    """
    from .assay import CellScoreOptions, score_cells
    from .spec import load_cell_pipeline

    if level not in ("cell", "patient"):
        raise typer.BadParameter(f"--level must be 'cell' or 'patient' (got {level!r})")
    if level == "patient":
        _score_patient(inputs, model, out, load_cell_pipeline(pipeline), cell_model, report=report)
        return

    runtime = runtime_from(config, backend=backend, workers=workers, threads_per_worker=threads_per_worker,
                           memory_limit=memory_limit, batch_size=batch_size)
    options = CellScoreOptions(pipeline=load_cell_pipeline(pipeline), engine=engine, precision=precision,
                               samples_per_task=samples_per_task, window=window, keep_embeddings=embeddings,
                               gallery=gallery, keep_identifiers=keep_identifiers, seed=seed, report=report)
    with RunProgress(show=runtime.progress) as bar:
        summary = score_cells(inputs, model=model, out=out, options=options, runtime=runtime, scheduler=scheduler,
                              in_process=in_process, dashboard_address=dashboard_address, on_start=bar.on_start,
                              on_progress=bar.on_progress)
    _print_summary(summary)
    if summary.n_failed:
        raise typer.Exit(EXIT_SAMPLES_FAILED)


def _score_patient(inputs: Path, model: Path, out: Path, pipe, cell_model: Optional[Path], *,  # noqa: ANN001
                   report: bool) -> None:
    import pandas as pd

    from .patient import score_patient_cells

    if cell_model is None:
        raise typer.BadParameter("--level patient needs --cell-model CELL_MODEL_DIR (the cell model the MIL model "
                                 "was trained on)")
    res = score_patient_cells(inputs, pipeline=pipe, model=model, cell_model=cell_model, out=out, report=report)
    df = pd.read_csv(res.patients_csv)
    console.print(df.round(3).to_string(index=False), markup=False, highlight=False)
    console.print(f"{res.n_patients} patients, {res.n_cells} cells: {res.patients_csv}, {res.cells_csv}"
                  f"{f', {res.report}' if res.report else ''}", markup=False, highlight=False)


def _print_summary(summary) -> None:  # noqa: ANN001 (CellRunSummary, imported lazily)
    import pandas as pd

    df = pd.read_parquet(summary.outputs["parquet"])
    cols = ["sample_id", "n_cells", "leukaemic_pct", "ci_low_pct", "ci_high_pct", "call", "true_pct"]
    console.print(df[df["status"] == "scored"][cols].round(2).to_string(index=False), markup=False, highlight=False)
    print_run(summary, f"{summary.cells_per_s:,.0f} cells/s", df)


@cells_app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for the library, model and run.")] = Path("demo-out/cells"),
    epochs: Annotated[int, typer.Option("--epochs")] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 7,
) -> None:
    """Simulate imaging-flow cells, train a small classifier, score samples with known leukaemic fractions."""
    from .workflow import run_cell_demo

    res = run_cell_demo(out, epochs=epochs, seed=seed,
                        say=lambda s: console.print(s, markup=False, highlight=False))
    console.print(f"cells demo done in {res.seconds:.0f} s; open {res.run_dir / 'report.html'}",
                  markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``cells`` command group to ``app`` (the main ``rescue`` command line)."""
    app.add_typer(cells_app, name="cells")
