"""Reference UMAPs: build, save/load round trip with checksums, umap-learn import, bad input."""

import json
import pickle

import numpy as np
import pytest
import umap

from rescue_gpu.config import RasterSpec, ReferenceSpec, load_pipeline
from rescue_gpu.errors import ReferenceDataError
from rescue_gpu.projection import transform
from rescue_gpu.reference import Reference, build_reference, from_umap_learn, import_umap_pickle, pool_events

MARKERS = ("m0", "m1", "m2", "m3")


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 0], [4, 0, 0, 4], [0, 4, 4, 0]], np.float32)
    return (centres[rng.integers(0, 3, n)] + rng.normal(size=(n, 4))).astype(np.float32)


@pytest.fixture(scope="module")
def small_ref():
    spec = ReferenceSpec(events_per_sample=300, n_neighbors=10, n_epochs=50, min_events=200)
    samples = [(f"s{i}", _blobs(500, i)) for i in range(3)]
    return build_reference(samples, markers=MARKERS, spec=spec, raster=RasterSpec(size=32), preprocess_fingerprint="fp")


def test_pool_is_even_reproducible_and_drops_nan():
    a = _blobs(1000, 1)
    a[:7, 2] = np.nan
    pooled, rec = pool_events([("a", a), ("b", _blobs(100, 2))], events_per_sample=200, seed=3)
    assert pooled.shape == (300, 4) and np.isfinite(pooled).all()
    assert rec == {"events_per_sample": {"a": 200, "b": 100}, "non_finite_rows_dropped": 7, "max_events": 0,
                   "events_available": 300}
    again, _ = pool_events([("a", a), ("b", _blobs(100, 2))], events_per_sample=200, seed=3)
    np.testing.assert_array_equal(pooled, again)


def test_build_records_everything(small_ref):
    ref = small_ref
    assert ref.train_events.shape == (900, 4) and ref.embedding.shape == (900, 2)
    assert ref.params.n_neighbors == 10 and ref.params.a > 0 and ref.params.b > 0
    x0, x1, y0, y1 = ref.extent
    assert x0 < ref.embedding[:, 0].min() and x1 > ref.embedding[:, 0].max()
    assert y0 < ref.embedding[:, 1].min() and y1 > ref.embedding[:, 1].max()
    assert ref.provenance["events_per_sample"] == {"s0": 300, "s1": 300, "s2": 300}


def test_save_load_round_trip(small_ref, tmp_path):
    path = small_ref.save(tmp_path / "ref")
    meta = json.loads((path / "reference.json").read_text())
    assert meta["format"] == "rescue-reference" and meta["markers"] == list(MARKERS)
    assert set(meta["umap"]) >= {"n_neighbors", "metric", "a", "b", "min_dist", "spread", "local_connectivity",
                                 "set_op_mix_ratio", "disconnection_distance", "random_state"}
    assert "umap-learn" in meta["software"] and len(meta["sha256"]["train_events"]) == 64
    back = Reference.load(path)
    np.testing.assert_array_equal(back.train_events, small_ref.train_events)
    np.testing.assert_array_equal(back.embedding, small_ref.embedding)
    assert back.params == small_ref.params and back.raster == small_ref.raster
    assert back.extent == small_ref.extent and back.fingerprint == small_ref.fingerprint
    with pytest.raises(ReferenceDataError, match="already exists"):
        small_ref.save(path)


def test_tampering_is_detected(small_ref, tmp_path):
    import zarr

    path = small_ref.save(tmp_path / "ref")
    arr = zarr.open_group(path / "arrays.zarr", mode="r+")["embedding"]
    arr[0, 0] = arr[0, 0] + 1.0
    with pytest.raises(ReferenceDataError, match="checksum of 'embedding' does not match"):
        Reference.load(path)
    Reference.load(path, verify=False)  # readable on request


def test_not_a_reference(tmp_path):
    with pytest.raises(ReferenceDataError, match="no reference.json"):
        Reference.load(tmp_path)
    (tmp_path / "reference.json").write_text('{"format": "other"}')
    with pytest.raises(ReferenceDataError, match="is not 'rescue-reference'"):
        Reference.load(tmp_path)


def test_too_few_events_and_mismatched_markers(small_ref):
    spec = ReferenceSpec(events_per_sample=10, min_events=100)
    with pytest.raises(ReferenceDataError, match="only 20 events pooled from 2 sample.*at least 100"):
        build_reference([("a", _blobs(50, 0)), ("b", _blobs(50, 1))], markers=MARKERS, spec=spec, raster=RasterSpec())
    with pytest.raises(ReferenceDataError, match="different numbers of markers"):
        pool_events([("a", _blobs(50, 0)), ("b", _blobs(50, 1)[:, :3])], events_per_sample=10)
    with pytest.raises(ReferenceDataError, match=r"missing \['m3'\], unexpected \['CD34'\]"):
        small_ref.check_markers(("m0", "m1", "m2", "CD34"))
    with pytest.raises(ReferenceDataError, match="same markers in another order"):
        small_ref.check_markers(("m1", "m0", "m2", "m3"))


@pytest.fixture(scope="module")
def fitted_umap():
    return umap.UMAP(n_neighbors=10, n_epochs=50, random_state=1).fit(_blobs(600, 9))


def test_from_umap_learn_projects_like_umap(fitted_umap):
    ref = from_umap_learn(fitted_umap, markers=MARKERS)
    np.testing.assert_array_equal(ref.train_events, fitted_umap._raw_data.astype(np.float32))
    assert ref.params.a == pytest.approx(fitted_umap._a) and ref.params.n_neighbors == 10
    new = _blobs(200, 10)
    ours = transform(ref, new, seed=0, backend="cpu")
    theirs = fitted_umap.transform(new)
    # same clusters: each projected event lands near umap-learn's placement relative to the map's size
    span = np.ptp(fitted_umap.embedding_, axis=0).max()
    assert np.median(np.linalg.norm(ours - theirs, axis=1)) < 0.1 * span


def test_import_pickle_needs_trust(fitted_umap, tmp_path):
    p = tmp_path / "model.pkl"
    p.write_bytes(pickle.dumps(fitted_umap))
    with pytest.raises(ReferenceDataError, match="pass --trust"):
        import_umap_pickle(p, markers=MARKERS)
    ref = import_umap_pickle(p, markers=MARKERS, trust=True)
    assert ref.provenance["imported_from"] == str(p)
    with pytest.raises(ReferenceDataError, match="4 marker names|marker names for 4"):
        import_umap_pickle(p, markers=MARKERS[:3], trust=True)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"not": "a model"}))
    with pytest.raises(ReferenceDataError, match="holds a dict, not a fitted umap.UMAP"):
        import_umap_pickle(bad, markers=MARKERS, trust=True)


def test_pipeline_raster_settings_reach_the_reference():
    pipe = load_pipeline("aml-mrd")
    assert pipe.raster.size == 128 and pipe.raster.channels == ("density",)


@pytest.mark.parametrize("verify", [True, False])
def test_deleted_fingerprint_is_an_error(small_ref, tmp_path, verify):
    path = small_ref.save(tmp_path / "ref")
    meta = json.loads((path / "reference.json").read_text())
    del meta["fingerprint"]
    (path / "reference.json").write_text(json.dumps(meta))
    with pytest.raises(ReferenceDataError, match=r"reference\.json: no 'fingerprint'.*restore reference\.json.*rebuild"):
        Reference.load(path, verify=verify)
    (path / "reference.json").write_text(json.dumps({**meta, "fingerprint": None}))
    with pytest.raises(ReferenceDataError, match="no 'fingerprint'"):
        Reference.load(path, verify=verify)


@pytest.mark.parametrize("edit", [{"markers": ["m0", "m1", "m3", "m2"]}, {"preprocess_fingerprint": ""},
                                  {"extent": [0.0, 1.0, 0.0, 1.0]}])
def test_edited_reference_json_is_refused(small_ref, tmp_path, edit):
    path = small_ref.save(tmp_path / "ref")
    meta = json.loads((path / "reference.json").read_text())
    (path / "reference.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(ReferenceDataError, match="fingerprint does not match its contents"):
        Reference.load(path)


def test_edited_umap_params_and_raster_are_refused(small_ref, tmp_path):
    path = small_ref.save(tmp_path / "ref")
    meta = json.loads((path / "reference.json").read_text())
    for key, sub in (("umap", "n_neighbors"), ("raster", "point_radius")):
        edited = {**meta, key: {**meta[key], sub: meta[key][sub] + 1}}
        (path / "reference.json").write_text(json.dumps(edited))
        with pytest.raises(ReferenceDataError, match="fingerprint does not match"):
            Reference.load(path)


# ----------------------------------------------------------------------------- the pipeline a reference was built with


def _custom_pipeline():
    import dataclasses

    from rescue_gpu.config import PanelSpec

    pipe = load_pipeline("aml-mrd")
    panel = PanelSpec(markers=CUSTOM_MARKERS, scatter=("FSC-A", "SSC-A"), aliases=pipe.panel.aliases)
    return dataclasses.replace(pipe, name="lab-8", panel=panel, raster=RasterSpec(size=32))


CUSTOM_MARKERS = ("CD45", "CD34", "CD117", "CD13", "CD33", "HLA-DR", "CD7", "CD56")


def _tiny_ref(pipe, *, stored: bool, settings: bool = True):
    from rescue_gpu.flow.stages import pipeline_settings
    from rescue_gpu.config import pipeline_record
    from rescue_gpu.preprocess import preprocess_fingerprint
    from rescue_gpu.projection.transform import UmapParams

    n = len(pipe.panel.markers) + len(pipe.panel.scatter)
    rng = np.random.default_rng(0)
    return Reference(train_events=rng.random((50, n), dtype=np.float32), embedding=rng.random((50, 2), dtype=np.float32),
                     params=UmapParams(random_state=0), markers=(*pipe.panel.markers, *pipe.panel.scatter),
                     preprocess_fingerprint=preprocess_fingerprint(pipe.panel, pipe.preprocess), raster=pipe.raster,
                     settings=pipeline_settings(pipe) if settings else {},
                     pipeline=pipeline_record(pipe) if stored else None)


def test_pipeline_record_round_trips_through_json():
    from rescue_gpu.config import pipeline_from_record, pipeline_record

    for pipe in (load_pipeline("aml-mrd"), _custom_pipeline()):
        back = pipeline_from_record(json.loads(json.dumps(pipeline_record(pipe))), file="x")
        assert pipeline_record(back) == pipeline_record(pipe) and back.source == "x"


def test_reference_stores_its_whole_pipeline_and_commands_take_it(tmp_path):
    from rescue_gpu.config import pipeline_record
    from rescue_gpu.reference.pipeline import resolve_pipeline

    pipe = _custom_pipeline()
    path = _tiny_ref(pipe, stored=True).save(tmp_path / "ref")
    meta = json.loads((path / "reference.json").read_text())
    assert meta["pipeline"]["panel"]["markers"] == list(pipe.panel.markers)
    assert {"panel", "preprocess", "reference", "raster", "model"} <= set(meta["pipeline"])
    assert Reference.load(path).pipeline == meta["pipeline"]
    got = resolve_pipeline(path)
    assert got.note == "" and pipeline_record(got.pipeline) == pipeline_record(pipe)
    assert resolve_pipeline(path, uses_model=True).note == ""


def test_a_disagreeing_pipeline_is_an_error_naming_what_differs(tmp_path):
    from rescue_gpu.config import PIPELINES_DIR
    from rescue_gpu.errors import ConfigError
    from rescue_gpu.reference.pipeline import resolve_pipeline

    pipe = _custom_pipeline()
    path = _tiny_ref(pipe, stored=True).save(tmp_path / "ref")
    with pytest.raises(ConfigError) as err:
        resolve_pipeline(path, "aml-mrd")
    msg = str(err.value)
    assert "--pipeline aml-mrd" in msg and str(path) in msg and "panel.markers" in msg
    assert "not in the reference CD19, CD38" in msg and "raster.size: reference 32, --pipeline 128" in msg
    assert "Leave out --pipeline" in msg
    text = (PIPELINES_DIR / "aml-mrd.toml").read_text()  # the same science with other training settings is fine
    old = 'markers = ["CD45", "CD34", "CD117", "CD33", "CD13", "HLA-DR", "CD7", "CD56", "CD19", "CD38"]'
    assert old in text and "size = 128" in text and "max_epochs = 40" in text
    text = text.replace(old, f"markers = {list(CUSTOM_MARKERS)}".replace("'", '"'))
    (tmp_path / "same.toml").write_text(text.replace("size = 128", "size = 32").replace("max_epochs = 40", "max_epochs = 3"))
    assert resolve_pipeline(path, str(tmp_path / "same.toml")).pipeline.model.train.max_epochs == 3


def test_older_references_without_a_stored_pipeline_still_work(tmp_path):
    from rescue_gpu.errors import ConfigError
    from rescue_gpu.reference.pipeline import resolve_pipeline

    pipe = _custom_pipeline()
    legacy = _tiny_ref(pipe, stored=False).save(tmp_path / "legacy")  # as written before pipelines were stored
    assert json.loads((legacy / "reference.json").read_text())["pipeline"] is None
    got = resolve_pipeline(legacy)
    assert got.pipeline.panel == pipe.panel and got.pipeline.preprocess == pipe.preprocess and got.note == ""
    assert got.pipeline.raster == pipe.raster
    noted = resolve_pipeline(legacy, uses_model=True)
    assert "training settings come from the default pipeline 'aml-mrd'" in noted.note
    bare = _tiny_ref(load_pipeline("aml-mrd"), stored=False, settings=False).save(tmp_path / "bare")
    got = resolve_pipeline(bare)
    assert got.pipeline.name == "aml-mrd" and "records no pipeline" in got.note and "--pipeline" in got.note
    other = _tiny_ref(pipe, stored=False, settings=False).save(tmp_path / "other")
    with pytest.raises(ConfigError, match="records no pipeline.*preprocesses differently.*pass --pipeline"):
        resolve_pipeline(other)


def test_an_edited_stored_pipeline_is_refused(tmp_path):
    from rescue_gpu.reference.pipeline import resolve_pipeline

    path = _tiny_ref(_custom_pipeline(), stored=True).save(tmp_path / "ref")
    meta = json.loads((path / "reference.json").read_text())
    meta["pipeline"]["preprocess"]["compensation"] = "none"
    (path / "reference.json").write_text(json.dumps(meta))
    with pytest.raises(ReferenceDataError, match="does not match the reference's preprocessing fingerprint"):
        resolve_pipeline(path)
