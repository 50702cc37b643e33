"""The run options both ``score`` commands share are defined once and behave alike; runtime settings are wired."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from rescue_gpu.cli import app
from rescue_gpu.config import RuntimeConfig, load_runtime
from rescue_gpu.errors import ConfigError

SHARED = ("--config", "--scheduler", "--in-process", "--backend", "--workers", "--threads-per-worker",
          "--memory-limit", "--batch-size", "--samples-per-task", "--window", "--engine", "--precision", "--seed",
          "--keep-identifiers", "--report", "--dashboard-address")


def _options(*path: str) -> dict[str, object]:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {opt: p for p in cmd.params for opt in p.opts}


def test_both_score_commands_share_every_run_option() -> None:
    flow, cells = _options("score"), _options("cells", "score")
    for opt in SHARED:
        assert opt in flow and opt in cells, opt
        assert flow[opt].help == cells[opt].help, opt  # one definition
    assert cells["--memory-limit"].default is None and cells["--window"].default == 0


def test_cells_score_passes_memory_limit_and_window(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import rescue_gpu.cells.assay as assay

    seen = {}

    def fake_score_cells(inputs, *, model, out, options, runtime, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.update(window=options.window, memory=runtime.memory_limit)
        raise typer.Exit(0)

    monkeypatch.setattr(assay, "score_cells", fake_score_cells)
    from rescue_gpu.cli import main

    rc = main(["cells", "score", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "run"),
               "--memory-limit", "2GB", "--window", "3", "--in-process"])
    assert rc == 0 and seen == {"window": 3, "memory": "2GB"}


def test_runtime_has_no_dead_settings(tmp_path: Path) -> None:
    assert not hasattr(RuntimeConfig(), "pipeline")
    cfg = tmp_path / "config.toml"
    cfg.write_text('[runtime]\nprogress = false\nchunk_events = 1000\n')
    rt = load_runtime(cfg)
    assert rt.progress is False and rt.chunk_events == 1000
    cfg.write_text('[runtime]\npipeline = "aml-mrd"\n')
    with pytest.raises(ConfigError):
        load_runtime(cfg)


def test_progress_false_shows_counts_but_no_bar(capsys: pytest.CaptureFixture[str]) -> None:
    from rescue_gpu.cliutil import RunProgress

    with RunProgress(show=False) as bar:
        bar.on_start("in-process", 3, 0)
        assert bar._bar is None
        bar.on_progress(0, 3)
    assert "3 to score" in capsys.readouterr().out


def test_repository_config_toml_loads() -> None:
    rt = load_runtime(Path(__file__).resolve().parents[1] / "config.toml")
    assert rt.progress is True
