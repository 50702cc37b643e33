"""Training a cell classifier over the shared loop of :mod:`rescue_gpu.nn.train`: what only cells need.

1. :func:`rescue_gpu.nn.splits.split_patients` puts every patient's cells in exactly one
   of train / validation / test.
2. The network of :func:`rescue_gpu.cells.record.build_cell_model` is trained in the
   shared loop (AdamW and a per-step cosine schedule spanning ``max_epochs``, AMP on
   CUDA, BatchNorm-safe batches, the seeding policy of :func:`rescue_gpu.nn.train.seeded`).
   Class imbalance is handled per ``train.balance``: ``"sampler"`` draws ``len(train)``
   cells per epoch with replacement, with probability proportional to the inverse
   frequency of their class (what :class:`torch.utils.data.WeightedRandomSampler` does);
   ``"loss"`` weights the cross-entropy by inverse class frequency; ``"none"`` does
   neither. With ``train.augment`` each batch gets random flips, 90-degree rotations
   and shifts (:func:`augment_batch`).
3. Early stopping on the validation loss (cross-entropy, class-weighted by the training
   part's inverse frequencies unless ``balance = "none"``, i.e. the objective the
   training optimises; a class absent from training weighs 1) with ``patience``; the
   best epoch's weights are restored. A non-finite validation loss never counts as an
   improvement.
4. A temperature is fitted on the validation logits
   (:func:`rescue_gpu.nn.calibration.fit_temperature`, multi-class NLL). The grouped
   leukaemic call (summed leukaemic probabilities >= 0.5) on the validation cells gives
   the record's ``rates`` (TPR, FPR) for adjusted classify-and-count; per-class and
   grouped metrics are reported for the validation and the held-out test patients.
5. :func:`training_warnings`: the warnings of :mod:`rescue_gpu.nn.diagnostics` that the flow
   path gives too, for the single validation split: fewer than ``min_patients_per_class``
   validation patients holding a class; a validation-accuracy curve that falls far from
   its best or sinks below chance (``1 / n_classes``) after being above it; an epoch whose
   validation loss is above that of a uniform guess (``ln n_classes``) while its training
   loss is below it. They go into the report and the record's provenance (``warnings``);
   ``rescue cells train`` and the demo print them as ``warning: ...`` lines.

Runs are deterministic on the CPU for a given ``train.seed``; callers' random state is
left alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import torch_device
from ..errors import CellDataError, ConfigError, ModelError
from ..nn.calibration import fit_temperature
from ..nn.diagnostics import small_cohort_warnings, unstable_curve_warnings, worse_than_guessing_warnings
from ..nn.metrics import per_class_metrics
from ..nn.splits import split_patients
from ..nn.train import (FitResult, Trainer, batch_slices, collect_logits, fit, loss_value, make_trainer, provenance,
                        seeded, train_epoch)
from .metrics import grouped_binary_metrics, grouped_rates
from .record import CellModelRecord, build_cell_model
from .spec import CellPipeline, CellTrainSpec

__all__ = ["augment_batch", "class_weights", "predict_logits", "CellTrainReport", "train_cells", "training_warnings",
           "MIN_PATIENTS_PER_CLASS"]

#: Distinct validation patients every class should have before the validation metrics, early
#: stopping and temperature are more than rough estimates (the flow path's per-fold rule).
MIN_PATIENTS_PER_CLASS = 20


# --------------------------------------------------------------------------- augmentation

def _border_mean(x: torch.Tensor) -> torch.Tensor:
    """``(N, C)`` mean of each plane's outermost ring of pixels."""
    ring = torch.ones(x.shape[-2:], dtype=torch.bool, device=x.device)
    ring[1:-1, 1:-1] = False
    return x[..., ring].mean(dim=-1)


def _shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Roll each image by ``(dy[i], dx[i])`` and refill the wrapped-around border with its border mean."""
    n, c, h, w = x.shape
    src_r = torch.arange(h, device=x.device)[None, :] - dy[:, None]
    src_c = torch.arange(w, device=x.device)[None, :] - dx[:, None]
    dev = x.device
    rolled = x[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
               (src_r % h)[:, None, :, None], (src_c % w)[:, None, None, :]]
    valid = ((src_r >= 0) & (src_r < h))[:, :, None] & ((src_c >= 0) & (src_c < w))[:, None, :]
    return torch.where(valid[:, None], rolled, _border_mean(x)[:, :, None, None].to(x.dtype))


def augment_batch(x: torch.Tensor, *, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random per-image flips, 90-degree rotations and integer shifts of a batch of square images.

    Parameters
    ----------
    x
        ``(N, C, S, S)`` images (CPU or CUDA).
    generator
        Source of the random draws (on any device; the draws are moved to ``x``'s
        device), so the result is deterministic for a generator state.
    max_shift
        Shifts are drawn uniformly from ``-max_shift..max_shift`` pixels per axis; the
        image is rolled and the wrapped-around border refilled with the mean of the
        image's original border (per plane), i.e. its background.

    Returns
    -------
    torch.Tensor
        A new tensor of the same shape; with ``max_shift = 0`` every image keeps its
        multiset of pixel values.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise CellDataError(f"augment_batch needs (N, C, S, S) square images, got shape {tuple(x.shape)}")
    n = x.shape[0]

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(x.device)

    flip_h, flip_v, k = draw(2).bool()[:, None, None, None], draw(2).bool()[:, None, None, None], draw(4)
    x = torch.where(flip_h, x.flip(-1), x)
    x = torch.where(flip_v, x.flip(-2), x)
    out = x
    for r in (1, 2, 3):
        out = torch.where((k == r)[:, None, None, None], torch.rot90(x, r, dims=(-2, -1)), out)
    if max_shift > 0:
        out = _shift(out, draw(2 * max_shift + 1) - max_shift, draw(2 * max_shift + 1) - max_shift)
    return out


# --------------------------------------------------------------------------- pieces of training

def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``n / (K_present x n_k)`` per class (0 for classes absent from ``y``)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


@dataclass(kw_only=True)
class _Run:
    """The shared trainer plus what only cell training needs: validation loss, random source, sampling weights."""

    trainer: Trainer
    val_loss: nn.Module
    generator: torch.Generator
    spec: CellTrainSpec
    sample_weights: torch.Tensor | None


def _epoch_order(run: _Run, n: int) -> torch.Tensor:
    if run.sample_weights is not None:
        return torch.multinomial(run.sample_weights, n, replacement=True, generator=run.generator)
    return torch.randperm(n, generator=run.generator)


def _train_epoch(run: _Run, x: torch.Tensor, y: torch.Tensor) -> float:
    order = _epoch_order(run, x.shape[0])
    idx = [order[sl] for sl in batch_slices(order.numel(), run.spec.batch_size)]

    def augment(xb: torch.Tensor) -> torch.Tensor:
        return augment_batch(xb, generator=run.generator, max_shift=run.spec.max_shift)

    return train_epoch(run.trainer, ((x[i], y[i]) for i in idx), transform=augment if run.spec.augment else None)


def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int, device: torch.device) -> np.ndarray:
    """``(N, K)`` float32 logits of ``(N, C, S, S)`` images, in batches, eval mode, under inference mode."""
    k = int(getattr(model, "n_outputs", 0))
    return collect_logits(model, x.split(batch_size) if x.shape[0] else [], device=device, empty_shape=(0, k))


def _make_run(pipeline: CellPipeline, spec: CellTrainSpec, *, in_channels: int, y_train: np.ndarray,
              steps: int, device: torch.device) -> _Run:
    k = len(pipeline.classes.names)
    m = pipeline.model
    model = build_cell_model(architecture=m.architecture, in_channels=in_channels, n_classes=k, dropout=m.dropout,
                             pretrained=m.pretrained)
    w = torch.tensor(class_weights(y_train, k), dtype=torch.float32)
    loss_w = w.to(device) if spec.balance == "loss" else None
    val_w = torch.where(w > 0, w, torch.ones_like(w)).to(device)  # a class absent from training counts once
    trainer = make_trainer(model, loss=nn.CrossEntropyLoss(weight=loss_w), learning_rate=spec.learning_rate,
                           weight_decay=spec.weight_decay, steps=steps, device=device,
                           recompute_bn=spec.recompute_bn)
    return _Run(trainer=trainer, val_loss=nn.CrossEntropyLoss(weight=None if spec.balance == "none" else val_w),
                generator=torch.Generator().manual_seed(spec.seed), spec=spec,
                sample_weights=w[torch.from_numpy(y_train)].double() if spec.balance == "sampler" else None)


# --------------------------------------------------------------------------- report

@dataclass(kw_only=True)
class CellTrainReport:
    """What a training run did and how well the model does.

    Attributes
    ----------
    epochs, best_epoch
        Epochs run, and the epoch whose weights were kept (lowest validation loss).
    history
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``.
    val, test
        ``{"per_class": ..., "grouped": ...}`` on validation and test cells (calibrated
        probabilities); ``test`` is ``{}`` without test patients.
    rates
        TPR / FPR of the grouped leukaemic call on the validation cells.
    temperature
        The fitted temperature.
    split
        ``{"train"|"val"|"test": {"cells": n, "patients": m}}``.
    seconds, device
        Wall time and the training device.
    warnings
        The messages of :func:`training_warnings` (empty when there is nothing to say).
    """

    epochs: int
    best_epoch: int
    history: list[dict[str, Any]]
    val: dict[str, Any]
    test: dict[str, Any]
    rates: dict[str, Any]
    temperature: float
    split: dict[str, dict[str, int]]
    seconds: float
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready copy of the report."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- train_cells

def _check_inputs(images: np.ndarray, labels: np.ndarray, patients: np.ndarray, pipeline: CellPipeline,
                  channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    size, k = pipeline.preprocess.size, len(pipeline.classes.names)
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[1] != len(channels) or shape[2:] != (size, size):
        raise CellDataError(f"images must be prepared (N, {len(channels)}, {size}, {size}) float32 arrays for "
                            f"channels {list(channels)} and preprocess.size {size}; got shape {shape}")
    if not np.all(np.isfinite(images)):
        raise CellDataError("images contain NaN or infinite values; check how they were prepared")
    y = np.asarray(labels)
    if y.shape != (shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise CellDataError(f"labels must be {shape[0]} integer class indices (got dtype {y.dtype}, shape {y.shape})")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise CellDataError(f"labels must lie in 0..{k - 1} for classes {list(pipeline.classes.names)} "
                            f"(got {int(y.min())}..{int(y.max())})")
    p = np.asarray(patients).astype(str)
    if p.shape != (shape[0],):
        raise CellDataError(f"patients must give one id per image ({shape[0]}), got shape {p.shape}")
    unknown = [c for c in channels if c not in pipeline.input.channels]
    if unknown:
        raise ConfigError(f"channels {unknown} are not among input.channels {list(pipeline.input.channels)}")
    return y.astype(np.int64), p


def _check_split(y: np.ndarray, parts: tuple[np.ndarray, ...], classes: tuple[str, ...]) -> None:
    present = np.unique(y[parts[0]])
    if present.size < 2:
        raise CellDataError(f"the training patients hold {present.size} class(es) "
                            f"({[classes[i] for i in present]}); at least two are needed. Add labelled patients "
                            "with other classes or lower train.val_fraction / test_fraction")


def _fit(run: _Run, data: dict[str, tuple[torch.Tensor, torch.Tensor]], *, max_epochs: int,
         on_epoch: Callable[[dict], None] | None) -> FitResult:
    """The shared epoch loop with early stopping; the best weights are restored into the model."""
    (xt, yt), (xv, yv) = data["train"], data["val"]
    t = run.trainer

    def describe(epoch: int, train_loss: float, val_loss: float, logits: np.ndarray, seconds: float) -> dict:
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                "val_accuracy": float(np.mean(logits.argmax(1) == yv.numpy())), "lr": t.lr, "seconds": seconds}

    result = fit(max_epochs=max_epochs, patience=run.spec.patience, train_epoch=lambda epoch: _train_epoch(run, xt, yt),
                 validate=lambda: predict_logits(t.model, xv, batch_size=run.spec.batch_size, device=t.device),
                 val_loss=lambda logits: loss_value(run.val_loss, logits, yv, t.device), describe=describe,
                 model=t.model, on_epoch=on_epoch)
    if result.stop.best_state is None:
        raise ModelError(f"training produced no finite validation loss in {len(result.history)} epoch(s) (last "
                         f"{result.history[-1]['val_loss']}); the run diverged: lower train.learning_rate or check "
                         "the images")
    result.stop.restore(t.model)
    return result


def _evaluate(record: CellModelRecord, logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if y.size == 0:
        return {}
    p = record.probabilities(logits)
    return {"per_class": per_class_metrics(y, p.argmax(1), classes=record.classes),
            "grouped": grouped_binary_metrics(y, p, leukaemic_index=record.leukaemic_index)}


def _split_summary(parts: tuple[np.ndarray, ...], patients: np.ndarray) -> dict[str, dict[str, int]]:
    return {name: {"cells": int(idx.size), "patients": int(np.unique(patients[idx]).size)}
            for name, idx in zip(("train", "val", "test"), parts)}


def _provenance(pipeline: CellPipeline, spec: CellTrainSpec, report: CellTrainReport) -> dict[str, Any]:
    return provenance(device=report.device, seconds=report.seconds, pipeline=pipeline.name,
                      pipeline_source=pipeline.source, architecture=pipeline.model.architecture,
                      pretrained=pipeline.model.pretrained, train=dataclasses.asdict(spec), split=report.split,
                      epochs=report.epochs, best_epoch=report.best_epoch, warnings=list(report.warnings))


_COHORT_ADVICE = ("its metrics, early stopping, the temperature and the rates rest on few patients and are noisy. "
                  "Add patients (or raise train.val_fraction), and read the validation metrics as rough estimates")
_CURVE_ADVICE = ("Lower train.learning_rate, lower patience or max_epochs, keep train.augment on or add patients, "
                 "and check the history in training.json")


def training_warnings(labels: np.ndarray, patients: np.ndarray, parts: tuple[np.ndarray, ...], *,
                      classes: Sequence[str], history: Sequence[dict[str, Any]],
                      min_patients_per_class: int = MIN_PATIENTS_PER_CLASS) -> list[str]:
    """Small-cohort, unstable-curve and worse-than-guessing warnings of a single-split cell training run.

    Parameters
    ----------
    labels, patients
        Class index and patient of every cell.
    parts
        ``(train, val, test)`` cell indices, as :func:`rescue_gpu.nn.splits.split_patients` gives them.
    classes
        Class names (index order), used in the messages.
    history
        The run's per-epoch entries (``val_accuracy``, ``val_loss`` and ``train_loss`` are checked).
    min_patients_per_class
        Distinct validation patients each class should have.

    Returns
    -------
    list of str
        Messages from :func:`rescue_gpu.nn.diagnostics.small_cohort_warnings`,
        :func:`~rescue_gpu.nn.diagnostics.unstable_curve_warnings` and
        :func:`~rescue_gpu.nn.diagnostics.worse_than_guessing_warnings`; empty when all is well.
    """
    names = np.asarray(classes, dtype=object)[np.asarray(labels, dtype=np.int64)]
    part = ["validation split"]
    return (small_cohort_warnings(labels=names, groups=patients, folds=[(parts[0], parts[1])],
                                  min_patients_per_class_per_fold=min_patients_per_class, parts=part,
                                  advice=_COHORT_ADVICE)
            + unstable_curve_warnings([[h.get("val_accuracy") for h in history]], name="validation accuracy",
                                      chance=1.0 / max(len(classes), 1), parts=part, advice=_CURVE_ADVICE)
            + worse_than_guessing_warnings([[h.get("val_loss") for h in history]],
                                           [[h.get("train_loss") for h in history]],
                                           guess_loss=math.log(max(len(classes), 2)), parts=part,
                                           advice=_CURVE_ADVICE))


def train_cells(images: np.ndarray, labels: np.ndarray, patients: np.ndarray, *, pipeline: CellPipeline,
                channels: Sequence[str] | None = None, device: str = "auto", max_epochs: int | None = None,
                on_epoch: Callable[[dict], None] | None = None) -> tuple[CellModelRecord, CellTrainReport]:
    """Train a cell classifier on prepared images with a patient-level split.

    Parameters
    ----------
    images
        ``(N, C, S, S)`` float32 network inputs, already prepared with
        ``pipeline.preprocess`` (``S = preprocess.size``, ``C = len(channels)``).
    labels
        Class index per cell (``0..K-1``, in the order of ``pipeline.classes.names``).
    patients
        Patient id per cell (the unit of the train / validation / test split).
    pipeline
        Classes, preprocessing, network and training settings.
    channels
        Names of the ``C`` planes (default ``pipeline.input.network_channels``).
    device
        ``"auto"`` (CUDA if present, else the CPU with a warning), ``"cpu"``, ``"cuda"``/``"gpu"``, ``"cuda:N"``.
    max_epochs
        Overrides ``pipeline.model.train.max_epochs`` (also the length of the cosine schedule).
    on_epoch
        Called after each epoch with that epoch's history entry.

    Returns
    -------
    tuple
        The :class:`~rescue_gpu.cells.record.CellModelRecord` (model on the CPU, eval
        mode, not yet saved) and the :class:`CellTrainReport`.

    Raises
    ------
    CellDataError
        Images of the wrong shape or with non-finite values, labels out of range, too
        few patients, or fewer than two classes among the training patients.
    ConfigError
        ``channels`` not among the pipeline's input channels, bad split fractions or device.
    ModelError
        Training diverged (no epoch gave a finite validation loss).
    """
    began = time.perf_counter()
    spec = pipeline.model.train
    chans = tuple(channels or pipeline.input.network_channels)
    y, pats = _check_inputs(images, labels, patients, pipeline, chans)
    parts = split_patients(y, pats, val_fraction=spec.val_fraction, test_fraction=spec.test_fraction, seed=spec.seed)
    _check_split(y, parts, pipeline.classes.names)
    dev = torch_device(device)
    epochs = int(max_epochs or spec.max_epochs)
    x_all, y_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), torch.from_numpy(y)
    data = {name: (x_all[idx], y_all[idx]) for name, idx in zip(("train", "val", "test"), parts)}
    steps = epochs * len(batch_slices(parts[0].size, spec.batch_size))
    with seeded(spec.seed, dev):
        run = _make_run(pipeline, spec, in_channels=len(chans), y_train=y[parts[0]], steps=steps, device=dev)
        result = _fit(run, data, max_epochs=epochs, on_epoch=on_epoch)
        model = run.trainer.model
        test_logits = predict_logits(model, data["test"][0], batch_size=spec.batch_size, device=dev)
    val_logits = result.best_logits
    temperature = fit_temperature(val_logits, y[parts[1]])
    record = CellModelRecord.from_pipeline(model.cpu().eval(), pipeline, channels=chans, temperature=temperature)
    val, test = _evaluate(record, val_logits, y[parts[1]]), _evaluate(record, test_logits, y[parts[2]])
    report = CellTrainReport(epochs=len(result.history), best_epoch=result.stop.best_epoch, history=result.history,
                             val=val, test=test, rates=grouped_rates(val["grouped"]), temperature=temperature,
                             split=_split_summary(parts, pats), seconds=time.perf_counter() - began, device=str(dev),
                             warnings=training_warnings(y, pats, parts, classes=pipeline.classes.names,
                                                        history=result.history))
    record.rates, record.metrics = dict(report.rates), {"val": val, "test": test}
    record.provenance = _provenance(pipeline, spec, report)
    return record, report
