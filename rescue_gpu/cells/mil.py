"""Patient-level subtype by attention-based multiple-instance learning over a cell network's features.

A patient is a bag of cells. Each cell's feature vector is the cell network's
penultimate layer (what the engine's ``logits_and_features`` returns); a
:class:`~rescue_gpu.nn.mil.GatedAttentionMIL` pools a patient's cells by gated
attention into one vector and classifies it (e.g. control, PML::RARA, NPM1, CBFB::MYH11,
RUNX1::RUNX1T1). The attention weight of each cell says how much it shaped the call.

- :func:`cell_features`: prepare cells as the cell model was trained and run the engine.
- :func:`train_mil`: one model on bags of the patients' cells: every epoch draws
  ``repeats`` bags of ``bag_size`` cells per training patient (on the CPU), the loss is
  cross-entropy weighted by inverse class frequency over patients (class balancing), a
  stratified share of patients is held out for early stopping on the validation loss
  (all their cells, no sampling), and a temperature is fitted on the held-out logits
  (within :data:`TEMPERATURE_BOUNDS`). Defaults: the classifier reads the attention-pooled
  vector beside the bag mean, and a quarter of each training bag's cells are masked out
  (see :class:`~rescue_gpu.nn.mil.MilLayout`); ``members`` > 1 averages an ensemble.
- :func:`cross_validate_mil`: patient-level stratified k-fold; out-of-fold calibrated
  probabilities and attention for every patient (each fold trains with :func:`train_mil`).
- :class:`MilModelRecord`: the model as a checksummed ``rescue-cell-mil-model`` directory
  (weights' sha256 and settings checksum as every :class:`~rescue_gpu.nn.record.WeightsRecord`)
  holding the sha256 of the cell network whose features it was trained on;
  :meth:`MilModelRecord.check_cell_model` refuses any other cell network.
- :func:`score_bags`: calibrated probabilities, calls and per-cell attention of patients.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..device import torch_device
from ..errors import CellDataError, ConfigError, ModelError
from ..nn.calibration import fit_temperature
from ..nn.metrics import per_class_metrics
from ..nn.mil import POOLINGS, GatedAttentionMIL, MilLayout, pad_bags, sample_bags
from ..nn.record import WeightsRecord
from ..nn.splits import patient_folds
from ..nn.train import batch_slices, fit, make_trainer, provenance, seeded, train_step
from .record import CellModelRecord
from .train import class_weights

__all__ = ["MilTrainSpec", "MilModelRecord", "MilTrainReport", "MIL_FORMAT", "train_mil", "cross_validate_mil",
           "macro_f1_interval", "confusion_intervals",
           "score_bags", "cell_features", "group_cells", "stratified_holdout"]

MIL_FORMAT = "rescue-cell-mil-model"
#: The held-out patients are few and often perfectly separated, which drives a fitted temperature
#: to its lower bound (over-confident probabilities); the MIL temperature is kept in this range.
TEMPERATURE_BOUNDS = (0.5, 20.0)
#: Layout settings of records written before they existed (plain attention pooling, no instance dropout).
LEGACY_LAYOUT = {"pooling": "attention", "instance_dropout": 0.0}
#: Seed distance between the members of an ensemble (:attr:`MilTrainSpec.members`).
MEMBER_SEED_STEP = 1000


@dataclass(frozen=True)
class MilTrainSpec:
    """Settings of a MIL training run.

    ``bag_size`` cells are drawn per bag, ``repeats`` bags per training patient and epoch,
    ``batch_size`` bags per optimiser step. ``val_fraction`` of the patients (stratified
    by class, at least one per class where a class has two or more) stop the training
    early after ``patience`` epochs without a lower validation loss. ``pooling`` and
    ``instance_dropout``: see :class:`~rescue_gpu.nn.mil.MilLayout`. ``members`` > 1 trains
    an ensemble of that many networks (own seeds and hold-outs) whose calibrated
    probabilities and attention are averaged.
    """

    bag_size: int = 32
    repeats: int = 4
    batch_size: int = 8
    max_epochs: int = 80
    patience: int = 20
    learning_rate: float = 5e-4
    weight_decay: float = 1e-2
    hidden: int = 64
    attention: int = 64
    dropout: float = 0.5
    pooling: str = "attention+mean"
    instance_dropout: float = 0.25
    members: int = 1
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bag_size", "repeats", "batch_size", "max_epochs", "patience", "hidden", "attention", "members"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"mil.{name} must be >= 1 (got {getattr(self, name)})")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"mil.val_fraction must be in (0, 1) (got {self.val_fraction})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"mil.dropout must be in [0, 1) (got {self.dropout})")
        if not self.learning_rate > 0:
            raise ConfigError(f"mil.learning_rate must be > 0 (got {self.learning_rate})")
        if not 0.0 <= self.instance_dropout < 1.0:
            raise ConfigError(f"mil.instance_dropout must be in [0, 1) (got {self.instance_dropout})")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"mil.pooling must be one of {list(POOLINGS)} (got {self.pooling!r})")


class _Standardised(nn.Module):
    """Feature standardisation (buffers: part of the weights and their sha256) in front of the MIL network."""

    def __init__(self, mil: GatedAttentionMIL, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.mil = mil
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())

    @property
    def n_outputs(self) -> int:
        return self.mil.n_outputs

    def forward_with_attention(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        return self.mil.forward_with_attention((x - self.mean) / self.std, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_attention(x, mask)[0]


class _Ensemble(nn.Module):
    """Members whose calibrated probabilities (``softmax(z_m / T_m)``) and attention are averaged.

    ``forward`` gives the log of the averaged probabilities: logits at temperature 1.
    """

    def __init__(self, members: Sequence[_Standardised], temperatures: Sequence[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temperatures], dtype=torch.float32))

    @property
    def n_outputs(self) -> int:
        return self.members[0].n_outputs

    def forward_with_attention(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        logp, att = [], []
        for member, temp in zip(self.members, self.temperatures):
            z, a = member.forward_with_attention(x, mask)
            logp.append(torch.log_softmax(z / temp, dim=-1))
            att.append(a)
        mean_p = torch.logsumexp(torch.stack(logp), dim=0) - math.log(len(logp))
        return mean_p, torch.stack(att).mean(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_attention(x, mask)[0]


def _build(layout: MilLayout, members: int = 1) -> nn.Module:
    def one() -> _Standardised:
        return _Standardised(GatedAttentionMIL(layout), torch.zeros(layout.in_features),
                             torch.ones(layout.in_features))

    return one() if members == 1 else _Ensemble([one() for _ in range(members)], [1.0] * members)


def _layout(spec: MilTrainSpec, dim: int, k: int) -> MilLayout:
    return MilLayout(in_features=dim, n_classes=k, hidden=spec.hidden, attention=spec.attention,
                     dropout=spec.dropout, pooling=spec.pooling, instance_dropout=spec.instance_dropout)


def _layout_fields(layout: MilLayout) -> dict[str, Any]:
    """The layout as stored: settings at their :data:`LEGACY_LAYOUT` value are left out (older checksums hold)."""
    return {k: v for k, v in dataclasses.asdict(layout).items()
            if not (k in LEGACY_LAYOUT and v == LEGACY_LAYOUT[k])}


@dataclass(kw_only=True)
class MilModelRecord(WeightsRecord):
    """A trained patient-level MIL model and the cell network it depends on.

    Attributes
    ----------
    classes
        Patient classes in output order.
    layout
        Sizes of the MIL network (input features = the cell network's feature width).
    bag_size
        Cells per training bag (scoring uses all of a patient's cells).
    cell_model_sha256
        sha256 of the cell network's weights whose penultimate features the model reads.
    cell_model_checksum
        That cell model record's checksum (its preprocessing, classes, temperature).
    temperature
        ``p = softmax(logits / temperature)``.
    """

    FORMAT: ClassVar[str] = MIL_FORMAT
    WHAT: ClassVar[str] = "patient-level MIL model"
    MISSING_HINT: ClassVar[str] = "train one with 'rescue cells train --level patient'"
    FIX: ClassVar[str] = "restore the original model.json from a copy, or retrain ('rescue cells train --level patient')"

    classes: tuple[str, ...]
    layout: MilLayout
    bag_size: int
    cell_model_sha256: str
    cell_model_checksum: str = ""
    members: int = 1

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if len(self.classes) != self.layout.n_classes:
            raise ModelError(f"inconsistent MIL record: {len(self.classes)} classes but the network has "
                             f"{self.layout.n_classes} outputs")
        if not self.temperature > 0:
            raise ModelError(f"inconsistent MIL record: temperature must be > 0 (got {self.temperature})")

    def checksum_fields(self) -> dict[str, Any]:
        """Everything besides the weights that changes a call, and the cell network it needs."""
        fields = {"classes": list(self.classes), "layout": _layout_fields(self.layout),
                  "bag_size": int(self.bag_size), "temperature": float(self.temperature),
                  "cell_model_sha256": self.cell_model_sha256, "cell_model_checksum": self.cell_model_checksum}
        return fields if self.members == 1 else {**fields, "members": int(self.members)}

    def covers(self) -> str:
        return (f"its settings (temperature {self.temperature:g}, classes, network sizes, bag size, "
                "the cell network it depends on)")

    def class_names(self) -> tuple[str, ...]:
        return self.classes

    @classmethod
    def from_meta(cls, meta: dict[str, Any], sd: dict[str, torch.Tensor], map_location: str) -> MilModelRecord:
        layout = MilLayout(**{**LEGACY_LAYOUT, **meta["layout"]})
        members = int(meta.get("members", 1))
        model = _build(layout, members)
        model.load_state_dict(sd, strict=True)
        return cls(model=model.to(map_location).eval(), classes=tuple(meta["classes"]), layout=layout, members=members,
                   bag_size=int(meta["bag_size"]), cell_model_sha256=str(meta["cell_model_sha256"]),
                   cell_model_checksum=str(meta.get("cell_model_checksum", "")),
                   temperature=float(meta["temperature"]), metrics=meta.get("metrics", {}),
                   provenance=meta.get("provenance", {}))

    def check_cell_model(self, cell_model: CellModelRecord) -> None:
        """Raise :class:`ModelError` unless ``cell_model`` is the cell network this model was trained on."""
        if cell_model.sha256 != self.cell_model_sha256:
            source = self.provenance.get("cell_model", "")
            raise ModelError(f"this patient-level MIL model reads the features of cell network sha256 "
                             f"{self.cell_model_sha256[:12]}...{f' ({source})' if source else ''}, but the cell "
                             f"model given has sha256 {cell_model.sha256[:12]}...; score with the cell model the "
                             "MIL model was trained with, or retrain the MIL model on this cell model's features")
        if self.cell_model_checksum and cell_model.checksum != self.cell_model_checksum:
            raise ModelError(f"the cell model's weights match (sha256 {cell_model.sha256[:12]}...) but its settings "
                             "(preprocessing, classes, temperature) differ from those the MIL model was trained "
                             "with; use the original cell model directory or retrain the MIL model")
        width = getattr(cell_model.model, "num_features", None)
        if width is not None and int(width) != self.layout.in_features:
            raise ModelError(f"the cell network gives {width} features per cell, the MIL model expects "
                             f"{self.layout.in_features}; retrain the MIL model on this cell model's features")

    @classmethod
    def load_for(cls, path: str | Path, cell_model: CellModelRecord, *, map_location: str = "cpu") -> MilModelRecord:
        """:meth:`load` the MIL model and check that it was trained on ``cell_model``'s features."""
        rec = cls.load(path, map_location=map_location)
        rec.check_cell_model(cell_model)
        return rec


# --------------------------------------------------------------------------- data


def group_cells(values: np.ndarray, patients: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """Rows of ``values`` grouped by patient (patients sorted); also the row indices of each patient."""
    pats = np.asarray(patients).astype(str)
    order = sorted(set(pats.tolist()))
    index = [np.flatnonzero(pats == p) for p in order]
    return order, index


def cell_features(images: Any, cell_model: CellModelRecord, *, device: str = "cpu", batch_size: int = 256,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(N, K_cell)`` calibrated cell probabilities and ``(N, F)`` penultimate features of raw crops.

    ``images``: a :class:`~rescue_gpu.cells.types.CellSet` or a sequence of raw ``(C, h, w)``
    crops holding the cell model's channels; they are prepared with the model's own
    preprocessing.
    """
    from ..engine import make_engine
    from .preprocess import prepare_cells

    x = prepare_cells(images, spec=cell_model.preprocess, seed=seed)
    engine = make_engine(cell_model, kind="torch", device=device, precision="fp32", batch_size=batch_size)
    logits, feats = engine.logits_and_features(x)
    return cell_model.probabilities(logits), np.asarray(feats, dtype=np.float32)


def stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out): ``round(fraction * n_c)`` patients of each class held out (>= 1 if n_c >= 2)."""
    train, held = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(fraction * idx.size))
        k = max(k, 1) if idx.size >= 2 else 0
        held.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def _check_bags(bags: Sequence[np.ndarray], y: np.ndarray, classes: Sequence[str]) -> int:
    if len(bags) != len(y) or not len(bags):
        raise CellDataError(f"need one class per patient bag (got {len(bags)} bags, {len(y)} labels)")
    dims = {b.shape[1] if b.ndim == 2 else -1 for b in bags}
    if len(dims) != 1 or -1 in dims or any(b.shape[0] == 0 for b in bags):
        raise CellDataError("every patient bag must be a non-empty (cells, features) array of one feature width")
    if y.min() < 0 or y.max() >= len(classes):
        raise CellDataError(f"patient labels must be class indices 0..{len(classes) - 1}")
    return dims.pop()


# --------------------------------------------------------------------------- training


@dataclass(kw_only=True)
class MilTrainReport:
    """What :func:`train_mil` did: epochs, best epoch, history, temperature, patients used, seconds."""

    epochs: int
    best_epoch: int
    history: list[dict[str, Any]]
    temperature: float
    n_train: int
    n_val: int
    seconds: float
    val: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)


def _logits_attention(model: nn.Module, bags: Sequence[np.ndarray], device: torch.device,
                      chunk: int = 32) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits and per-cell attention of whole bags (padded with a mask), eval mode."""
    model.eval()
    logits, att = [], []
    with torch.inference_mode():
        for start in range(0, len(bags), chunk):
            part = bags[start:start + chunk]
            x, mask = pad_bags(part)
            z, a = model.forward_with_attention(torch.from_numpy(x).to(device), torch.from_numpy(mask).to(device))
            logits.append(z.float().cpu().numpy())
            a = a.float().cpu().numpy()
            att.extend(a[i, :b.shape[0]] for i, b in enumerate(part))
    return np.concatenate(logits), att


def _train_member(bags: Sequence[np.ndarray], y: np.ndarray, *, k: int, dim: int, spec: MilTrainSpec,
                  dev: torch.device, on_epoch: Callable[[dict], None] | None
                  ) -> tuple[_Standardised, float, dict[str, Any]]:
    """One MIL network: its own stratified hold-out (``spec.seed``), early stopping, temperature.

    Returns the network (CPU, eval mode), its temperature and what happened (epochs, best epoch,
    history, the held-out patients' indices and calls).
    """
    rng = np.random.default_rng(spec.seed)
    tr, va = stratified_holdout(y, spec.val_fraction, rng)
    if np.unique(y[tr]).size < 2 or va.size == 0:
        raise CellDataError(f"MIL training needs at least two classes among the training patients and some held-out "
                            f"patients (have {tr.size} training, {va.size} held out); add patients")
    train_bags, val_bags = [bags[i] for i in tr], [bags[i] for i in va]
    stacked = np.concatenate(train_bags)
    mean, std = stacked.mean(0), stacked.std(0) + 1e-3
    layout = _layout(spec, dim, k)
    w = torch.tensor(class_weights(y[tr], k), dtype=torch.float32)
    val_w = torch.where(w > 0, w, torch.ones_like(w))
    n_steps = len(batch_slices(tr.size * spec.repeats, spec.batch_size))
    with seeded(spec.seed, dev):
        model = _Standardised(GatedAttentionMIL(layout), torch.from_numpy(mean), torch.from_numpy(std))
        t = make_trainer(model, loss=nn.CrossEntropyLoss(weight=w.to(dev)), learning_rate=spec.learning_rate,
                         weight_decay=spec.weight_decay, steps=spec.max_epochs * n_steps, device=dev,
                         recompute_bn=False)
        val_loss_fn = nn.CrossEntropyLoss(weight=val_w.to(dev))
        y_val = torch.from_numpy(y[va]).to(dev)

        def epoch(_: int) -> float:
            t.model.train()
            x = np.concatenate([sample_bags(train_bags, spec.bag_size, rng) for _ in range(spec.repeats)])
            target = np.tile(y[tr], spec.repeats)
            order = rng.permutation(target.size)
            total = 0.0
            for sl in batch_slices(order.size, spec.batch_size):
                idx = order[sl]
                xb, yb = torch.from_numpy(x[idx]).to(dev), torch.from_numpy(target[idx]).to(dev)
                total += train_step(t.model, t.loss, xb, yb, optimizer=t.optimizer, scaler=t.scaler,
                                    schedule=t.schedule, device=dev) * idx.size
            return total / order.size

        def validate() -> np.ndarray:
            return _logits_attention(t.model, val_bags, dev)[0]

        def val_loss(logits: np.ndarray) -> float:
            with torch.inference_mode():
                return float(val_loss_fn(torch.from_numpy(logits).to(dev), y_val))

        def describe(ep: int, train_loss: float, loss: float, logits: np.ndarray, seconds: float) -> dict:
            acc = float((logits.argmax(1) == y[va]).mean())
            return {"epoch": ep, "train_loss": train_loss, "val_loss": loss, "val_accuracy": acc,
                    "seconds": round(seconds, 3)}

        result = fit(max_epochs=spec.max_epochs, patience=spec.patience, train_epoch=epoch, validate=validate,
                     val_loss=val_loss, describe=describe, model=t.model, on_epoch=on_epoch)
    if result.stop.best_state is None:
        raise ModelError("MIL training diverged: no epoch gave a finite validation loss; lower mil.learning_rate")
    result.stop.restore(t.model)
    temperature = fit_temperature(result.best_logits, y[va], bounds=TEMPERATURE_BOUNDS)
    info = {"epochs": len(result.history), "best_epoch": result.stop.best_epoch, "history": result.history,
            "temperature": temperature, "n_train": int(tr.size), "held_out": va,
            "val_calls": result.best_logits.argmax(1)}
    return t.model.cpu().eval(), temperature, info


def train_mil(bags: Sequence[np.ndarray], y: np.ndarray, *, classes: Sequence[str], cell_model_sha256: str,
              cell_model_checksum: str = "", spec: MilTrainSpec = MilTrainSpec(), device: str = "cpu",
              on_epoch: Callable[[dict], None] | None = None) -> tuple[MilModelRecord, MilTrainReport]:
    """Train a gated-attention MIL model on patient bags of cell features.

    With ``spec.members > 1`` the model is an ensemble: member ``m`` is trained with seed
    ``spec.seed + MEMBER_SEED_STEP * m`` (its own early-stopping hold-out, initialisation and
    bag draws) and temperature; the record averages the members' calibrated probabilities
    and their attention (record temperature 1).

    Parameters
    ----------
    bags
        One ``(n_cells, F)`` feature array per patient.
    y
        Class index per patient (``0..K-1`` in ``classes`` order).
    classes
        Patient class names.
    cell_model_sha256, cell_model_checksum
        The cell network the features come from (stored in the record, checked at scoring).
    spec
        Training settings.
    device
        ``"cpu"``, ``"cuda"``, ...

    Returns
    -------
    tuple
        The :class:`MilModelRecord` (model on the CPU, eval mode, not saved) and a :class:`MilTrainReport`
        (epochs, history and temperature of the first member; every member in ``members``).

    Raises
    ------
    CellDataError
        Bags and labels that do not fit, or fewer than two classes among the training patients.
    ModelError
        Training diverged (no finite validation loss).
    """
    began = time.perf_counter()
    y = np.asarray(y, dtype=np.int64)
    dim = _check_bags(bags, y, classes)
    k = len(classes)
    dev = torch_device(device)
    nets, temps, infos = [], [], []
    for m in range(spec.members):
        net, temp, info = _train_member(bags, y, k=k, dim=dim, dev=dev, on_epoch=on_epoch,
                                        spec=dataclasses.replace(spec, seed=spec.seed + MEMBER_SEED_STEP * m))
        nets.append(net)
        temps.append(temp)
        infos.append(info)
    model: nn.Module = nets[0] if spec.members == 1 else _Ensemble(nets, temps)
    temperature = temps[0] if spec.members == 1 else 1.0
    layout = _layout(spec, dim, k)
    record = MilModelRecord(model=model, classes=tuple(classes), layout=layout, bag_size=spec.bag_size,
                            cell_model_sha256=cell_model_sha256, cell_model_checksum=cell_model_checksum,
                            temperature=temperature, members=spec.members)
    held = np.concatenate([i["held_out"] for i in infos])
    first = infos[0]
    report = MilTrainReport(epochs=first["epochs"], best_epoch=first["best_epoch"], history=first["history"],
                            temperature=temperature, n_train=first["n_train"], n_val=int(first["held_out"].size),
                            seconds=time.perf_counter() - began,
                            val=per_class_metrics(y[held], np.concatenate([i["val_calls"] for i in infos]),
                                                  classes=list(classes)),
                            members=[{"epochs": i["epochs"], "best_epoch": i["best_epoch"],
                                      "temperature": i["temperature"], "n_val": int(i["held_out"].size)}
                                     for i in infos])
    record.metrics = {"val": report.val}
    record.provenance = provenance(device=dev, seconds=report.seconds, train=dataclasses.asdict(spec),
                                   n_train_patients=report.n_train, n_val_patients=report.n_val,
                                   epochs=report.epochs, best_epoch=report.best_epoch, members=report.members)
    return record, report


def score_bags(record: MilModelRecord, bags: Sequence[np.ndarray], *,
               device: str = "cpu") -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Calibrated ``(P, K)`` probabilities, ``(P,)`` calls (class indices) and per-cell attention of whole bags.

    Raises
    ------
    CellDataError
        A bag of the wrong feature width or without cells.
    """
    for b in bags:
        if b.ndim != 2 or b.shape[0] == 0 or b.shape[1] != record.layout.in_features:
            raise CellDataError(f"a patient bag must be (cells >= 1, {record.layout.in_features}) features "
                                f"(got {b.shape})")
    dev = torch_device(device)
    model = record.model.to(dev)
    logits, att = _logits_attention(model, list(bags), dev)
    record.model.cpu()
    probs = record.probabilities(logits)
    return probs, probs.argmax(1), att


def cross_validate_mil(bags: Sequence[np.ndarray], y: np.ndarray, *, classes: Sequence[str], folds: int = 5,
                       spec: MilTrainSpec = MilTrainSpec(), device: str = "cpu", cell_model_sha256: str = "",
                       on_fold: Callable[[int, MilTrainReport], None] | None = None
                       ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Patient-level stratified k-fold: out-of-fold ``(P, K)`` probabilities, per-cell attention, fold per patient.

    Each fold's model is trained with :func:`train_mil` (its own early-stopping hold-out
    and temperature) on the other folds' patients only.
    """
    y = np.asarray(y, dtype=np.int64)
    _check_bags(bags, y, classes)
    probs = np.zeros((len(bags), len(classes)))
    att: list[np.ndarray] = [np.zeros(0)] * len(bags)
    fold_of = np.full(len(bags), -1)
    ids = np.arange(len(bags)).astype(str)
    for f, (tr, te) in enumerate(patient_folds(y, ids, folds=folds, seed=spec.seed)):
        rec, rep = train_mil([bags[i] for i in tr], y[tr], classes=classes, cell_model_sha256=cell_model_sha256,
                             spec=dataclasses.replace(spec, seed=spec.seed + f), device=device)
        p, _, a = score_bags(rec, [bags[i] for i in te], device=device)
        probs[te] = p
        for j, i in enumerate(te):
            att[i] = a[j]
        fold_of[te] = f
        if on_fold is not None:
            on_fold(f, rep)
    return probs, att, fold_of


# --------------------------------------------------------------------------- patient-level metrics


def _macro_f1(y: np.ndarray, calls: np.ndarray, k: int) -> float:
    return float(per_class_metrics(y, calls, classes=[str(i) for i in range(k)])["macro_f1"] or 0.0)


def macro_f1_interval(y: Any, calls: Any, *, n_classes: int, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, float]:
    """Macro F1 of patient calls and its percentile bootstrap interval (patients resampled with replacement).

    Returns ``{"value", "low", "high", "n"}``.
    """
    y, calls = np.asarray(y, dtype=np.int64), np.asarray(calls, dtype=np.int64)
    rng = np.random.default_rng(seed)
    boots = np.array([_macro_f1(y[i], calls[i], n_classes)
                      for i in (rng.integers(0, y.size, y.size) for _ in range(n_boot))])
    a = (1 - level) / 2
    return {"value": _macro_f1(y, calls, n_classes), "low": float(np.quantile(boots, a)),
            "high": float(np.quantile(boots, 1 - a)), "n": int(y.size)}


def confusion_intervals(y: Any, calls: Any, *, n_classes: int, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, np.ndarray]:
    """Patient confusion matrix, row shares (of each true class) and their bootstrap intervals.

    Patients are resampled with replacement; a resample without a class leaves that row
    out of the interval. Returns ``counts`` ``(K, K)``, ``share``, ``low``, ``high``.
    """
    from ..nn.metrics import confusion_matrix

    y, calls = np.asarray(y, dtype=np.int64), np.asarray(calls, dtype=np.int64)
    counts = confusion_matrix(y, calls, n_classes=n_classes)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
    rng = np.random.default_rng(seed)
    boots = np.full((n_boot, n_classes, n_classes), np.nan)
    for b in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        c = confusion_matrix(y[i], calls[i], n_classes=n_classes)
        r = c.sum(1, keepdims=True)
        boots[b] = np.divide(c, r, out=np.full(c.shape, np.nan), where=r > 0)
    a = (1 - level) / 2
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(boots, a, axis=0), np.nanquantile(boots, 1 - a, axis=0)
    return {"counts": counts, "share": share, "low": low, "high": high}
