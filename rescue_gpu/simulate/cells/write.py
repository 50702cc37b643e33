"""Writers for single-cell images in the layouts :mod:`rescue_gpu.cells.io` reads (``rescue_gpu.cells.write``
before the runner/flow/cells split; here so that the simulator does not import the assay).

- one image per file: PNG / JPG (1 or 3 planes, 8 or 16 bit PNG) or TIFF (any number of
  planes, stored ``(C, h, w)`` planar, any integer or float dtype);
- imaging-flow exports: one TIFF per channel and cell, ``<cell>_<channel>.tif``
  (``cell_0001_Ch1.tif``, ``cell_0001_Ch6.tif``);
- numpy stacks: ``.npy`` with ``(N, C, h, w)`` images, or ``.npz`` with ``images`` and
  optional ``cell_ids``, ``labels``, ``patient_ids`` and ``channels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import CellDataError

__all__ = ["write_image", "write_channel_tiffs", "write_stack", "channel_tiff_name"]

_PIL_MODES = {(1, np.dtype(np.uint8)): "L", (1, np.dtype(np.uint16)): "I;16", (3, np.dtype(np.uint8)): "RGB"}


def _check(image: np.ndarray, path: Path) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise CellDataError(f"{path}: an image to write must be (C, h, w), got shape {image.shape}")
    return image


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write one ``(C, h, w)`` cell image; the format follows the suffix.

    PNG takes 1 plane (uint8 or uint16) or 3 planes (uint8); JPG 1 or 3 uint8 planes
    (lossy); TIFF any planes and dtype.

    Raises
    ------
    CellDataError
        The image does not fit the format (planes, dtype) or the suffix is unknown.
    """
    p = Path(path)
    img = _check(image, p)
    suffix = p.suffix.lower()
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(p, img, photometric="minisblack", planarconfig="separate" if img.shape[0] > 1 else None)
        return p
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise CellDataError(f"{p}: unknown image suffix {suffix!r}; use .png, .jpg or .tif")
    mode = _PIL_MODES.get((img.shape[0], img.dtype))
    if mode is None or (suffix != ".png" and mode == "I;16"):
        raise CellDataError(f"{p}: {suffix} holds 1 or 3 uint8 planes (PNG also 1 uint16 plane); got "
                            f"{img.shape[0]} plane(s) of {img.dtype}; write a .tif instead")
    from PIL import Image

    arr = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    # PNG: fast zlib level (lossless either way; the default level is ~3x slower to write)
    Image.fromarray(np.ascontiguousarray(arr)).save(p, **({"compress_level": 1} if suffix == ".png" else {}))
    return p


def channel_tiff_name(cell_id: str, channel: str) -> str:
    """File name of one channel of one cell in an imaging-flow export: ``<cell>_<channel>.tif``."""
    return f"{cell_id}_{channel}.tif"


def write_channel_tiffs(folder: str | Path, cell_id: str, image: np.ndarray, channels: Sequence[str]) -> list[Path]:
    """Write a ``(C, h, w)`` cell as one single-plane TIFF per channel, named by :func:`channel_tiff_name`."""
    out = Path(folder)
    img = _check(image, out / cell_id)
    if img.shape[0] != len(channels):
        raise CellDataError(f"{cell_id}: {img.shape[0]} planes but {len(channels)} channel names {list(channels)}")
    return [write_image(out / channel_tiff_name(cell_id, ch), img[i:i + 1]) for i, ch in enumerate(channels)]


def write_stack(path: str | Path, images: np.ndarray, *, cell_ids: Sequence[str] | None = None,
                labels: Sequence[str] | None = None, patient_ids: Sequence[str] | None = None,
                channels: Sequence[str] | None = None) -> Path:
    """Write ``(N, C, h, w)`` images as ``.npy`` (images only) or ``.npz`` (with the optional columns)."""
    p = Path(path)
    imgs = np.asarray(images)
    if imgs.ndim != 4:
        raise CellDataError(f"{p}: a stack must be (N, C, h, w), got shape {imgs.shape}")
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".npy":
        np.save(p, imgs, allow_pickle=False)
        return p
    if p.suffix != ".npz":
        raise CellDataError(f"{p}: a stack is written as .npy or .npz")
    extra = {k: np.asarray(v, dtype=str) for k, v in
             (("cell_ids", cell_ids), ("labels", labels), ("patient_ids", patient_ids), ("channels", channels))
             if v is not None}
    np.savez_compressed(p, images=imgs, **extra)
    return p
