"""Preprocessing: amplification decoding, compensation, transforms, QC gates, panel matching,
landmark registration.

The stage function is :func:`preprocess` (``FcsData`` -> :class:`Events`); the kernels it
composes are public too and work on numpy or cupy arrays.
"""

from .amplification import decode_amplification
from .compensation import compensate, resolve_spillover, spillover_from_csv
from .normalize import (density_peaks, landmark_targets, match_peaks, normalize_events, normalize_toml,
                        register_channel, register_peaks, sample_landmarks)
from .panel import default_channels, match_channels, match_panel
from .pipeline import Events, preprocess, preprocess_fingerprint
from .qc import qc_mask
from .transforms import apply_transform, arcsinh, linear, logicle, logicle_inverse, logicle_params

__all__ = [
    "decode_amplification", "compensate", "resolve_spillover", "spillover_from_csv",
    "match_panel", "match_channels", "default_channels", "qc_mask",
    "logicle", "logicle_inverse", "logicle_params", "arcsinh", "linear", "apply_transform",
    "Events", "preprocess", "preprocess_fingerprint",
    "sample_landmarks", "register_channel", "density_peaks", "match_peaks", "register_peaks",
    "normalize_events", "landmark_targets", "normalize_toml",
]
