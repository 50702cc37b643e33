"""QC gates on synthetic events with known numbers of non-finite, saturated, debris and doublet events."""

from __future__ import annotations

import numpy as np
import pytest

from rescue_gpu.device import to_numpy
from rescue_gpu.config import QcSpec
from rescue_gpu.preprocess.qc import qc_mask
from tests.conftest import xp_params

CHANNELS = ["FSC-A", "FSC-H", "SSC-A", "FITC-A", "PE-A"]
RANGES = np.full(5, 262144.0)
N = 1000


def _events(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Clean events with FSC-A / FSC-H = 1.2, then injected faults at known rows."""
    rng = np.random.default_rng(seed)
    ev = np.empty((N, 5))
    ev[:, 1] = rng.uniform(50000, 100000, N)
    ev[:, 0] = ev[:, 1] * rng.uniform(1.15, 1.25, N)
    ev[:, 2] = rng.uniform(20000, 80000, N)
    ev[:, 3:] = rng.uniform(-200, 20000, (N, 2))
    rows = rng.permutation(N)
    bad = {"non_finite": rows[:8], "saturated": rows[8:19], "debris": rows[19:32], "doublets": rows[32:49]}
    ev[bad["non_finite"][:7], 4] = np.nan
    ev[bad["non_finite"][7], 3:] = [262143.0, np.inf]  # also saturated: counted once, as non-finite
    ev[bad["saturated"], 3] = 262143.0  # = $PnR - 1
    ev[bad["saturated"][:3], 3] = 300000.0  # beyond the range (float data can exceed it)
    ev[bad["debris"], 0] = 5000.0  # below 0.05 * 262144
    ev[bad["debris"], 1] = 5000.0 / 1.2
    ev[bad["doublets"], 0] = ev[bad["doublets"], 1] * 2.0  # ratio far above 1.2 * 1.25
    return ev, bad


@pytest.mark.parametrize("xp", xp_params())
def test_counts_and_mask_match_injected_faults(xp):
    ev, bad = _events()
    keep, counts = qc_mask(xp.asarray(ev), xp.asarray(ev), channels=CHANNELS, ranges=RANGES,
                           check=[0, 1, 2, 3, 4], spec=QcSpec())
    assert {k: counts[k] for k in ("n_events_in", "non_finite", "saturated", "debris", "doublets", "n_events_out")} == {
        "n_events_in": 1000, "non_finite": 8, "saturated": 11, "debris": 13, "doublets": 17, "n_events_out": 951}
    assert counts["qc_skipped"] == []
    expected = np.ones(N, dtype=bool)
    expected[np.concatenate(list(bad.values()))] = False
    np.testing.assert_array_equal(to_numpy(keep), expected)


def test_doublet_cut_is_relative_to_the_median_ratio():
    ev, _ = _events()
    ev[:, 0] = ev[:, 1] * 1.2
    ev[:5, 0] = ev[:5, 1] * 1.49  # just under 1.2 * 1.25 = 1.5
    ev[5:9, 0] = ev[5:9, 1] * 1.51  # just over
    _, counts = qc_mask(ev, ev, channels=CHANNELS, ranges=RANGES, check=[3], spec=QcSpec(remove_debris=False))
    assert counts["doublets"] == 4


def test_disabled_gates_remove_nothing():
    ev, bad = _events()
    spec = QcSpec(remove_saturated=False, remove_debris=False, remove_doublets=False)
    keep, counts = qc_mask(ev, ev, channels=CHANNELS, ranges=RANGES, check=range(5), spec=spec)
    assert (counts["saturated"], counts["debris"], counts["doublets"]) == (0, 0, 0)
    assert counts["non_finite"] == 8 and counts["n_events_out"] == 992


def test_absent_channels_skip_gates_and_say_why():
    ev, _ = _events()
    chans = ["FSC-A", "FSC-W", "SSC", "FITC-A", "PE-A"]
    ranges = RANGES.copy()
    ranges[4] = np.nan
    keep, counts = qc_mask(ev, ev, channels=chans, ranges=ranges, check=[3, 4],
                           spec=QcSpec(debris_ssc_min=0.01, ssc_area="SSC-A"))
    assert counts["doublets"] == 0
    assert counts["qc_skipped"] == [
        "saturated: no usable $PnR for PE-A",
        "debris: channel 'SSC-A' not in sample",
        "doublets: channel(s) 'FSC-H' not in sample",
    ]
    assert counts["debris"] == 13  # the FSC-A debris gate still ran


def test_saturation_uses_stored_values_and_doublets_linear_ones():
    stored = np.array([[1023.0, 500.0, 10.0], [600.0, 500.0, 1022.0], [700.0, 500.0, 20.0]])
    linear = stored.copy()
    linear[:, 0] = [1.0, 1.0, 5.0]  # decoded FSC-A: the third event is a doublet on the linear scale
    linear[:, 1] = 1.0
    keep, counts = qc_mask(stored, linear, channels=["FSC-A", "FSC-H", "FL1"], ranges=[1024.0] * 3,
                           check=[0, 1, 2], spec=QcSpec(debris_fsc_min=0.0))
    assert counts["saturated"] == 1 and counts["doublets"] == 1
    np.testing.assert_array_equal(keep, [False, True, False])
