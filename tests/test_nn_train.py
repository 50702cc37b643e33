"""The shared nn core: BatchNorm-safe batches, the seeding policy, the early-stopping loop, head layouts."""

from __future__ import annotations

import math

import numpy as np
import torch

from rescue_gpu.cells.record import cell_head
from rescue_gpu.config import HeadSpec
from rescue_gpu.flow.record import head_layout
from rescue_gpu.nn.network import build_head
from rescue_gpu.nn.train import batch_slices, fit, seeded


def test_batch_slices_never_leave_a_batch_of_one() -> None:
    assert batch_slices(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert batch_slices(9, 4) == [slice(0, 4), slice(4, 9)]
    assert batch_slices(1, 4) == [slice(0, 1)]
    assert batch_slices(0, 4) == []
    for n in range(1, 40):
        sizes = [s.stop - s.start for s in batch_slices(n, 8)]
        assert sum(sizes) == n and (n == 1 or min(sizes) >= 2)


def test_seeded_is_deterministic_and_leaves_the_callers_state() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with seeded(7, torch.device("cpu")):
        a = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded(7, torch.device("cpu")):
        assert torch.equal(torch.rand(3), a)


def test_fit_stops_after_patience_and_keeps_the_best_logits() -> None:
    losses = iter([3.0, 2.0, float("nan"), 2.5, 2.2, 1.0])
    seen = []
    result = fit(max_epochs=6, patience=3, train_epoch=lambda epoch: float(epoch),
                 validate=lambda: np.full(2, float(len(seen))), val_loss=lambda logits: next(losses),
                 describe=lambda epoch, tl, vl, logits, s: {"epoch": epoch, "val_loss": vl},
                 on_epoch=seen.append)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]  # 3 epochs without improvement after epoch 2
    assert result.stop.best_epoch == 2 and result.stop.best_loss == 2.0
    np.testing.assert_array_equal(result.best_logits, np.full(2, 1.0))
    assert math.isnan(seen[2]["val_loss"])


def test_head_layouts_keep_the_state_dict_keys_of_saved_models() -> None:
    flow = build_head(head_layout(HeadSpec(hidden=(16,), dropout=0.1)), in_features=512)
    assert sorted(flow.state_dict()) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    cells = build_head(cell_head(3, 0.2), in_features=512)
    assert sorted(cells.state_dict()) == ["1.bias", "1.weight"]
