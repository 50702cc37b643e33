"""The report's MRD views: the marker-pair chooser, the stored event subsample, which samples are shown, truth plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rescue_gpu.flow.mrd_view import VIEW_ABERRANT, needs_view, split_view, view_sample
from rescue_gpu.report.mrd import MrdView, choose_pairs, mrd_section, pair_scores, shown_samples, truth_section


def _classes(rng: np.random.Generator, d: int, shift: dict[int, float], *, n_normal: int = 4000,
             n_aberrant: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Normal events with random correlated markers; aberrant events the same, shifted in ``shift``'s markers."""
    mix = rng.normal(size=(d, d)) * 0.4 + np.eye(d)
    normal = rng.normal(size=(n_normal, d)) @ mix
    aberrant = rng.normal(size=(n_aberrant, d)) @ mix
    for col, s in shift.items():
        aberrant[:, col] += s
    return aberrant, normal


@pytest.mark.parametrize("d,pair", [(8, (2, 5)), (12, (0, 11)), (5, (3, 4))])
def test_chooser_picks_the_pair_carrying_a_planted_shift(d: int, pair: tuple[int, int]) -> None:
    rng = np.random.default_rng(d)
    i, j = pair
    aberrant, normal = _classes(rng, d, {i: 2.0, j: -2.0})
    best = choose_pairs(aberrant, normal)
    assert (best[0][0], best[0][1]) == pair
    assert len(best) == 3 and len({(a, b) for a, b, _ in best}) == 3
    # independent of the column order (hence of marker names): permute the columns and map back
    perm = rng.permutation(d)
    again = choose_pairs(aberrant[:, perm], normal[:, perm])[0]
    assert {int(perm[again[0]]), int(perm[again[1]])} == set(pair)


def test_pair_score_is_the_squared_mahalanobis_distance_of_the_class_means() -> None:
    rng = np.random.default_rng(1)
    aberrant, normal = _classes(rng, 4, {1: 1.5})
    scores = {(i, j): s for i, j, s in pair_scores(aberrant, normal)}
    a, b = aberrant[:, [0, 1]], normal[:, [0, 1]]
    pooled = np.cov(np.vstack([a - a.mean(0), b - b.mean(0)]), rowvar=False) * (len(a) + len(b) - 1) / (len(a) + len(b) - 2)
    delta = a.mean(0) - b.mean(0)
    assert scores[(0, 1)] == pytest.approx(float(delta @ np.linalg.inv(pooled) @ delta), rel=1e-4)
    assert list(scores.values()) == sorted(scores.values(), reverse=True)


def test_chooser_adds_a_new_marker_per_plot_and_handles_tiny_classes() -> None:
    rng = np.random.default_rng(2)
    aberrant, normal = _classes(rng, 6, {0: 3.0})  # one marker: every pair with 0 scores high
    best = choose_pairs(aberrant, normal)
    assert all(0 in (i, j) for i, j, _ in best)  # the new-marker rule keeps (0, x), (0, y), (0, z)
    markers = [{i, j} for i, j, _ in best]
    assert all(not m <= set().union(*markers[:k]) for k, m in enumerate(markers) if k)
    assert choose_pairs(aberrant[:1], normal) == [(0, 1, 0.0), (0, 2, 0.0), (0, 3, 0.0)]
    assert choose_pairs(aberrant[:, :2], normal[:, :2]) == pair_scores(aberrant[:, :2], normal[:, :2])  # one pair only


def test_view_sample_keeps_capped_seeded_subsamples_with_coords_and_markers() -> None:
    rng = np.random.default_rng(3)
    n = 12000
    values = rng.normal(size=(n, 5)).astype(np.float32)
    coords = rng.normal(size=(n, 2)).astype(np.float32)
    gate = rng.random(n) < 0.8
    aberrant = gate & (rng.random(n) < 0.3)
    view = view_sample(values, coords, aberrant, gate, max_normal=1000)
    ab, c, v = split_view(view)
    assert int(ab.sum()) == VIEW_ABERRANT and int((~ab).sum()) == 1000
    # each kept row is an event of the sample with its own coordinates and class
    index = {tuple(row): k for k, row in enumerate(values)}
    rows = np.array([index[tuple(r)] for r in v])
    np.testing.assert_array_equal(coords[rows], c)
    np.testing.assert_array_equal(aberrant[rows], ab)
    assert gate[rows].all() and len(set(rows.tolist())) == len(rows)
    np.testing.assert_array_equal(view_sample(values, coords, aberrant, gate, max_normal=1000), view)  # seeded
    small = view_sample(values[:50], coords[:50], aberrant[:50], gate[:50])
    assert int(split_view(small)[0].sum()) == int(aberrant[:50].sum())  # below the cap: all kept
    assert needs_view("positive", 3) and needs_view("insufficient-events", 1)
    assert not needs_view("negative", 500) and not needs_view("below-lloq", 0)


def _df(statuses: list[str], combined: list[str], truth: list[float] | None = None) -> pd.DataFrame:
    n = len(statuses)
    df = pd.DataFrame({"sample_id": [f"S{i}" for i in range(n)], "status": "scored", "p_mrd": 0.4,
                       "mrd_pct": np.linspace(0.05, 2.0, n), "mrd_pct_low": 0.01, "mrd_pct_high": 3.0,
                       "mrd_events": 60, "cd45_events": 10000, "mrd_method": "dfn", "mrd_status": statuses,
                       "combined_call": combined})
    if truth is not None:
        df["true_mrd_pct"] = truth
    return df


def _view(rng: np.random.Generator) -> MrdView:
    aberrant, normal = _classes(rng, 4, {2: 2.0}, n_normal=300, n_aberrant=60)
    values = np.vstack([aberrant, normal]).astype(np.float32)
    return MrdView(aberrant=np.r_[np.ones(60, bool), np.zeros(300, bool)], coords=rng.normal(size=(360, 2)),
                   values=values, markers=("M-a", "M-b", "M-c", "M-d"), image=rng.random((1, 16, 16)))


def test_section_shows_positive_and_borderline_samples_only() -> None:
    rng = np.random.default_rng(4)
    df = _df(["positive", "below-lloq", "insufficient-events", "insufficient-events", "negative"],
             ["positive", "negative", "positive", "negative", "negative"])
    assert list(shown_samples(df)["sample_id"]) == ["S2", "S1", "S0"]  # highest MRD % first
    views = {f"S{i}": _view(rng) for i in range(5)}
    page = mrd_section(df, views, (-3.0, 3.0, -3.0, 3.0))
    for sid in ("S0", "S1", "S2"):
        assert f"<h3>{sid}</h3>" in page and f"alt='{sid} marker pairs'" in page and f"alt='{sid} UMAP" in page
    for sid in ("S3", "S4"):
        assert f"<h3>{sid}</h3>" not in page
    none = mrd_section(_df(["negative"] * 2, ["negative"] * 2), views, None)
    assert "<h3>" not in none and "No sample" in none
    missing = mrd_section(df, {}, None)
    assert missing.count("No event subsample") == 3 and "<img" not in missing
    assert "excess population" not in page  # no excess_events column (a run before session 11)
    df["excess_events"] = [40, 0, 0, 0, 0]
    excess = mrd_section(df, views, None)
    assert excess.count("excess population") == 1 and "40 of the aberrant events are an excess" in excess
    df.loc[df["sample_id"] == "S2", "mrd_events"] = 0  # combined-positive without aberrant events
    zero = mrd_section(df, views, None)
    assert "No aberrant events: nothing to draw" in zero and "alt='S2 UMAP" not in zero and "alt='S1 UMAP" in zero


def test_truth_plot_only_with_truth() -> None:
    df = _df(["positive", "negative"], ["positive", "negative"])
    assert truth_section(df) is None
    assert truth_section(_df(["positive", "negative"], ["positive", "negative"], [np.nan, np.nan])) is None
    sec = truth_section(_df(["positive", "negative"], ["positive", "negative"], [1.0, 0.0]))
    assert sec is not None and "data:image/png;base64," in sec


@pytest.fixture(scope="module")
def mrd_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny simulated cohort scored with an MRD model (image-model threshold 0.5: negatives stay unshown)."""
    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.flow import mrd
    from rescue_gpu.flow.assay import ScoreOptions, score_cohort
    from rescue_gpu.runner.manifest import read_manifest

    from .test_cohort_fixtures import build_assets, tiny_pipeline

    assets = build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")
    out = tmp_path_factory.mktemp("mrd-report")
    model = mrd.normal_model_from_rows(read_manifest(assets["manifest"]), tiny_pipeline(), k=3,
                                       false_flag_rate=1e-3, loose_rate=0.05).save(out / "normal")
    score_cohort(assets["manifest"], reference=assets["reference"], model=assets["model"], out=out / "run",
                 options=ScoreOptions(pipeline=tiny_pipeline(), mrd_model=str(model)),
                 runtime=RuntimeConfig(backend="cpu"), in_process=True)
    return {**assets, "run": out / "run"}


@pytest.mark.slow
def test_report_of_a_simulated_run_shows_views_for_positive_samples_only(mrd_run: dict, tmp_path) -> None:
    import csv
    import re

    from rescue_gpu.flow.outputs import mrd_views, score_table, write_outputs
    from rescue_gpu.reference import Reference
    from rescue_gpu.runner.manifest import read_manifest
    from rescue_gpu.runner.store import RunStore

    df = pd.read_parquet(mrd_run["run"] / "scores.parquet")
    page = (mrd_run["run"] / "report.html").read_text()
    shown = df["mrd_status"].isin(["positive", "below-lloq"]) | (df["combined_call"] == "positive")
    assert shown.any() and (~shown).any(), df[["sample_id", "mrd_status", "combined_call"]]
    assert "<h2>MRD events</h2>" in page and "MRD % vs truth" not in page  # the manifest has no true_mrd_pct
    store = RunStore(mrd_run["run"] / "store.zarr")
    for sid, show in zip(df["sample_id"], shown):
        assert (f"<h3>{sid}</h3>" in page) == show
        assert (f"alt='{sid} marker pairs'" in page) == show
        assert (f"alt='{sid} UMAP with aberrant events'" in page) == show
        stored = store.array(sid, "mrd_view")
        if show:  # the drawn events are the sample's aberrant ones, up to the cap
            n_ab = int(stored[:, 0].sum())
            assert n_ab == min(int(df.loc[df["sample_id"] == sid, "mrd_events"].iloc[0]), 2000)
    assert "<img alt='S" in page and not re.search(r"src='(?!data:image/png;base64,)", page)  # self-contained

    # with the truth in the manifest, the same store gives the estimated-vs-true plot
    truth = {r["sample_id"]: r["true_mrd_pct"] for r in csv.DictReader(open(mrd_run["cohort"] / "truth.csv"))}
    with open(mrd_run["manifest"]) as fh:
        recs = list(csv.DictReader(fh))
    man = tmp_path / "manifest.csv"
    with open(man, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*recs[0], "true_mrd_pct"])
        w.writeheader()
        w.writerows({**r, "path": str(mrd_run["cohort"] / r["path"]), "true_mrd_pct": truth[r["sample_id"]]} for r in recs)
    rows = read_manifest(man)
    table = score_table(rows, store, threshold=0.5)
    np.testing.assert_allclose(table["true_mrd_pct"], [float(truth[r.sample_id]) for r in rows])
    paths = write_outputs(table, store, tmp_path, extent=Reference.load(mrd_run["reference"]).extent)
    with_truth = paths["report"].read_text()
    assert "<h2>MRD % vs truth</h2>" in with_truth and "alt='estimated vs true MRD %'" in with_truth
    assert set(mrd_views(table, store)) == set(df.loc[shown, "sample_id"])
