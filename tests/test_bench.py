"""``rescue bench``: a tiny run's JSON fits the schema and its figures agree with each other (no timing sizes)."""

import json
import math
from pathlib import Path

import numpy as np

import pytest

from rescue_gpu.cli import main
from rescue_gpu.errors import ConfigError
from rescue_gpu.flow.bench import (BENCH_SCHEMA, BENCH_VERSION, PER_SAMPLE_STAGES, STAGES, check_bench_record,
                                   displacement, parse_library, parse_stages)


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = main(["bench", "--samples", "2", "--events", "1500", "--reference-events", "400", "--repeats", "2",
               "--image-size", "32", "--library", "10x20000", "--json", str(out / "b.json"),
               "--plot", str(out / "b.png")])
    assert rc == 0
    return json.loads((out / "b.json").read_text()), out


def test_schema_and_positive_figures(record):
    rec, out = record
    assert check_bench_record(rec) == []
    assert rec["version"] == BENCH_VERSION
    assert set(BENCH_SCHEMA) <= set(rec)
    assert list(rec["stages"]) == list(STAGES)
    for s, v in rec["stages"].items():
        assert len(v["runs"]) == 2
        assert all(r > 0 for r in v["runs"]), s
        assert v["min_s"] <= v["median_s"] <= v["max_s"]
        assert math.isclose(v["median_s"], sorted(v["runs"])[0] / 2 + sorted(v["runs"])[1] / 2)
    assert rec["memory"]["peak_host_mb"] > 0 and rec["memory"]["peak_device_mb"] is None
    assert out.joinpath("b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_are_consistent(record):
    rec, _ = record
    e = rec["end_to_end"]["in_process"]
    # each repeat's stage times fit inside that repeat's end-to-end time
    for i, wall in enumerate(e["runs"]):
        assert sum(v["runs"][i] for v in rec["stages"].values()) <= wall
    assert sum(v["median_s"] for v in rec["stages"].values()) <= max(e["runs"])
    ev = rec["events_per_sample"]
    assert 0 < ev <= 1500
    assert math.isclose(e["events_per_s"], ev / e["seconds_per_sample"], rel_tol=1e-9)
    assert math.isclose(e["samples_per_s"], 1 / e["seconds_per_sample"], rel_tol=1e-9)
    x = rec["extrapolation"]
    assert (x["samples"], x["events"], x["library"]) == (10, 20000, "10x20000")
    fixed = sum(rec["stages"][s]["median_s"] for s in PER_SAMPLE_STAGES)
    assert math.isclose(x["per_sample_s"], fixed, rel_tol=1e-9)
    assert math.isclose(x["per_event_s"], (e["seconds_per_sample"] - fixed) / ev, rel_tol=1e-9)
    assert x["speedup"] == 1.0
    assert math.isclose(x["seconds"], 10 * (fixed + x["per_event_s"] * 20000), rel_tol=1e-9)
    assert math.isclose(x["hours"], x["seconds"] / 3600, rel_tol=1e-9)
    assert math.isclose(x["events_per_s"], 10 * 20000 / x["seconds"], rel_tol=1e-9)
    assert x["assumptions"] and all(isinstance(a, str) for a in x["assumptions"])
    assert rec["settings"]["samples"] == 2 and rec["end_to_end"]["cluster"] is None and rec["peer"] is None


def test_parse_stages_and_library():
    assert parse_stages("project,read") == ("read", "project")
    assert parse_library("1361x500000") == (1361, 500000)
    assert parse_library("2X1_000") == (2, 1000)
    for bad in ("1361", "0x10", "ax10", "1x2x3", "-1x5"):
        with pytest.raises(ConfigError, match="SAMPLESxEVENTS"):
            parse_library(bad)
    with pytest.raises(ConfigError, match="unknown stage"):
        parse_stages("read,umap")


@pytest.mark.parametrize("args, words", [(["--stages", "read,umap"], "unknown stage(s) umap"),
                                         (["--library", "1361by5"], "SAMPLESxEVENTS"),
                                         (["--knn-method", "ball"], "choose auto, tiled, graph or kdtree")])
def test_bad_option_is_one_line_error(capsys, args, words):
    rc = main(["bench", *args])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert words in err and len(err.splitlines()) == 1


def test_displacement_against_direct_computation():
    import numpy as np

    p = np.zeros((4, 2))
    q = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    med, p95 = displacement(p, q)
    assert med == pytest.approx(1.5) and p95 == pytest.approx(np.percentile([5, 1, 2, 0], 95))


def test_project_steps_recorded(record):
    rec, _ = record
    steps = rec["project_steps"]
    assert set(steps) == {"check", "knn", "fuzzy", "init", "sgd"}
    assert all(v >= 0 for v in steps.values()) and steps["knn"] > 0 and steps["sgd"] > 0


def test_transform_timings_do_not_change_coordinates():
    import numpy as np

    from rescue_gpu.projection import transform
    from rescue_gpu.projection.transform import UmapParams

    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 5)).astype(np.float32)

    class Ref:
        train_events, embedding, params = train, rng.normal(size=(300, 2)).astype(np.float32), UmapParams()

    x = rng.normal(size=(200, 5)).astype(np.float32)
    t: dict = {}
    a = transform(Ref, x, seed=3, backend="cpu", timings=t)
    b = transform(Ref, x, seed=3, backend="cpu")
    np.testing.assert_array_equal(a, b)
    assert set(t) == {"check", "knn", "fuzzy", "init", "sgd"}


def test_peer_on_three_shapes():
    from rescue_gpu.flow.bench import PEER_SHAPES, BenchOptions, run_bench

    rec = run_bench(BenchOptions(samples=1, events=1500, reference_events=300, stages=("read",), repeats=1,
                                 peer=True, peer_events=400, image_size=32))
    assert check_bench_record(rec) == []
    assert list(rec["peer"]) == list(PEER_SHAPES)
    assert [p["dims"] for p in rec["peer"].values()][1:] == [10, 15]
    for p in rec["peer"].values():
        assert p["ours_s"] > 0 and p["umap_learn_s"] > 0
        assert math.isclose(p["ratio"], p["umap_learn_s"] / p["ours_s"], rel_tol=1e-9)
        for q in ("median", "p95"):
            assert math.isclose(p["fidelity_ratio"][q], p["ours_vs_umap"][q] / p["umap_seed_vs_seed"][q], rel_tol=1e-9)
        fed = p["umap_exact_knn"]
        assert fed is None or all(fed[a][q] >= 0 for a in ("ours_vs_umap", "umap_seed_vs_seed") for q in ("median", "p95"))
        for who, secs in (("ours_cpu", p["ours_s"]), ("umap_learn_cpu", p["umap_learn_s"])):
            assert p[who]["wall_s"] == secs and p[who]["own_cores"] > 0
        assert p["quiet"] is None or p["quiet"] == (p["ours_cpu"]["quiet"] and p["umap_learn_cpu"]["quiet"])
    assert rec["project_steps"] is None  # project not among the stages


def test_reference_sizes_rows():
    from rescue_gpu.flow.bench import BenchOptions, run_bench

    rec = run_bench(BenchOptions(samples=2, events=1500, reference_events=300, stages=("read",), repeats=1,
                                 image_size=32, reference_sizes=(1000, 10**7)))
    rows = rec["reference_sizes"]
    assert [r["reference_events"] for r in rows] == [1000]  # 10**7 is more than was simulated: skipped
    r = rows[0]
    assert r["build_s"] > 0 and r["transform_s"] > 0
    assert math.isclose(r["events_per_s"], r["events"] / r["transform_s"], rel_tol=1e-9)


def test_mrd_stage_and_overhead(tmp_path):
    """--mrd times the event-level step after preprocessing; its overhead is its share of the rest."""
    rc = main(["bench", "--samples", "3", "--events", "1500", "--reference-events", "400", "--repeats", "2",
               "--image-size", "32", "--stages", "read,preprocess", "--mrd", "--mrd-points", "800",
               "--json", str(tmp_path / "m.json")])
    assert rc == 0
    rec = json.loads((tmp_path / "m.json").read_text())
    assert check_bench_record(rec) == []
    m, e = rec["mrd"], rec["end_to_end"]["in_process"]
    assert len(m["runs"]) == 2 and all(r > 0 for r in m["runs"])
    assert 0 < m["model_points"] <= 800 and isinstance(m["laip"], bool)
    without = sorted(w - r for w, r in zip(e["runs"], m["runs"]))
    assert math.isclose(m["without_mrd_s"], (without[0] + without[1]) / 2, rel_tol=1e-9)
    assert math.isclose(m["overhead"], m["median_s"] / m["without_mrd_s"], rel_tol=1e-9)
    for i, wall in enumerate(e["runs"]):  # the step is inside the wall time, beside the stages
        assert sum(v["runs"][i] for v in rec["stages"].values()) + m["runs"][i] <= wall


def test_no_mrd_entry_without_the_flag(record):
    assert record[0]["mrd"] is None


def test_reference_is_pooled_from_other_samples_than_the_timed_ones(tmp_path):
    """A timed sample's own events in the reference would be free exact neighbours (too easy a kNN)."""
    import numpy as np

    from rescue_gpu.flow.bench import BenchOptions, _assets
    from rescue_gpu.flow.stages import load_events

    assets = _assets(BenchOptions(samples=1, events=3000, reference_events=2000, image_size=32), tmp_path,
                     lambda _s: None)
    ref = np.ascontiguousarray(assets.reference.train_events, dtype=np.float32)
    assert ref.shape[0] == 2000
    timed = np.ascontiguousarray(load_events(assets.rows[0].path, assets.pipeline).values, dtype=np.float32)
    as_rows = lambda a: {bytes(r) for r in a.view(np.uint8).reshape(len(a), -1)}  # noqa: E731
    assert not as_rows(ref) & as_rows(timed)


def test_knn_method_is_recorded(record):
    rec, _ = record
    assert rec["settings"]["knn_method"] == "auto"


def test_umap_knn_recall_against_the_exact_search():
    import umap

    from rescue_gpu.flow.bench import rare_mixture, umap_knn_recall, umap_transform_exact_knn
    from rescue_gpu.projection import UmapReference

    x, new = rare_mixture(5000, dims=6, seed=1), rare_mixture(300, dims=6, seed=2)
    model = umap.UMAP(n_neighbors=15, random_state=0, n_epochs=20).fit(x)     # > 4,096 events: an index
    ref = UmapReference.from_umap(model)
    r = umap_knn_recall(model, ref, new)
    theirs, _ = model._knn_search_index.query(new, k=15, epsilon=0.12)
    d = ((new[:, None, :] - x[None, :, :]) ** 2).sum(-1)                        # brute force, independent
    exact = np.argsort(d, axis=1)[:, :15]
    want = np.array([np.intersect1d(a, b).size / 15 for a, b in zip(theirs, exact)])
    np.testing.assert_allclose(r, want)
    # umap-learn fed neighbours: its own search's output gives its own transform exactly; wrong
    # neighbours move the events; the index and the seed are restored
    index, seed = model._knn_search_index, model.transform_seed
    theirs_i, theirs_d = model._knn_search_index.query(new, k=15, epsilon=0.12)
    plain = model.transform(new)
    np.testing.assert_array_equal(umap_transform_exact_knn(model, new, theirs_i, theirs_d), plain)
    far = np.argsort(d, axis=1)[:, -15:].astype(np.int32)
    far_d = np.sqrt(np.take_along_axis(d, far, axis=1)).astype(np.float32)
    moved = umap_transform_exact_knn(model, new, far, far_d, seed=7)
    assert np.median(np.linalg.norm(moved - plain, axis=1)) > 1.0
    assert model._knn_search_index is index and model.transform_seed == seed
    with pytest.raises(ValueError, match="other events"):
        umap_transform_exact_knn(model, new[:10], theirs_i, theirs_d)
    small = umap.UMAP(n_neighbors=15, random_state=0, n_epochs=20).fit(x[:1000])  # small data: searched exactly
    assert umap_knn_recall(small, UmapReference.from_umap(small), new) is None


def test_proc_stat_seconds_against_hand_sums():
    from rescue_gpu.flow.cpuload import proc_stat_seconds

    text = "cpu  100 20 30 900 7 4 6 50 11 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 5\n"
    busy, steal = proc_stat_seconds(text, 100.0)
    assert busy == pytest.approx((100 + 20 + 30 + 4 + 6) / 100) and steal == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cpu"):
        proc_stat_seconds("cpu0 1 2 3\n", 100.0)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc/stat (Linux)")
def test_measure_cpu_sees_another_process_and_our_own_work():
    import subprocess
    import sys
    import time

    from rescue_gpu.flow.cpuload import measure_cpu

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let the child start spinning
        with measure_cpu() as busy_elsewhere:
            time.sleep(1.0)
    finally:
        child.kill()
        child.wait()
    assert busy_elsewhere.other_cores > 0.5 and busy_elsewhere.own_cores < 0.2
    assert busy_elsewhere.quiet is False and busy_elsewhere.contention >= busy_elsewhere.other_cores / busy_elsewhere.cores
    with measure_cpu() as mine:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            pass
    assert mine.own_cores > 0.6 and 0.45 < mine.wall_s < 1.5
    d = mine.as_dict()
    assert set(d) == {"cores", "wall_s", "own_cores", "other_cores", "steal_cores", "contention", "quiet"}


def test_table_flags_a_timing_that_was_not_quiet(record):
    from rescue_gpu.flow.bench import format_table

    rec = json.loads(json.dumps(record[0]))
    rec["machine"]["during_timing"] = {"cores": 2, "wall_s": 1.0, "own_cores": 1.2, "other_cores": 0.9,
                                       "steal_cores": 0.1, "contention": 0.5, "quiet": False}
    assert "used 1.00 of 2 cores (NOT QUIET" in format_table(rec)
    rec["machine"]["during_timing"].update(other_cores=0.05, steal_cores=0.0, contention=0.025, quiet=True)
    assert "used 0.05 of 2 cores (quiet)" in format_table(rec)
