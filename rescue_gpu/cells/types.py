"""The in-memory shape of a set of single-cell images, as readers return them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CellDataError

__all__ = ["CellSet"]


@dataclass
class CellSet:
    """Raw single-cell crops with their identities.

    Attributes
    ----------
    images
        One ``(C, h, w)`` array per cell in its stored dtype (crops may differ in size),
        or a stacked ``(N, C, h, w)`` array.
    channels
        Names of the ``C`` planes, in order.
    cell_ids
        One id per cell (file stem, object number or stack index), unique within a sample.
    labels
        Class name per cell (``""`` when unlabelled); empty array when none are known.
    patient_ids, sample_ids
        Per cell (``""`` when unknown).
    source
        Where the cells were read from (a folder or file), for messages.
    """

    images: list[np.ndarray] | np.ndarray
    channels: tuple[str, ...]
    cell_ids: np.ndarray
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    patient_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    sample_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.images)
        self.cell_ids = np.asarray(self.cell_ids, dtype=str)
        for name in ("labels", "patient_ids", "sample_ids"):
            arr = np.asarray(getattr(self, name), dtype=str)
            if arr.size == 0:
                arr = np.full(n, "", dtype=str)
            setattr(self, name, arr)
        bad = [k for k in ("cell_ids", "labels", "patient_ids", "sample_ids") if len(getattr(self, k)) != n]
        if bad:
            raise CellDataError(f"{self.source or 'cell set'}: {', '.join(bad)} do not have one entry per image ({n})")
        for i, img in enumerate(self.images):
            if np.ndim(img) != 3 or img.shape[0] != len(self.channels):
                raise CellDataError(f"{self.source or 'cell set'}: image {self.cell_ids[i]!r} has shape "
                                    f"{tuple(np.shape(img))}, expected ({len(self.channels)}, h, w) for channels "
                                    f"{list(self.channels)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        """Whether every cell has a class label."""
        return len(self) > 0 and bool(np.all(self.labels != ""))
