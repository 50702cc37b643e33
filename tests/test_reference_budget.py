"""The reference's total event budget: even across strata and samples, nested, reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from rescue_gpu.config import ReferenceSpec
from rescue_gpu.errors import ConfigError
from rescue_gpu.reference.build import balanced_quota, pool_events, water_fill


def _brute_water_fill(caps: list[int], budget: int) -> list[int]:
    """Independent peer: hand out one event at a time to the emptiest bin with room."""
    alloc = [0] * len(caps)
    for _ in range(min(budget, sum(caps))):
        open_bins = [i for i in range(len(caps)) if alloc[i] < caps[i]]
        i = min(open_bins, key=lambda j: (alloc[j], j))
        alloc[i] += 1
    return alloc


@pytest.mark.parametrize("seed", range(20))
def test_water_fill_matches_one_at_a_time_allocation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    caps = [int(c) for c in rng.integers(0, 60, size=int(rng.integers(1, 9)))]
    budget = int(rng.integers(0, 300))
    got = water_fill(caps, budget)
    assert sorted(got) == sorted(_brute_water_fill(caps, budget))
    assert sum(got) == min(budget, sum(caps))
    assert all(0 <= g <= c for g, c in zip(got, caps))


def test_rare_stratum_keeps_its_share() -> None:
    # 90 MRD-negative samples, 5 positive: the positives get half the budget, not 5 %.
    counts = [5000] * 95
    strata = ["follow-up/negative"] * 90 + ["follow-up/positive"] * 5
    q = balanced_quota(counts, strata, max_events=20_000)
    assert sum(q) == 20_000
    assert sum(q[90:]) == 10_000 and sum(q[:90]) == 10_000
    assert len(set(q[90:])) == 1 and max(q[:90]) - min(q[:90]) <= 1


def test_small_stratum_passes_its_unused_share_on() -> None:
    q = balanced_quota([100, 5000, 5000], ["a", "b", "b"], max_events=6000)
    assert q == [100, 2950, 2950]


def _samples(n: int, events: int, d: int = 4) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [(f"s{i}", rng.normal(size=(events, d)).astype(np.float32) + i) for i in range(n)]


def test_pool_under_budget_is_the_uncapped_pool_and_cuts_are_nested() -> None:
    samples = _samples(12, 800)
    full, rec_full = pool_events(samples, events_per_sample=500, seed=3)
    same, _ = pool_events(samples, events_per_sample=500, seed=3, max_events=10_000)
    np.testing.assert_array_equal(full, same)
    small, rec = pool_events(samples, events_per_sample=500, seed=3, max_events=1200)
    big, _ = pool_events(samples, events_per_sample=500, seed=3, max_events=3000)
    assert small.shape[0] == 1200 and rec["max_events"] == 1200 and rec["events_available"] == 6000
    assert set(rec["events_per_sample"].values()) == {100}
    rows_big = {r.tobytes() for r in big}
    assert all(r.tobytes() in rows_big for r in small)  # a smaller budget keeps a subset
    again, _ = pool_events(samples, events_per_sample=500, seed=3, max_events=1200)
    np.testing.assert_array_equal(small, again)


def test_pool_records_per_stratum_totals() -> None:
    samples = _samples(6, 400)
    strata = {f"s{i}": ("diagnosis/positive" if i == 0 else "follow-up/negative") for i in range(6)}
    pooled, rec = pool_events(samples, events_per_sample=400, seed=0, max_events=1000, strata=strata)
    assert rec["events_per_stratum"] == {"diagnosis/positive": 400, "follow-up/negative": 600}
    assert rec["events_per_sample"]["s0"] == 400 and pooled.shape[0] == 1000


def test_budget_below_min_events_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_events must be 0"):
        ReferenceSpec(max_events=500, min_events=1000)
    assert ReferenceSpec(max_events=0).max_events == 0
