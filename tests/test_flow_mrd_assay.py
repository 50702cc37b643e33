"""The MRD % through the flow assay: scores columns, per-event bits in the store, --flag-events write-back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.flow import mrd

from .test_cohort_fixtures import build_assets, tiny_pipeline


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")


def _normal_model(assets: dict[str, Path], out: Path) -> Path:
    from rescue_gpu.flow.stages import load_events
    from rescue_gpu.runner.manifest import read_manifest

    rows = read_manifest(assets["manifest"])
    neg = [r for r in rows if r.label == "negative"]
    ev = [load_events(r.path, tiny_pipeline()) for r in neg]
    model = mrd.fit_normal_model([np.asarray(e.values) for e in ev], ev[0].markers, k=3, false_flag_rate=0.01,
                                 loose_rate=0.05, kinds=[r.timepoint for r in neg])  # split within timepoint
    same = mrd.normal_model_from_rows(rows, tiny_pipeline(), k=3, false_flag_rate=0.01, loose_rate=0.05)
    np.testing.assert_array_equal(same.points, model.points)
    assert {**same.meta(), "preprocess_fingerprint": ""} == model.meta()  # the rows API also records the pipeline's
    return model.save(out)


def test_scores_store_bits_and_flagged_fcs(assets: dict[str, Path], tmp_path: Path) -> None:
    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.fcs import read_fcs
    from rescue_gpu.flow.assay import ScoreOptions, score_cohort
    from rescue_gpu.flow.flag import MRD_PARAMETER
    from rescue_gpu.flow.stages import load_events
    from rescue_gpu.runner.manifest import read_manifest
    from rescue_gpu.runner.store import RunStore, sample_key

    model_dir = _normal_model(assets, tmp_path / "normal")
    model = mrd.NormalModel.load(model_dir)
    opts = ScoreOptions(pipeline=tiny_pipeline(), report=False, mrd_model=str(model_dir), flag_events=True)
    out = tmp_path / "run"
    score_cohort(assets["manifest"], reference=assets["reference"], model=assets["model_low"], out=out,
                 options=opts, runtime=RuntimeConfig(backend="cpu"), in_process=True)
    import pandas as pd

    df = pd.read_parquet(out / "scores.parquet")
    assert "mrd_pct" in pd.read_csv(out / "scores.csv").columns
    assert set(mrd.STATUSES) >= set(df["mrd_status"])
    store = RunStore(out / "store.zarr")
    rows = {r.sample_id: r for r in read_manifest(assets["manifest"])}
    for _, row in df.iterrows():
        m = rows[row["sample_id"]]
        ev = load_events(m.path, tiny_pipeline())
        expected_dfn, gate = mrd.dfn_flags(model, np.asarray(ev.values))
        bits = mrd.unpack_flags(store.array(m.sample_id, "mrd_dfn"), ev.n_events)
        np.testing.assert_array_equal(bits, expected_dfn)
        aberrant = bits.copy()
        if row["mrd_method"] == "both":
            aberrant |= mrd.unpack_flags(store.array(m.sample_id, "mrd_laip"), ev.n_events)
        else:
            assert m.timepoint == "diagnosis" or pd.isna(row["laip_events"])  # no LAIP
        leuk = gate | aberrant  # CD45+ gate plus the aberrant events below it
        assert int(row["cd45_events"]) == int(leuk.sum())
        assert int(row["mrd_events"]) == int(aberrant.sum())
        assert row["mrd_pct"] == pytest.approx(100 * aberrant.sum() / leuk.sum())
        assert row["mrd_status"] == mrd.mrd_status(int(aberrant.sum()), int(leuk.sum()))
        # every call is positive with model_low, so every sample has a flagged FCS file with the MRD bit
        flagged = read_fcs(out / "flagged" / f"{sample_key(m.sample_id)}.fcs")
        col = list(flagged.channels).index(MRD_PARAMETER)
        written = np.asarray(flagged.events)[:, col]
        np.testing.assert_array_equal(written[np.asarray(ev.kept, dtype=bool)] > 0.5, aberrant)
        assert not (written[~np.asarray(ev.kept, dtype=bool)] > 0.5).any()
    follow = df[df["timepoint"] == "follow-up"]
    diag_patients = {r.patient_id for r in rows.values() if r.timepoint == "diagnosis"}
    assert all((row["mrd_method"] == "both") <= (row["patient_id"] in diag_patients) for _, row in follow.iterrows())


def test_refused_laip_scores_follow_ups_by_dfn_with_a_warning(assets: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A LAIP that laip_refusal refuses is not tracked: the patient's follow-ups are DfN-only and say why."""
    import pandas as pd

    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.flow.assay import ScoreOptions, score_cohort

    monkeypatch.setattr(mrd, "laip_refusal", lambda laip, max_normal_share=0.05: "LAIP refused for the test")
    model_dir = _normal_model(assets, tmp_path / "normal")
    opts = ScoreOptions(pipeline=tiny_pipeline(), report=False, mrd_model=str(model_dir))
    out = tmp_path / "run"
    score_cohort(assets["manifest"], reference=assets["reference"], model=assets["model_low"], out=out,
                 options=opts, runtime=RuntimeConfig(backend="cpu"), in_process=True)
    df = pd.read_csv(out / "scores.csv")
    diag_patients = set(df.loc[df["timepoint"] == "diagnosis", "patient_id"])
    follow = df[(df["timepoint"] == "follow-up") & df["patient_id"].isin(diag_patients)]
    assert len(follow) and (follow["mrd_method"] == "dfn").all() and follow["laip_events"].isna().all()
    assert follow["warnings"].str.contains("LAIP refused for the test").all()
    others = df[~df.index.isin(follow.index)]
    assert not others["warnings"].fillna("").str.contains("LAIP refused").any()


def test_a_dfn_model_of_other_preprocessing_is_refused(assets: dict[str, Path], tmp_path: Path) -> None:
    """Same markers, other transforms/compensation: its distances mean nothing for these samples (was: silent 44% MRD)."""
    import dataclasses

    from rescue_gpu.config import RuntimeConfig
    from rescue_gpu.errors import ConfigError
    from rescue_gpu.flow.assay import ScoreOptions, score_cohort
    from rescue_gpu.runner.manifest import read_manifest

    pipe = tiny_pipeline()
    other = dataclasses.replace(pipe, preprocess=dataclasses.replace(pipe.preprocess, compensation="none"))
    rows = read_manifest(assets["manifest"])
    mrd.normal_model_from_rows(rows, other, k=3, false_flag_rate=0.01, loose_rate=0.05).save(tmp_path / "other")
    assert mrd.NormalModel.load(tmp_path / "other").preprocess_fingerprint
    with pytest.raises(ConfigError, match="build-normal"):
        score_cohort(assets["manifest"], reference=assets["reference"], model=assets["model"], out=tmp_path / "run",
                     options=ScoreOptions(pipeline=pipe, report=False, mrd_model=str(tmp_path / "other")),
                     runtime=RuntimeConfig(backend="cpu"), in_process=True)
    assert not (tmp_path / "run" / "scores.csv").exists()
