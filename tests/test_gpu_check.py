"""CPU-side parts of benchmarks/gpu_check.py, so the one GPU run is not spent on typos."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402


def test_defaults_are_the_sized_gpu_run(tmp_path: Path) -> None:
    a = gpu_check.parse_args(["--out", str(tmp_path)])
    assert (a.events, a.ref_events, a.cohort_samples, a.worker_list) == (1_500_000, 30_000, 50, [1, 2])
    assert a.stage_list == list(gpu_check.STAGES) and not a.cpu and not a.dry_run
    assert a.budget_s < 480  # the 8-minute rule


def test_out_defaults_to_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.parse_args([]).out == tmp_path


def test_cpu_mode_uses_toy_sizes_unless_given(tmp_path: Path) -> None:
    a = gpu_check.parse_args(["--cpu", "--out", str(tmp_path)])
    assert a.events < 10_000 and a.cohort_samples <= 4
    assert gpu_check.parse_args(["--cpu", "--events", "123", "--out", str(tmp_path)]).events == 123


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--stages", "tests,bogus"], "unknown stage"), (["--workers", "1,x"], "comma-separated integers"),
     (["--workers", "0"], ">= 1"), (["--events", "0"], "--events must be >= 1"), (["--budget-s", "-1"], "positive"),
     (["--cpu", "--dry-run"], "not allowed with")],
)
def test_bad_arguments_exit_2_with_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_stage_limits_fit_the_budget() -> None:
    lim = gpu_check.stage_limits(list(gpu_check.STAGES), 450)
    assert set(lim) == set(gpu_check.STAGES) and sum(lim.values()) <= 450 + 0.5
    assert gpu_check.stage_limits(["env"], 450) == {"env": gpu_check.LIMITS["env"]}


def test_dry_run_writes_valid_json_and_log(tmp_path: Path) -> None:
    rc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                        cwd=ROOT, capture_output=True, text=True, timeout=60).returncode
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and gpu_check.validate_report(rep) == []
    assert [s["name"] for s in rep["stages"]] == list(gpu_check.STAGES)
    assert all(s["status"] == "planned" for s in rep["stages"])
    tests = next(s for s in rep["stages"] if s["name"] == "tests")
    assert "gpu or gpusim" in tests["result"]["command"]
    install = next(s for s in rep["stages"] if s["name"] == "install")["result"]["command"]
    assert "--no-index" in install and "--target" in install
    assert "gpu_check dry-run" in (tmp_path / "gpu_check.log").read_text()


def test_validate_report_finds_problems() -> None:
    args = gpu_check.parse_args(["--out", "x"])
    rep = gpu_check.new_report(args, "gpu")
    assert gpu_check.validate_report(rep) == []
    rep["stages"].append({"name": "nope", "status": "weird", "limit_s": 1, "seconds": 0, "result": {}})
    rep["finished"] = "now"
    problems = gpu_check.validate_report(rep)
    assert any("unknown 'nope'" in p for p in problems) and any("unknown 'weird'" in p for p in problems)
    assert any(p.startswith("ok:") for p in problems)


def test_cpu_mode_runs_the_throughput_stages(tmp_path: Path) -> None:
    """env + projection + resnet at toy sizes on the CPU, through the same subprocess/JSON machinery."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(tmp_path),
           "--stages", "install,env,tests,projection,resnet", "--events", "600", "--ref-events", "500",
           "--batch", "2", "--image", "32", "--wheels", str(tmp_path / "no-wheels")]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert gpu_check.validate_report(rep) == [], p.stdout[-2000:]
    status = {s["name"]: s["status"] for s in rep["stages"]}
    assert status == {"install": "skipped", "env": "ok", "tests": "skipped", "projection": "ok", "resnet": "ok"}, p.stdout[-3000:]
    assert p.returncode == 0 and rep["ok"] is True
    f = rep["figures"]
    assert f["projection.events"] == 600 and f["projection.events_per_s"] > 0
    assert f["resnet.resnet34_32_fp32_images_per_s"] > 0 and f["resnet.resnet34_32_bf16_max_dp"] <= 1e-2


def test_ci_wiring_runs_the_simulator_tests() -> None:
    """`make test` runs the gpusim module in its own process under the simulator; the main run deselects it."""
    make = (ROOT / "Makefile").read_text()
    test_recipe = re.split(r"\ntest: install( slurm-deps)?\n", make, maxsplit=1)[2].split("\n\n", 1)[0]
    assert "$(PY) -m pytest -q || rc=1" in test_recipe
    assert "NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m gpusim tests/test_gpusim.py || rc=1" in test_recipe
    assert "exit $$rc" in test_recipe
    assert "benchmarks/gpu_check.py" in make.split("\ngpu-check:", 1)[1].split("\n\n", 1)[0]
    py = (ROOT / "pyproject.toml").read_text()
    assert "-m 'not gpusim'" in py and '"gpusim:' in py


def test_one_kernel_source() -> None:
    """The CPU dispatchers are compiled from the registered per-event sources; the CUDA C copy is gone."""
    from rescue_gpu.projection import _kernels, fuzzy, neighbors, sgd

    assert not (ROOT / "rescue_gpu" / "projection" / "_cupy_kernels.py").exists()
    assert {"merge_tile_row", "pair_distance", "resort_row", "smooth_row", "edge_weight", "init_row",
            "layout_event", "rand_below"} <= set(_kernels.SOURCES)
    for mod, name in ((neighbors, "pair_distance"), (neighbors, "resort_row"), (fuzzy, "smooth_row"),
                      (fuzzy, "init_row"), (sgd, "layout_event"), (sgd, "rand_below")):
        assert getattr(mod, name).py_func is _kernels.SOURCES[name]


@pytest.mark.parametrize(("workers", "per_gpu", "n_gpus", "runs", "skipped"), [
    ([1, 2], [2], 1, [("workers1", "1", 1), ("gpus1_per_gpu2", "auto", 2)], ["workers2: only 1 GPU(s) visible"]),
    ([1, 2], [2], 4, [("workers1", "1", 1), ("workers2", "2", 1), ("gpus4", "auto", 1), ("gpus4_per_gpu2", "auto", 2)],
     []),
    ([1, 2], [1], 2, [("workers1", "1", 1), ("workers2", "2", 1)], []),
])
def test_cohort_runs_fit_the_visible_gpus(workers, per_gpu, n_gpus, runs, skipped) -> None:  # noqa: ANN001
    assert gpu_check.cohort_runs(workers, per_gpu, n_gpus, cpu=False) == (runs, skipped)


def test_cohort_runs_on_cpu_are_the_worker_counts() -> None:
    assert gpu_check.cohort_runs([1, 2], [2], 0, cpu=True) == ([("workers1", "1", 1), ("workers2", "2", 1)], [])


def test_bad_workers_per_gpu_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(["--workers-per-gpu", "0"])
    assert e.value.code == 2 and "--workers-per-gpu counts must be >= 1" in capsys.readouterr().err
