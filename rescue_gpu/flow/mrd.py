"""MRD as a number: event-level aberrancy (DfN, LAIP) and the per-sample MRD % with ELN 2021 rules.

Everything works in the *preprocessed* marker space (the columns of
:class:`rescue_gpu.preprocess.Events`), not in the 2-D UMAP.

DfN ("different from normal")
    :func:`fit_normal_model` pools the CD45+ events of normal samples (the reference's
    MRD-negative and control samples). Half of the samples (alternating) give the model
    events, the other half calibrate it: the distance of every calibration event to its
    ``k``-th nearest model event is computed and the threshold is the ``1 - false_flag_rate``
    quantile of those distances, so that an event of an unseen normal marrow is flagged
    with probability about ``false_flag_rate``. :func:`dfn_flags` flags a sample's CD45+
    events whose ``k``-NN distance exceeds the threshold (events that normal marrow has
    no counterpart for). The CD45+ gate is an Otsu split of the normal events' CD45.
LAIP (leukaemia-associated immunophenotype)
    :func:`fit_laip` takes a patient's diagnosis sample, keeps its CD45+ events beyond
    normal's loose threshold (at diagnosis, where blasts dominate, those are the
    leukaemic population; the strict DfN threshold keeps too few of them) and models them as a Gaussian (mean,
    regularised covariance). :func:`laip_flags` flags a follow-up sample's CD45+ events
    inside the ``laip_quantile`` Mahalanobis ellipsoid of that Gaussian that are also
    outside the bulk of normal marrow (``k``-NN distance above the model's loose
    threshold, the ``1 - loose_rate`` quantile).

The array code (distances, partitions, Mahalanobis) is written once for numpy and cupy
(``xp`` from :func:`rescue_gpu.xp.namespace`); the model's small statistics are host
numpy. The per-event result is stored as packed bits (:func:`pack_flags`).

ELN 2021 (Heuser et al., Blood 2021; see README "MRD percentage"): MRD is counted among
CD45+ events; >= 500,000 CD45+ events are required to call a sample negative; 0.1% is the
positivity threshold; the limit of detection (LOD) and of quantification (LLOQ) are
numbers of clustered aberrant events (:data:`LOD_EVENTS`, :data:`LLOQ_EVENTS`), so as
percentages they depend on the events actually analysed (:func:`mrd_numbers`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ReferenceDataError
from ..xp import astype as _astype
from ..xp import namespace

__all__ = ["NormalModel", "LaipModel", "fit_normal_model", "knn_distance", "count_within", "cd45_gate", "dfn_flags", "fit_laip",
           "laip_flags", "pack_flags", "unpack_flags", "MrdNumbers", "mrd_numbers", "mrd_status", "combined_call",
           "clopper_pearson", "otsu_threshold", "normal_model_from_rows", "mrd_agreement", "LOD_EVENTS", "LLOQ_EVENTS", "MIN_CD45_EVENTS", "THRESHOLD_PCT",
           "STATUSES", "METHODS"]

#: ELN 2021: events required to call a sample MRD-negative.
MIN_CD45_EVENTS = 500_000
#: ELN 2021: positivity threshold, percent of CD45+ events.
THRESHOLD_PCT = 0.1
#: Clustered aberrant events for detection (LOD) and for quantification (LLOQ).
LOD_EVENTS = 20
LLOQ_EVENTS = 50
STATUSES = ("positive", "negative", "below-lloq", "insufficient-events")
METHODS = ("dfn", "laip", "both")
_FORMAT = "rescue-mrd-normal/1"


# ----------------------------------------------------------------------------- kernels (numpy / cupy)


def knn_distance(queries: Any, points: Any, k: int, *, chunk: int = 4096) -> Any:
    """Euclidean distance of each row of ``queries`` to its ``k``-th nearest row of ``points``.

    Uses ``xp.partition`` (not in the array API standard; numpy and cupy both have it with
    the same semantics); used to calibrate the model, not to flag events.

    Chunked over ``queries`` (``chunk`` rows at a time); same array module as the inputs.
    """
    xp = namespace(queries, points)
    q = xp.asarray(queries, dtype=xp.float32)
    p = xp.asarray(points, dtype=xp.float32)
    if not 1 <= k <= p.shape[0]:
        raise ConfigError(f"k must be in 1..{p.shape[0]} (the model's events), got {k}")
    pn = xp.sum(p * p, axis=1)
    out = xp.empty((q.shape[0],), dtype=xp.float32)
    for s in range(0, q.shape[0], chunk):
        e = min(s + chunk, q.shape[0])
        qc = q[s:e, :]
        d2 = xp.sum(qc * qc, axis=1)[:, None] - 2.0 * (qc @ p.T) + pn[None, :]
        kth = xp.partition(d2, k - 1, axis=1)[:, k - 1]
        out[s:e] = xp.sqrt(xp.maximum(kth, 0.0))
    return out


def count_within(queries: Any, points: Any, radius: float, *, chunk: int = 4096) -> Any:
    """Number of rows of ``points`` within Euclidean ``radius`` of each row of ``queries`` (int32).

    ``count_within(q, p, r) < k`` is exactly ``knn_distance(q, p, k) > r`` and needs no
    partition, so flagging uses it.
    """
    xp = namespace(queries, points)
    q = xp.asarray(queries, dtype=xp.float32)
    p = xp.asarray(points, dtype=xp.float32)
    pn = xp.sum(p * p, axis=1)
    r2 = float(radius) ** 2
    out = xp.empty((q.shape[0],), dtype=xp.int32)
    for s in range(0, q.shape[0], chunk):
        e = min(s + chunk, q.shape[0])
        qc = q[s:e, :]
        d2 = xp.sum(qc * qc, axis=1)[:, None] - 2.0 * (qc @ p.T) + pn[None, :]
        out[s:e] = _astype(xp.count_nonzero(d2 <= r2, axis=1), xp.int32, xp)
    return out


def cd45_gate(values: Any, column: int, low: float) -> Any:
    """Boolean mask of the CD45+ events (``values[:, column] >= low``)."""
    return values[:, column] >= low


def otsu_threshold(x: np.ndarray, bins: int = 256) -> float:
    """Otsu's split of a 1-D sample (host numpy): the cut maximising the between-class variance."""
    x = np.asarray(x, dtype=np.float64)
    hist, edges = np.histogram(x, bins=bins)
    w = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(w)
    m0 = np.cumsum(w * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


# ----------------------------------------------------------------------------- DfN


@dataclass(frozen=True)
class NormalModel:
    """DfN model of normal marrow (a checksummed artifact: ``normal.npz`` + ``normal.json``).

    Attributes
    ----------
    points
        ``(m, d)`` float32 CD45+ normal events the distances are measured to.
    markers
        Column names (must equal the sample's preprocessed markers).
    cd45_column, cd45_min
        Column of CD45 and the CD45+ gate's lower bound.
    k
        Neighbour rank of the distance.
    threshold, false_flag_rate
        DfN flag threshold and the share of calibration normal events above it.
    loose_threshold, loose_rate
        The LAIP tracking's lower threshold and its share of calibration events.
    n_samples, n_calibration
        Normal samples pooled; calibration events.
    """

    points: np.ndarray
    markers: tuple[str, ...]
    cd45_column: int
    cd45_min: float
    k: int
    threshold: float
    false_flag_rate: float
    loose_threshold: float
    loose_rate: float
    n_samples: int
    n_calibration: int

    def meta(self) -> dict[str, Any]:
        """The JSON-ready settings (without the points)."""
        return {"format": _FORMAT, "markers": list(self.markers), "cd45_column": self.cd45_column,
                "cd45_min": self.cd45_min, "k": self.k, "threshold": self.threshold,
                "false_flag_rate": self.false_flag_rate, "loose_threshold": self.loose_threshold,
                "loose_rate": self.loose_rate, "n_samples": self.n_samples, "n_calibration": self.n_calibration}

    def save(self, directory: str | Path) -> Path:
        """Write ``normal.npz`` and ``normal.json`` (with the npz's sha256) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        npz = d / "normal.npz"
        with open(npz, "wb") as fh:
            np.savez(fh, points=np.ascontiguousarray(self.points, dtype=np.float32))
        meta = {**self.meta(), "sha256": hashlib.sha256(npz.read_bytes()).hexdigest()}
        (d / "normal.json").write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> NormalModel:
        """Read a saved model, checking its checksum.

        Raises
        ------
        ReferenceDataError
            Missing files, another format, or a points file whose sha256 differs.
        """
        d = Path(directory)
        try:
            meta = json.loads((d / "normal.json").read_text())
            raw = (d / "normal.npz").read_bytes()
        except (OSError, ValueError) as exc:
            raise ReferenceDataError(f"{d}: no readable DfN normal model ({exc}); build it with fit_normal_model") from exc
        if meta.get("format") != _FORMAT:
            raise ReferenceDataError(f"{d}: not a DfN normal model (format {meta.get('format')!r})")
        if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            raise ReferenceDataError(f"{d}/normal.npz: checksum differs from normal.json; the model is damaged, "
                                     "rebuild it")
        with np.load(d / "normal.npz") as z:
            points = np.asarray(z["points"], dtype=np.float32)
        return cls(points=points, markers=tuple(meta["markers"]), cd45_column=int(meta["cd45_column"]),
                   cd45_min=float(meta["cd45_min"]), k=int(meta["k"]), threshold=float(meta["threshold"]),
                   false_flag_rate=float(meta["false_flag_rate"]), loose_threshold=float(meta["loose_threshold"]),
                   loose_rate=float(meta["loose_rate"]), n_samples=int(meta["n_samples"]),
                   n_calibration=int(meta["n_calibration"]))

    def check_markers(self, markers: Sequence[str]) -> None:
        """Raise :class:`ConfigError` unless ``markers`` are the model's columns."""
        if tuple(markers) != self.markers:
            raise ConfigError(f"the sample's markers {tuple(markers)} differ from the DfN model's {self.markers}; "
                              "preprocess with the pipeline the model was built with")


def fit_normal_model(
    samples: Sequence[np.ndarray],
    markers: Sequence[str],
    *,
    cd45: str = "CD45",
    k: int = 5,
    max_points: int = 20000,
    false_flag_rate: float = 1e-4,
    loose_rate: float = 0.003,
    seed: int = 0,
) -> NormalModel:
    """Fit the DfN model from normal samples' preprocessed events (host arrays).

    Even-indexed samples give up to ``max_points`` model events, odd-indexed ones the
    calibration events (a single sample is split by events instead).

    Raises
    ------
    ConfigError
        No CD45 column, fewer than 2 samples' worth of events, or rates outside (0, 1).
    """
    markers = tuple(markers)
    if cd45 not in markers:
        raise ConfigError(f"the DfN model needs a {cd45!r} column; markers are {markers}")
    if not (0 < false_flag_rate < 1 and 0 < loose_rate < 1):
        raise ConfigError("false_flag_rate and loose_rate must be in (0, 1)")
    arrays = [np.asarray(s, dtype=np.float32) for s in samples if len(s)]
    if not arrays:
        raise ConfigError("no normal events to fit the DfN model")
    col = markers.index(cd45)
    cd45_min = otsu_threshold(np.concatenate([a[:, col] for a in arrays]))
    gated = [a[a[:, col] >= cd45_min] for a in arrays]
    rng = np.random.default_rng(seed)
    if len(gated) >= 2:
        fit, cal = np.concatenate(gated[0::2]), np.concatenate(gated[1::2])
    else:
        perm = rng.permutation(len(gated[0]))
        half = len(perm) // 2
        fit, cal = gated[0][perm[:half]], gated[0][perm[half:]]
    if len(fit) > max_points:
        fit = fit[rng.choice(len(fit), max_points, replace=False)]
    if len(fit) < k or len(cal) == 0:
        raise ConfigError(f"too few CD45+ normal events for the DfN model ({len(fit)} model, {len(cal)} calibration)")
    dist = np.asarray(knn_distance(cal, fit, k), dtype=np.float64)
    return NormalModel(points=fit, markers=markers, cd45_column=col, cd45_min=cd45_min, k=k,
                       threshold=float(np.quantile(dist, 1.0 - false_flag_rate)), false_flag_rate=false_flag_rate,
                       loose_threshold=float(np.quantile(dist, 1.0 - loose_rate)), loose_rate=loose_rate,
                       n_samples=len(arrays), n_calibration=int(len(cal)))


def _model_points(model: NormalModel, xp: Any) -> Any:
    return xp.asarray(model.points)


def dfn_flags(model: NormalModel, values: Any, *, counts: Any = None) -> tuple[Any, Any]:
    """``(flags, cd45)`` boolean per event: DfN-aberrant CD45+ events, and the CD45+ gate.

    ``counts`` (each event's number of model points within ``model.threshold``, from
    :func:`count_within`) is computed when not given; an event is DfN-aberrant when
    fewer than ``k`` normal points lie that close (its ``k``-NN distance exceeds the threshold).
    """
    xp = namespace(values)
    gate = cd45_gate(values, model.cd45_column, model.cd45_min)
    if counts is None:
        counts = count_within(values, _model_points(model, xp), model.threshold)
    return gate & (counts < model.k), gate


# ----------------------------------------------------------------------------- LAIP


@dataclass(frozen=True)
class LaipModel:
    """A patient's leukaemic population at diagnosis: Gaussian mean and precision, and its cut-off.

    ``cutoff`` is the squared Mahalanobis radius (chi-square ``laip_quantile`` with ``d``
    degrees of freedom); ``n_events`` the diagnosis events it was fitted to.
    """

    mean: np.ndarray
    precision: np.ndarray
    cutoff: float
    n_events: int

    def record(self) -> dict[str, Any]:
        """JSON-ready form (stored in the diagnosis sample's record)."""
        return {"mean": self.mean.tolist(), "precision": self.precision.tolist(), "cutoff": self.cutoff,
                "n_events": self.n_events}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> LaipModel:
        """Inverse of :meth:`record`."""
        return cls(np.asarray(rec["mean"], dtype=np.float64), np.asarray(rec["precision"], dtype=np.float64),
                   float(rec["cutoff"]), int(rec["n_events"]))


def fit_laip(model: NormalModel, diagnosis_values: Any, *, min_events: int = LLOQ_EVENTS,
             laip_quantile: float = 0.999, ridge: float = 1e-3) -> LaipModel | None:
    """The LAIP of a diagnosis sample (its CD45+ events beyond the loose threshold), or None with fewer than ``min_events``."""
    from scipy.stats import chi2

    from ..device import to_numpy

    xp = namespace(diagnosis_values)
    gate = cd45_gate(diagnosis_values, model.cd45_column, model.cd45_min)
    loose = count_within(diagnosis_values, _model_points(model, xp), model.loose_threshold) < model.k
    flags = gate & loose
    ev = np.asarray(to_numpy(diagnosis_values), dtype=np.float64)[np.asarray(to_numpy(flags), dtype=bool)]
    if len(ev) < max(min_events, ev.shape[1] + 1):
        return None
    cov = np.cov(ev, rowvar=False) + ridge * np.eye(ev.shape[1])
    return LaipModel(mean=ev.mean(axis=0), precision=np.linalg.inv(cov),
                     cutoff=float(chi2.ppf(laip_quantile, ev.shape[1])), n_events=int(len(ev)))


def laip_flags(model: NormalModel, laip: LaipModel, values: Any, *, loose_counts: Any = None) -> Any:
    """Boolean per event: CD45+, inside the LAIP ellipsoid, and beyond normal's loose threshold.

    ``loose_counts``: model points within ``model.loose_threshold`` (:func:`count_within`).
    """
    xp = namespace(values)
    v = xp.asarray(values, dtype=xp.float32)
    if loose_counts is None:
        loose_counts = count_within(v, _model_points(model, xp), model.loose_threshold)
    diff = v - xp.asarray(laip.mean, dtype=xp.float32)[None, :]
    m2 = xp.sum((diff @ xp.asarray(laip.precision, dtype=xp.float32)) * diff, axis=1)
    gate = cd45_gate(v, model.cd45_column, model.cd45_min)
    return gate & (m2 <= laip.cutoff) & (loose_counts < model.k)


# ----------------------------------------------------------------------------- bits


def pack_flags(flags: Any) -> np.ndarray:
    """Host ``uint8`` array: one bit per event (little bit order)."""
    from ..device import to_numpy

    return np.packbits(np.asarray(to_numpy(flags), dtype=bool), bitorder="little")


def unpack_flags(bits: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_flags` for ``n`` events."""
    return np.unpackbits(np.asarray(bits, dtype=np.uint8), count=n, bitorder="little").astype(bool)


# ----------------------------------------------------------------------------- per-sample numbers


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a binomial proportion ``k / n``."""
    from scipy.stats import beta

    if n <= 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def mrd_status(mrd_events: int, cd45_events: int, *, min_cd45: int = MIN_CD45_EVENTS,
               threshold_pct: float = THRESHOLD_PCT, lod: int = LOD_EVENTS, lloq: int = LLOQ_EVENTS) -> str:
    """ELN 2021 status of a sample (see README "MRD percentage").

    1. ``positive``: at least ``lloq`` aberrant events and MRD % >= ``threshold_pct``;
    2. ``below-lloq``: at least ``lod`` (detected) but fewer than ``lloq`` aberrant events,
       at an MRD % >= ``threshold_pct`` (detected but not quantifiable);
    3. ``insufficient-events``: otherwise, when fewer than ``min_cd45`` CD45+ events were
       analysed (negativity cannot be declared);
    4. ``negative``: otherwise (nothing detected, or below the 0.1% threshold).
    """
    pct = 100.0 * mrd_events / cd45_events if cd45_events > 0 else 0.0
    if cd45_events > 0 and pct >= threshold_pct and mrd_events >= lloq:
        return "positive"
    if cd45_events > 0 and pct >= threshold_pct and mrd_events >= lod:
        return "below-lloq"
    if cd45_events < min_cd45:
        return "insufficient-events"
    return "negative"


@dataclass(frozen=True)
class MrdNumbers:
    """The per-sample MRD columns of ``scores.csv``."""

    mrd_pct: float
    mrd_pct_low: float
    mrd_pct_high: float
    mrd_events: int
    cd45_events: int
    lod_pct: float
    lloq_pct: float
    mrd_status: str
    mrd_method: str

    def record(self) -> dict[str, Any]:
        """As a dict (column name -> value)."""
        return dict(self.__dict__)


def mrd_numbers(mrd_events: int, cd45_events: int, method: str, *, min_cd45: int = MIN_CD45_EVENTS) -> MrdNumbers:
    """MRD %, its 95% Clopper-Pearson interval, LOD/LLOQ % from the events analysed, and the ELN status."""
    if method not in METHODS:
        raise ConfigError(f"MRD method must be one of {METHODS}, got {method!r}")
    n = int(cd45_events)
    lo, hi = clopper_pearson(int(mrd_events), n)
    pct = 100.0 * mrd_events / n if n > 0 else math.nan
    return MrdNumbers(mrd_pct=pct, mrd_pct_low=100 * lo, mrd_pct_high=100 * hi, mrd_events=int(mrd_events),
                      cd45_events=n, lod_pct=100.0 * LOD_EVENTS / n if n else math.nan,
                      lloq_pct=100.0 * LLOQ_EVENTS / n if n else math.nan,
                      mrd_status=mrd_status(int(mrd_events), n, min_cd45=min_cd45), mrd_method=method)


def combined_call(p_mrd: float, threshold: float, status: str) -> str:
    """Combined call of the image model's probability and the ELN MRD status.

    ``positive`` when the MRD % is positive (>= 50 aberrant events and >= 0.1%), or when
    the MRD count is inconclusive (``below-lloq`` or ``insufficient-events``) and the image
    model calls positive (``p_mrd >= threshold``); ``negative`` otherwise. A quantified
    negative MRD % is never overturned by the image model.
    """
    if status == "positive":
        return "positive"
    if status in ("below-lloq", "insufficient-events") and p_mrd is not None and not math.isnan(p_mrd) \
            and p_mrd >= threshold:
        return "positive"
    return "negative"


def normal_model_from_rows(rows: Sequence[Any], pipeline: Any, **kwargs: Any) -> NormalModel:
    """Fit the DfN model from the manifest rows labelled ``negative`` (MRD-negative follow-ups and controls).

    ``kwargs`` go to :func:`fit_normal_model`. Rows that fail to preprocess are skipped.

    Raises
    ------
    ConfigError
        No negative row could be preprocessed.
    """
    from ..errors import RescueError
    from .stages import load_events

    values, markers = [], None
    for row in rows:
        if row.label != "negative":
            continue
        try:
            ev = load_events(row.path, pipeline)
        except RescueError:
            continue
        markers = ev.markers
        values.append(np.asarray(ev.values))
    if markers is None:
        raise ConfigError("no MRD-negative or control sample could be preprocessed for the DfN model")
    return fit_normal_model(values, markers, **kwargs)


def mrd_agreement(est_pct: Any, true_pct: Any, patients: Any, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Agreement of estimated and true MRD % (``rescue evaluate --mrd-truth``, ``benchmarks/eval_mrd.py``).

    ``spearman``; ``median_abs_log10_ge_0.1``: median |log10(est / truth)| over samples with
    truth >= 0.1% (an estimate of 0 counts as 1e-6 %); ``neg_below_0.1_share``: share of
    truth-0 samples estimated below 0.1%; ``sensitivity`` / ``specificity`` of the call
    est >= 0.1% against truth >= 0.1%, with 95% intervals from ``n_boot`` patient-level
    bootstrap draws. Samples with a missing estimate or truth are left out.
    """
    from scipy.stats import spearmanr

    est = np.asarray(est_pct, dtype=np.float64)
    truth = np.asarray(true_pct, dtype=np.float64)
    pats = np.asarray(patients).astype(str)
    ok = np.isfinite(est) & np.isfinite(truth)
    est, truth, pats = est[ok], truth[ok], pats[ok]
    pos = truth >= THRESHOLD_PCT
    call = est >= THRESHOLD_PCT
    neg = truth == 0

    def sens_spec(idx: np.ndarray) -> tuple[float, float]:
        p = pos[idx]
        se = float(call[idx][p].mean()) if p.any() else math.nan
        sp = float((~call[idx][~p]).mean()) if (~p).any() else math.nan
        return se, sp

    rng = np.random.default_rng(seed)
    uniq = np.unique(pats)
    groups = [np.flatnonzero(pats == p) for p in uniq]
    boots = np.array([sens_spec(np.concatenate([groups[i] for i in rng.integers(0, len(uniq), len(uniq))]))
                      for _ in range(n_boot)]) if len(uniq) and n_boot > 0 else np.full((1, 2), math.nan)
    se, sp = sens_spec(np.arange(est.size))
    ratio = np.abs(np.log10(np.maximum(est[pos], 1e-6) / truth[pos]))

    def ci(col: int) -> list[float | None]:
        b = boots[:, col][np.isfinite(boots[:, col])]
        return [float(x) for x in np.quantile(b, [0.025, 0.975])] if b.size else [None, None]

    return {"spearman": float(spearmanr(est, truth).statistic) if est.size > 1 else math.nan,
            "median_abs_log10_ge_0.1": float(np.median(ratio)) if ratio.size else math.nan,
            "neg_below_0.1_share": float((est[neg] < THRESHOLD_PCT).mean()) if neg.any() else math.nan,
            "sensitivity": se, "sensitivity_ci": ci(0), "specificity": sp, "specificity_ci": ci(1),
            "n_samples": int(est.size), "n_truth_ge_0.1": int(pos.sum()), "n_negative": int(neg.sum()),
            "n_patients": int(uniq.size)}
