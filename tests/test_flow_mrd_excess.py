"""Two guards of the MRD %: the DfN excess-population rule (blasts on the normal progenitors) and the LAIP guard.

Peers: the density ratio and the rule written from their definitions with all-pairs
distances (float64); the scenario is the transfer check's blind spot (a LAIP on a marker
the panel lacks puts the blasts on normal CD34+ progenitors, where the cluster rule has no
candidates), with regenerating marrow (expanded progenitors) as the normal it must spare.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from rescue_gpu.errors import ConfigError, ReferenceDataError
from rescue_gpu.flow import mrd

MARKERS = ("CD45", "CD34", "CD117", "CD7")
#: Normal populations: (share, mean); every population has SD 0.15 per marker.
_POPS = ((0.55, (3.0, 0.0, 0.0, 0.0)), (0.2, (3.0, 0.0, 0.0, 2.0)), (0.23, (0.5, 0.0, 0.0, 0.0)),
         (0.02, (2.2, 2.0, 2.0, 0.0)))  # granulocytes, CD7+ lymphocytes, CD45- cells, CD34+ progenitors
_PROGENITOR = np.array(_POPS[3][1], dtype=np.float32)


def _labelled(rng: np.random.Generator, n: int, *, progenitor_gain: float = 1.0,
              blasts: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A marrow of ``n`` events and each event's population (index into _POPS; blasts: 4); progenitors ``progenitor_gain`` times their share; a
    share ``blasts`` of leukaemic blasts with the progenitors' phenotype (their LAIP marker is not in the panel)."""
    share = np.array([p[0] for p in _POPS])
    share[3] *= progenitor_gain
    share = share / share.sum() * (1.0 - blasts)
    counts = rng.multinomial(n, np.append(share, blasts))
    means = [np.array(p[1]) for p in _POPS] + [_PROGENITOR]
    x = np.concatenate([rng.normal(m, 0.15, (c, 4)) for m, c in zip(means, counts)]).astype(np.float32)
    return x, np.repeat(np.arange(len(counts)), counts)


def _marrow(rng: np.random.Generator, n: int, **kwargs) -> np.ndarray:
    return _labelled(rng, n, **kwargs)[0]


def _model(rng: np.random.Generator, **kwargs) -> mrd.NormalModel:
    normals = [_marrow(rng, 4000, progenitor_gain=g) for g in (1.0, 1.0, 2.5, 2.5, 1.0, 2.5)]
    return mrd.fit_normal_model(normals, MARKERS, k=5, cluster_radius=0.3, seed=1, **kwargs)


def _brute_counts(q: np.ndarray, p: np.ndarray, r: float) -> np.ndarray:
    d = np.sqrt(((q[:, None, :].astype(np.float64) - p[None].astype(np.float64)) ** 2).sum(-1))
    return (d <= r).sum(axis=1)


def _brute_ratio(q: np.ndarray, s: np.ndarray, p: np.ndarray, r: float) -> np.ndarray:
    return ((_brute_counts(q, s, r) + 1) / len(s)) / ((_brute_counts(q, p, r) + max(1, len(p) / len(s))) / len(p))


def _brute_excess(model: mrd.NormalModel, x: np.ndarray) -> np.ndarray:
    """The rule from its definition: screen every ceil(n/2048)-th event against every ceil(n/8192)-th, then all."""
    n = len(x)
    dens = x[::-(-n // 8192)]
    screen = x[::-(-n // 2048)]
    r, big = model.excess_radius, model.excess_ratio
    if np.mean(_brute_ratio(screen, dens, model.points, r) >= big) < model.excess_share:
        return np.zeros(n, dtype=bool)
    flags = _brute_ratio(x, dens, model.points, r) >= big
    return flags if flags.sum() >= model.excess_share * n else np.zeros(n, dtype=bool)


def test_density_ratio_matches_brute_force() -> None:
    rng = np.random.default_rng(31)
    q = rng.normal(0, 1, (300, 3)).astype(np.float32)
    s = rng.normal(0.3, 0.7, (500, 3)).astype(np.float32)
    p = rng.normal(0, 1, (800, 3)).astype(np.float32)
    for r in (0.2, 0.6, 1.5):
        np.testing.assert_allclose(mrd.density_ratio(q, s, p, r), _brute_ratio(q, s, p, r), rtol=1e-5)


def test_excess_flags_blasts_on_normal_progenitors_and_spares_regenerating_marrow() -> None:
    rng = np.random.default_rng(32)
    model = _model(rng)
    assert model.excess and model.excess_radius == pytest.approx(0.6)  # 2 x cluster_radius
    assert len(model.excess_shares) == 6 and max(model.excess_shares) < mrd.EXCESS_SHARE / 2
    assert model.excess_share == mrd.EXCESS_SHARE
    diagnosis, pop = _labelled(rng, 10000, blasts=0.4)
    cluster, excess, _ = mrd.dfn_parts(model, diagnosis)
    assert cluster.mean() < 0.01  # the cluster rule: normal marrow has events there, hardly any candidates
    assert excess[pop == 4].mean() > 0.95  # the blasts ...
    assert excess[pop < 3].mean() < 0.001  # ... not the other populations (the normal progenitors among the blasts are)
    np.testing.assert_array_equal(excess, _brute_excess(model, diagnosis))
    flags, _ = mrd.dfn_flags(model, diagnosis)
    np.testing.assert_array_equal(flags, cluster | excess)
    for gain in (1.0, 3.0):  # normal and regenerating marrow (3x the progenitors; 2.5x in the model's normals)
        normal = _marrow(rng, 10000, progenitor_gain=gain)
        assert mrd.excess_fraction(model, normal) < mrd.EXCESS_SHARE / 2
        assert not mrd.excess_flags(model, normal).any()
    # below the share the rule stays silent (MRD-level blasts on the progenitors are the cluster rule's or nobody's)
    low = _marrow(rng, 10000, blasts=0.005)
    assert not mrd.excess_flags(model, low).any()
    np.testing.assert_array_equal(mrd.excess_flags(model, low), _brute_excess(model, low))


def test_share_rises_above_the_model_normals(tmp_path) -> None:
    """A normal set with an expanded population of its own raises the share to twice the largest
    calibration share (cross-fitted), so none of its samples is flagged; the shares are stored."""
    rng = np.random.default_rng(34)
    normals = [_marrow(rng, 4000, progenitor_gain=g) for g in (1.0, 1.0, 1.0, 1.0)]
    odd = _marrow(rng, 4000)
    odd[:200] = rng.normal((3.0, 1.0, 0.0, 1.0), 0.15, (200, 4))  # a "normal" with a 5% population of its own
    normals += [odd, _marrow(rng, 4000)]
    model = mrd.fit_normal_model(normals, MARKERS, k=5, cluster_radius=0.3, seed=1)
    assert max(model.excess_shares) > mrd.EXCESS_SHARE  # the odd normal is seen in calibration ...
    assert model.excess_share == pytest.approx(2 * max(model.excess_shares))  # ... and the share is above it
    assert not mrd.excess_flags(model, odd).any()
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "normal.json").read_text())
    assert meta["excess_share"] == model.excess_share and meta["excess_shares"] == list(model.excess_shares)
    assert mrd.NormalModel.load(tmp_path / "m").meta() == model.meta()


def test_excess_off_and_validation() -> None:
    rng = np.random.default_rng(35)
    normals = [_marrow(rng, 3000) for _ in range(4)]
    off = mrd.fit_normal_model(normals, MARKERS, k=5, cluster_radius=0.3, excess=False)
    assert not off.excess and off.excess_shares == ()
    assert not mrd.excess_flags(off, _marrow(rng, 5000, blasts=0.4)).any()
    assert mrd.excess_fraction(off, normals[0]) == 0.0
    for bad, what in (({"excess_ratio": 1.0}, "excess_ratio must be a finite number > 1, got 1.0"),
                      ({"excess_ratio": math.inf}, "excess_ratio must be a finite number > 1, got inf"),
                      ({"excess_ratio": math.nan}, "excess_ratio must be a finite number > 1, got nan"),
                      ({"excess_share": 0.0}, "excess_share must be in (0, 1), got 0.0"),
                      ({"excess_share": 1.0}, "excess_share must be in (0, 1), got 1.0"),
                      ({"excess_radius": 0.0}, "excess_radius must be a finite number > 0, got 0.0"),
                      ({"excess_radius": math.inf}, "excess_radius must be a finite number > 0, got inf")):
        with pytest.raises(ConfigError) as info:
            mrd.fit_normal_model(normals, MARKERS, k=5, **bad)
        assert what in str(info.value) and "--no-excess" in str(info.value)
        assert "excess_radius" in str(info.value) or "excess_radius" not in bad  # only what is wrong is named
    with pytest.raises(ConfigError) as info:
        mrd.check_excess_rule(0.5, 2.0)
    assert "excess_ratio" in str(info.value) and "excess_share" in str(info.value)
    assert "excess_radius" not in str(info.value)


def test_fit_warns_when_a_normal_turns_the_rule_off() -> None:
    """A 'normal' that is mostly one dense population raises the share to >= 1: the rule is then off, said aloud."""
    rng = np.random.default_rng(37)
    normals = [_marrow(rng, 3000) for _ in range(3)]
    odd = _marrow(rng, 3000)
    odd[:1800] = rng.normal((3.0, 1.0, 0.0, 1.0), 0.1, (1800, 4))  # 60% of one population no other normal has
    with pytest.warns(UserWarning, match="the rule can flag nothing"):
        model = mrd.fit_normal_model([*normals, odd], MARKERS, k=5, cluster_radius=0.3)
    assert model.excess_share >= 1.0 and not mrd.excess_flags(model, _marrow(rng, 5000, blasts=0.4)).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # plain normals: no warning
        mrd.fit_normal_model(normals + [_marrow(rng, 3000)], MARKERS, k=5, cluster_radius=0.3)


def test_excess_runs_on_the_array_api_standard() -> None:
    """density_ratio and excess_flags use only standard calls (the cupy path is CI-checked this way)."""
    xs = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(36)
    model = _model(rng)
    x = _marrow(rng, 5000, blasts=0.3)
    got = np.asarray(mrd.excess_flags(model, xs.asarray(x)))
    want = mrd.excess_flags(model, x)
    assert want.sum() > 1000
    np.testing.assert_array_equal(got, want)
    assert mrd.excess_fraction(model, xs.asarray(x)) == pytest.approx(mrd.excess_fraction(model, x))


# ----------------------------------------------------------------------------- the LAIP guard


def test_laip_guard_refuses_a_laip_that_holds_normal_marrow() -> None:
    """A diagnosis whose blasts look like a normal population (their LAIP marker is not in the panel) gives
    a LAIP ellipsoid over normal cells; one far from normal holds none of them."""
    rng = np.random.default_rng(37)
    model = _model(rng)
    like_normal = _marrow(rng, 8000)
    like_normal[:3000] = rng.normal((3.0, 0.0, 0.0, 0.0), 0.2, (3000, 4))  # blasts on the granulocytes
    broad = mrd.fit_laip(model, like_normal)
    assert broad is not None
    inside = ((model.points - broad.mean) @ broad.precision * (model.points - broad.mean)).sum(1) <= broad.cutoff
    assert broad.normal_share == pytest.approx(inside.mean()) and broad.normal_share > 0.3
    reason = mrd.laip_refusal(broad)
    assert reason is not None and f"{broad.normal_share:.1%} of normal marrow" in reason and "DfN alone" in reason
    far = _marrow(rng, 8000)
    far[:3000] = rng.normal((3.0, 2.5, 2.0, 2.5), 0.15, (3000, 4))  # CD34+ CD117+ CD7+: not normal
    tight = mrd.fit_laip(model, far)
    assert tight is not None and tight.normal_share < 0.001 and mrd.laip_refusal(tight) is None
    assert mrd.laip_refusal(broad, max_normal_share=broad.normal_share) is None  # at the limit: tracked
    back = mrd.LaipModel.from_record(broad.record())
    assert back.normal_share == broad.normal_share
    old = {k: v for k, v in broad.record().items() if k != "normal_share"}  # a record from before the guard
    assert mrd.LaipModel.from_record(old).normal_share == 0.0 and mrd.laip_refusal(mrd.LaipModel.from_record(old)) is None


def _excess_only_model(points: np.ndarray) -> mrd.NormalModel:
    """A model whose only working part is the excess rule (default ratio and share, radius 0.6) on ``points``."""
    return mrd.NormalModel(points=points, sparse_points=points[:0], markers=MARKERS, cd45_column=0, cd45_min=1.5, k=5,
                           threshold=1.0, candidate_threshold=1.0, candidate_rate=0.005, cluster_radius=0.3,
                           cluster_threshold=1.0, false_flag_rate=1e-4, loose_threshold=1.0, loose_rate=0.003,
                           n_samples=6, n_calibration=1, excess_radius=0.6)


@pytest.mark.parametrize("n_points, n_events", [(20000, 2000), (50000, 10000)])
def test_isolated_events_are_no_excess_population_whatever_the_sizes(n_points: int, n_events: int) -> None:
    """Scattered isolated events (debris, doublets: 3% of the sample) are no population: the excess rule must not
    count them, also when the sample has few events next to the model's points (a small sample with the default
    max_points 20,000, or a --max-points 50,000 model); the +1 pseudo-point once made their ratio 2 x m / n."""
    rng = np.random.default_rng(38)
    model = _excess_only_model(_marrow(rng, n_points))
    x = _marrow(rng, n_events)
    m = int(0.03 * n_events)
    x[:m] = rng.uniform(-1.0, 4.0, (m, 4))
    assert not mrd.excess_flags(model, x).any()
    assert mrd.excess_fraction(model, x) < mrd.EXCESS_SHARE
    blasts, pop = _labelled(rng, n_events, blasts=0.4)  # a population still is one
    assert mrd.excess_flags(model, blasts)[pop == 4].mean() > 0.9


def test_load_refuses_a_damaged_excess_rule(tmp_path) -> None:
    """normal.json is not checksummed: an excess rule no fit writes (ratio 0 flags every event, MRD 100%) or a
    missing setting is refused as a damaged model, not loaded or raised as a bare KeyError."""
    rng = np.random.default_rng(39)
    _excess_only_model(_marrow(rng, 500)).save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "normal.json").read_text())
    assert mrd.NormalModel.load(tmp_path / "m").excess
    damaged = [{"excess_ratio": 0.0}, {"excess_ratio": float("nan")}, {"excess_share": 0.0}, {"excess_share": -1.0},
               {"excess_radius": -1.0}, {"excess_radius": float("nan")}, {"excess_share": None}]
    for change in damaged + [{k: v for k, v in meta.items() if k != "excess_shares"}]:
        bad = {**meta, **change} if "format" not in change else change
        (tmp_path / "m" / "normal.json").write_text(json.dumps(bad))
        with pytest.raises(ReferenceDataError, match="excess rule"):
            mrd.NormalModel.load(tmp_path / "m")
    for fine in ({"excess_radius": 0.0}, {"excess_share": 1.5}):  # off; a share raised by the normals
        (tmp_path / "m" / "normal.json").write_text(json.dumps({**meta, **fine}))
        assert mrd.NormalModel.load(tmp_path / "m").excess_share == fine.get("excess_share", meta["excess_share"])
