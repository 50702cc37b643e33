"""Cell classifier training: patient split, augmentation, temperature, early stopping, train_cells."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import softmax

from rescue_gpu.cells.record import CellModelRecord
from rescue_gpu.cells.spec import (
    CellClassesSpec, CellInputSpec, CellModelSpec, CellPipeline, CellPreprocessSpec, CellTrainSpec,
)
from rescue_gpu.cells.train import _shift, augment_batch, class_weights, predict_logits, train_cells
from rescue_gpu.nn.calibration import fit_temperature
from rescue_gpu.nn.splits import split_patients
from rescue_gpu.nn.train import EarlyStopping
from rescue_gpu.errors import CellDataError, ConfigError, ModelError


def _pipeline(*, size: int = 16, names: tuple[str, ...] = ("disc", "ring", "bar"), **train: object) -> CellPipeline:
    spec = dataclasses.replace(CellTrainSpec(max_epochs=1, patience=2, batch_size=16), **train)
    return CellPipeline(name="synthetic", classes=CellClassesSpec(names=names, leukaemic=(names[0],)),
                        input=CellInputSpec(channels=("BF", "DF")), preprocess=CellPreprocessSpec(size=size),
                        model=CellModelSpec(architecture="resnet18", train=spec))


def _shapes(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Two-plane images: 0 a bright disc, 1 a ring, 2 a bar (random orientation), at random positions, with noise."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    out = np.empty((labels.size, 2, size, size), np.float32)
    for i, c in enumerate(labels):
        cy, cx = size / 2 + rng.uniform(-size / 8, size / 8, 2)
        r = np.hypot(yy - cy, xx - cx)
        if c == 0:
            img = r < size * 0.16
        elif c == 1:
            img = np.abs(r - size * 0.22) < 1.2
        else:
            a, b = (yy - cy, xx - cx) if rng.random() < 0.5 else (xx - cx, yy - cy)
            img = (np.abs(a) < 1.5) & (np.abs(b) < size / 4)
        img = img.astype(np.float32)
        out[i, 0] = img + rng.normal(0, 0.15, img.shape)
        out[i, 1] = 0.5 * img + rng.normal(0, 0.15, img.shape)
    return out


def _cohort(n_patients: int, per_patient: int, size: int, *, seed: int = 0, k: int = 3):
    """Patients with different class mixes (so their majority classes differ)."""
    rng = np.random.default_rng(seed)
    labels, patients = [], []
    for p in range(n_patients):
        mix = np.full(k, 1.0)
        mix[p % k] += 1.0
        labels.append(rng.choice(k, per_patient, p=mix / mix.sum()))
        patients += [f"P{p:02d}"] * per_patient
    y = np.concatenate(labels)
    return _shapes(y, size, rng), y, np.array(patients)


# --------------------------------------------------------------------------- split

def test_split_patients_no_leakage_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    patients = np.repeat([f"P{i}" for i in range(20)], rng.integers(5, 30, 20))
    labels = rng.integers(0, 4, patients.size)
    parts = split_patients(labels, patients, val_fraction=0.2, test_fraction=0.25, seed=7)
    assert sum(p.size for p in parts) == patients.size
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(patients.size))
    sets = [set(patients[p]) for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert [len(s) for s in sets] == [11, 4, 5]
    again = split_patients(labels, patients, val_fraction=0.2, test_fraction=0.25, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = split_patients(labels, patients, val_fraction=0.2, test_fraction=0.25, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_split_patients_gives_train_every_majority_class() -> None:
    # six patients; one patient per class 0..2 is mostly that class, three more are mostly class 0
    patients = np.repeat([f"P{i}" for i in range(6)], 10)
    labels = np.repeat([0, 1, 2, 0, 0, 0], 10)
    for seed in range(10):
        train, val, test = split_patients(labels, patients, val_fraction=0.2, test_fraction=0.2, seed=seed)
        assert set(labels[train]) == {0, 1, 2}
        assert val.size and test.size


def test_split_patients_minimum_patients() -> None:
    labels, patients = np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"])
    with pytest.raises(CellDataError, match="at least 3 patients; there are 2.*test_fraction = 0"):
        split_patients(labels, patients, val_fraction=0.2, test_fraction=0.2, seed=0)
    train, val, test = split_patients(labels, patients, val_fraction=0.2, test_fraction=0.0, seed=0)
    assert train.size == 2 and val.size == 2 and test.size == 0
    with pytest.raises(CellDataError, match="at least 2 patients; there are 1"):
        split_patients(labels, np.array(["a"] * 4), val_fraction=0.2, test_fraction=0.0, seed=0)
    with pytest.raises(ConfigError, match="val_fraction"):
        split_patients(labels, patients, val_fraction=0.7, test_fraction=0.5, seed=0)
    three = split_patients(np.zeros(3, int), np.array(["a", "b", "c"]), val_fraction=0.5, test_fraction=0.4, seed=0)
    assert [p.size for p in three] == [1, 1, 1]


# --------------------------------------------------------------------------- augmentation

def test_augment_preserves_pixels_and_is_deterministic() -> None:
    x = torch.randn(32, 2, 12, 12)
    out = augment_batch(x, generator=torch.Generator().manual_seed(5), max_shift=0)
    assert out.shape == x.shape and not torch.equal(out, x)
    for a, b in zip(x, out):
        assert torch.equal(a.flatten(1).sort(dim=1).values, b.flatten(1).sort(dim=1).values)
    same = augment_batch(x, generator=torch.Generator().manual_seed(5), max_shift=0)
    assert torch.equal(out, same)
    shifted = augment_batch(x, generator=torch.Generator().manual_seed(5), max_shift=3)
    assert torch.equal(shifted, augment_batch(x, generator=torch.Generator().manual_seed(5), max_shift=3))


def test_augment_reaches_all_eight_symmetries() -> None:
    one = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    out = augment_batch(one.repeat(200, 1, 1, 1), generator=torch.Generator().manual_seed(0), max_shift=0)
    variants = {tuple(o.flatten().tolist()) for o in out}
    d4 = {tuple(torch.rot90(t, k, dims=(-2, -1)).flatten().tolist()) for t in (one, one.flip(-1)) for k in range(4)}
    assert variants == d4


def test_shift_rolls_and_fills_wrapped_border_with_border_mean() -> None:
    x = torch.arange(2 * 36, dtype=torch.float32).reshape(1, 2, 6, 6)
    out = _shift(x, torch.tensor([2]), torch.tensor([-1]))
    rolled = torch.roll(x, shifts=(2, -1), dims=(-2, -1))
    assert torch.equal(out[..., 2:, :5], rolled[..., 2:, :5])
    ring = torch.ones(6, 6, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    for c in range(2):
        fill = x[0, c][ring].mean()
        assert torch.all(out[0, c, :2, :] == fill) and torch.all(out[0, c, :, 5] == fill)
    with pytest.raises(CellDataError, match="square"):
        augment_batch(torch.zeros(2, 1, 4, 6), generator=torch.Generator(), max_shift=1)


# --------------------------------------------------------------------------- pieces

def test_class_weights_inverse_frequency() -> None:
    w = class_weights(np.array([0, 0, 0, 1, 2, 2]), 4)
    np.testing.assert_allclose(w, [6 / 9, 2.0, 1.0, 0.0])
    counts = np.array([3, 1, 2])
    np.testing.assert_allclose(w[:3] * counts, 2.0)  # every present class gets the same total weight


def test_fit_temperature_recovers_true_temperature() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, (20000, 4))
    p = softmax(z / 2.5, axis=1)
    y = (p.cumsum(1) > rng.random((20000, 1))).argmax(1)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(z, np.zeros(20000, int)) == 1.0
    assert fit_temperature(np.zeros((5, 3)), np.array([0, 1, 2, 0, 1])) == 1.0


def test_early_stopping_rule() -> None:
    stop = EarlyStopping(patience=2)
    model = torch.nn.Linear(2, 2)
    decisions = []
    for epoch, loss in enumerate([1.0, 0.8, 0.9, 0.7, 0.75, 0.72, 0.6], start=1):
        with torch.no_grad():
            model.bias.fill_(epoch)
        decisions.append(stop.update(epoch, loss, model))
        if decisions[-1]:
            break
    assert decisions == [False, False, False, False, False, True]
    assert (stop.best_epoch, stop.best_loss) == (4, 0.7)
    stop.restore(model)
    assert torch.all(model.bias == 4)
    diverged = EarlyStopping(patience=2)
    assert [diverged.update(e, math.nan, model) for e in (1, 2)] == [False, True]
    assert diverged.best_state is None and diverged.best_epoch == 0


# --------------------------------------------------------------------------- train_cells

@pytest.fixture(scope="module")
def tiny() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _cohort(5, 14, 16, seed=1)


def test_train_cells_plumbing(tiny: tuple, tmp_path: Path) -> None:
    x, y, pats = tiny
    pipe = _pipeline(max_epochs=2)
    state = torch.get_rng_state()
    seen: list[dict] = []
    rec, rep = train_cells(x, y, pats, pipeline=pipe, device="cpu", on_epoch=seen.append)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone
    assert [h["epoch"] for h in rep.history] == [1, 2] and seen == rep.history
    assert set(rep.history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"}
    assert rep.epochs == 2 and 1 <= rep.best_epoch <= 2
    assert {k: v["patients"] for k, v in rep.split.items()} == {"train": 3, "val": 1, "test": 1}
    assert sum(v["cells"] for v in rep.split.values()) == y.size
    assert set(rep.rates) == {"tpr", "fpr", "n_pos", "n_neg"}
    assert rep.rates["n_pos"] + rep.rates["n_neg"] == rep.split["val"]["cells"]
    assert set(rep.val) == {"per_class", "grouped"} and set(rep.test) == {"per_class", "grouped"}
    assert 0.05 <= rep.temperature <= 20 and rep.device == "cpu"
    json.dumps(rep.summary())
    assert (rec.classes, rec.leukaemic, rec.channels) == (("disc", "ring", "bar"), ("disc",), ("BF", "DF"))
    assert rec.image_size == 16
    assert rec.preprocess == pipe.preprocess and rec.temperature == rep.temperature and rec.rates == rep.rates
    assert rec.metrics["test"] == rep.test and not rec.model.training
    assert {"pipeline", "split", "epochs", "trained_at", "device", "train"} <= set(rec.provenance)
    rec.check_pipeline(pipe)
    back = CellModelRecord.load(rec.save(tmp_path / "m"))
    assert back.sha256 == rec.sha256 and back.provenance["pipeline"] == "synthetic"


def test_train_cells_is_deterministic_and_balance_modes(tiny: tuple) -> None:
    x, y, pats = tiny
    a, _ = train_cells(x, y, pats, pipeline=_pipeline(), device="cpu")
    b, _ = train_cells(x, y, pats, pipeline=_pipeline(), device="cpu")
    assert a.sha256 == b.sha256
    for balance in ("loss", "none"):
        c, rep = train_cells(x, y, pats, pipeline=_pipeline(balance=balance, augment=False), device="cpu")
        assert c.sha256 != a.sha256 and rep.epochs == 1


def test_train_cells_channels_override(tiny: tuple) -> None:
    x, y, pats = tiny
    rec, _ = train_cells(x[:, :1], y, pats, pipeline=_pipeline(), channels=["DF"], device="cpu", max_epochs=1)
    assert rec.channels == ("DF",) and rec.in_channels == 1
    with pytest.raises(ModelError, match="input channels"):
        rec.check_pipeline(_pipeline())


def test_train_cells_input_errors(tiny: tuple) -> None:
    x, y, pats = tiny
    pipe = _pipeline()
    with pytest.raises(CellDataError, match=r"\(N, 2, 16, 16\).*got shape \(70, 2, 15, 15\)"):
        train_cells(x[..., :15, :15], y, pats, pipeline=pipe, device="cpu")
    with pytest.raises(CellDataError, match="channels \\['BF'\\]"):
        train_cells(x, y, pats, pipeline=pipe, channels=["BF"], device="cpu")
    with pytest.raises(CellDataError, match="0..2"):
        train_cells(x, np.where(y == 2, 3, y), pats, pipeline=pipe, device="cpu")
    bad = x.copy()
    bad[3, 1, 2, 2] = np.nan
    with pytest.raises(CellDataError, match="NaN"):
        train_cells(bad, y, pats, pipeline=pipe, device="cpu")
    with pytest.raises(CellDataError, match="one id per image"):
        train_cells(x, y, pats[:-1], pipeline=pipe, device="cpu")
    with pytest.raises(ConfigError, match="not among input.channels"):
        train_cells(x[:, :1], y, pats, pipeline=pipe, channels=["XX"], device="cpu")
    with pytest.raises(CellDataError, match="at least 3 patients"):
        train_cells(x, y, np.where(pats == pats[0], pats[0], pats[-1]), pipeline=pipe, device="cpu")
    two = np.where(pats == "P00", "P00", "P01")  # two single-class patients: one trains, one validates
    with pytest.raises(CellDataError, match="training patients hold 1 class"):
        train_cells(x, (two == "P01").astype(int), two, pipeline=_pipeline(test_fraction=0.0), device="cpu")


def test_early_stopping_restores_best_weights(tiny: tuple) -> None:
    x, _, pats = tiny
    noise = np.random.default_rng(3).integers(0, 3, pats.size)  # labels unrelated to the images: val loss rises
    pipe = _pipeline(max_epochs=8, patience=1, balance="none", learning_rate=3e-3)
    rec, rep = train_cells(x, noise, pats, pipeline=pipe, device="cpu")
    losses = [h["val_loss"] for h in rep.history]
    assert rep.epochs < 8
    assert rep.best_epoch == int(np.argmin(losses)) + 1 and rep.epochs - rep.best_epoch == 1
    _, val, _ = split_patients(noise, pats, val_fraction=0.2, test_fraction=0.2, seed=0)
    logits = predict_logits(rec.model, torch.from_numpy(x[val]), batch_size=16, device=torch.device("cpu"))
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(noise[val]))
    assert float(loss) == pytest.approx(losses[rep.best_epoch - 1], rel=1e-5)


def test_training_learns_shapes() -> None:
    """Discs, rings and bars at random positions: a resnet18 tells them apart on held-out patients."""
    x, y, pats = _cohort(8, 48, 24, seed=0)
    pipe = _pipeline(size=24, max_epochs=6, patience=3, batch_size=16)
    rec, rep = train_cells(x, y, pats, pipeline=pipe, device="cpu")
    assert rep.split["test"]["patients"] == 2 and rep.split["test"]["cells"] == 96
    assert rep.test["per_class"]["accuracy"] > 0.9
    assert rep.test["grouped"]["roc_auc"] > 0.95
    assert rep.rates["tpr"] > 0.9 and rep.rates["fpr"] < 0.1
    assert rec.metrics["val"]["per_class"]["balanced_accuracy"] > 0.9
    assert math.isfinite(rep.temperature)
