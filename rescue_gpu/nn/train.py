"""One training loop for every network: AdamW + cosine, AMP, BatchNorm-safe batches, early stopping.

The assays' training modules (:mod:`rescue_gpu.flow.train`, :mod:`rescue_gpu.cells.train`)
say what a batch is, which loss to use and what to record per epoch; this module holds
what both do the same way:

- :func:`make_trainer`: AdamW and a per-step cosine schedule (to 1 % of the learning
  rate over ``steps``), the loss, and a gradient scaler, in a :class:`Trainer`.
- :func:`autocast` and :func:`grad_scaler`: on CUDA the forward pass runs under
  :func:`torch.autocast` (bfloat16 where supported, else float16 with a grad scaler);
  on the CPU both are no-ops. The CUDA path is NOT verified here (no GPU on the
  development machines).
- :func:`batch_slices`: consecutive batches of an epoch's order; a trailing batch of
  one joins the previous one (BatchNorm needs at least two samples in training mode).
- :func:`train_step`, :func:`train_epoch`, :func:`collect_logits` and :func:`loss_value`.
- :func:`recompute_bn_stats`: BatchNorm running statistics set to the exact pooled
  statistics of the epoch's training images under the epoch's final weights. With
  ``Trainer.recompute_bn`` (the default of :func:`make_trainer`) :func:`train_epoch`
  does this after its last step, so every evaluation (and every saved model) uses
  statistics of the data instead of a momentum-0.1 average that, on small cohorts
  (a few optimiser steps per epoch), is still close to its start (mean 0, variance 1)
  and lags the changing weights. Training itself (train-mode forward passes use batch
  statistics) and the random state are unchanged by it.
- :class:`EarlyStopping` and :func:`fit`: the epoch loop with early stopping on the
  validation loss (a non-finite loss never counts as an improvement), keeping the
  best epoch's validation logits and, if asked, its weights.
- :func:`seeded`: the ONE seeding policy. A run forks torch's global random state and
  seeds it (so model initialisation and dropout are deterministic for a seed on the
  CPU), and leaves the caller's random state as it was.
- :func:`provenance`: what every training run records (date, device, seconds, torch).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BN_MAX_SAMPLES = 2048
"""At most this many of an epoch's training images (the first, in the epoch's order) give the BatchNorm statistics."""

__all__ = ["autocast", "grad_scaler", "Trainer", "make_trainer", "batch_slices", "train_step", "collect_logits",
           "loss_value", "recompute_bn_stats", "has_batchnorm", "BN_MAX_SAMPLES", "train_epoch", "EarlyStopping", "FitResult", "fit", "seeded", "provenance"]


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bfloat16 if supported, else float16); a no-op on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for float16 autocast (CUDA without bfloat16)."""
    use = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=use)


@dataclass(kw_only=True)
class Trainer:
    """Model, optimiser, schedule, loss and gradient scaler of one training run, on ``device``.

    ``recompute_bn``: after each epoch, set the BatchNorm running statistics from the
    epoch's training images (:func:`recompute_bn_stats`).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss: nn.Module
    scaler: torch.amp.GradScaler
    device: torch.device
    recompute_bn: bool = False

    @property
    def lr(self) -> float:
        """The current learning rate."""
        return float(self.optimizer.param_groups[0]["lr"])


def make_trainer(model: nn.Module, *, loss: nn.Module, learning_rate: float, weight_decay: float, steps: int,
                 device: torch.device, recompute_bn: bool = True) -> Trainer:
    """AdamW on ``model`` (moved to ``device``) with a cosine schedule over ``steps`` optimiser steps.

    Parameters
    ----------
    model
        The network to train.
    loss
        The training loss (on ``device``).
    learning_rate, weight_decay
        AdamW's settings; the schedule ends at ``learning_rate / 100``.
    steps
        Optimiser steps the cosine spans (at least 1).
    device
        Where the model is trained.
    recompute_bn
        Set BatchNorm running statistics from each epoch's training images after the
        epoch (see :func:`recompute_bn_stats`).

    Returns
    -------
    Trainer
    """
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=learning_rate * 0.01)
    return Trainer(model=model, optimizer=opt, schedule=sched, loss=loss, scaler=grad_scaler(device), device=device,
                   recompute_bn=recompute_bn)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive batches of ``range(n)``; a trailing batch of one joins the previous one (BatchNorm needs >= 2)."""
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def train_step(model: nn.Module, loss_fn: Any, x: torch.Tensor, y: torch.Tensor, *, optimizer: Any,
               scaler: Any, schedule: Any, device: torch.device) -> float:
    """One optimiser step (autocast and gradient scaling on CUDA; plain fp32 on the CPU); the batch loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    schedule.step()
    return float(loss.detach())


def train_epoch(t: Trainer, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """One epoch in training mode over ``(images, targets)`` batches; the mean loss per sample.

    Parameters
    ----------
    t
        The trainer.
    batches
        The epoch's batches (on any device; moved to ``t.device``).
    transform
        Applied to each image batch on the device before the step (augmentation).

    With ``t.recompute_bn`` the first :data:`BN_MAX_SAMPLES` images the epoch trained on
    (after ``transform``) are kept on the CPU and, after the last step, give the
    BatchNorm running statistics (:func:`recompute_bn_stats`).
    """
    t.model.train()
    total, count = 0.0, 0
    kept: list[torch.Tensor] = []
    keep = t.recompute_bn and has_batchnorm(t.model)
    for x, y in batches:
        x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
        if transform is not None:
            x = transform(x)
        if keep and count < BN_MAX_SAMPLES:
            kept.append(x[:BN_MAX_SAMPLES - count].detach().to("cpu", copy=True))
        total += train_step(t.model, t.loss, x, y, optimizer=t.optimizer, scaler=t.scaler, schedule=t.schedule,
                            device=t.device) * x.shape[0]
        count += x.shape[0]
    if kept:
        recompute_bn_stats(t.model, kept, device=t.device)
    return total / max(count, 1)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer that tracks running statistics."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


@dataclass
class _Moments:
    """Per-channel float64 sums of a BatchNorm layer's inputs."""

    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count: int = 0

    def add(self, x: torch.Tensor) -> None:
        """Add a ``(N, C, ...)`` input: sums over every dimension but the channels."""
        x64 = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
        s, q = x64.sum(1), (x64 * x64).sum(1)
        self.total = s if self.total is None else self.total + s
        self.squares = q if self.squares is None else self.squares + q
        self.count += x64.shape[1]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled mean and unbiased variance (what BatchNorm keeps as running statistics)."""
        assert self.total is not None and self.squares is not None and self.count > 1
        mean = self.total / self.count
        var = (self.squares - self.total * mean) / (self.count - 1)
        return mean, var.clamp_min(0.0)


def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor], *, device: torch.device) -> None:
    """Set every BatchNorm layer's running mean and variance to the pooled statistics of its inputs over ``batches``.

    The images pass through the network with only the BatchNorm layers in training
    mode (each normalises by its batch's statistics, as in training; dropout is off, so
    no random numbers are drawn) under :func:`torch.no_grad`. Each layer's running mean
    and (unbiased) variance become the mean and variance of all its inputs (per channel,
    over every image and position), pooled exactly in float64 (the first layer's are the
    same for any batching; deeper layers see inputs normalised by batch statistics, as in
    training). Weights, ``num_batches_tracked`` and the model's training flag are left
    as they were. This is what :func:`torch.optim.swa_utils.update_bn` does, with exact
    pooling instead of an average of per-batch statistics.

    Parameters
    ----------
    model
        The network.
    batches
        ``(B, C, H, W)`` input batches (on any device; moved to ``device``).
    device
        Where the network runs.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return
    moments = {id(m): _Moments() for m in layers}
    tracked = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in layers]
    hooks = [m.register_forward_pre_hook(lambda mod, args: moments[id(mod)].add(args[0])) for m in layers]
    was_training = model.training
    model.eval()
    for m in layers:
        m.train()
    try:
        with torch.no_grad():
            for xb in batches:
                with autocast(device):
                    model(xb.to(device, non_blocking=True))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m, nbt in zip(layers, tracked):
        mom = moments[id(m)]
        if mom.count < 2:
            continue
        mean, var = mom.mean_var()
        m.running_mean.copy_(mean.to(m.running_mean.dtype))
        m.running_var.copy_(var.to(m.running_var.dtype))
        if nbt is not None:
            m.num_batches_tracked.copy_(nbt)


def collect_logits(model: nn.Module, batches: Iterable[torch.Tensor], *, device: torch.device,
                   empty_shape: tuple[int, ...] = (0,)) -> np.ndarray:
    """float32 logits of image batches, in eval mode under inference mode (autocast on CUDA).

    Parameters
    ----------
    model
        The network (set to eval mode).
    batches
        ``(B, C, H, W)`` image tensors (on any device).
    device
        Where the network runs.
    empty_shape
        Shape of the result when there are no batches (``(0,)`` or ``(0, K)``).
    """
    model.eval()
    out = []
    with torch.inference_mode():
        for xb in batches:
            with autocast(device):
                out.append(model(xb.to(device, non_blocking=True)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(empty_shape, dtype=np.float32)


def loss_value(fn: nn.Module, logits: np.ndarray, target: torch.Tensor, device: torch.device) -> float:
    """The loss ``fn`` of held-out ``logits`` against ``target`` (no gradients)."""
    with torch.inference_mode():
        return float(fn(torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(device), target.to(device)))


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


@dataclass(kw_only=True)
class FitResult:
    """What :func:`fit` did: the stopper (best epoch, loss, weights), the history and the best validation logits."""

    stop: EarlyStopping
    history: list[dict[str, Any]] = field(default_factory=list)
    best_logits: np.ndarray = field(default_factory=lambda: np.zeros(0))


def fit(*, max_epochs: int, patience: int, train_epoch: Callable[[int], float], validate: Callable[[], np.ndarray],
        val_loss: Callable[[np.ndarray], float],
        describe: Callable[[int, float, float, np.ndarray, float], dict[str, Any]],
        model: nn.Module | None = None, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """The epoch loop with early stopping on the validation loss.

    Parameters
    ----------
    max_epochs, patience
        At most ``max_epochs`` epochs; stop after ``patience`` epochs without improvement.
    train_epoch
        Trains epoch ``epoch`` (1-based) and returns its mean training loss.
    validate
        The validation logits after an epoch.
    val_loss
        The validation loss of those logits.
    describe
        The history entry of ``(epoch, train_loss, val_loss, logits, seconds)`` (seconds of
        the epoch's training and validation).
    model
        If given, the best epoch's weights are kept in ``result.stop.best_state``.
    on_epoch
        Called with a copy of each history entry.

    Returns
    -------
    FitResult
    """
    result = FitResult(stop=EarlyStopping(patience))
    for epoch in range(1, max_epochs + 1):
        began = time.perf_counter()
        train_loss = train_epoch(epoch)
        logits = validate()
        loss = val_loss(logits)
        rec = describe(epoch, train_loss, loss, logits, time.perf_counter() - began)
        result.history.append(rec)
        if on_epoch is not None:
            on_epoch(dict(rec))
        done = result.stop.update(epoch, loss, model)
        if result.stop.best_epoch == epoch:
            result.best_logits = logits
        if done:
            break
    return result


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the body with torch's global random state forked and seeded with ``seed``.

    Model initialisation and dropout inside are deterministic for a seed on the CPU; the
    caller's random state (CPU, and ``device`` on CUDA) is restored afterwards.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def provenance(*, device: torch.device, seconds: float, **extra: Any) -> dict[str, Any]:
    """What every training run records: UTC date, device, wall seconds, torch version, and ``extra``."""
    return {"trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "seconds": round(seconds, 1), "torch": torch.__version__, **extra}
