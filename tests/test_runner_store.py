"""Run store, resume planning, score tables and Grad-CAM flagging: unit tests (no cluster)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rescue_gpu.flow.flag import driving_region, grad_cam
from rescue_gpu.runner.manifest import ManifestRow
from rescue_gpu.flow.outputs import score_table
from rescue_gpu.runner.identity import file_digest, pending_rows
from rescue_gpu.runner.store import RunStore, run_lock, sample_key
from rescue_gpu.errors import StoreError

IDENTITY = {"settings_hash": "s1", "reference_fingerprint": "r1", "model_sha256": "m1"}


def _record(sid: str, path: Path, **extra) -> dict:
    digest, size, mtime = file_digest(path)
    prov = {**IDENTITY, "input_sha256": digest, "input_size": size, "input_mtime_ns": mtime}
    return {"sample_id": sid, "status": "scored", "error": "", "p_mrd": 0.25, "call": "negative", "n_events": 10,
            "n_events_used": 9, "qc": {"debris": 1, "n_events_out": 9, "n_outside": 0}, "provenance": prov, **extra}


@pytest.fixture()
def sample_file(tmp_path: Path) -> Path:
    p = tmp_path / "a.fcs"
    p.write_bytes(b"FCS3.1 pretend content")
    return p


def test_sample_key_is_a_safe_group_name() -> None:
    assert sample_key("S001") == "S001"
    assert "/" not in sample_key("batch1/S001")
    assert sample_key("batch1/S001") != sample_key("batch1_S001")
    assert not sample_key(".hidden").startswith(".")


def test_write_read_round_trip(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "store.zarr")
    img = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    store.write(_record("dir/S1", sample_file), {"image": img})
    got = store.read("dir/S1")
    assert got is not None and got.record["p_mrd"] == 0.25 and got.arrays == ("image",)
    np.testing.assert_array_equal(store.image("dir/S1"), img)
    reopened = RunStore(tmp_path / "store.zarr")
    assert [s.sample_id for s in reopened] == ["dir/S1"]


def test_nan_and_numpy_values_are_stored_as_json(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "store.zarr")
    store.write(_record("S1", sample_file, p_mrd=float("nan"), n_events=np.int64(5)))
    rec = store.read("S1").record
    assert rec["p_mrd"] is None and rec["n_events"] == 5


def test_incomplete_and_corrupt_groups_count_as_absent_and_are_rewritten(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "store.zarr")
    store.write(_record("S1", sample_file), {"image": np.ones((1, 4, 4), np.float32)})
    store.write(_record("S2", sample_file), {"image": np.ones((1, 4, 4), np.float32)})
    # S1: killed after the arrays, before the record (attributes without 'done')
    meta = tmp_path / "store.zarr" / "samples" / "S1" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"] = {}
    meta.write_text(json.dumps(doc))
    # S2: killed in the middle of writing its zarr.json
    meta2 = tmp_path / "store.zarr" / "samples" / "S2" / "zarr.json"
    meta2.write_text(meta2.read_text()[:40])
    assert store.read("S1") is None and store.read("S2") is None and list(store) == []
    rows = [ManifestRow("S1", sample_file), ManifestRow("S2", sample_file)]
    todo, skipped = pending_rows(rows, store, IDENTITY)
    assert [r.sample_id for r in todo] == ["S1", "S2"] and skipped == 0
    store.write(_record("S2", sample_file, p_mrd=0.75), {"image": np.zeros((1, 4, 4), np.float32)})
    assert [s.sample_id for s in store] == ["S2"] and store.read("S2").record["p_mrd"] == 0.75


def test_pending_rows_follow_identity_and_input(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "store.zarr")
    store.write(_record("S1", sample_file))
    rows = [ManifestRow("S1", sample_file), ManifestRow("S2", sample_file)]
    todo, skipped = pending_rows(rows, store, IDENTITY)
    assert [r.sample_id for r in todo] == ["S2"] and skipped == 1
    for key in IDENTITY:  # any change of settings, reference or model redoes the sample
        todo, _ = pending_rows(rows[:1], store, {**IDENTITY, key: "other"})
        assert len(todo) == 1
    st = sample_file.stat()
    os.utime(sample_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: still done
    assert pending_rows(rows[:1], store, IDENTITY)[1] == 1
    sample_file.write_bytes(b"FCS3.1 pretend Content")  # same size, new bytes
    assert pending_rows(rows[:1], store, IDENTITY)[1] == 0


def test_failed_samples_are_redone(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "store.zarr")
    store.write({**_record("S1", sample_file), "status": "failed", "error": "boom"})
    assert len(pending_rows([ManifestRow("S1", sample_file)], store, IDENTITY)[0]) == 1


def test_run_lock_is_exclusive(tmp_path: Path) -> None:
    with run_lock(tmp_path):
        with pytest.raises(StoreError, match="another 'rescue score'"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass


def test_foreign_store_is_refused(tmp_path: Path) -> None:
    import zarr

    zarr.open_group(tmp_path / "x.zarr", mode="w").attrs["format"] = "something-else"
    with pytest.raises(StoreError, match="not a rescue run store"):
        RunStore(tmp_path / "x.zarr")


def test_score_table_keeps_manifest_order_and_marks_unprocessed(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "store.zarr")
    store.write(_record("S2", sample_file))
    rows = [ManifestRow("S1", sample_file, "P1", "diagnosis", "positive"), ManifestRow("S2", sample_file, "P1")]
    df = score_table(rows, store, threshold=0.4)
    assert list(df["sample_id"]) == ["S1", "S2"]
    assert df.loc[0, "status"] == "failed" and "not processed" in df.loc[0, "error"]
    assert df.loc[1, "p_mrd"] == 0.25 and df.loc[1, "threshold"] == 0.4 and df.loc[1, "debris"] == 1
    assert df.loc[0, "label"] == "positive"


def test_driving_region_holds_the_requested_mass() -> None:
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0], cam[1, 1], cam[2, 2] = 5.0, 3.0, 2.0
    assert driving_region(cam, mass=0.5).sum() == 1
    assert driving_region(cam, mass=0.8).sum() == 2
    assert driving_region(cam, mass=1.0).sum() == 3
    assert driving_region(np.zeros((3, 3)), mass=0.5).sum() == 0


def test_grad_cam_is_a_nonnegative_map_on_occupied_pixels() -> None:
    import torch

    from rescue_gpu.config import HeadSpec
    from rescue_gpu.flow.record import build_model as MrdNet

    torch.manual_seed(0)
    net = MrdNet(in_channels=1, head=HeadSpec(hidden=(8,), dropout=0.0)).eval()
    img = np.zeros((1, 64, 64), np.float32)
    img[0, 10:20, 30:40] = 1.0
    cam = grad_cam(net, img)
    assert cam.shape == (64, 64) and (cam >= 0).all() and cam.sum() > 0
    assert not net.training


def test_store_survives_being_copied(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "a" / "store.zarr")
    store.write(_record("S1", sample_file), {"image": np.ones((1, 4, 4), np.float32)})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert RunStore(tmp_path / "b" / "store.zarr").read("S1") is not None


# ----------------------------------------------------------------------------- damaged stores (issue 11, section 2)


def _group(tmp_path: Path, sid: str) -> Path:
    return tmp_path / "store.zarr" / "samples" / sample_key(sid)


def _chunk(tmp_path: Path, sid: str, name: str = "image") -> Path:
    return next(p for p in (_group(tmp_path, sid) / name).rglob("*") if p.is_file() and p.name != "zarr.json")


def _two_samples(tmp_path: Path, sample_file: Path) -> RunStore:
    store = RunStore(tmp_path / "store.zarr")
    for sid in ("S1", "S2"):
        store.write(_record(sid, sample_file), {"image": np.full((1, 4, 4), 0.5, np.float32)})
    return store


@pytest.mark.parametrize("damage", ["deleted", "garbage", "same-size garbage", "array folder deleted"])
def test_a_sample_with_damaged_arrays_is_not_done(tmp_path: Path, sample_file: Path, damage: str) -> None:
    store = _two_samples(tmp_path, sample_file)
    chunk = _chunk(tmp_path, "S1")
    if damage == "deleted":
        chunk.unlink()  # zarr would read the fill value: an all-zero image
    elif damage == "garbage":
        chunk.write_bytes(os.urandom(37))
    elif damage == "same-size garbage":
        chunk.write_bytes(bytes(b ^ 0xFF for b in chunk.read_bytes()))
    else:
        shutil.rmtree(_group(tmp_path, "S1") / "image")
    for s in (store, RunStore(tmp_path / "store.zarr")):  # this process's store and a fresh one
        assert s.read("S1") is None and [x.sample_id for x in s] == ["S2"]
        rows = [ManifestRow("S1", sample_file), ManifestRow("S2", sample_file)]
        todo, skipped = pending_rows(rows, s, IDENTITY)
        assert [r.sample_id for r in todo] == ["S1"] and skipped == 1  # resume re-scores it
        with pytest.raises(StoreError, match=r"sample 'S1'.*run the scoring command again"):
            s.image("S1")  # never zeros
        df = score_table(rows, s, threshold=0.4)
        assert df.loc[0, "status"] == "failed" and np.isnan(df.loc[0, "p_mrd"])
        assert "'S1'" in df.loc[0, "error"] and "damaged" in df.loc[0, "error"] and "again" in df.loc[0, "error"]
        assert df.loc[1, "status"] == "scored"
    store.write(_record("S1", sample_file), {"image": np.ones((1, 4, 4), np.float32)})  # re-scored
    assert store.read("S1") is not None and store.image("S1").min() == 1.0


def test_garbage_chunk_of_a_store_without_checksums_is_a_store_error(tmp_path: Path, sample_file: Path) -> None:
    store = _two_samples(tmp_path, sample_file)
    for sid in ("S1", "S2"):  # as written before per-file checksums existed
        meta = _group(tmp_path, sid) / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["attributes"].pop("files", None)
        meta.write_text(json.dumps(doc))
    old = RunStore(tmp_path / "store.zarr")
    assert [s.sample_id for s in old] == ["S1", "S2"]  # old stores still load
    np.testing.assert_array_equal(old.image("S2"), np.full((1, 4, 4), 0.5, np.float32))
    _chunk(tmp_path, "S1").write_bytes(os.urandom(37))
    with pytest.raises(StoreError, match=r"sample 'S1'.*cannot be read.*remove the folder .*S1"):
        old.image("S1")


def test_an_empty_array_can_be_stored(tmp_path: Path, sample_file: Path) -> None:
    store = RunStore(tmp_path / "store.zarr")
    store.write(_record("S1", sample_file), {"coords": np.zeros((0, 2), np.float32)})
    assert store.array("S1", "coords").shape == (0, 2)


# ----------------------------------------------------------------------------- long sample ids (issue 11, section 3)

LONG_ASCII = "patient-" + "x" * 292
LONG_CJK = "患者样本" * 8 + "骨髓"  # 34 characters: 306 bytes once percent-encoded


def test_short_keys_are_unchanged() -> None:
    assert sample_key("S001") == "S001"
    assert sample_key("batch 1/S001") == "batch%201%2FS001"
    assert sample_key(".x") == "%2Ex"
    assert sample_key("患者") == "%E6%82%A3%E8%80%85"
    assert sample_key("a" * 200) == "a" * 200


@pytest.mark.parametrize("sid", [LONG_ASCII, LONG_CJK, "a" * 201, "%" * 100])
def test_long_sample_ids_get_bounded_readable_unique_keys(tmp_path: Path, sample_file: Path, sid: str) -> None:
    from urllib.parse import unquote

    key = sample_key(sid)
    assert len(key.encode()) <= 200 and "/" not in key and not key.startswith(".")
    readable = unquote(key.rsplit("+", 1)[0])
    assert readable and sid.startswith(readable)  # a readable prefix, never half an escape
    assert sample_key(sid + "y") != key and sample_key(sid[:-1] + "z") != key
    store = RunStore(tmp_path / "store.zarr")
    store.write(_record(sid, sample_file), {"image": np.ones((1, 4, 4), np.float32)})
    assert store.read(sid).record["sample_id"] == sid and store.image(sid).shape == (1, 4, 4)
    assert [s.sample_id for s in RunStore(tmp_path / "store.zarr")] == [sid]


def test_a_store_with_the_old_encoding_of_a_long_id_still_loads(tmp_path: Path, sample_file: Path) -> None:
    from urllib.parse import quote

    sid = "b" * 230  # its old key (230 bytes) fitted the file system; the new one is hashed
    store = RunStore(tmp_path / "store.zarr")
    store.write(_record(sid, sample_file), {"image": np.ones((1, 4, 4), np.float32)})
    old_key = quote(sid, safe="-_.")
    os.rename(tmp_path / "store.zarr" / "samples" / sample_key(sid), tmp_path / "store.zarr" / "samples" / old_key)
    old = RunStore(tmp_path / "store.zarr")
    assert old.read(sid) is not None and old.image(sid).shape == (1, 4, 4)
    assert len(pending_rows([ManifestRow(sid, sample_file)], old, IDENTITY)[0]) == 0
    old.write(_record(sid, sample_file, p_mrd=0.9), {"image": np.ones((1, 4, 4), np.float32)})
    assert [s.record["p_mrd"] for s in old] == [0.9]  # rewritten under the new key, the old group gone
    assert not (tmp_path / "store.zarr" / "samples" / old_key).exists()
