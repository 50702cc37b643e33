"""Config and pipeline files: typed loading, unknown keys and wrong types refused with the key and file named."""

from pathlib import Path

import pytest

from rescue_gpu.config import (
    Pipeline, RuntimeConfig, TransformSpec, load_pipeline, load_runtime, parse_memory,
)
from rescue_gpu.errors import ConfigError, RescueError

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_files_load():
    pipe = load_pipeline("aml-mrd")
    assert isinstance(pipe, Pipeline)
    assert pipe.panel.markers[:3] == ("CD45", "CD34", "CD117")
    assert pipe.preprocess.fluorescence == TransformSpec(kind="logicle", t=262144.0, w=0.5, m=4.5, a=0.0)
    assert pipe.preprocess.scatter.kind == "linear"
    assert pipe.panel.aliases["HLA-DR"] == ("HLADR", "DR", "HLA DR")
    rt = load_runtime(ROOT / "config.toml")
    assert isinstance(rt, RuntimeConfig) and rt.backend == "auto" and rt.chunk_events == 262144


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def test_unknown_key_names_key_and_file(tmp_path):
    p = _write(tmp_path, '[preprocess.qc]\nremove_dublets = true\n')
    with pytest.raises(ConfigError) as ei:
        load_pipeline(p)
    msg = str(ei.value)
    assert str(p) in msg and "preprocess.qc.remove_dublets" in msg and "remove_doublets" in msg


def test_wrong_type_names_key_and_file(tmp_path):
    p = _write(tmp_path, '[preprocess.fluorescence]\nkind = "logicle"\nt = "big"\n')
    with pytest.raises(ConfigError, match=r"p\.toml: key 'preprocess\.fluorescence\.t' must be a number"):
        load_pipeline(p)
    p = _write(tmp_path, '[panel]\nmarkers = "CD34"\n')
    with pytest.raises(ConfigError, match="'panel.markers' must be a list"):
        load_pipeline(p)


def test_bad_literal_and_range(tmp_path):
    p = _write(tmp_path, '[preprocess.fluorescence]\nkind = "log"\n')
    with pytest.raises(ConfigError, match="must be one of 'logicle', 'arcsinh', 'linear'"):
        load_pipeline(p)
    p = _write(tmp_path, '[preprocess.fluorescence]\nkind = "logicle"\nw = 3.0\n')
    with pytest.raises(ConfigError, match="w <= m/2"):
        load_pipeline(p)


def test_invalid_toml_and_missing_file(tmp_path):
    p = _write(tmp_path, "name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_pipeline(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_pipeline(tmp_path / "absent.toml")


def test_runtime_overrides_and_errors(tmp_path):
    cfg = _write(tmp_path, '[runtime]\nbackend = "cpu"\nworkers = 4\n')
    rt = load_runtime(cfg, batch_size=8, backend=None)
    assert (rt.backend, rt.workers, rt.batch_size) == ("cpu", "4", 8)
    with pytest.raises(ConfigError, match="unknown table"):
        load_runtime(_write(tmp_path, "[workers]\nx = 1\n"))
    with pytest.raises(ConfigError, match="unknown key 'cluster.x'"):  # [cluster] is read (where workers come from)
        load_runtime(_write(tmp_path, "[cluster]\nx = 1\n"))
    with pytest.raises(ConfigError, match="runtime.backend"):
        load_runtime(_write(tmp_path, '[runtime]\nbackend = "tpu"\n'))
    with pytest.raises(ConfigError, match="chunk_events must be >= 1"):
        load_runtime(chunk_events=0)
    assert issubclass(ConfigError, RescueError)


@pytest.mark.parametrize(
    "value, expected",
    [("auto", 1000), ("0.5", 500), ("24GB", 24 * 10**9), ("2GiB", 2 * 2**30), ("512 MB", 512 * 10**6), ("4096", 4096)],
)
def test_parse_memory(value, expected):
    assert parse_memory(value, total=1000) == expected


@pytest.mark.parametrize("value", ["lots", "-1GB", "1.5.2", "GB"])
def test_parse_memory_rejects(value):
    with pytest.raises(ConfigError, match="memory size"):
        parse_memory(value, total=1000)
