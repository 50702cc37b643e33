"""Plain records for what an FCS file holds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .numbers import ascii_float_or_none

__all__ = ["Spillover", "FcsData"]


@dataclass(frozen=True)
class Spillover:
    """A spillover (compensation) matrix and the channels ($PnN) it applies to.

    ``matrix[i, j]`` is the fraction of fluorochrome ``channels[i]``'s signal seen in
    detector ``channels[j]`` (the FCS ``$SPILLOVER`` row order). ``source`` names the
    keyword it came from (``"$SPILLOVER"``, ``"SPILL"``, ``"$COMP"``, ``"$DFC"`` or ``"user"``).
    """

    channels: tuple[str, ...]
    matrix: np.ndarray
    source: str = "$SPILLOVER"

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(self.channels):
            raise ValueError(
                f"spillover matrix of shape {m.shape} does not fit {len(self.channels)} channels"
            )
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "channels", tuple(self.channels))


@dataclass
class FcsData:
    """One data set of an FCS file.

    Attributes
    ----------
    events
        ``(n_events, n_parameters)`` array of the stored values: integers masked to
        their ``$PnR`` range, floats as written; no ``$PnE``/``$PnG`` scaling.
    channels
        ``$PnN`` of every parameter.
    markers
        ``$PnS`` of every parameter, ``""`` where absent.
    keywords
        Every TEXT keyword, keys upper-cased (``$`` kept), values as strings.
    version
        ``"FCS2.0"``, ``"FCS3.0"``, ``"FCS3.1"`` or ``"FCS3.2"``.
    n_datasets
        How many data sets the file chains through ``$NEXTDATA``.
    spillover
        The file's own spillover matrix, or None.
    path
        The file it was read from (``None`` for in-memory data).
    dataset
        Which data set of the file this is (0-based).
    """

    events: np.ndarray
    channels: list[str]
    markers: list[str]
    keywords: dict[str, str]
    version: str
    n_datasets: int = 1
    spillover: Spillover | None = None
    path: str | None = None
    dataset: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        """Number of events (rows)."""
        return int(self.events.shape[0])

    @property
    def n_parameters(self) -> int:
        """Number of parameters (columns)."""
        return len(self.channels)

    def ranges(self) -> np.ndarray:
        """``$PnR`` of every parameter as float64 (NaN where absent or not a plain ASCII number)."""
        out = np.full(self.n_parameters, np.nan)
        for i in range(self.n_parameters):
            value = ascii_float_or_none(self.keywords.get(f"$P{i + 1}R", ""))
            if value is not None:
                out[i] = value
        return out

    def amplification(self) -> list[tuple[float, float]]:
        """``$PnE`` (decades, offset) of every parameter; ``(0, 0)`` means linear.

        A value that is not two plain ASCII numbers reads as ``(0, 0)``.
        """
        out: list[tuple[float, float]] = []
        for i in range(self.n_parameters):
            items = self.keywords.get(f"$P{i + 1}E", "0,0").split(",")[:2]
            f1, f2 = (ascii_float_or_none(v) for v in items) if len(items) == 2 else (None, None)
            out.append((f1, f2) if f1 is not None and f2 is not None else (0.0, 0.0))
        return out

    def data_types(self) -> list[str]:
        """Each parameter's data type (``I``, ``F`` or ``D``): ``$PnDATATYPE`` (FCS 3.2), else ``$DATATYPE``."""
        default = self.keywords.get("$DATATYPE", "I").strip().upper() or "I"
        return [self.keywords.get(f"$P{i + 1}DATATYPE", "").strip().upper() or default
                for i in range(self.n_parameters)]

    def gains(self) -> np.ndarray:
        """``$PnG`` of every parameter (1.0 where absent or not a plain ASCII number)."""
        out = np.ones(self.n_parameters)
        for i in range(self.n_parameters):
            value = ascii_float_or_none(self.keywords.get(f"$P{i + 1}G", ""))
            if value is not None:
                out[i] = value
        return out
