"""``rescue evaluate`` compares the image model's call, the MRD % call and the combined call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.flow.mrd import combined_call
from tests.conftest import write_csv_rows


def _case(rng: np.random.Generator, n: int = 60) -> tuple[list[dict], list[dict]]:
    y = rng.random(n) < 0.5
    p = np.clip(0.5 + np.where(y, 0.15, -0.15) + rng.normal(0, 0.2, n), 0, 1)
    status = np.where(y, rng.choice(["positive", "below-lloq", "insufficient-events"], n, p=[0.5, 0.2, 0.3]),
                      rng.choice(["negative", "insufficient-events", "positive"], n, p=[0.6, 0.3, 0.1]))
    pats = [f"P{i // 2}" for i in range(n)]
    man = [{"sample_id": f"S{i}", "path": f"fcs/S{i}.fcs", "patient_id": pats[i], "timepoint": "follow-up",
            "label": "positive" if y[i] else "negative"} for i in range(n)]
    scores = [{"sample_id": f"S{i}", "p_mrd": repr(float(p[i])), "call": "positive" if p[i] >= 0.5 else "negative",
               "threshold": "0.5", "status": "scored", "mrd_pct": "0.2", "mrd_status": str(status[i]),
               "combined_call": combined_call(float(p[i]), 0.5, str(status[i]))} for i in range(n)]
    scores[0].update(mrd_status="", combined_call="")  # no MRD for this sample: left out of the comparison
    return man, scores


def _evaluate(tmp_path: Path, man: list[dict], scores: list[dict]) -> tuple[str, dict]:
    import typer
    from typer.testing import CliRunner

    from rescue_gpu.flow.train_cli import register

    app = typer.Typer()
    register(app)
    res = CliRunner().invoke(app, ["evaluate", str(write_csv_rows(tmp_path / "scores.csv", scores)), "--truth",
                                   str(write_csv_rows(tmp_path / "manifest.csv", man)), "--out", str(tmp_path / "ev"),
                                   "--boot", "200"])
    assert res.exit_code == 0, res.output
    return res.output, json.loads((tmp_path / "ev" / "metrics.json").read_text())


def test_evaluate_compares_image_mrd_and_combined_calls(tmp_path: Path) -> None:
    man, scores = _case(np.random.default_rng(5))
    out, rep = _evaluate(tmp_path, man, scores)
    calls = rep["calls"]
    kept = scores[1:]
    y = np.array([m["label"] == "positive" for m in man[1:]])
    assert calls["n"] == len(kept) and calls["n_positive"] == int(y.sum()) and calls["n_patients"] == 30
    peer = {"image": np.array([s["call"] == "positive" for s in kept]),
            "mrd": np.array([s["mrd_status"] == "positive" for s in kept]),
            "combined": np.array([s["combined_call"] == "positive" for s in kept])}
    for name, c in peer.items():
        got = calls[name]
        assert got["positive"] == int(c.sum())
        assert got["sensitivity"]["estimate"] == pytest.approx(c[y].mean())
        assert got["specificity"]["estimate"] == pytest.approx((~c[~y]).mean())
        for k in ("sensitivity", "specificity"):
            assert got[k]["low"] <= got[k]["estimate"] <= got[k]["high"]
            assert got[k]["high"] - got[k]["low"] > 0  # 30 patients: a real interval
    # the combined call is at least as sensitive as the MRD % alone, by its rule
    assert calls["combined"]["sensitivity"]["estimate"] >= calls["mrd"]["sensitivity"]["estimate"]
    assert "combined_call" in out and "MRD % (mrd_status positive)" in out and "image model" in out


def test_evaluate_without_mrd_columns_has_no_call_comparison(tmp_path: Path) -> None:
    man, scores = _case(np.random.default_rng(6))
    plain = [{k: v for k, v in s.items() if k not in ("mrd_status", "combined_call", "mrd_pct")} for s in scores]
    out, rep = _evaluate(tmp_path, man, plain)
    assert "calls" not in rep and "combined_call" not in out


def test_perfect_calls_have_degenerate_intervals() -> None:
    from rescue_gpu.flow.mrd_calls import call_performance

    y = np.array([1, 0, 1, 0, 1, 0])
    r = call_performance(y, {"mrd": y, "image": 1 - y}, ["a", "a", "b", "b", "c", "c"], n_boot=50)
    assert r["mrd"]["sensitivity"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    assert r["image"]["specificity"]["estimate"] == 0.0 and r["image"]["positive"] == 3


def test_evaluate_reports_the_calls_per_timepoint(tmp_path: Path) -> None:
    man, scores = _case(np.random.default_rng(7))
    for m in man:  # positives split over diagnosis / follow-up, negatives over control / follow-up
        i = int(m["sample_id"][1:])
        m["timepoint"] = ("diagnosis" if m["label"] == "positive" else "control") if i % 3 == 0 else "follow-up"
    _, rep = _evaluate(tmp_path, man, scores)
    per = rep["calls"]["by_timepoint"]
    assert set(per) == {"diagnosis", "follow-up", "control"}
    kept = {s["sample_id"]: s for s in scores[1:]}
    for tp, part in per.items():
        rows = [m for m in man if m["timepoint"] == tp and m["sample_id"] in kept]
        y = np.array([m["label"] == "positive" for m in rows])
        assert part["n"] == len(rows) and part["n_positive"] == int(y.sum())
        for name, col in (("image", "call"), ("mrd", "mrd_status"), ("combined", "combined_call")):
            c = np.array([kept[m["sample_id"]][col] == "positive" for m in rows])
            sens, spec = part[name]["sensitivity"], part[name]["specificity"]
            assert (sens is None) == (not y.any()) and (spec is None) == y.all()
            if sens is not None:
                assert sens["estimate"] == pytest.approx(c[y].mean())
            if spec is not None:
                assert spec["estimate"] == pytest.approx((~c[~y]).mean())
    assert per["diagnosis"]["image"]["specificity"] is None and per["control"]["mrd"]["sensitivity"] is None
