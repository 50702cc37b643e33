"""Issue 17: BatchNorm running statistics recomputed from the training images after each epoch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from rescue_gpu.nn.train import batch_slices, make_trainer, recompute_bn_stats, seeded, train_epoch

CPU = torch.device("cpu")


def _net() -> nn.Sequential:
    """conv -> BatchNorm -> ReLU -> conv -> BatchNorm -> ReLU -> pool -> linear: two BN layers, one logit."""
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1), nn.Flatten(0))


def _data(n: int = 40, offset: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels have mean ``offset`` (far from BatchNorm's initial 0), labels from the first channel."""
    g = torch.Generator().manual_seed(0)
    x = offset + 3.0 * torch.randn(n, 2, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > offset).float()
    return x, y


def _train(recompute: bool, epochs: int = 2, batch: int = 16) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A few AdamW steps of :func:`_net` on :func:`_data`; the model and the data."""
    x, y = _data()
    with seeded(3, CPU):
        t = make_trainer(_net(), loss=nn.BCEWithLogitsLoss(), learning_rate=1e-2, weight_decay=0.0, steps=10,
                         device=CPU, recompute_bn=recompute)
        for _ in range(epochs):
            train_epoch(t, ((x[s], y[s]) for s in batch_slices(x.shape[0], batch)))
    return t.model, x, y


def test_after_training_the_first_bn_layer_holds_the_statistics_of_its_training_inputs() -> None:
    model, x, _ = _train(recompute=True)
    with torch.no_grad():
        feats = model[0](x).double()  # the first BN layer's inputs under the final weights, computed independently
    bn = model[1]
    np.testing.assert_allclose(bn.running_mean.numpy(), feats.mean((0, 2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), feats.var((0, 2, 3), unbiased=True).numpy(), rtol=1e-5)


def test_without_the_recompute_the_statistics_lag_far_behind() -> None:
    model, x, _ = _train(recompute=False)
    with torch.no_grad():
        feats = model[0](x).double()
    assert not np.allclose(model[1].running_mean.numpy(), feats.mean((0, 2, 3)).numpy(), rtol=0.1, atol=0.1)


def _eval_gap(model: nn.Module, x: torch.Tensor) -> float:
    """Largest difference between eval-mode logits and train-mode logits on the whole set as one batch,
    relative to the spread (standard deviation) of the latter."""
    with torch.no_grad():
        model.eval()
        ev = model(x)
        model.train()
        full = model(x)
    return float((ev - full).abs().max() / full.std())


def test_eval_outputs_match_full_batch_train_outputs_only_with_the_recompute() -> None:
    fixed, x, _ = _train(recompute=True)
    plain, _, _ = _train(recompute=False)
    assert _eval_gap(fixed, x) < 0.05  # measured 0.006
    assert _eval_gap(plain, x) > 1.0  # measured 2.2: the same check fails without the recompute


def test_the_recompute_leaves_weights_mode_and_random_state_alone() -> None:
    fixed, _, _ = _train(recompute=True)
    plain, _, _ = _train(recompute=False)
    for (k, a), b in zip(fixed.state_dict().items(), plain.state_dict().values()):
        if "running" not in k:
            assert torch.equal(a, b), k  # train-mode passes never read running statistics: same trajectory
    x, _ = _data()
    state = torch.random.get_rng_state()
    fixed.train()
    recompute_bn_stats(fixed, [x[:16], x[16:]], device=CPU)
    assert fixed.training and torch.equal(torch.random.get_rng_state(), state)


def test_the_first_bn_layer_is_the_same_for_any_batching() -> None:
    model, x, _ = _train(recompute=True)
    recompute_bn_stats(model, [x], device=CPU)
    one = {k: v.clone() for k, v in model.state_dict().items()}
    recompute_bn_stats(model, list(x.split(7)), device=CPU)
    for k in ("1.running_mean", "1.running_var"):  # deeper layers see inputs normalised by batch statistics
        torch.testing.assert_close(model.state_dict()[k], one[k], rtol=1e-5, atol=1e-6)


def test_both_assays_record_the_option() -> None:
    from rescue_gpu.cells.spec import CellTrainSpec
    from rescue_gpu.config import TrainSpec

    assert dataclasses.asdict(TrainSpec())["recompute_bn"] is True
    assert dataclasses.asdict(CellTrainSpec())["recompute_bn"] is True


@pytest.mark.parametrize("recompute", [True, False])
def test_cells_training_passes_the_option_to_the_loop(recompute: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import rescue_gpu.cells.train as cells_train

    seen: list[bool] = []
    real = cells_train.make_trainer

    def spy(*args, **kwargs):
        seen.append(kwargs["recompute_bn"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cells_train, "make_trainer", spy)
    from rescue_gpu.cells.spec import CellPipeline

    pipe = CellPipeline()
    spec = dataclasses.replace(pipe.model.train, recompute_bn=recompute)
    cells_train._make_run(pipe, spec, in_channels=2, y_train=np.array([0, 1, 0, 1]), steps=1, device=CPU)
    assert seen == [recompute]
