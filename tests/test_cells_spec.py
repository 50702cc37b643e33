"""Cells pipeline files: the shipped ones load; bad keys and values are refused with the key and the file named."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescue_gpu.cells.spec import load_cell_pipeline
from rescue_gpu.errors import ConfigError


@pytest.mark.parametrize("name,planes,leukaemic", [("ifc-labelfree", 2, ("blast",)),
                                                   ("smear-cytomorphology", 3, ("MYO", "MOB")),
                                                   ("smear-aml-subtype", 3, ("PML_RARA", "NPM1", "CBFB_MYH11",
                                                                             "RUNX1_RUNX1T1"))])
def test_shipped_pipelines_load(name, planes, leukaemic):
    pipe = load_cell_pipeline(name)
    assert pipe.in_channels == planes and pipe.classes.leukaemic == leukaemic
    assert Path(pipe.source).name == f"{name}.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,match", [
    ('kind = "cells"\n[classes]\nnames = ["a", "b"]\nleukaemic = ["c"]\n', "leukaemic"),
    ('kind = "cells"\n[classes]\nnames = ["a", "b"]\nleukaemic = ["a", "b"]\n', "proper subset"),
    ('kind = "cells"\n[input]\nchannels = ["Ch1"]\nuse_channels = ["Ch6"]\n', "Ch6"),
    ('kind = "cells"\n[preprocess]\nsize = 8\n', "size"),
    ('kind = "cells"\n[preprocess]\nlow_percentile = 99.0\nhigh_percentile = 1.0\n', "percentile"),
    ('kind = "cells"\n[model]\narchitecture = "vgg16"\n', "architecture"),
    ('kind = "cells"\n[model.train]\nval_fraction = 0.6\ntest_fraction = 0.5\n', "val_fraction"),
    ('kind = "cells"\n[readout]\ncutoff = 250.0\n', "cutoff"),
    ('kind = "cells"\n[readout]\ncuttof = 25.0\n', "cuttof"),
    ('name = "flow"\n', 'kind = "cells"'),
])
def test_bad_pipelines_are_refused(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as exc:
        load_cell_pipeline(path)
    assert str(path) in str(exc.value)
