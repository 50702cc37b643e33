"""Validate the event-level MRD % (DfN and LAIP) against the simulator's truth.

A simulated cohort (in memory, each sample written to a temporary FCS file and read back
through the real preprocessing of ``pipelines/aml-mrd.toml``):

* reference normals: ``--normals`` MRD-negative follow-ups and controls of their own
  patients, pooled into the DfN model (:func:`rescue_gpu.flow.mrd.fit_normal_model`, split
  model / calibration within each timepoint, so both kinds are on both sides);
* ``--patients`` leukaemic patients, each with a diagnosis sample (its LAIP is fitted
  with :func:`~rescue_gpu.flow.mrd.fit_laip`) and ``--follow-ups`` MRD-positive follow-ups
  (blast fraction log-uniform 0.01%-10%, the simulator's own draw);
* ``--negatives`` MRD-negative follow-ups of leukaemic patients (with a diagnosis) and
  ``--controls`` control samples.

Truth: ``true_mrd_pct`` = 100 x blasts / leukocytes (the simulator's ``observed_fraction``).
Estimate: aberrant events / (CD45+ gate OR aberrant events), :func:`rescue_gpu.flow.mrd.leukocytes`
(``n_leukocytes_true`` in ``per_sample.csv`` is the simulator's leukocyte count beside it).
Nothing is fitted on this cohort: the DfN model comes from its own normal samples with the
model's default rates, the LAIPs from each patient's diagnosis sample. The image model's
call is not computed here: ``benchmarks/eval_calls.py`` builds a reference and trains a model
through the CLI and compares the image, MRD % and combined calls on held-out patients.
Reported per method (dfn, laip, both = union): Spearman, median |log10(est/truth)| for
truth >= 0.1%, share of MRD-negative/control samples estimated < 0.1%, sensitivity and
specificity of the 0.1% call (truth >= 0.1% is positive) with 95% intervals over
patients (patient-level bootstrap), and the per-sample seconds of the event-level step
against preprocessing. ``dfn`` is both DfN criteria (cluster and excess population, as
``rescue score`` counts); ``dfn_cluster`` / ``both_cluster`` leave the excess rule out (the
rule before session 11), on the same scores. A LAIP that ``laip_refusal`` refuses is not
tracked (DfN alone), as in ``rescue score``.

    python benchmarks/eval_mrd.py --events 50000 --out /tmp/eval_mrd
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from rescue_gpu.config import load_pipeline
from rescue_gpu.fcs import write_fcs
from rescue_gpu.flow import mrd
from rescue_gpu.flow.stages import load_events
from rescue_gpu.simulate.flow.sample import draw_patient, simulate_sample


def _events(sim, tmp: Path, pipeline) -> tuple[np.ndarray, tuple[str, ...], float]:
    path = tmp / "s.fcs"
    write_fcs(path, sim.events, channels=sim.channels, markers=sim.markers, keywords=sim.keywords)
    t0 = time.perf_counter()
    ev = load_events(path, pipeline)
    return np.asarray(ev.values, dtype=np.float32), tuple(ev.markers), time.perf_counter() - t0


def _metrics(est: np.ndarray, truth: np.ndarray, patients: np.ndarray, rng: np.random.Generator,
             n_boot: int = 1000) -> dict[str, float]:
    return mrd.mrd_agreement(est, truth, patients, n_boot=n_boot, seed=int(rng.integers(2**31)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--normals", type=int, default=12)
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--follow-ups", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=30)
    ap.add_argument("--controls", type=int, default=20)
    ap.add_argument("--max-points", type=int, default=20000)
    ap.add_argument("--max-calibration", type=int, default=100_000)
    ap.add_argument("--false-flag-rate", type=float, default=1e-4)
    ap.add_argument("--loose-rate", type=float, default=0.003)
    ap.add_argument("--candidate-rate", type=float, default=0.005)
    ap.add_argument("--cluster-radius", type=float, default=0.2)
    ap.add_argument("--cluster-rule", choices=mrd.CLUSTER_RULES, default="sample")
    ap.add_argument("--sample-flag-rate", type=float, default=2e-4)
    ap.add_argument("--no-cross-fit", action="store_true")
    ap.add_argument("--compare-pooled", action=argparse.BooleanOptionalAction, default=True,
                    help="also report the pooled rule without cross-fitting (the /3 rule) on the same cohort "
                         "and model events: only the cluster threshold differs")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline("aml-mrd")
    root = np.random.SeedSequence(a.seed)
    seeds = iter(root.spawn(100000))
    tmp = Path(tempfile.mkdtemp(prefix="eval_mrd_"))
    t_begin = time.perf_counter()

    normal, normal_kinds = [], []
    for i in range(a.normals):
        lk = i % 2 == 0
        pat = draw_patient(next(seeds), patient_id=f"N{i:04d}", leukaemic=lk)
        sim = simulate_sample(pat, kind="mrd_negative" if lk else "control", n_events=a.events, seed=next(seeds),
                              visit=1 if lk else 0)
        v, markers, _ = _events(sim, tmp, pipeline)
        normal.append(v)
        normal_kinds.append(sim.truth["timepoint"])  # follow-up / control: both kinds model and calibrate
    model = mrd.fit_normal_model(normal, markers, kinds=normal_kinds, max_points=a.max_points,
                                 max_calibration=a.max_calibration, false_flag_rate=a.false_flag_rate,
                                 loose_rate=a.loose_rate, candidate_rate=a.candidate_rate,
                                 cluster_radius=a.cluster_radius, cluster_rule=a.cluster_rule,
                                 sample_flag_rate=a.sample_flag_rate, cross_fit=not a.no_cross_fit)
    model.save(a.out / "normal_model")
    pooled = None
    if a.compare_pooled:  # same model events (same split and subsample), the /3 threshold rule
        pooled = mrd.fit_normal_model(normal, markers, kinds=normal_kinds, max_points=a.max_points,
                                      max_calibration=a.max_calibration, false_flag_rate=a.false_flag_rate,
                                      loose_rate=a.loose_rate, candidate_rate=a.candidate_rate,
                                      cluster_radius=a.cluster_radius, cluster_rule="pooled", cross_fit=False)
        assert np.array_equal(pooled.points, model.points)
        print(f"pooled rule (no cross-fit) on the same model events: cluster threshold {pooled.cluster_threshold:.4g}",
              flush=True)
    print(f"DfN model: {len(model.points)} points ({len(model.sparse_points)} sparse), candidate threshold "
          f"{model.candidate_threshold:.4g}, cluster threshold {model.cluster_threshold:.4g}, cd45_min {model.cd45_min:.3g}",
          flush=True)

    rows = []

    def score(sim, pid: str, kind: str, laip) -> None:
        v, _, t_pre = _events(sim, tmp, pipeline)
        t0 = time.perf_counter()
        gate = mrd.cd45_gate(v, model.cd45_column, model.cd45_min)
        cand, sc = mrd.dfn_scores(model, v)  # scored once; each rule's threshold applied to the same scores
        cluster = mrd.flags_above(cand, sc, model.cluster_threshold)
        excess = mrd.excess_flags(model, v)
        dfn = cluster | excess  # = mrd.dfn_flags(model, v)[0]
        lf = mrd.laip_flags(model, laip, v) if laip is not None else np.zeros_like(dfn)
        t_mrd = time.perf_counter() - t0
        extra = {}
        if pooled is not None:
            dp = mrd.flags_above(cand, sc, pooled.cluster_threshold) | excess
            n_p = int(mrd.leukocytes(gate, dp, lf).sum())
            extra = {"dfn_pooled_pct": 100.0 * dp.sum() / n_p, "both_pooled_pct": 100.0 * (dp | lf).sum() / n_p}
        n = int(mrd.leukocytes(gate, dfn, lf).sum())  # CD45+ gate plus CD45-dim aberrant events
        n_c = int(mrd.leukocytes(gate, cluster, lf).sum())
        extra.update(dfn_cluster_pct=100.0 * cluster.sum() / n_c, both_cluster_pct=100.0 * (cluster | lf).sum() / n_c,
                     excess_events=int(excess.sum()))
        truth = 100.0 * sim.truth["observed_fraction"] if kind in ("mrd_positive", "diagnosis") else 0.0
        rows.append({"patient_id": pid, "kind": kind, "true_mrd_pct": truth, "cd45_events": n,
                     "dfn_pct": 100.0 * dfn.sum() / n, "laip_pct": 100.0 * lf.sum() / n if laip is not None else np.nan,
                     "both_pct": 100.0 * (dfn | lf).sum() / n, "n_leukocytes_true": sim.truth["n_leukocytes"], "has_laip": laip is not None,
                     "status_both": mrd.mrd_status(int((dfn | lf).sum()), n),
                     "seconds_preprocess": t_pre, "seconds_mrd": t_mrd, **extra})

    for i in range(a.patients + a.negatives):
        pat = draw_patient(next(seeds), patient_id=f"P{i:04d}", leukaemic=True)
        diag = simulate_sample(pat, kind="diagnosis", n_events=a.events, seed=next(seeds))
        dv, _, _ = _events(diag, tmp, pipeline)
        laip = mrd.fit_laip(model, dv)
        refused = mrd.laip_refusal(laip) if laip is not None else None
        if refused:  # as rescue score: not tracked, DfN alone
            print(f"patient {i + 1}: {refused}", flush=True)
            laip = None
        kinds = ["mrd_positive"] * a.follow_ups if i < a.patients else ["mrd_negative"]
        for j, kind in enumerate(kinds):
            sim = simulate_sample(pat, kind=kind, n_events=a.events, seed=next(seeds), visit=j + 1)
            score(sim, pat.patient_id, kind, laip)
        print(f"patient {i + 1}/{a.patients + a.negatives} done ({time.perf_counter() - t_begin:.0f}s)", flush=True)
    for i in range(a.controls):
        pat = draw_patient(next(seeds), patient_id=f"C{i:04d}", leukaemic=False)
        score(simulate_sample(pat, kind="control", n_events=a.events, seed=next(seeds)), pat.patient_id, "control", None)

    import pandas as pd

    df = pd.DataFrame(rows)
    df.to_csv(a.out / "per_sample.csv", index=False)
    rng = np.random.default_rng(a.seed)
    truth, pats = df["true_mrd_pct"].to_numpy(), df["patient_id"].to_numpy()
    res = {"events_per_sample": a.events, "n_follow_up_positive": int((df.kind == "mrd_positive").sum()),
           "n_mrd_negative": int((df.kind == "mrd_negative").sum()), "n_control": int((df.kind == "control").sum()),
           "n_normals_in_model": a.normals, "false_flag_rate": a.false_flag_rate, "loose_rate": a.loose_rate,
           "candidate_rate": a.candidate_rate, "cluster_radius": a.cluster_radius, "seed": a.seed,
           "normal_split": "alternating within timepoint (follow-up, control)",
           "candidate_threshold": model.candidate_threshold, "cluster_threshold": model.cluster_threshold,
           "cluster_rule": model.cluster_rule, "sample_flag_rate": model.sample_flag_rate, "cross_fit": model.cross_fit,
           "sample_thresholds": list(model.sample_thresholds), "excess_share": model.excess_share,
           "excess_shares": list(model.excess_shares),
           "pooled_cluster_threshold": pooled.cluster_threshold if pooled is not None else None,
           "laip_found_share": float(df[df.kind == "mrd_positive"]["has_laip"].mean())}
    for m in ("dfn", "both", "dfn_cluster", "both_cluster") + (("dfn_pooled", "both_pooled") if pooled is not None else ()):
        res[m] = _metrics(df[f"{m}_pct"].to_numpy(), truth, pats, rng)
    lk = df["has_laip"].to_numpy()
    res["laip"] = _metrics(df["laip_pct"].to_numpy()[lk], truth[lk], pats[lk], rng)
    res["seconds_preprocess_median"] = float(df.seconds_preprocess.median())
    res["seconds_mrd_median"] = float(df.seconds_mrd.median())
    res["overhead_vs_preprocess"] = float(df.seconds_mrd.median() / df.seconds_preprocess.median())
    res["wall_s"] = time.perf_counter() - t_begin
    (a.out / "summary.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
