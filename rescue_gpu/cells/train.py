"""Training a cell classifier: patient-level split, balanced training, early stopping, calibration.

1. :func:`split_patients` puts every patient's cells in exactly one of train /
   validation / test (patients never straddle parts), spreading patients of each
   majority class over the parts and giving the training part one patient of every
   majority class first.
2. A :class:`~rescue_gpu.cells.network.CellNet` is trained with AdamW and a per-step
   cosine schedule spanning ``max_epochs``. Class imbalance is handled per
   ``train.balance``: ``"sampler"`` draws ``len(train)`` cells per epoch with
   replacement, with probability proportional to the inverse frequency of their class
   (what :class:`torch.utils.data.WeightedRandomSampler` does); ``"loss"`` weights the
   cross-entropy by inverse class frequency; ``"none"`` does neither. With
   ``train.augment`` each batch gets random flips, 90-degree rotations and shifts
   (:func:`augment_batch`).
3. Early stopping on the validation loss (cross-entropy, class-weighted by the training
   part's inverse frequencies unless ``balance = "none"``, i.e. the objective the
   training optimises; a class absent from training weighs 1) with ``patience``; the
   best epoch's weights are restored. A non-finite validation loss never counts as an
   improvement.
4. A temperature is fitted on the validation logits (multi-class NLL, 1-D bounded
   search over ``log T``, ``T`` in [0.05, 20]). The grouped leukaemic call (summed
   leukaemic probabilities >= 0.5) on the validation cells gives the record's ``rates``
   (TPR, FPR) for adjusted classify-and-count; per-class and grouped metrics are
   reported for the validation and the held-out test patients.

Runs are deterministic on the CPU for a given ``train.seed`` (the global torch RNG is
forked, not reseeded, so callers' random state is left alone). On CUDA the forward pass
runs under :func:`torch.autocast` (bfloat16 where supported, else float16 with a grad
scaler), the pattern of :mod:`rescue_gpu.model.train`; that path is NOT verified here
(no GPU on the development machines).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CellDataError, ConfigError, ModelError
from ..model.train import _autocast, _scaler, resolve_device, train_step
from .metrics import grouped_binary_metrics, grouped_rates, per_class_metrics
from .network import CellNet, build_cell_model
from .record import CellModelRecord
from .spec import CellPipeline, CellTrainSpec

__all__ = ["split_patients", "augment_batch", "class_weights", "fit_temperature", "EarlyStopping",
           "predict_logits", "CellTrainReport", "train_cells"]


# --------------------------------------------------------------------------- patient split

def _majority_class(labels: np.ndarray, inverse: np.ndarray, n_patients: int) -> np.ndarray:
    counts = np.zeros((n_patients, int(labels.max()) + 1 if labels.size else 1), dtype=np.int64)
    np.add.at(counts, (inverse, labels), 1)
    return counts.argmax(axis=1)


def _interleaved(majority: np.ndarray, seed: int) -> tuple[list[int], int]:
    """Patients in round-robin order over their majority class (shuffled within a class); also the class count."""
    perm = np.random.default_rng(seed).permutation(majority.size)
    classes, sizes = np.unique(majority, return_counts=True)
    queues = [list(perm[majority[perm] == c]) for c in classes[np.argsort(-sizes, kind="stable")]]
    order: list[int] = []
    while any(queues):
        order += [q.pop(0) for q in queues if q]
    return order, len(queues)


def _part_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_val = max(1, int(math.floor(val_fraction * n + 0.5)))
    n_test = max(1, int(math.floor(test_fraction * n + 0.5))) if test_fraction > 0 else 0
    while n_val + n_test > n - 1:
        if n_test > 1 and n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def split_patients(labels: np.ndarray, patients: np.ndarray, *, val_fraction: float, test_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split cells into train / validation / test by patient.

    Patients are ordered round-robin over their majority class (shuffled with ``seed``
    within a class); the first patient of each majority class goes to training, then
    test and validation take the next ``round(fraction x patients)`` (at least one
    each; none for test when ``test_fraction`` is 0) and the rest go to training.

    Parameters
    ----------
    labels
        Class index per cell.
    patients
        Patient id per cell.
    val_fraction, test_fraction
        Fractions of patients for validation and test.
    seed
        Seed of the shuffle (the split is deterministic for a seed).

    Returns
    -------
    tuple of numpy.ndarray
        Sorted cell indices of the train, validation and test parts.

    Raises
    ------
    CellDataError
        Too few patients (3 needed, 2 with ``test_fraction = 0``), or labels and
        patients of different lengths.
    ConfigError
        Fractions out of range.
    """
    labels, patients = np.asarray(labels).ravel().astype(np.int64), np.asarray(patients).astype(str).ravel()
    if labels.shape != patients.shape:
        raise CellDataError(f"labels and patients need one entry per cell (got {labels.size} and {patients.size})")
    if not (0 < val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("need 0 < val_fraction, 0 <= test_fraction and val_fraction + test_fraction < 1 "
                          f"(got {val_fraction}, {test_fraction})")
    names, inverse = np.unique(patients, return_inverse=True)
    need = 3 if test_fraction > 0 else 2
    if names.size < need:
        raise CellDataError(f"a patient-level train/validation{'/test' if need == 3 else ''} split needs at least "
                            f"{need} patients; there are {names.size} ({list(names[:5])}). Add patients"
                            + (" or set train.test_fraction = 0" if need == 3 else ""))
    order, n_groups = _interleaved(_majority_class(labels, inverse, names.size), seed)
    n_val, n_test = _part_sizes(names.size, val_fraction, test_fraction)
    reserve = min(n_groups, names.size - n_val - n_test)
    rest = order[reserve:]
    part = np.zeros(names.size, dtype=np.int64)
    part[rest[:n_test]] = 2
    part[rest[n_test:n_test + n_val]] = 1
    cell_part = part[inverse]
    return tuple(np.flatnonzero(cell_part == k) for k in range(3))  # type: ignore[return-value]


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


def fit_temperature(logits: np.ndarray, y: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature ``T`` minimising the mean NLL of ``softmax(logits / T)`` (bounded search over ``log T``).

    Returns 1.0 when there is nothing to fit (no cells, fewer than two classes in ``y``,
    or all-zero logits).
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if z.shape[0] == 0 or np.unique(y).size < 2 or not np.any(z):
        return 1.0
    picked = z[np.arange(y.size), y]

    def nll(s: float) -> float:
        t = math.exp(s)
        return float(np.mean(logsumexp(z / t, axis=1) - picked / t))

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


@dataclass
class EarlyStopping:
    """Track the validation loss; keep the best weights; say when ``patience`` epochs brought no improvement."""

    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    since_best: int = 0

    def update(self, epoch: int, loss: float, model: nn.Module | None = None) -> bool:
        """Record epoch ``epoch``'s loss (and the model's weights if it is the best); True means stop."""
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_epoch, self.since_best = loss, epoch, 0
            if model is not None:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return False
        self.since_best += 1
        return self.since_best >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights back into ``model`` (no-op if none were kept)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class _Run:
    """Model, optimiser, schedule, losses and random source of one training run."""

    model: CellNet
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss: nn.Module
    val_loss: nn.Module
    scaler: torch.amp.GradScaler
    device: torch.device
    generator: torch.Generator
    spec: CellTrainSpec
    sample_weights: torch.Tensor | None


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Consecutive batches; a trailing batch of one joins the previous one (BatchNorm needs >= 2)."""
    out = list(order.split(batch_size))
    if len(out) > 1 and out[-1].numel() == 1:
        out[-2] = torch.cat(out[-2:])
        out.pop()
    return out


def _epoch_order(run: _Run, n: int) -> torch.Tensor:
    if run.sample_weights is not None:
        return torch.multinomial(run.sample_weights, n, replacement=True, generator=run.generator)
    return torch.randperm(n, generator=run.generator)


def _train_epoch(run: _Run, x: torch.Tensor, y: torch.Tensor) -> float:
    run.model.train()
    total, count = 0.0, 0
    for idx in _batches(_epoch_order(run, x.shape[0]), run.spec.batch_size):
        xb, yb = x[idx].to(run.device, non_blocking=True), y[idx].to(run.device, non_blocking=True)
        if run.spec.augment:
            xb = augment_batch(xb, generator=run.generator, max_shift=run.spec.max_shift)
        total += train_step(run.model, run.loss, xb, yb, optimizer=run.optimizer, scaler=run.scaler,
                            schedule=run.schedule, device=run.device) * idx.numel()
        count += idx.numel()
    return total / max(count, 1)


def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int, device: torch.device) -> np.ndarray:
    """``(N, K)`` float32 logits of ``(N, C, S, S)`` images, in batches, eval mode, under inference mode."""
    model.eval()
    if x.shape[0] == 0:
        return np.zeros((0, getattr(model, "n_classes", 0)), dtype=np.float32)
    out = []
    with torch.inference_mode():
        for xb in x.split(batch_size):
            with _autocast(device):
                out.append(model(xb.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out).numpy()


def _loss_value(fn: nn.Module, logits: np.ndarray, y: torch.Tensor, device: torch.device) -> float:
    with torch.inference_mode():
        return float(fn(torch.from_numpy(logits).to(device), y.to(device)))


def _make_run(pipeline: CellPipeline, spec: CellTrainSpec, *, in_channels: int, y_train: np.ndarray,
              steps: int, device: torch.device) -> _Run:
    k = len(pipeline.classes.names)
    m = pipeline.model
    model = build_cell_model(architecture=m.architecture, in_channels=in_channels, n_classes=k, dropout=m.dropout,
                             pretrained=m.pretrained).to(device)
    w = torch.tensor(class_weights(y_train, k), dtype=torch.float32)
    loss_w = w.to(device) if spec.balance == "loss" else None
    val_w = torch.where(w > 0, w, torch.ones_like(w)).to(device)  # a class absent from training counts once
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=spec.learning_rate * 0.01)
    return _Run(model=model, optimizer=opt, schedule=sched, loss=nn.CrossEntropyLoss(weight=loss_w),
                val_loss=nn.CrossEntropyLoss(weight=None if spec.balance == "none" else val_w),
                scaler=_scaler(device), device=device, generator=torch.Generator().manual_seed(spec.seed),
                spec=spec, sample_weights=w[torch.from_numpy(y_train)].double() if spec.balance == "sampler" else None)


# --------------------------------------------------------------------------- report

@dataclass
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
         on_epoch: Callable[[dict], None] | None) -> tuple[EarlyStopping, list[dict[str, Any]], np.ndarray]:
    """The epoch loop with early stopping; returns the stopper, history and best validation logits."""
    stop, history, best_logits = EarlyStopping(run.spec.patience), [], np.zeros(0)
    (xt, yt), (xv, yv) = data["train"], data["val"]
    for epoch in range(1, max_epochs + 1):
        began = time.perf_counter()
        train_loss = _train_epoch(run, xt, yt)
        logits = predict_logits(run.model, xv, batch_size=run.spec.batch_size, device=run.device)
        val_loss = _loss_value(run.val_loss, logits, yv, run.device)
        rec = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "val_accuracy": float(np.mean(logits.argmax(1) == yv.numpy())),
               "lr": float(run.optimizer.param_groups[0]["lr"]), "seconds": time.perf_counter() - began}
        history.append(rec)
        if on_epoch is not None:
            on_epoch(dict(rec))
        done = stop.update(epoch, val_loss, run.model)
        best_logits = logits if stop.best_epoch == epoch else best_logits
        if done:
            break
    if stop.best_state is None:
        raise ModelError(f"training produced no finite validation loss in {len(history)} epoch(s) (last "
                         f"{history[-1]['val_loss']}); the run diverged: lower train.learning_rate or check the images")
    stop.restore(run.model)
    return stop, history, best_logits


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
    return {"trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "pipeline": pipeline.name,
            "pipeline_source": pipeline.source, "architecture": pipeline.model.architecture,
            "pretrained": pipeline.model.pretrained, "train": dataclasses.asdict(spec), "split": report.split,
            "epochs": report.epochs, "best_epoch": report.best_epoch, "device": report.device,
            "seconds": round(report.seconds, 1), "torch": torch.__version__}


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
    dev = resolve_device(device)
    epochs = int(max_epochs or spec.max_epochs)
    x_all, y_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), torch.from_numpy(y)
    data = {name: (x_all[idx], y_all[idx]) for name, idx in zip(("train", "val", "test"), parts)}
    steps = epochs * len(_batches(torch.arange(parts[0].size), spec.batch_size))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(spec.seed)
        run = _make_run(pipeline, spec, in_channels=len(chans), y_train=y[parts[0]], steps=steps, device=dev)
        stop, history, val_logits = _fit(run, data, max_epochs=epochs, on_epoch=on_epoch)
        test_logits = predict_logits(run.model, data["test"][0], batch_size=spec.batch_size, device=dev)
    temperature = fit_temperature(val_logits, y[parts[1]])
    record = CellModelRecord.from_pipeline(run.model.cpu().eval(), pipeline, channels=chans,
                                           temperature=temperature)
    val, test = _evaluate(record, val_logits, y[parts[1]]), _evaluate(record, test_logits, y[parts[2]])
    report = CellTrainReport(epochs=len(history), best_epoch=stop.best_epoch, history=history, val=val, test=test,
                             rates=grouped_rates(val["grouped"]), temperature=temperature,
                             split=_split_summary(parts, pats), seconds=time.perf_counter() - began, device=str(dev))
    record.rates, record.metrics = dict(report.rates), {"val": val, "test": test}
    record.provenance = _provenance(pipeline, spec, report)
    return record, report
