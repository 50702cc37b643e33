"""Environment faults of a scoring run (issue 11, section 3): read-only ``--out``, a full disk, long sample ids.

Each fault is tested twice: by fault injection at the lowest write layer (zarr's file
writes, ``Path.mkdir``, the table writer), which runs everywhere, and on a real tmpfs
(read-only, or a few hundred kB) where this process may mount one (root in a container);
those tests skip cleanly elsewhere. Expected: exit 2, one line naming the path, the
problem and its errno, no traceback; on a full disk every sample stored before the fault
stays intact and the same command, run again once there is space, completes.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from rescue_gpu.runner.store import MAX_KEY_BYTES, RunStore, sample_key
from rescue_gpu.errors import OutputError

from .test_cohort_fixtures import N_SAMPLES, build_assets

LONG_ASCII = "patient-" + "x" * 292  # 300 characters
LONG_CJK = "患者样本" * 8 + "骨髓"  # 34 characters, 306 bytes once percent-encoded


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_assets(tmp_path_factory.getbasetemp() / "cohort-assets")


DASK = ("--workers", "1", "--threads-per-worker", "1", "--samples-per-task", "1", "--dashboard-address", "127.0.0.1:0")


def _score(assets: dict[str, Path], out: Path, capsys: pytest.CaptureFixture, *extra: object,
           manifest: Path | None = None, model: str = "model", dask: bool = False) -> tuple[int, str, str]:
    """``rescue score`` in this process (``--in-process`` unless ``dask``); returns (exit code, stdout, stderr)."""
    from rescue_gpu.flow.cli import _main

    capsys.readouterr()
    rc = _main(["score", str(manifest or assets["manifest"]), "--reference", str(assets["reference"]),
                "--model", str(assets[model]), "--out", str(out), *(DASK if dask else ("--in-process",)),
                *map(str, extra)])
    got = capsys.readouterr()
    return rc, got.out, got.err


def _one_line_error(err: str) -> str:
    """The error line of a failed command, checking it is the only line about the error and has no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0]


def _intact(store_dir: Path) -> list[str]:
    """Ids of the samples stored complete and undamaged, checking every stored sample is one of them."""
    store = RunStore(store_dir)
    keys = sorted(p.name for p in (store_dir / "samples").iterdir() if p.is_dir())
    ids = [s.sample_id for s in store]
    assert len(ids) == len(keys), f"incomplete or damaged groups left behind: {keys}"
    for sid in ids:
        assert not store.damage(sid) and store.image(sid) is not None
    return ids


def _fail_zarr_writes(monkeypatch: pytest.MonkeyPatch, when: Callable[[Path], bool], code: int) -> None:
    """Make zarr's file writes (``zarr.storage._local._put``) fail with ``code`` for paths where ``when`` holds."""
    import zarr.storage._local as local

    real = local._put

    def put(path: Path, value: object, exclusive: bool = False) -> int:
        if when(Path(path)):
            raise OSError(code, os.strerror(code))  # as write(2) reports it: no file name
        return real(path, value, exclusive)

    monkeypatch.setattr(local, "_put", put)


def _read_only_below(monkeypatch: pytest.MonkeyPatch, root: Path, code: int = errno.EROFS) -> None:
    """``Path.mkdir`` below ``root`` fails as on a read-only file system (or with another ``code``)."""
    real = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if str(self).startswith(str(root)):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


@contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``path`` (skips the test where mounting is not permitted); unmounted afterwards."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("no mount(8) here; the fault-injection tests cover this")
    path.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({got.stderr.strip()}); the fault-injection tests cover this")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ----------------------------------------------------------------------------- read-only --out


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["read-only", "no-permission"])
def test_read_only_out_exits_2_with_one_line(assets: dict[str, Path], tmp_path: Path, capsys, monkeypatch,
                                             code: int) -> None:
    out = tmp_path / "ro" / "run"
    _read_only_below(monkeypatch, tmp_path / "ro", code)
    rc, _, err = _score(assets, out, capsys)
    line = _one_line_error(err)
    assert rc == 2 and line.startswith(f"error: {out}: cannot write") and "--out" in line
    assert f"errno {code}, {errno.errorcode[code]}" in line
    assert ("read-only file system" if code == errno.EROFS else "permission denied") in line


def test_read_only_mount_exits_2_with_one_line(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        rc, _, err = _score(assets, ro / "run", capsys)
        line = _one_line_error(err)
        assert rc == 2 and str(ro / "run") in line and "errno 30, EROFS" in line


def test_run_dir_turned_read_only_exits_2_with_one_line(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    with _tmpfs(tmp_path / "fs", "size=4m") as fs:
        assert _score(assets, fs / "run", capsys, "--no-report")[0] == 0
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        rc, _, err = _score(assets, fs / "run", capsys, "--no-report")
        line = _one_line_error(err)
        assert rc == 2 and str(fs / "run") in line and "errno 30, EROFS" in line
        assert len(_intact(fs / "run" / "store.zarr")) == N_SAMPLES


# ----------------------------------------------------------------------------- full disk


@pytest.mark.parametrize("dask", [False, True], ids=["in-process", "dask"])
def test_full_disk_mid_run_stops_cleanly_and_a_rerun_completes(assets: dict[str, Path], tmp_path: Path, capsys,
                                                              monkeypatch, dask: bool) -> None:
    out = tmp_path / "run"
    third = sample_key("S00002")
    _fail_zarr_writes(monkeypatch, lambda p: f"samples/{third}/" in p.as_posix(), errno.ENOSPC)  # the client writes
    rc, _, err = _score(assets, out, capsys, "--keep-coords", dask=dask)
    line = _one_line_error(err)
    assert rc == 2 and line.startswith(f"error: {out / 'store.zarr'}: cannot write sample 'S00002'")
    assert "no space left on device (errno 28, ENOSPC)" in line and "run the same command again" in line
    done = _intact(out / "store.zarr")  # written before the fault: intact
    assert done == ["S00000", "S00001"] if not dask else (done and "S00002" not in done)
    monkeypatch.undo()  # space freed
    rc, text, err = _score(assets, out, capsys, "--keep-coords")
    assert rc == 0, err
    assert f"{N_SAMPLES - len(done)} to score, {len(done)} already done" in " ".join(text.split())
    assert (pd.read_csv(out / "scores.csv")["status"] == "scored").sum() == N_SAMPLES


def test_full_disk_while_writing_the_tables_keeps_the_old_ones(assets: dict[str, Path], tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    out = tmp_path / "run"
    assert _score(assets, out, capsys, "--no-report")[0] == 0
    before = (out / "scores.csv").read_bytes()

    def full(self: pd.DataFrame, *args: object, **kwargs: object) -> None:
        raise OSError("[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")  # pyarrow's

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    rc, _, err = _score(assets, out, capsys, "--no-report")
    line = _one_line_error(err)
    assert rc == 2 and line.startswith(f"error: {out / 'scores.parquet'}: cannot write") and "errno 28" in line
    assert (out / "scores.csv").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_real_full_disk_stops_cleanly_and_a_rerun_completes(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    with _tmpfs(tmp_path / "small", "size=2m") as fs:
        st = os.statvfs(fs)
        filler = fs / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 100 * 1024))  # about 2 samples with coords fit
        rc, _, err = _score(assets, fs / "run", capsys, "--keep-coords")
        line = _one_line_error(err)
        assert rc == 2 and str(fs / "run") in line and "errno 28, ENOSPC" in line
        done = _intact(fs / "run" / "store.zarr")
        assert 0 < len(done) < N_SAMPLES
        filler.unlink()
        rc, text, err = _score(assets, fs / "run", capsys, "--keep-coords")
        assert rc == 0, err
        assert f"{N_SAMPLES - len(done)} to score, {len(done)} already done" in " ".join(text.split())
        assert len(_intact(fs / "run" / "store.zarr")) == N_SAMPLES


def test_store_write_failure_removes_the_partial_sample_only(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    store = RunStore(tmp_path / "store.zarr")
    store.write({"sample_id": "S1", "status": "scored"}, {"image": np.ones((1, 4, 4), np.float32)})
    _fail_zarr_writes(monkeypatch, lambda p: p.name == "zarr.json" and p.parent.name == "S2", errno.ENOSPC)
    with pytest.raises(OutputError, match=r"store\.zarr: cannot write sample 'S2': no space left.*errno 28") as got:
        store.write({"sample_id": "S2", "status": "scored"}, {"image": np.ones((1, 4, 4), np.float32)})
    assert got.value.errno == errno.ENOSPC
    assert not (tmp_path / "store.zarr" / "samples" / "S2").exists() and store.read("S1") is not None
    monkeypatch.undo()
    store.write({"sample_id": "S2", "status": "scored"}, {"image": np.ones((1, 4, 4), np.float32)})
    assert [s.sample_id for s in store] == ["S1", "S2"]


# ----------------------------------------------------------------------------- rescue cells score (same store and loop)


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-sample imaging-flow library, an untrained resnet18 cell model and a pipeline file for it."""
    import torch

    from rescue_gpu.cells.record import build_cell_model
    from rescue_gpu.cells.record import CellModelRecord
    from rescue_gpu.cells.spec import load_cell_pipeline
    from rescue_gpu.cells.workflow import with_overrides
    from rescue_gpu.simulate.cells import simulate_cell_library

    base = tmp_path_factory.mktemp("cells-faults")
    lib = simulate_cell_library(base / "lib", assay="ifc", layout="numpy", n_train_patients=2, cells_per_class=1,
                                n_samples=3, cells_per_sample=12, fractions=[0.0, 0.3, 0.6], seed=3)
    pipe = with_overrides(load_cell_pipeline("ifc-labelfree"), architecture="resnet18")
    torch.manual_seed(0)
    net = build_cell_model(architecture="resnet18", in_channels=pipe.in_channels, n_classes=len(pipe.classes.names))
    rec = CellModelRecord(model=net.eval(), architecture="resnet18", classes=pipe.classes.names,
                          leukaemic=pipe.classes.leukaemic, channels=pipe.input.network_channels,
                          image_size=pipe.preprocess.size, preprocess=pipe.preprocess)
    pipeline_file = base / "p.toml"
    text = Path(load_cell_pipeline("ifc-labelfree").source).read_text()
    pipeline_file.write_text(text.replace('architecture = "resnet50"', 'architecture = "resnet18"'))
    return {"manifest": lib.samples_manifest, "model": rec.save(base / "model"), "pipeline": pipeline_file}


def _cells_score(cells: dict[str, Path], out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from rescue_gpu.cli import main

    capsys.readouterr()
    rc = main(["cells", "score", str(cells["manifest"]), "--model", str(cells["model"]), "--out", str(out),
               "--pipeline", str(cells["pipeline"]), "--in-process", "--gallery", "1", "--no-report"])
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_cells_score_full_disk_and_read_only(cells: dict[str, Path], tmp_path: Path, capsys, monkeypatch) -> None:
    ids = [r["sample_id"] for r in csv.DictReader(open(cells["manifest"]))]
    out = tmp_path / "run"
    second = sample_key(ids[1])
    _fail_zarr_writes(monkeypatch, lambda p: f"samples/{second}/" in p.as_posix(), errno.ENOSPC)
    rc, _, err = _cells_score(cells, out, capsys)
    line = _one_line_error(err)
    assert rc == 2 and line.startswith(f"error: {out / 'store.zarr'}: cannot write sample {ids[1]!r}")
    assert "errno 28, ENOSPC" in line
    assert [s.sample_id for s in RunStore(out / "store.zarr")] == ids[:1]
    monkeypatch.undo()
    rc, text, err = _cells_score(cells, out, capsys)
    assert rc == 0, err
    assert "2 to score, 1 already done" in " ".join(text.split())

    _read_only_below(monkeypatch, tmp_path / "ro")
    rc, _, err = _cells_score(cells, tmp_path / "ro" / "run", capsys)
    line = _one_line_error(err)
    assert rc == 2 and str(tmp_path / "ro" / "run") in line and "errno 30, EROFS" in line


# ----------------------------------------------------------------------------- long sample ids


def test_long_sample_ids_score_end_to_end(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    rows = list(csv.DictReader(open(assets["manifest"])))[:3]
    ids = [LONG_ASCII, LONG_CJK, "S-short"]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "path"])
        for sid, r in zip(ids, rows):
            w.writerow([sid, str((assets["cohort"] / r["path"]).resolve())])
    out = tmp_path / "run"
    rc, _, err = _score(assets, out, capsys, "--flag-events", manifest=manifest, model="model_low")  # all positive
    assert rc == 0, err
    df = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert list(df["sample_id"]) == ids and (df["status"] == "scored").all()
    names = [p.name for p in (out / "store.zarr" / "samples").iterdir() if p.is_dir()]
    names += [p.name for p in (out / "flagged").iterdir()]
    assert len(names) == 6 and all(len(n.encode()) <= MAX_KEY_BYTES + 4 for n in names)
    assert (out / "store.zarr" / "samples" / "S-short").is_dir()  # short ids keep their plain keys
    rc, text, err = _score(assets, out, capsys, "--flag-events", manifest=manifest, model="model_low")
    assert rc == 0 and "0 to score, 3 already done" in " ".join(text.split()), err


def test_ctrl_c_exits_130_and_says_a_score_run_resumes(capsys) -> None:
    """Ctrl-C (KeyboardInterrupt in a command) is exit 130 with one line saying what was kept."""
    import typer

    from rescue_gpu.cliutil import EXIT_INTERRUPTED, run_app

    app = typer.Typer()

    @app.command()
    def work() -> None:
        raise KeyboardInterrupt

    @app.command()
    def other() -> None:  # two commands: typer keeps the sub-command name
        pass

    assert run_app(app, ["work"]) == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "the same command resumes the run" in err and "Traceback" not in err
