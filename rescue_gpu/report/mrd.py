"""The flow report's MRD views: the aberrant events of each positive or borderline sample, and MRD % vs truth.

Shown samples (:func:`shown_samples`): ``mrd_status`` ``positive`` or ``below-lloq``
(borderline: detected, not quantifiable), or ``combined_call`` ``positive``. For each, from
the run store's ``mrd_view`` subsample (:mod:`rescue_gpu.flow.mrd_view`):

* the sample's density image in the reference UMAP (first channel) with its aberrant events
  drawn on top in red;
* the three 2-D marker plots that separate the aberrant events from the sample's other CD45+
  events best, chosen by :func:`choose_pairs`.

Marker-pair criterion (:func:`pair_scores`): for markers ``(i, j)`` the Fisher criterion of the
two classes in that plane, ``J = delta^T S^-1 delta``, with ``delta`` the difference of the
class means and ``S`` the pooled within-class covariance of the pair (plus a ridge of 1e-6 x
its trace). ``J`` is the squared Mahalanobis distance between the class centres, i.e. the
separation along the best linear direction of the plane (Fisher's discriminant). It uses no
marker name, so it works for any panel. :func:`choose_pairs` takes pairs by decreasing ``J``
and skips a pair whose two markers both already appear in the chosen ones (so the three plots
do not repeat one plane's information), falling back to the skipped pairs when fewer remain.

The cohort plot (:func:`truth_figure`) shows estimated vs true MRD % on log-log axes with the
0.1% lines, when the manifest gives ``true_mrd_pct``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from .page import fig_uri, pyplot

__all__ = ["MrdView", "pair_scores", "choose_pairs", "shown_samples", "umap_figure", "pairs_figure",
           "truth_figure", "mrd_section", "truth_section", "MAX_SHOWN", "TRUTH_FLOOR_PCT"]

#: Samples with MRD views in one report (highest MRD % first).
MAX_SHOWN = 24
#: Where an estimate or truth of 0% is drawn on the log axes.
TRUTH_FLOOR_PCT = 1e-3
_RED, _GREY = "#d50000", "#90a4ae"


@dataclass(frozen=True)
class MrdView:
    """What the report draws for one sample: its density image and its ``mrd_view`` events.

    ``aberrant`` (m,) bool, ``coords`` (m, 2) UMAP, ``values`` (m, d) preprocessed markers
    named ``markers``; ``image`` (C, H, W) or None.
    """

    aberrant: np.ndarray
    coords: np.ndarray
    values: np.ndarray
    markers: tuple[str, ...]
    image: np.ndarray | None


def pair_scores(aberrant: np.ndarray, normal: np.ndarray) -> list[tuple[int, int, float]]:
    """Fisher criterion ``J`` of every marker pair ``(i, j)``, ``i < j``, highest first (ties: marker order).

    ``aberrant`` ``(a, d)`` and ``normal`` ``(b, d)`` are the two classes' events. A pair
    with a class of fewer than 2 events gets ``J = 0``.
    """
    a = np.asarray(aberrant, dtype=np.float64)
    b = np.asarray(normal, dtype=np.float64)
    d = a.shape[1] if a.ndim == 2 else 0
    out = []
    for i, j in combinations(range(d), 2):
        if len(a) < 2 or len(b) < 2:
            out.append((i, j, 0.0))
            continue
        pa, pb = a[:, [i, j]], b[:, [i, j]]
        delta = pa.mean(axis=0) - pb.mean(axis=0)
        s = ((len(pa) - 1) * np.cov(pa, rowvar=False) + (len(pb) - 1) * np.cov(pb, rowvar=False)) / (len(pa) + len(pb) - 2)
        s = s + 1e-6 * max(float(np.trace(s)), 1e-12) * np.eye(2)
        out.append((i, j, float(delta @ np.linalg.solve(s, delta))))
    return sorted(out, key=lambda t: -t[2])


def choose_pairs(aberrant: np.ndarray, normal: np.ndarray, n: int = 3) -> list[tuple[int, int, float]]:
    """The ``n`` marker pairs shown: by decreasing Fisher ``J``, preferring pairs that add a marker (module docstring)."""
    ranked = pair_scores(aberrant, normal)
    chosen: list[tuple[int, int, float]] = []
    seen: set[int] = set()
    for i, j, s in ranked:
        if len(chosen) < n and not {i, j} <= seen:
            chosen.append((i, j, s))
            seen |= {i, j}
    for t in ranked:
        if len(chosen) >= n:
            break
        if t not in chosen:
            chosen.append(t)
    return chosen


def shown_samples(df: pd.DataFrame, limit: int = MAX_SHOWN) -> pd.DataFrame:
    """Scored samples with ``mrd_status`` positive / below-lloq or ``combined_call`` positive, highest MRD % first."""
    if "mrd_status" not in df.columns:
        return df.iloc[0:0]
    keep = (df["status"] == "scored") & (df["mrd_status"].isin(["positive", "below-lloq"])
                                         | (df["combined_call"] == "positive"))
    return df[keep].sort_values("mrd_pct", ascending=False, kind="stable").head(limit)


def umap_figure(view: MrdView, extent: Sequence[float] | None, title: str) -> str:
    """The density image (first channel) in the UMAP extent with the aberrant events in red (a PNG data URI)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.4, 3.4), dpi=100)
    if view.image is not None and extent is not None:
        plane = np.asarray(view.image, dtype=np.float32)
        plane = plane[0] if plane.ndim == 3 else plane
        x0, x1, y0, y1 = (float(v) for v in extent)
        ax.imshow(plane, extent=(x0, x1, y0, y1), origin="upper", cmap="Greys", aspect="auto")
        ax.set(xlim=(x0, x1), ylim=(y0, y1))
    else:
        _dots(ax, view.coords[~view.aberrant], _GREY, 1.0)
    _dots(ax, view.coords[view.aberrant], _RED, 1.5, label="aberrant")
    ax.set(title=title, xlabel="UMAP 1", ylabel="UMAP 2")
    ax.title.set_fontsize(8)
    fig.subplots_adjust(left=0.18, right=0.97, bottom=0.14, top=0.92)
    return fig_uri(fig)


def _dots(ax: object, xy: np.ndarray, colour: str, size: float, label: str | None = None) -> None:
    """Events as small markers (a marker line: much faster to draw than a scatter collection)."""
    ax.plot(xy[:, 0], xy[:, 1], ls="none", marker="o", ms=size, mew=0, color=colour, label=label)


def pairs_figure(view: MrdView, pairs: Sequence[tuple[int, int, float]]) -> str:
    """One panel per chosen marker pair: other CD45+ events grey, aberrant events red (a PNG data URI)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.2 * len(pairs), 3.2), dpi=100, squeeze=False)
    for ax, (i, j, score) in zip(axes[0], pairs):
        _dots(ax, view.values[~view.aberrant][:, [i, j]], _GREY, 1.0, label="other CD45+")
        _dots(ax, view.values[view.aberrant][:, [i, j]], _RED, 1.5, label="aberrant")
        ax.set(xlabel=view.markers[i], ylabel=view.markers[j], title=f"Fisher J = {score:.3g}")
        ax.title.set_fontsize(8)
    axes[0][0].legend(fontsize=7, markerscale=4, loc="upper right")
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.15, top=0.91, wspace=0.3)
    return fig_uri(fig)


def _excess_note(row: pd.Series) -> str:
    """What a reviewer should check when some aberrant events come from the DfN excess-population rule."""
    n = row.get("excess_events")
    if n is None or pd.isna(n) or int(n) == 0:
        return ""
    return (f"<p>{int(n):,} of the aberrant events are an excess population: where this sample is many times "
            "denser than normal marrow (DfN's second criterion, the DfN model's excess ratio, 10 by default; for "
            "blasts that lie on normal progenitors). "
            "Check in the plots that it is not an expanded normal population.</p>")


def _sample_block(row: pd.Series, view: MrdView | None, extent: Sequence[float] | None) -> str:
    sid = str(row["sample_id"])
    head = (f"<h3>{html.escape(sid)}</h3><p>MRD {row['mrd_pct']:.3g}% [{row['mrd_pct_low']:.3g}, "
            f"{row['mrd_pct_high']:.3g}] ({int(row['mrd_events'])} of {int(row['cd45_events']):,} CD45+ events, "
            f"method {html.escape(str(row['mrd_method']))}), status {html.escape(str(row['mrd_status']))}, "
            f"image model p={row['p_mrd']:.3f}, combined call {html.escape(str(row['combined_call']))}.</p>"
            + _excess_note(row))
    if int(row["mrd_events"]) == 0:
        return head + "<p>No aberrant events: nothing to draw.</p>"
    if view is None or not view.aberrant.any():
        return head + ("<p>No event subsample (<code>mrd_view</code>) in the run store for this sample: it was "
                       "scored before the MRD views existed; score it again into a new --out to draw them.</p>")
    pairs = choose_pairs(view.values[view.aberrant], view.values[~view.aberrant])
    n_ab, n_rest = int(view.aberrant.sum()), int((~view.aberrant).sum())
    return (head + f"<p>Drawn: {n_ab} aberrant and {n_rest} other CD45+ events (seeded subsample).</p>"
            f"<img alt='{html.escape(sid)} UMAP with aberrant events' src='{umap_figure(view, extent, sid)}'>"
            + (f"<img alt='{html.escape(sid)} marker pairs' src='{pairs_figure(view, pairs)}'>" if pairs else ""))


def mrd_section(df: pd.DataFrame, views: Mapping[str, MrdView], extent: Sequence[float] | None) -> str:
    """The "MRD events" section: one block per shown sample (:func:`shown_samples`)."""
    if "mrd_status" not in df.columns:
        return "<p>No MRD model in this run (score with --mrd-model to see the aberrant events).</p>"
    shown = shown_samples(df)
    if shown.empty:
        return "<p>No sample is MRD-positive, below the LLOQ or positive by the combined call.</p>"
    intro = ("<p>Samples positive or below the LLOQ by the MRD %, or positive by the combined call "
             f"(highest MRD % first, at most {MAX_SHOWN}). Aberrant events (DfN or LAIP) in red, on the "
             "sample's density image in the reference UMAP and in the three marker planes that separate "
             "them best from the sample's other CD45+ events (Fisher criterion J, see "
             "<code>rescue_gpu.report.mrd</code>).</p>")
    return intro + "".join(_sample_block(r, views.get(str(r["sample_id"])), extent) for _, r in shown.iterrows())


def truth_figure(df: pd.DataFrame) -> str | None:
    """Estimated vs true MRD % (log-log, 0.1% lines) of the scored samples with both, or None without truth."""
    if "true_mrd_pct" not in df.columns or "mrd_pct" not in df.columns:
        return None
    est = pd.to_numeric(df["mrd_pct"], errors="coerce").to_numpy(dtype=float)
    truth = pd.to_numeric(df["true_mrd_pct"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(est) & np.isfinite(truth) & (df["status"] == "scored").to_numpy()
    if not ok.any():
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=110)
    methods = df["mrd_method"].fillna("").astype(str).to_numpy() if "mrd_method" in df else np.full(len(df), "")
    for method, colour in (("dfn", "#1565c0"), ("laip", "#ef6c00"), ("both", "#6a1b9a"), ("", "#546e7a")):
        m = ok & (methods == method)
        if m.any():
            ax.scatter(np.maximum(truth[m], TRUTH_FLOOR_PCT), np.maximum(est[m], TRUTH_FLOOR_PCT), s=12,
                       c=colour, label=method or "other", alpha=0.8)
    top = max(10.0, float(np.nanmax(np.r_[truth[ok], est[ok]])) * 1.5)
    ax.plot([TRUTH_FLOOR_PCT, top], [TRUTH_FLOOR_PCT, top], color="black", lw=0.8, ls=":")
    ax.axvline(0.1, color="black", lw=0.8, ls="--")
    ax.axhline(0.1, color="black", lw=0.8, ls="--")
    ax.set(xscale="log", yscale="log", xlim=(TRUTH_FLOOR_PCT / 1.5, top), ylim=(TRUTH_FLOOR_PCT / 1.5, top),
           xlabel="true MRD %", ylabel="estimated MRD %", title=f"{int(ok.sum())} samples; 0% drawn at {TRUTH_FLOOR_PCT:g}%")
    ax.legend(fontsize=8, title="method", title_fontsize=8)
    fig.tight_layout()
    return fig_uri(fig)


def truth_section(df: pd.DataFrame) -> str | None:
    """The "MRD % vs truth" section, or None when the manifest gives no ``true_mrd_pct``."""
    uri = truth_figure(df)
    if uri is None:
        return None
    return ("<p>Estimated MRD % against the manifest's <code>true_mrd_pct</code>; dashed lines: the 0.1% "
            "threshold, dotted: identity.</p>"
            f"<img alt='estimated vs true MRD %' src='{uri}'>")
