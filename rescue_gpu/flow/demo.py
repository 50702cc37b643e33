"""``rescue demo``: simulate a small cohort, build a reference, train, score; print the report's path.

Sized to finish within five minutes on a 2-core CPU without a GPU: 30 samples of 5,000
events, 64-pixel images, a 250-events-per-sample reference, 2-fold cross-validation with
at most 5 epochs. Patients are
split two to one: the reference and the model see the training patients only, and the
scored cohort (with the report's evaluation) is the held-out patients.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Pipeline, load_pipeline
from ..errors import RescueError
from ..runner.manifest import ManifestRow, read_manifest

__all__ = ["run_demo", "demo_pipeline", "split_patients"]


def demo_pipeline(*, image_size: int = 64) -> Pipeline:
    """aml-mrd with a small raster and a short training schedule."""
    pipe = load_pipeline("aml-mrd")
    train = dataclasses.replace(pipe.model.train, folds=2, max_epochs=5, patience=3, batch_size=16,
                                augment_copies=1, learning_rate=1e-3)
    return dataclasses.replace(
        pipe, raster=dataclasses.replace(pipe.raster, size=image_size),
        reference=dataclasses.replace(pipe.reference, events_per_sample=250, n_epochs=100),
        model=dataclasses.replace(pipe.model, train=train))


def split_patients(rows: list[ManifestRow], *, every: int = 3) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """``(train, held_out)``: every ``every``-th patient is held out, stratified.

    Patients with a negative sample and the others are split separately (the first
    of each group trains), so both classes reach training whenever the cohort has them.
    """
    def pid(r: ManifestRow) -> str:
        return r.patient_id or r.sample_id

    negative = {pid(r) for r in rows if r.label == "negative"}
    held: set[str] = set()
    for group in (sorted(negative), sorted({pid(r) for r in rows} - negative)):
        held.update(group[1::every])
    return ([r for r in rows if (r.patient_id or r.sample_id) not in held],
            [r for r in rows if (r.patient_id or r.sample_id) in held])


def _write_manifest(rows: list[ManifestRow], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "path", "patient_id", "timepoint", "label"])
        for r in rows:
            w.writerow([r.sample_id, str(Path(r.path).resolve()), r.patient_id, r.timepoint, r.label])
    return path


def run_demo(
    out: Path,
    *,
    samples: int = 30,
    events: int = 5000,
    seed: int = 7,
    image_size: int = 64,
    in_process: bool = False,
    say: Callable[[str], None] = print,
) -> Path:
    """Run the whole product on a simulated cohort and return the path of ``report.html``.

    Parameters
    ----------
    out
        Demo folder: ``cohort/``, ``reference/``, ``model/``, ``run/`` (replaced if present).
    samples, events, seed
        Size and seed of the simulated cohort.
    image_size
        Raster size of the images.
    in_process
        Score without Dask (default: an embedded LocalCluster, as ``rescue score``).
    say
        Where progress lines go.
    """
    import shutil

    from ..config import RuntimeConfig
    from ..flow.train import train_model
    from ..simulate import simulate_cohort
    from .assay import ScoreOptions, score_cohort
    from .stages import build_reference_from_rows

    if samples < 12:
        raise RescueError(f"the demo needs at least 12 samples to train and hold out both classes (got {samples})")
    out = Path(out)
    for name in ("cohort", "reference", "model", "model-cache", "run"):
        shutil.rmtree(out / name, ignore_errors=True)
    pipe, t0 = demo_pipeline(image_size=image_size), time.perf_counter()
    simulate_cohort(out / "cohort", n_samples=samples, n_events=events, seed=seed)
    train, held = split_patients(read_manifest(out / "cohort" / "manifest.csv"))
    say(f"simulated {samples} samples x {events:,} events; {len(train)} training, {len(held)} held out "
        f"({time.perf_counter() - t0:.0f} s)")
    ref = build_reference_from_rows(train, pipe, backend="cpu")
    ref.save(out / "reference")
    say(f"reference: {ref.train_events.shape[0]:,} events fitted ({time.perf_counter() - t0:.0f} s)")
    record = train_model(train, ref, pipe, out=out / "model", device="cpu", n_boot=200, show_progress=False)
    say(f"model trained: threshold {record.threshold:.3f} ({time.perf_counter() - t0:.0f} s)")
    summary = score_cohort(_write_manifest(held, out / "held-out.csv"), reference=out / "reference",
                           model=out / "model", out=out / "run", options=ScoreOptions(pipeline=pipe),
                           runtime=RuntimeConfig(backend="cpu"), in_process=in_process, dashboard_address=":0",
                           on_start=lambda c, n, s: say(f"scoring {n} samples on {c}"))
    say(f"scored {summary.n_scored}/{summary.n_samples} held-out samples ({time.perf_counter() - t0:.0f} s)")
    return summary.outputs["report"]
