"""Networks and model records (training, metrics, datasets and calibration live in submodules).

Names are imported lazily (PEP 562) so that ``import rescue_gpu.model.cli`` - and so the
``rescue`` command line - does not pay for importing torch until a model is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "FEATURES": "network", "MrdNet": "network", "adapt_conv1_weight": "network", "build_head": "network",
    "build_model": "network", "load_torchvision_state_dict": "network",
    "ModelRecord": "record", "expected_channels": "record", "import_state_dict": "record",
    "state_dict_sha256": "record",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
