"""MRD as a number: event-level aberrancy (DfN, LAIP) and the per-sample MRD % with ELN 2021 rules.

Everything works in the *preprocessed* marker space (the columns of
:class:`rescue_gpu.preprocess.Events`), not in the 2-D UMAP.

DfN ("different from normal")
    :func:`fit_normal_model` pools the QC-kept events of normal samples (the reference's
    MRD-negative and control samples), *all* of them: CD45-negative erythroid cells and
    debris are part of normal marrow, and a model without them would call them aberrant
    once the CD45 gate no longer hides them. Half of the samples (alternating) give the
    model events, the other half calibrate it. An event is a *candidate* when its distance
    to its ``k``-th nearest model event exceeds the ``1 - candidate_rate`` quantile of the
    calibration events' distances (it lies where normal marrow is sparse). A candidate is
    flagged when its :func:`cluster_score` exceeds the model's ``cluster_threshold``: the
    sample's other candidates within ``cluster_radius``, against the sample's non-candidate
    events there plus the candidates a normal marrow of the sample's size would have there
    (from the model's own sparse points). The threshold is set on the calibration samples,
    each scored whole: by default the maximum over them of each sample's own threshold
    (the lowest at which at most ``sample_flag_rate`` = 0.02% of its events are flagged),
    with cross-fitting, so every normal sample calibrates against a model without it
    (``cluster_rule = "sample"``); a share of all calibration events pooled
    (``"pooled"``, the earlier rule) swung with which normals happened to calibrate.
    Isolated far events (doublets surviving QC, the sparse tail of normal marrow), which
    set the first rule's distance threshold (the ``1 - false_flag_rate`` distance quantile,
    still stored as ``threshold``) so high that blasts two markers away from the normal
    progenitors fell within it, score about 1; so do the edges of a normal population that
    sits a little off the model. ELN counts clustered events.
CD45 and the denominator
    ELN counts MRD among CD45-expressing leukocytes, and leukaemic blasts are CD45-*dim*
    (often below the CD45 level of maturing myeloid cells). The CD45+ gate (an Otsu split
    of the normal events' CD45) therefore only defines the normal leukocytes of the
    denominator; aberrant events are counted whatever their CD45, and are leukocytes
    themselves: denominator = CD45+ gate OR aberrant (:func:`leukocytes`). Gating the
    aberrant events by the Otsu split (the first implementation) lost most CD45-dim blasts.
LAIP (leukaemia-associated immunophenotype)
    :func:`fit_laip` takes a patient's diagnosis sample, starts from its events beyond
    normal's loose threshold (at diagnosis, where blasts dominate, those are mostly the
    leukaemic population) and refines a Gaussian (mean, regularised covariance) by trimmed
    maximum likelihood over *all* the diagnosis events: repeatedly the events inside the
    ``fit_quantile`` Mahalanobis ellipsoid are refitted, with the covariance corrected for
    the trimming (the consistency factor of a chi-square-truncated normal). The starting
    set alone is truncated where the leukaemic cloud meets normal marrow, which biased the
    mean away from normal and shrank the covariance. :func:`laip_flags` flags a follow-up
    sample's events inside the ``laip_quantile`` Mahalanobis ellipsoid of that Gaussian
    that are also outside the bulk of normal marrow (``k``-NN distance above the model's
    loose threshold, the ``1 - loose_rate`` quantile); the neighbour count is computed for
    the events inside the ellipsoid only. A LAIP whose ellipsoid holds more than
    :data:`MAX_LAIP_NORMAL_SHARE` of the normal model's events is not tracked
    (:func:`laip_refusal`): when the marker that defines it is not in the panel, the
    trimmed fit follows a broad cloud of normal cells, whose sparse edge it would count in
    every follow-up.
Excess populations (the second DfN criterion)
    Blasts whose LAIP lies on a marker the panel lacks sit on normal progenitors: normal
    marrow has events there, so few of them are candidates and the cluster score divides
    those by the rest. They are many, though: :func:`excess_flags` flags the events where
    the sample is at least ``excess_ratio`` (10) times denser than normal marrow within
    ``excess_radius`` (2 x ``cluster_radius``), once they are ``excess_share`` (2%, raised
    above what the model's own normals reach) of the sample's events. This catches frank
    disease (a population about ten times the normal progenitors' share or more), not
    low-level MRD on normal progenitors; regenerating marrow (progenitors up to a few times
    their share) stays below it.

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

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ReferenceDataError
from ..xp import astype as _astype
from ..xp import namespace

__all__ = ["NormalModel", "LaipModel", "fit_normal_model", "knn_distance", "count_within", "cluster_score", "fewer_within", "mahalanobis2", "cd45_gate", "leukocytes", "dfn_flags", "dfn_parts", "dfn_scores", "density_ratio", "excess_fraction", "excess_flags", "flags_above", "check_excess_rule", "fit_laip", "laip_refusal", "MAX_LAIP_NORMAL_SHARE",
           "laip_flags", "pack_flags", "unpack_flags", "MrdNumbers", "mrd_numbers", "mrd_status", "combined_call",
           "clopper_pearson", "otsu_threshold", "normal_model_from_rows", "own_threshold", "CLUSTER_RULES", "mrd_agreement", "LOD_EVENTS", "LLOQ_EVENTS", "MIN_CD45_EVENTS", "THRESHOLD_PCT", "EXCESS_RATIO", "EXCESS_SHARE",
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
#: /2: all normal events are modelled (a /1 model holds CD45+ events only and must be rebuilt).
#: /3: DfN flags clusters (the cluster score's sparse points and thresholds are stored; /2 must be rebuilt).
#: /4: the cluster threshold's rule is stored (``cluster_rule``, per-sample thresholds, cross-fitting);
#: a /3 model still loads, as the ``pooled`` rule without cross-fitting it was built with.
#: /5: the excess-population rule is stored (``excess_*``); a /3 or /4 model loads without it (as built).
_FORMAT = "rescue-mrd-normal/5"
_READABLE = ("rescue-mrd-normal/3", "rescue-mrd-normal/4", _FORMAT)
#: How the cluster threshold is set on the calibration samples (:func:`fit_normal_model`).
CLUSTER_RULES = ("sample", "pooled")
#: Non-candidate events of a sample the cluster score counts (a strided subsample beyond this).
_OTHERS = 8192
#: Excess rule: a sample's events that stand for its density (a strided subsample beyond this) ...
_EXCESS_DENSITY = 8192
#: ... and the events whose density ratio screens the sample (all events are scored only when it trips).
_EXCESS_SCREEN = 2048
#: Default excess rule: events where the sample is >= EXCESS_RATIO times denser than normal marrow
#: (within ``2 * cluster_radius``) are aberrant when they are >= EXCESS_SHARE of the sample's events.
EXCESS_RATIO = 10.0
EXCESS_SHARE = 0.02
#: A LAIP whose ellipsoid holds more than this share of normal marrow's events is not tracked (:func:`laip_refusal`).
MAX_LAIP_NORMAL_SHARE = 0.05


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
    n, d = int(q.shape[0]), int(q.shape[1])
    # |q - p|^2 <= r^2  <=>  q.p - |p|^2 / 2 >= (|q|^2 - r^2) / 2: the |p|^2 term rides in the GEMM as an
    # extra column (points [p, -|p|^2/2], queries [q, 1]), so each chunk is one GEMM and one comparison
    pa = xp.empty((int(p.shape[0]), d + 1), dtype=xp.float32)
    pa[:, :d] = p
    pa[:, d] = -0.5 * xp.sum(p * p, axis=1)
    r2 = float(radius) ** 2
    out = xp.empty((n,), dtype=xp.int32)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        qa = xp.ones((e - s, d + 1), dtype=xp.float32)
        qa[:, :d] = q[s:e, :]
        limit = 0.5 * (xp.sum(q[s:e, :] * q[s:e, :], axis=1) - r2)
        out[s:e] = _astype(xp.count_nonzero((qa @ pa.T) >= limit[:, None], axis=1), xp.int32, xp)
    return out


def cd45_gate(values: Any, column: int, low: float) -> Any:
    """Boolean mask of the CD45+ events (``values[:, column] >= low``)."""
    return values[:, column] >= low


def leukocytes(gate: Any, *aberrant: Any) -> Any:
    """The denominator's events: the CD45+ ``gate`` OR any of the ``aberrant`` masks.

    Aberrant (leukaemic) events are leukocytes whatever their CD45 level: CD45-dim blasts
    below the CD45+ split still count, in the numerator and in the denominator.
    """
    out = gate
    for a in aberrant:
        out = out | a
    return out


def _filled(n: int, value: bool, xp: Any) -> Any:
    """A boolean vector of ``n`` copies of ``value`` (by comparison: older cupy has no ``xp.bool``)."""
    zeros = xp.zeros((n,), dtype=xp.int32)
    return zeros == 0 if value else zeros != 0


def fewer_within(queries: Any, points: Any, radius: float, k: int, *, screen: int = 16, chunk: int = 4096) -> Any:
    """Boolean per query: fewer than ``k`` rows of ``points`` within Euclidean ``radius``.

    Exactly ``count_within(queries, points, radius) < k``, computed in passes: every query
    is counted against every ``screen``-th point (a subset can only have fewer neighbours,
    so a query with ``k`` of them is settled as not sparse), the queries left against
    every ``screen / 4``-th point, and so on down to all points. Events in dense normal
    regions, nearly all of them, cost ``1 / screen`` of the full count; those near the
    edge of normal (a small radius) are mostly settled by the intermediate passes.
    """
    xp = namespace(queries, points)
    q = xp.asarray(queries, dtype=xp.float32)
    p = xp.asarray(points, dtype=xp.float32)
    if not (screen > 1 and p.shape[0] >= screen * k):
        return count_within(q, p, radius, chunk=chunk) < k
    sparse = count_within(q, p[::screen, :], radius, chunk=chunk) < k
    idx = xp.nonzero(sparse)[0]
    if int(idx.shape[0]) == 0:
        return sparse
    out = _filled(q.shape[0], False, xp)
    out[sparse] = fewer_within(xp.take(q, idx, axis=0), p, radius, k, screen=screen // 4, chunk=chunk)
    return out


def cluster_score(candidates: Any, others: Any, sparse_points: Any, radius: float, *, n_events: int,
                  n_points: int, others_weight: float = 1.0, chunk: int = 4096) -> Any:
    """Density ratio of a sample's candidate events against what normal marrow puts there, per candidate (float32).

    ``a`` = other ``candidates`` (the sample's events in sparse normal regions) within
    Euclidean ``radius``; ``c`` = the sample's non-candidate events within ``radius``
    (``others``, a subsample of them standing for ``others_weight`` events each); ``lam``
    = ``sparse_points`` (the model events that are themselves in sparse normal regions)
    within ``radius``, times ``n_events / n_points``: the candidates a normal marrow of the
    sample's size would have there. The score is ``(a + 1) / (others_weight * c + lam + 1)``:
    large only for a cluster of candidates that neither normal marrow nor the sample's own
    normal populations reach (leukaemic blasts); about 1 or less for isolated events
    (doublets, the normal tail) and for the edges of a normal population that sits a little
    off the model (instrument, patient), whose candidates are surrounded by the
    population's other events.
    """
    xp = namespace(candidates)
    c = xp.asarray(candidates, dtype=xp.float32)

    def count(points: Any) -> Any:
        if int(points.shape[0]) == 0:
            return xp.zeros((c.shape[0],), dtype=xp.float32)
        return _astype(count_within(c, xp.asarray(points, dtype=xp.float32), radius, chunk=chunk), xp.float32, xp)

    a = count(c) - 1.0  # each candidate counts itself
    lam = count(sparse_points) * (float(n_events) / float(n_points))
    return (a + 1.0) / (count(others) * float(others_weight) + lam + 1.0)


def mahalanobis2(values: Any, mean: np.ndarray, precision: np.ndarray) -> Any:
    """Squared Mahalanobis distance of each row of ``values`` (float32, same array module)."""
    xp = namespace(values)
    v = xp.asarray(values, dtype=xp.float32)
    diff = v - xp.asarray(np.asarray(mean, dtype=np.float32))[None, :]
    return xp.sum((diff @ xp.asarray(np.asarray(precision, dtype=np.float32))) * diff, axis=1)


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
        ``(m, d)`` float32 normal events the distances are measured to (all CD45 levels).
    sparse_points
        The rows of ``points`` in sparse normal regions: fewer than ``k`` *other* model
        points within ``candidate_threshold`` (the cluster score's normal counterpart).
    markers
        Column names (must equal the sample's preprocessed markers).
    cd45_column, cd45_min
        Column of CD45 and the CD45+ gate's lower bound.
    k
        Neighbour rank of the distances.
    threshold
        The ``1 - false_flag_rate`` quantile of calibration events' ``k``-NN distance (the
        first DfN rule's threshold; reported, no longer used to flag).
    candidate_threshold, candidate_rate
        An event is a DfN candidate when its ``k``-NN distance exceeds ``candidate_threshold``,
        the ``1 - candidate_rate`` quantile of the calibration events' distances.
    cluster_radius
        Radius of the cluster score (:func:`cluster_score`).
    cluster_threshold, false_flag_rate
        A candidate is DfN-aberrant when its cluster score exceeds ``cluster_threshold``,
        set on the calibration samples by ``cluster_rule`` (``pooled``: a share
        ``false_flag_rate`` of their events together is flagged).
    loose_threshold, loose_rate
        The LAIP tracking's lower threshold and its share of calibration events.
    n_samples, n_calibration
        Normal samples pooled; calibration events.
    cluster_rule, sample_flag_rate, sample_quantile, cross_fit, sample_thresholds
        The threshold's rule (:data:`CLUSTER_RULES`); ``sample``: the ``sample_quantile`` of the
        calibration samples' own thresholds (``sample_thresholds``, each the lowest at which at
        most ``sample_flag_rate`` of that sample's events are flagged); ``cross_fit``: every
        normal sample calibrated against a model that does not contain it. A /3 model loads as
        ``pooled`` without cross-fitting.
    preprocess_fingerprint
        The panel and preprocessing the points were made with
        (:func:`~rescue_gpu.preprocess.preprocess_fingerprint`; ``""`` when not recorded, e.g.
        a model fitted from arrays or saved before it was recorded); scoring refuses a model
        whose fingerprint differs from the pipeline's (:meth:`check_preprocessing`).
    """

    points: np.ndarray
    sparse_points: np.ndarray
    markers: tuple[str, ...]
    cd45_column: int
    cd45_min: float
    k: int
    threshold: float
    candidate_threshold: float
    candidate_rate: float
    cluster_radius: float
    cluster_threshold: float
    false_flag_rate: float
    loose_threshold: float
    loose_rate: float
    n_samples: int
    n_calibration: int
    cluster_rule: str = "pooled"
    sample_flag_rate: float = 2e-4
    sample_quantile: float = 1.0
    cross_fit: bool = False
    sample_thresholds: tuple[float, ...] = ()
    excess_radius: float = 0.0
    excess_ratio: float = EXCESS_RATIO
    excess_share: float = EXCESS_SHARE
    excess_shares: tuple[float, ...] = ()
    preprocess_fingerprint: str = ""

    @property
    def excess(self) -> bool:
        """Whether the excess-population rule is on (a /3 or /4 model, or one built without it: off)."""
        return self.excess_radius > 0

    def meta(self) -> dict[str, Any]:
        """The JSON-ready settings (without the points)."""
        return {"format": _FORMAT, "markers": list(self.markers), "cd45_column": self.cd45_column,
                "cd45_min": self.cd45_min, "k": self.k, "threshold": self.threshold,
                "candidate_threshold": self.candidate_threshold, "candidate_rate": self.candidate_rate,
                "cluster_radius": self.cluster_radius, "cluster_threshold": self.cluster_threshold,
                "false_flag_rate": self.false_flag_rate, "loose_threshold": self.loose_threshold,
                "loose_rate": self.loose_rate, "n_samples": self.n_samples, "n_calibration": self.n_calibration,
                "cluster_rule": self.cluster_rule, "sample_flag_rate": self.sample_flag_rate,
                "sample_quantile": self.sample_quantile, "cross_fit": self.cross_fit,
                "sample_thresholds": list(self.sample_thresholds), "excess_radius": self.excess_radius,
                "excess_ratio": self.excess_ratio, "excess_share": self.excess_share,
                "excess_shares": list(self.excess_shares), "preprocess_fingerprint": self.preprocess_fingerprint}

    def save(self, directory: str | Path) -> Path:
        """Write ``normal.npz`` and ``normal.json`` (with the npz's sha256) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        npz = d / "normal.npz"
        with open(npz, "wb") as fh:
            np.savez(fh, points=np.ascontiguousarray(self.points, dtype=np.float32),
                     sparse_points=np.ascontiguousarray(self.sparse_points, dtype=np.float32))
        meta = {**self.meta(), "sha256": hashlib.sha256(npz.read_bytes()).hexdigest()}
        (d / "normal.json").write_text(json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> NormalModel:
        """Read a saved model, checking its checksum.

        Raises
        ------
        ReferenceDataError
            Missing files, another format (an older version: rebuild it with
            ``rescue mrd build-normal``), a points file whose sha256 differs, or (a /5
            model) excess-rule settings that are missing or that no fit writes
            (``excess_radius`` < 0, ``excess_ratio`` <= 1, ``excess_share`` <= 0).

        Warns
        -----
        RecordFormatWarning
            A ``/3`` or ``/4`` model: it loads as built, without the excess-population rule.
        """
        d = Path(directory)
        try:
            meta = json.loads((d / "normal.json").read_text())
            raw = (d / "normal.npz").read_bytes()
        except (OSError, ValueError) as exc:
            raise ReferenceDataError(f"{d}: no readable DfN normal model ({exc}); build it with "
                                     "rescue mrd build-normal") from exc
        if meta.get("format") not in _READABLE:
            raise ReferenceDataError(f"{d}: not a current DfN normal model (format {meta.get('format')!r}, "
                                     f"expected {_FORMAT!r}); rebuild it with rescue mrd build-normal")
        if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            raise ReferenceDataError(f"{d}/normal.npz: checksum differs from normal.json; the model is damaged, "
                                     "rebuild it with rescue mrd build-normal")
        with np.load(d / "normal.npz") as z:
            points = np.asarray(z["points"], dtype=np.float32)
            sparse = np.asarray(z["sparse_points"], dtype=np.float32)
        floats = ("cd45_min", "threshold", "candidate_threshold", "candidate_rate", "cluster_radius",
                  "cluster_threshold", "false_flag_rate", "loose_threshold", "loose_rate")
        rule = {} if meta["format"] == "rescue-mrd-normal/3" else {
            "cluster_rule": str(meta["cluster_rule"]), "sample_flag_rate": float(meta["sample_flag_rate"]),
            "sample_quantile": float(meta["sample_quantile"]), "cross_fit": bool(meta["cross_fit"]),
            "sample_thresholds": tuple(float(t) for t in meta["sample_thresholds"])}
        if meta["format"] != _FORMAT:
            from ..artifacts import RecordFormatWarning

            warnings.warn(f"{d}: a {meta['format']} DfN model has no excess-population rule, so blasts that lie on "
                          "normal progenitors are not counted; rebuild it with rescue mrd build-normal to get it",
                          RecordFormatWarning, stacklevel=2)
        else:
            try:
                rule.update(excess_radius=float(meta["excess_radius"]), excess_ratio=float(meta["excess_ratio"]),
                            excess_share=float(meta["excess_share"]),
                            excess_shares=tuple(float(x) for x in meta["excess_shares"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ReferenceDataError(f"{d}/normal.json: the excess rule's settings are missing or damaged "
                                         f"({exc!r}); rebuild the model with rescue mrd build-normal") from exc
            radius, ratio, share = rule["excess_radius"], rule["excess_ratio"], rule["excess_share"]
            # off (radius 0), or a rule fit_normal_model can write (its share may be raised to 1 or more)
            if not (radius == 0 or (radius > 0 and ratio > 1 and share > 0)):
                raise ReferenceDataError(f"{d}/normal.json: damaged excess rule (excess_radius {radius}, excess_ratio "
                                         f"{ratio}, excess_share {share}); rebuild the model with rescue mrd "
                                         "build-normal")
        return cls(points=points, sparse_points=sparse, markers=tuple(meta["markers"]),
                   cd45_column=int(meta["cd45_column"]), k=int(meta["k"]), n_samples=int(meta["n_samples"]),
                   n_calibration=int(meta["n_calibration"]), **{f: float(meta[f]) for f in floats}, **rule,
                   preprocess_fingerprint=str(meta.get("preprocess_fingerprint") or ""))

    def check_markers(self, markers: Sequence[str]) -> None:
        """Raise :class:`ConfigError` unless ``markers`` are the model's columns."""
        if tuple(markers) != self.markers:
            raise ConfigError(f"the sample's markers {tuple(markers)} differ from the DfN model's {self.markers}; "
                              "preprocess with the pipeline the model was built with")

    def check_preprocessing(self, fingerprint: str, *, where: str = "the DfN model") -> None:
        """Raise :class:`ConfigError` when the model records a preprocessing fingerprint other than ``fingerprint``."""
        if self.preprocess_fingerprint and fingerprint and self.preprocess_fingerprint != fingerprint:
            raise ConfigError(f"{where} was built with other panel or preprocessing settings than the pipeline the "
                              "samples are scored with (preprocessing fingerprints differ), so its distances do not "
                              "apply to them; rebuild it with rescue mrd build-normal MANIFEST --reference REF_DIR "
                              "(the reference you score with)")


def _split(arrays: list[np.ndarray], rng: np.random.Generator,
           kinds: Sequence[str] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Model and calibration samples, alternating within each kind; one sample is split by events.

    The samples are grouped by kind (in order of first appearance, each group in the given
    order) and the grouped sequence alternates model, calibration, model, ...; the
    alternation carries over from one group to the next, so each kind with at least two
    samples lands on both sides and the halves differ by at most one sample. Without
    ``kinds`` (one kind) this is even-indexed samples to the model, odd-indexed ones to the
    calibration.
    """
    if len(arrays) >= 2:
        order = list(range(len(arrays)))
        if kinds is not None:
            first = {kind: i for i, kind in reversed(list(enumerate(kinds)))}
            order.sort(key=lambda i: first[kinds[i]])  # stable: each kind keeps its order
        return [arrays[i] for i in order[0::2]], [arrays[i] for i in order[1::2]]
    perm = rng.permutation(len(arrays[0]))
    half = len(perm) // 2
    return [arrays[0][perm[:half]]], [arrays[0][perm[half:]]]


def _sparse_points(points: np.ndarray, radius: float, k: int) -> np.ndarray:
    """The model points with fewer than ``k`` other model points within ``radius`` (leave-one-out)."""
    return points[np.asarray(fewer_within(points, points, radius, k + 1), dtype=bool)]


def own_threshold(scores: np.ndarray, n_events: int, rate: float) -> float:
    """The lowest cluster threshold at which at most ``floor(rate * n_events)`` of ``scores`` exceed it.

    ``scores`` are the candidates' cluster scores of ``n_events`` events (non-candidates
    score 0 and are never flagged); 0.0 when there are no more candidates than allowed.
    """
    cand = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    allowed = int(math.floor(rate * n_events))
    if cand.size <= allowed:
        return 0.0  # fewer candidates than the rate allows: flagging every candidate stays within it
    return float(cand[allowed])


def _calibration_scores(model: NormalModel, calibration: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each calibration sample's candidates' cluster scores, the sample scored as a whole (as :func:`dfn_flags` does)."""
    return [np.asarray(dfn_scores(model, c)[1], dtype=np.float64) for c in calibration]


def _cluster_threshold(scores: Sequence[np.ndarray], sizes: Sequence[int], *, rule: str, false_flag_rate: float,
                       sample_flag_rate: float, sample_quantile: float) -> tuple[float, list[float]]:
    """``(cluster_threshold, per-sample thresholds)`` from the calibration samples' scores (see :data:`CLUSTER_RULES`).

    ``pooled``: the threshold flagging a share ``false_flag_rate`` of all calibration events
    together. ``sample``: each sample's :func:`own_threshold` at ``sample_flag_rate``, then
    their ``sample_quantile`` (1.0: the maximum, so that no calibration sample has more than
    that share flagged). The per-sample thresholds are returned under both rules.
    """
    own = [own_threshold(sc, n, sample_flag_rate) for sc, n in zip(scores, sizes)]
    if rule == "sample":
        return (float(np.quantile(own, sample_quantile)) if own else 0.0), own
    pooled = np.concatenate(list(scores)) if scores else np.zeros(0)
    return own_threshold(pooled, int(sum(sizes)), false_flag_rate), own


def _distance_model(fit_parts: Sequence[np.ndarray], cal_parts: Sequence[np.ndarray], markers: tuple[str, ...], *,
                    col: int, cd45_min: float, k: int, max_points: int, max_calibration: int, false_flag_rate: float,
                    candidate_rate: float, cluster_radius: float, loose_rate: float, n_samples: int,
                    rng: np.random.Generator) -> NormalModel:
    """A model of the ``fit_parts`` events with distance thresholds from the ``cal_parts`` events (cluster threshold 0)."""
    fit, cal = np.concatenate(fit_parts), np.concatenate(cal_parts)
    if len(fit) > max_points:
        fit = fit[rng.choice(len(fit), max_points, replace=False)]
    if len(cal) > max_calibration:
        cal = cal[rng.choice(len(cal), max_calibration, replace=False)]
    if len(fit) <= k or len(cal) == 0:
        raise ConfigError(f"too few normal events for the DfN model ({len(fit)} model, {len(cal)} calibration)")
    dist = np.asarray(knn_distance(cal, fit, k), dtype=np.float64)
    candidate = float(np.quantile(dist, 1.0 - candidate_rate))
    return NormalModel(points=fit, sparse_points=_sparse_points(fit, candidate, k), markers=markers,
                       cd45_column=col, cd45_min=cd45_min, k=k,
                       threshold=float(np.quantile(dist, 1.0 - false_flag_rate)), candidate_threshold=candidate,
                       candidate_rate=candidate_rate, cluster_radius=float(cluster_radius), cluster_threshold=0.0,
                       false_flag_rate=false_flag_rate, loose_threshold=float(np.quantile(dist, 1.0 - loose_rate)),
                       loose_rate=loose_rate, n_samples=n_samples, n_calibration=int(len(cal)))


def check_excess_rule(ratio: float, share: float, radius: float | None = None) -> None:
    """Raise :class:`ConfigError` unless ``1 < ratio < inf``, ``0 < share < 1`` and ``radius``
    (when given) ``0 < radius < inf``: an infinite ratio or radius is a rule that never flags."""
    bad = [f"excess_ratio must be a finite number > 1, got {ratio}"] if not 1 < ratio < math.inf else []
    if not 0 < share < 1:
        bad.append(f"excess_share must be in (0, 1), got {share}")
    if radius is not None and not 0 < radius < math.inf:
        bad.append(f"excess_radius must be a finite number > 0, got {radius}")
    if bad:
        raise ConfigError("the excess rule: " + "; ".join(bad) + " (or turn the rule off: --no-excess)")


def fit_normal_model(
    samples: Sequence[np.ndarray],
    markers: Sequence[str],
    *,
    cd45: str = "CD45",
    k: int = 5,
    max_points: int = 20000,
    max_calibration: int = 200_000,
    false_flag_rate: float = 1e-4,
    candidate_rate: float = 0.005,
    cluster_radius: float = 0.2,
    loose_rate: float = 0.003,
    seed: int = 0,
    kinds: Sequence[str] | None = None,
    cluster_rule: str = "sample",
    sample_flag_rate: float = 2e-4,
    sample_quantile: float = 1.0,
    cross_fit: bool = True,
    excess: bool = True,
    excess_radius: float | None = None,
    excess_ratio: float = EXCESS_RATIO,
    excess_share: float = EXCESS_SHARE,
) -> NormalModel:
    """Fit the DfN model from normal samples' preprocessed events (host arrays).

    All QC-kept events are modelled (CD45-negative ones included); ``cd45_min`` (Otsu
    split of CD45) only defines the denominator's CD45+ gate. Half the samples give up to
    ``max_points`` model events, the other half the calibration (a single sample is split
    by events instead). ``kinds`` (one per sample, e.g. the manifest's timepoint: control
    vs MRD-negative follow-up) stratifies that split: the samples alternate model /
    calibration within each kind, so that a regenerating follow-up marrow, say, is on both
    sides whatever the samples' order; without it even-indexed samples are the model and
    odd-indexed ones the calibration. The distance thresholds are quantiles of the ``k``-NN
    distance of at most ``max_calibration`` calibration events drawn at random; the
    cluster threshold is set on the calibration samples scored whole, each as a sample
    would be (:func:`dfn_flags`), by ``cluster_rule`` (:data:`CLUSTER_RULES`):
    ``"sample"`` (default) takes each calibration sample's own threshold (the lowest at
    which at most ``sample_flag_rate`` of its events are flagged) and their
    ``sample_quantile`` (1.0, the maximum); ``"pooled"`` flags a share ``false_flag_rate``
    of all calibration events together (the /3 rule, whose threshold swung with which
    normals happened to calibrate). With ``cross_fit`` (default) a second model is fitted
    on the calibration half and scores the model half, so every normal sample calibrates
    against a model that does not contain it; the model kept is the first one.

    With ``excess`` (default) the model also flags excess populations (:func:`excess_flags`):
    events where a sample is at least ``excess_ratio`` times denser than normal marrow
    within ``excess_radius`` (default ``2 * cluster_radius``), once they are a share
    ``excess_share`` of its events. Each calibration sample's share (:func:`excess_fraction`,
    cross-fitted like the cluster threshold) is stored as ``excess_shares``; the share
    kept is ``max(excess_share, 2 * max(excess_shares))``, so no normal sample of the
    model comes within a factor of two of it.

    Raises
    ------
    ConfigError
        No CD45 column, too few events, rates outside (0, 1), a radius <= 0, ``kinds``
        not one per sample, an unknown ``cluster_rule``, a ``sample_quantile`` outside [0, 1],
        an infinite ``excess_ratio`` or one <= 1, an ``excess_share`` outside (0, 1) or an
        ``excess_radius`` <= 0 or infinite.

    Warns
    -----
    UserWarning
        When a normal sample's own excess share makes the kept share 1 or more: the rule
        can then flag nothing, and that normal holds a population ``excess_ratio`` times
        denser than the others' (check it, or fit with ``excess=False``).
    """
    markers = tuple(markers)
    if excess:
        check_excess_rule(excess_ratio, excess_share, excess_radius)
    if cd45 not in markers:
        raise ConfigError(f"the DfN model needs a {cd45!r} column; markers are {markers}")
    if not all(0 < r < 1 for r in (false_flag_rate, loose_rate, candidate_rate, sample_flag_rate)):
        raise ConfigError("false_flag_rate, sample_flag_rate, candidate_rate and loose_rate must be in (0, 1)")
    if cluster_rule not in CLUSTER_RULES:
        raise ConfigError(f"cluster_rule must be one of {CLUSTER_RULES}, got {cluster_rule!r}")
    if not 0.0 <= sample_quantile <= 1.0:
        raise ConfigError(f"sample_quantile must be in [0, 1], got {sample_quantile}")
    if not cluster_radius > 0:
        raise ConfigError(f"cluster_radius must be > 0, got {cluster_radius}")
    if kinds is not None:
        kinds = [str(kind) for kind in kinds]
        if len(kinds) != len(samples):
            raise ConfigError(f"kinds must give one kind per normal sample: {len(kinds)} kinds, "
                              f"{len(samples)} samples")
        kinds = [kind for kind, s in zip(kinds, samples) if len(s)]
    arrays = [np.asarray(s, dtype=np.float32) for s in samples if len(s)]
    if not arrays:
        raise ConfigError("no normal events to fit the DfN model")
    col = markers.index(cd45)
    cd45_min = otsu_threshold(np.concatenate([a[:, col] for a in arrays]))
    rng = np.random.default_rng(seed)
    fit_parts, cal_parts = _split(arrays, rng, kinds)
    opts = dict(col=col, cd45_min=cd45_min, k=k, max_points=max_points, max_calibration=max_calibration,
                false_flag_rate=false_flag_rate, candidate_rate=candidate_rate, cluster_radius=cluster_radius,
                loose_rate=loose_rate, n_samples=len(arrays))
    radius = (2.0 * cluster_radius if excess_radius is None else float(excess_radius)) if excess else 0.0
    rule = dict(excess_radius=radius, excess_ratio=float(excess_ratio), excess_share=float(excess_share))
    model = dataclasses.replace(_distance_model(fit_parts, cal_parts, markers, rng=rng, **opts), **rule)
    scores, sizes = _calibration_scores(model, cal_parts), [len(c) for c in cal_parts]
    shares = [excess_fraction(model, c) for c in cal_parts]
    if cross_fit:
        mirror = dataclasses.replace(_distance_model(cal_parts, fit_parts, markers,
                                                     rng=np.random.default_rng([seed, 1]), **opts), **rule)
        scores, sizes = scores + _calibration_scores(mirror, fit_parts), sizes + [len(c) for c in fit_parts]
        shares += [excess_fraction(mirror, c) for c in fit_parts]
    threshold, own = _cluster_threshold(scores, sizes, rule=cluster_rule, false_flag_rate=false_flag_rate,
                                        sample_flag_rate=sample_flag_rate, sample_quantile=sample_quantile)
    kept_share = max(float(excess_share), 2.0 * max(shares, default=0.0))  # excess_share if off (shares all 0)
    if excess and kept_share >= 1.0:
        warnings.warn(f"a normal sample's own excess share is {max(shares):.3g}, so the excess rule's share is "
                      f"{kept_share:.3g} and the rule can flag nothing: that normal holds a population "
                      f"{excess_ratio:g} times denser than the other normals'; check it (or leave the rule off)",
                      UserWarning, stacklevel=2)
    return dataclasses.replace(model, cluster_threshold=threshold, cluster_rule=cluster_rule,
                               sample_flag_rate=sample_flag_rate, sample_quantile=sample_quantile,
                               cross_fit=bool(cross_fit), sample_thresholds=tuple(own),
                               excess_share=kept_share, excess_shares=tuple(shares) if excess else ())


def _model_points(model: NormalModel, xp: Any) -> Any:
    return xp.asarray(model.points)


def dfn_scores(model: NormalModel, values: Any) -> tuple[Any, Any]:
    """``(candidates, scores)``: the candidate mask (``k``-NN distance beyond ``candidate_threshold``)
    and the candidates' :func:`cluster_score` (in the order of the candidates)."""
    xp = namespace(values)
    v = xp.asarray(values, dtype=xp.float32)
    cand = fewer_within(v, _model_points(model, xp), model.candidate_threshold, model.k)
    idx = xp.nonzero(cand)[0]
    if int(idx.shape[0]) == 0:
        return cand, xp.zeros((0,), dtype=xp.float32)
    rest = xp.nonzero(~cand)[0]
    n_rest = int(rest.shape[0])
    stride = max(1, -(-n_rest // _OTHERS))  # ceil: at most _OTHERS non-candidates stand for all of them
    sub = rest[::stride]
    weight = n_rest / max(int(sub.shape[0]), 1)
    scores = cluster_score(xp.take(v, idx, axis=0), xp.take(v, sub, axis=0), xp.asarray(model.sparse_points),
                           model.cluster_radius, n_events=int(v.shape[0]), n_points=int(model.points.shape[0]),
                           others_weight=weight)
    return cand, scores


def dfn_parts(model: NormalModel, values: Any) -> tuple[Any, Any, Any]:
    """``(cluster, excess, cd45)`` boolean per event: the two DfN criteria and the CD45+ gate.

    ``cluster``: a candidate (fewer than ``k`` normal points within
    ``model.candidate_threshold``) whose :func:`cluster_score` among the sample's
    candidates exceeds ``model.cluster_threshold``: it lies in a cluster of the sample
    that normal marrow is much sparser at. Isolated far events (doublets surviving QC, the
    sparse tail of normal marrow) are not flagged; ELN counts clustered events.
    ``excess``: :func:`excess_flags`, a large population where normal marrow has events
    too, but far fewer (blasts on the normal progenitors).
    """
    gate = cd45_gate(values, model.cd45_column, model.cd45_min)
    cand, scores = dfn_scores(model, values)
    return flags_above(cand, scores, model.cluster_threshold), excess_flags(model, values), gate


def dfn_flags(model: NormalModel, values: Any) -> tuple[Any, Any]:
    """``(flags, cd45)`` boolean per event: DfN-aberrant events (any CD45), and the CD45+ gate.

    An event is DfN-aberrant when either criterion of :func:`dfn_parts` flags it. The MRD
    denominator is :func:`leukocytes` of the gate and the aberrant masks.
    """
    cluster, excess, gate = dfn_parts(model, values)
    return cluster | excess, gate


def density_ratio(queries: Any, sample_points: Any, model_points: Any, radius: float) -> Any:
    """Per query (float32): the sample's density within ``radius`` over normal marrow's.

    Each density is the share of its points within ``radius`` of the query, with a
    pseudo-count added to each count: one to the sample's, and to normal marrow's as many
    model points as one sample point stands for (``max(1, m / n)`` for ``m`` model and
    ``n`` sample points). So a query no normal point reaches has a finite ratio, and an
    isolated event's stays at most 2 whatever the sizes (with a pseudo-point of 1 on both
    sides it was ``2 m / n``: a sample of fewer than ``m / 5`` events, or a model of more
    than 5 times ``n`` points, counted scattered debris as an excess population).
    """
    xp = namespace(queries)
    ns, nm = float(sample_points.shape[0]), float(model_points.shape[0])
    cs = _astype(count_within(queries, sample_points, radius), xp.float32, xp)
    cm = _astype(count_within(queries, model_points, radius), xp.float32, xp)
    return ((cs + 1.0) / ns) / ((cm + max(1.0, nm / ns)) / nm)


def _strided(values: Any, at_most: int) -> Any:
    """Every ``ceil(n / at_most)``-th row of ``values`` (all of them when there are at most ``at_most``)."""
    return values[::max(1, -(-int(values.shape[0]) // at_most)), :]


def _excess_inputs(model: NormalModel, values: Any) -> tuple[Any, Any, Any, Any]:
    """``(values, density points, model points, xp)``: the sample as float32, the strided subsample that
    stands for its density, and the normal model's points on the same device (moved once per sample)."""
    xp = namespace(values)
    v = xp.asarray(values, dtype=xp.float32)
    return v, _strided(v, _EXCESS_DENSITY), _model_points(model, xp), xp


def _in_excess(model: NormalModel, queries: Any, density: Any, points: Any) -> Any:
    """Boolean per query: the sample is at least ``model.excess_ratio`` times denser than normal marrow."""
    return density_ratio(queries, density, points, model.excess_radius) >= model.excess_ratio


def excess_fraction(model: NormalModel, values: Any) -> float:
    """Share of a sample's events (screened on a strided subsample) in excess of normal marrow.

    An event is in excess when the sample is at least ``model.excess_ratio`` times denser
    than normal marrow within ``model.excess_radius`` (:func:`density_ratio`; the sample's
    density from a strided subsample of its events). 0.0 when the rule is off.
    """
    if not model.excess or int(values.shape[0]) == 0:
        return 0.0
    v, density, points, xp = _excess_inputs(model, values)
    return float(xp.mean(_astype(_in_excess(model, _strided(v, _EXCESS_SCREEN), density, points), xp.float32, xp)))


def excess_flags(model: NormalModel, values: Any) -> Any:
    """Boolean per event: a member of an excess population (the second DfN criterion).

    Leukaemic blasts that lie on normal progenitors (a LAIP on a marker the panel lacks)
    are not candidates of the cluster criterion: normal marrow has events there. They are
    many more, though: an event is flagged when the sample is at least
    ``model.excess_ratio`` times denser than normal marrow around it (within
    ``model.excess_radius``) and such events are at least ``model.excess_share`` of the
    sample's events (screened on a strided subsample as :func:`excess_fraction` does, then
    every event scored). The share is set when the model is fitted, above what its own
    normal samples reach, cross-fitted (:func:`fit_normal_model`). All False when the rule
    is off (a /3 or /4 model).
    """
    n = int(values.shape[0])
    off = _filled(n, False, namespace(values))
    if not model.excess or n == 0:
        return off
    v, density, points, xp = _excess_inputs(model, values)
    screen = _in_excess(model, _strided(v, _EXCESS_SCREEN), density, points)
    if float(xp.mean(_astype(screen, xp.float32, xp))) < model.excess_share:
        return off
    flags = _in_excess(model, v, density, points)
    return flags if int(xp.sum(_astype(flags, xp.int32, xp))) >= model.excess_share * n else off


def flags_above(candidates: Any, scores: Any, threshold: float) -> Any:
    """Boolean per event: a candidate (:func:`dfn_scores`) whose cluster score exceeds ``threshold``.

    One scoring serves any number of thresholds (``benchmarks/eval_mrd.py`` compares rules this way).
    """
    xp = namespace(candidates)
    flags = _filled(int(candidates.shape[0]), False, xp)
    if int(scores.shape[0]):
        flags[candidates] = scores > threshold
    return flags


# ----------------------------------------------------------------------------- LAIP


@dataclass(frozen=True)
class LaipModel:
    """A patient's leukaemic population at diagnosis: Gaussian mean and precision, and its cut-off.

    ``cutoff`` is the squared Mahalanobis radius (chi-square ``laip_quantile`` with ``d``
    degrees of freedom); ``n_events`` the diagnosis events it was fitted to;
    ``normal_share`` the share of the normal model's events inside the ellipsoid (0 for a
    record written before it was stored).
    """

    mean: np.ndarray
    precision: np.ndarray
    cutoff: float
    n_events: int
    normal_share: float = 0.0

    def record(self) -> dict[str, Any]:
        """JSON-ready form (stored in the diagnosis sample's record)."""
        return {"mean": self.mean.tolist(), "precision": self.precision.tolist(), "cutoff": self.cutoff,
                "n_events": self.n_events, "normal_share": self.normal_share}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> LaipModel:
        """Inverse of :meth:`record`."""
        return cls(np.asarray(rec["mean"], dtype=np.float64), np.asarray(rec["precision"], dtype=np.float64),
                   float(rec["cutoff"]), int(rec["n_events"]), float(rec.get("normal_share", 0.0)))


def laip_refusal(laip: LaipModel, max_normal_share: float = MAX_LAIP_NORMAL_SHARE) -> str | None:
    """Why a fitted LAIP is not tracked, or None when it is.

    A LAIP whose ellipsoid holds more than ``max_normal_share`` of normal marrow's events
    does not describe a population different from normal: typically the marker that
    defines the patient's LAIP is not in the panel, and the trimmed fit followed a broad
    cloud of normal cells (whose sparse edge it would then count in every follow-up).
    """
    if laip.normal_share <= max_normal_share:
        return None
    return (f"the diagnosis LAIP was not tracked: its ellipsoid holds {laip.normal_share:.1%} of normal marrow's "
            f"events (at most {max_normal_share:.1%}), so it does not separate the leukaemic population from "
            "normal cells (is its defining marker in the panel?); MRD counted by DfN alone")


def _gaussian(ev: np.ndarray, ridge: float, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of host events; the covariance is divided by ``scale`` (trimming correction)."""
    cov = np.cov(ev, rowvar=False) / scale + ridge * np.eye(ev.shape[1])
    return ev.mean(axis=0), np.linalg.inv(cov)


def fit_laip(model: NormalModel, diagnosis_values: Any, *, min_events: int = LLOQ_EVENTS,
             laip_quantile: float = 0.999, ridge: float = 1e-3, fit_quantile: float = 0.99,
             iterations: int = 10) -> LaipModel | None:
    """The LAIP Gaussian of a diagnosis sample, or None with fewer than ``min_events`` aberrant events.

    Starts from the events beyond normal's loose threshold, then ``iterations`` trimmed
    refits over all the diagnosis events: the events with squared Mahalanobis distance
    below ``chi2.ppf(fit_quantile, d)`` give the new mean and covariance, the covariance
    divided by ``P(chi2_{d+2} <= c) / P(chi2_d <= c)`` (the variance a normal keeps
    inside that ellipsoid), until the selection no longer changes. ``normal_share`` is the
    share of the normal model's events inside the final ellipsoid (:func:`laip_refusal`).
    """
    from scipy.stats import chi2

    from ..device import to_numpy

    xp = namespace(diagnosis_values)
    v = xp.asarray(diagnosis_values, dtype=xp.float32)
    loose = fewer_within(v, _model_points(model, xp), model.loose_threshold, model.k)
    host = np.asarray(to_numpy(v), dtype=np.float64)
    sel = np.asarray(to_numpy(loose), dtype=bool)
    d = host.shape[1]
    if int(sel.sum()) < max(min_events, d + 1):
        return None
    mean, precision = _gaussian(host[sel], ridge)
    c = float(chi2.ppf(fit_quantile, d))
    consistency = float(chi2.cdf(c, d + 2) / fit_quantile)
    for _ in range(iterations):
        new = np.asarray(to_numpy(mahalanobis2(v, mean, precision)), dtype=np.float64) <= c
        if int(new.sum()) < max(min_events, d + 1):
            break
        same = bool(np.array_equal(new, sel))
        sel = new
        mean, precision = _gaussian(host[sel], ridge, consistency)
        if same:
            break
    cutoff = float(chi2.ppf(laip_quantile, d))
    inside = mahalanobis2(model.points, mean, precision) <= cutoff
    return LaipModel(mean=mean, precision=precision, cutoff=cutoff, n_events=int(sel.sum()),
                     normal_share=float(np.mean(inside)))


def laip_flags(model: NormalModel, laip: LaipModel, values: Any, *, loose_counts: Any = None) -> Any:
    """Boolean per event (any CD45): inside the LAIP ellipsoid and beyond normal's loose threshold.

    ``loose_counts``: model points within ``model.loose_threshold`` (:func:`count_within`);
    when not given, the neighbours are counted for the events inside the ellipsoid only.
    """
    xp = namespace(values)
    v = xp.asarray(values, dtype=xp.float32)
    inside = mahalanobis2(v, laip.mean, laip.precision) <= laip.cutoff
    if loose_counts is not None:
        return inside & (loose_counts < model.k)
    idx = xp.nonzero(inside)[0]
    out = _filled(v.shape[0], False, xp)
    if int(idx.shape[0]):
        out[inside] = fewer_within(xp.take(v, idx, axis=0), _model_points(model, xp), model.loose_threshold, model.k)
    return out


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

    With fewer than :data:`MIN_CD45_EVENTS` CD45+ events no status is ``negative``
    (:func:`mrd_status`), so there the rule is "MRD % positive or image positive". Measured
    on held-out simulated patients by ``benchmarks/eval_calls.py`` (README "MRD percentage").
    """
    if status == "positive":
        return "positive"
    if status in ("below-lloq", "insufficient-events") and p_mrd is not None and not math.isnan(p_mrd) \
            and p_mrd >= threshold:
        return "positive"
    return "negative"


def normal_model_from_rows(rows: Sequence[Any], pipeline: Any, *, skipped: dict[str, str] | None = None,
                           warned: dict[str, list[str]] | None = None, **kwargs: Any) -> NormalModel:
    """Fit the DfN model from the manifest rows labelled ``negative`` (MRD-negative follow-ups and controls).

    ``kwargs`` go to :func:`fit_normal_model`; the rows' ``timepoint`` is each sample's
    kind there, so controls and follow-ups are both split between model and calibration.
    Rows that fail to preprocess are skipped; ``skipped`` (when given) gets ``{sample_id: error}``
    of them, ``warned`` ``{sample_id: [warning, ...]}`` of the samples used.

    Raises
    ------
    ConfigError
        No negative row could be preprocessed (the message names each row and its error).
    """
    from ..errors import RescueError
    from .stages import load_events

    values, kinds, markers = [], [], None
    failed: dict[str, str] = {} if skipped is None else skipped
    for row in rows:
        if row.label != "negative":
            continue
        try:
            ev = load_events(row.path, pipeline)
        except RescueError as exc:
            failed[row.sample_id] = str(exc)
            continue
        if warned is not None and ev.warnings:
            warned[row.sample_id] = list(ev.warnings)
        markers = ev.markers
        values.append(np.asarray(ev.values))
        kinds.append(row.timepoint)
    if markers is None:
        raise ConfigError("no MRD-negative or control sample could be preprocessed for the DfN model: "
                          + "; ".join(f"{sid}: {err}" for sid, err in failed.items()))
    from ..preprocess import preprocess_fingerprint

    model = fit_normal_model(values, markers, kinds=kinds, **kwargs)
    return dataclasses.replace(model, preprocess_fingerprint=preprocess_fingerprint(pipeline.panel, pipeline.preprocess))


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

    varies = est.size > 1 and np.ptp(est) > 0 and np.ptp(truth) > 0  # else the rank correlation is undefined
    return {"spearman": float(spearmanr(est, truth).statistic) if varies else math.nan,
            "median_abs_log10_ge_0.1": float(np.median(ratio)) if ratio.size else math.nan,
            "neg_below_0.1_share": float((est[neg] < THRESHOLD_PCT).mean()) if neg.any() else math.nan,
            "sensitivity": se, "sensitivity_ci": ci(0), "specificity": sp, "specificity_ci": ci(1),
            "n_samples": int(est.size), "n_truth_ge_0.1": int(pos.sum()), "n_negative": int(neg.sum()),
            "n_patients": int(uniq.size)}
