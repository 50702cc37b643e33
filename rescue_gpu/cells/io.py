"""Readers for single-cell images: one file per cell, imaging-flow channel TIFFs, numpy stacks.

Layouts (see :class:`~rescue_gpu.cells.spec.CellInputSpec`):

- ``"tree"``: one image file per cell (PNG / JPG / TIFF of any number of planes).
  Training data lies in ``root/<class>/<patient>/<images>`` (:func:`read_tree`); a
  sample to score is a folder of images, directly or in subfolders (:func:`read_sample`).
  A folder whose image files are all TIFFs named ``<cell>_<channel>.tif``, some with
  channels of the pipeline, is read as per-channel groups, so imaging-flow exports can
  sit in a tree.
- ``"channel-tiffs"``: one single-plane TIFF per channel and cell, ``<cell>_<channel>.tif``
  (also ``.tiff`` and ``.ome.tif``), as imaging-flow software exports them
  (:func:`read_channel_tiffs`).
- ``"numpy"``: a ``.npy`` ``(N, C, h, w)`` stack or a ``.npz`` with ``images`` and optional
  ``labels``, ``patient_ids``, ``cell_ids`` and ``channels`` (:func:`read_stack`).

Every reader returns a :class:`~rescue_gpu.cells.types.CellSet` of ``(C, h, w)`` crops in
their stored dtype, in a sorted, deterministic order, with unique cell ids. Anything that
cannot be read raises :class:`~rescue_gpu.errors.CellDataError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CellDataError
from .spec import CellInputSpec
from .types import CellSet

__all__ = [
    "IMAGE_SUFFIXES", "STACK_SUFFIXES", "read_image", "detect_layout", "read_tree", "read_channel_tiffs",
    "read_stack", "read_sample", "select_channels",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
STACK_SUFFIXES = (".npy", ".npz")
_TIFF_SUFFIXES = (".tif", ".tiff")
_CH_NAME = re.compile(r"^.+_Ch\d+\.(ome\.)?tiff?$", re.IGNORECASE)
_PIL_TO_RGB = ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_PIL_TO_L = ("1", "LA", "La")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class _Cell:
    """Where one cell's image lies: one multi-plane file, or one file per channel (``per_channel``)."""

    cell_id: str
    files: tuple[Path, ...]
    per_channel: bool = False
    label: str = ""
    patient: str = ""


# --------------------------------------------------------------------------- single images


def read_image(path: str | Path, *, n_channels: int | None = None) -> np.ndarray:
    """Read one cell image as ``(C, h, w)`` in its stored dtype.

    PNG / JPG are read with Pillow: grey (8 or 16 bit) gives one plane, RGB three;
    an alpha channel is dropped and palette images become RGB. TIFFs are read with
    tifffile; whether a 3-D TIFF is planes-first (``CYX``, ``SYX``, ``QYX``) or
    samples-last (``YXS``, e.g. an RGB TIFF) is taken from the file's series axes.

    Parameters
    ----------
    path
        A ``.png``, ``.jpg``/``.jpeg`` or ``.tif``/``.tiff`` file.
    n_channels
        When given, the number of planes the image must have.

    Returns
    -------
    numpy.ndarray
        ``(C, h, w)``.

    Raises
    ------
    CellDataError
        Unknown suffix, missing, corrupt or truncated file, more than one plane axis,
        or a plane count other than ``n_channels``.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise CellDataError(f"{p}: not a cell image (suffix {suffix!r}); cell images are {', '.join(IMAGE_SUFFIXES)}")
    if not p.is_file():
        raise CellDataError(f"{p}: no such image file")
    try:
        image = _read_tiff(p) if suffix in _TIFF_SUFFIXES else _read_pil(p)
    except CellDataError:
        raise
    except Exception as exc:  # decoders raise many types (OSError, ValueError, TiffFileError, ...)
        raise CellDataError(f"{p}: cannot decode this image ({type(exc).__name__}: {exc}); the file is corrupt, "
                            f"truncated or not really a {suffix} image: export it again or remove it") from exc
    if n_channels is not None and image.shape[0] != n_channels:
        raise CellDataError(f"{p}: the image has {image.shape[0]} plane(s) but {n_channels} channel(s) are expected; "
                            "check input.channels in the pipeline against the files")
    return image


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in _PIL_TO_RGB:
            im = im.convert("RGB")
        elif im.mode in _PIL_TO_L:
            im = im.convert("L")
        arr = np.asarray(im)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # I;16B -> native order
    return arr[None].copy() if arr.ndim == 2 else np.ascontiguousarray(np.moveaxis(arr, -1, 0))


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        page = tif.pages[0]
        rgb_alpha = page.photometric == tifffile.PHOTOMETRIC.RGB and "S" in axes
    image = _planes_first(np.asarray(data), axes, path)
    return image[:3] if rgb_alpha and image.shape[0] > 3 else image


def _planes_first(data: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """Reorder a TIFF series with ``axes`` to ``(C, h, w)``; singleton axes other than Y and X are dropped."""
    if len(axes) != data.ndim or "Y" not in axes or "X" not in axes:
        raise CellDataError(f"{path}: TIFF series with axes {axes!r} and shape {data.shape} has no height and width "
                            "axes; save each cell as planes x height x width")
    keep = [i for i, a in enumerate(axes) if a in "YX" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    other = [i for i, a in enumerate(axes) if a not in "YX"]
    if len(other) > 1:
        raise CellDataError(f"{path}: TIFF with axes {axes!r} and shape {data.shape} has more than one plane axis; "
                            "a cell image is planes x height x width (save z-stacks or time series as separate cells)")
    data = np.transpose(data, other + [axes.index("Y"), axes.index("X")])
    return np.ascontiguousarray(data.reshape((-1,) + data.shape[-2:]))


# --------------------------------------------------------------------------- file discovery


def _image_files(folder: Path, *, recursive: bool) -> list[Path]:
    """Image files in ``folder`` (and below when ``recursive``), sorted; hidden files skipped."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file())


def _stem(path: Path) -> str:
    """File name without its image suffix (``.ome.tif`` counts as one suffix)."""
    name = path.name
    low = name.lower()
    for suffix in (".ome.tiff", ".ome.tif") + IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _split_channel(path: Path) -> tuple[str, str] | None:
    """``(cell stem, channel)`` of a ``<cell>_<channel>.tif`` file, else ``None``."""
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        return None
    cell, sep, channel = _stem(path).rpartition("_")
    return (cell, channel) if sep and cell and channel else None


def _relative_id(root: Path, folder: Path, stem: str) -> str:
    rel = folder.relative_to(root)
    return stem if rel == Path(".") else f"{rel.as_posix()}/{stem}"


def detect_layout(path: str | Path) -> str:
    """Guess the layout of an input: ``"numpy"``, ``"channel-tiffs"`` or ``"tree"``.

    A ``.npy``/``.npz`` file is ``"numpy"``. A folder is ``"channel-tiffs"`` when all its
    image files (searched recursively) are named ``<cell>_Ch<digits>.tif`` (``.tiff``,
    ``.ome.tif``), ``"tree"`` otherwise.

    Raises
    ------
    CellDataError
        The path does not exist, is a file of another kind, or the folder holds no images.
    """
    p = Path(path)
    if p.suffix.lower() in STACK_SUFFIXES and p.is_file():
        return "numpy"
    if not p.is_dir():
        what = "is not a .npy/.npz stack or a folder of cell images" if p.exists() else "does not exist"
        raise CellDataError(f"{p}: {what}")
    files = _image_files(p, recursive=True)
    if not files:
        raise CellDataError(f"{p}: no cell images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
    return "channel-tiffs" if all(_CH_NAME.match(f.name) for f in files) else "tree"


# --------------------------------------------------------------------------- grouping files into cells


def _group_channels(root: Path, files: Sequence[Path]) -> tuple[dict[str, dict[str, Path]], list[Path]]:
    """Group ``<cell>_<channel>.tif`` files by cell id; also return the files that do not fit the pattern."""
    groups: dict[str, dict[str, Path]] = {}
    stray: list[Path] = []
    for f in files:
        parts = _split_channel(f)
        if parts is None:
            stray.append(f)
            continue
        cell_id = _relative_id(root, f.parent, parts[0])
        chans = groups.setdefault(cell_id, {})
        if parts[1] in chans:
            raise CellDataError(f"{f}: cell {cell_id!r} has two files for channel {parts[1]!r} "
                                f"({chans[parts[1]].name} and {f.name}); remove one")
        chans[parts[1]] = f
    return groups, stray


def _channel_cells(root: Path, files: Sequence[Path], channels: Sequence[str]) -> list[_Cell]:
    """Cells of a channel-TIFF folder, with their files in the order of ``channels``."""
    groups, stray = _group_channels(root, files)
    if stray:
        names = ", ".join(str(s.relative_to(root)) for s in stray[:3])
        raise CellDataError(f"{root}: {len(stray)} image file(s) are not single-channel TIFFs named "
                            f"<cell>_<channel>.tif (e.g. {names}); use layout 'tree' for one file per cell")
    cells = []
    for cell_id in sorted(groups):
        found = groups[cell_id]
        missing = [c for c in channels if c not in found]
        if missing:
            raise CellDataError(f"{root / cell_id}: cell {cell_id!r} has no {missing[0]!r} channel TIFF "
                                f"(channels found: {sorted(found)}; needed: {list(channels)}); "
                                "remove the cell or fix input.channels")
        cells.append(_Cell(cell_id, tuple(found[c] for c in channels), per_channel=True))
    return cells


def _is_channel_folder(files: Sequence[Path], channels: Sequence[str]) -> bool:
    """Whether every file is a ``<cell>_<channel>.tif`` and some of them carry channels of the pipeline.

    Extra channels (an export of Ch1..Ch12 for a pipeline reading Ch1 and Ch9) are allowed.
    """
    parts = [_split_channel(f) for f in files]
    if not parts or any(p is None for p in parts):
        return False
    return any(p[1] in channels for p in parts if p is not None)


def _folder_cells(root: Path, folder: Path, channels: Sequence[str], *, recursive: bool) -> list[_Cell]:
    """Cells under ``folder`` (ids relative to ``root``); each directory is read as channel groups or single files."""
    by_dir: dict[Path, list[Path]] = {}
    for f in _image_files(folder, recursive=recursive):
        by_dir.setdefault(f.parent, []).append(f)
    cells: list[_Cell] = []
    for d in sorted(by_dir):
        if _is_channel_folder(by_dir[d], channels):
            cells += [dataclasses.replace(c, cell_id=_relative_id(root, folder, c.cell_id))
                      for c in _channel_cells(folder, by_dir[d], channels)]
        else:
            cells += [_Cell(_relative_id(root, f.parent, _stem(f)), (f,)) for f in by_dir[d]]
    return cells


def _read_cells(cells: Sequence[_Cell], n_channels: int, on_progress: Progress | None) -> list[np.ndarray]:
    """Read every cell's ``(C, h, w)`` image, calling ``on_progress(i, n)`` after each."""
    images = []
    for i, cell in enumerate(cells):
        images.append(_read_cell(cell, n_channels))
        if on_progress is not None:
            on_progress(i, len(cells))
    return images


def _read_cell(cell: _Cell, n_channels: int) -> np.ndarray:
    if not cell.per_channel:
        return read_image(cell.files[0], n_channels=n_channels)
    planes = [read_image(f, n_channels=1)[0] for f in cell.files]
    shapes = sorted({p.shape for p in planes})
    if len(shapes) > 1:
        raise CellDataError(f"{cell.files[0].parent / cell.cell_id.rsplit('/', 1)[-1]}: the channel TIFFs of cell "
                            f"{cell.cell_id!r} differ in size {shapes}; every channel of a cell must have one shape")
    return np.stack(planes)


def _check_unique(cell_ids: np.ndarray, source: str | Path) -> None:
    ids, counts = np.unique(np.asarray(cell_ids, dtype=str), return_counts=True)
    dups = ids[counts > 1]
    if dups.size:
        raise CellDataError(f"{source}: {dups.size} cell id(s) occur more than once (e.g. {list(dups[:3])}); "
                            "cell ids must be unique within a sample: rename the files (e.g. a.png beside a.tif) "
                            "or give the stack distinct cell_ids")


def _cell_set(cells: Sequence[_Cell], images: list[np.ndarray], channels: Sequence[str], source: Path) -> CellSet:
    ids = np.array([c.cell_id for c in cells], dtype=str)
    _check_unique(ids, source)
    return CellSet(images, tuple(channels), ids, labels=np.array([c.label for c in cells], dtype=str),
                   patient_ids=np.array([c.patient for c in cells], dtype=str), source=str(source))


# --------------------------------------------------------------------------- public readers


def read_channel_tiffs(folder: str | Path, *, channels: Sequence[str], recursive: bool = False) -> CellSet:
    """Read an imaging-flow export: one single-plane TIFF per channel and cell, ``<cell>_<channel>.tif``.

    Files are grouped by cell stem; the channel name is the part after the last ``_``
    (``cell_0001_Ch1.tif`` is channel ``"Ch1"`` of cell ``"cell_0001"``). Planes come in
    the order of ``channels``, which may be a subset or reordering of the channels present.

    Parameters
    ----------
    folder
        The export folder.
    channels
        Channel names to read, in plane order.
    recursive
        Also read subfolders (cell ids are then ``subfolder/cell``).

    Raises
    ------
    CellDataError
        No channel TIFFs, files not named ``<cell>_<channel>.tif``, a cell missing a
        requested channel, planes of one cell of different sizes, or an unreadable file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CellDataError(f"{root}: not a folder of channel TIFFs")
    files = _image_files(root, recursive=recursive)
    if not files:
        raise CellDataError(f"{root}: no channel TIFFs (<cell>_<channel>.tif) in this folder")
    cells = _channel_cells(root, files, channels)
    return _cell_set(cells, _read_cells(cells, len(channels), None), channels, root)


def _stack_images(images: np.ndarray, channels: Sequence[str], path: Path) -> np.ndarray:
    """Check a stack is ``(N, C, h, w)`` (or ``(N, h, w)`` for one channel) of numbers."""
    if images.dtype.kind not in "biuf":
        raise CellDataError(f"{path}: images have dtype {images.dtype}; a cell stack holds numbers")
    if images.ndim == 3 and len(channels) == 1:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] == len(channels):
        return images
    hint = ("it looks like (N, h, w, C): save np.moveaxis(images, -1, 1) instead"
            if images.ndim == 4 and images.shape[-1] == len(channels) else
            "check input.channels in the pipeline")
    raise CellDataError(f"{path}: images have shape {images.shape}, expected (N, {len(channels)}, h, w) for channels "
                        f"{list(channels)}" + (" or (N, h, w)" if len(channels) == 1 else "") + f"; {hint}")


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (as ``images``) or ``.npz`` file, loaded without pickle."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"images": loaded}
        with loaded:
            return {k: loaded[k] for k in loaded.files}
    except Exception as exc:  # ValueError (pickled objects), OSError, BadZipFile, ...
        raise CellDataError(f"{path}: cannot load this stack ({type(exc).__name__}: {exc}); it must be a plain "
                            "numpy .npy/.npz without Python objects (write it with rescue_gpu.simulate.cells.write)") from exc


def read_stack(path: str | Path, *, channels: Sequence[str]) -> CellSet:
    """Read a numpy stack of cells.

    ``.npy``: ``(N, C, h, w)``, or ``(N, h, w)`` for one channel. ``.npz``: ``images`` (the
    same shapes) and optional ``labels``, ``patient_ids``, ``cell_ids`` (default
    ``"0" .. "N-1"``) and ``channels``. Pickled objects are never loaded. An
    ``(N, h, w, C)`` stack is not guessed: the planes must be axis 1.

    Parameters
    ----------
    path
        The ``.npy`` or ``.npz`` file.
    channels
        The plane names; must equal the stored ``channels`` of a ``.npz`` that has them.

    Raises
    ------
    CellDataError
        Wrong suffix, unreadable file, no ``images``, wrong shape, channel names that
        differ, per-cell columns of the wrong length, or duplicate cell ids.
    """
    p = Path(path)
    if p.suffix.lower() not in STACK_SUFFIXES or not p.is_file():
        raise CellDataError(f"{p}: not a .npy/.npz stack" + ("" if p.exists() else " (no such file)"))
    arrays = _load_arrays(p)
    if "images" not in arrays:
        raise CellDataError(f"{p}: no 'images' array (keys: {sorted(arrays)}); save the crops as images=(N, C, h, w)")
    images = _stack_images(arrays["images"], channels, p)
    stored = tuple(str(c) for c in arrays.get("channels", np.array(channels, dtype=str)))
    if stored != tuple(channels):
        raise CellDataError(f"{p}: the stack's channels {list(stored)} differ from the pipeline's input.channels "
                            f"{list(channels)}; fix input.channels (planes are never reordered silently)")
    ids = arrays.get("cell_ids", np.arange(len(images)).astype(str))
    _check_unique(ids, p)
    return CellSet(images, tuple(channels), ids, labels=arrays.get("labels", np.zeros(0, dtype=str)),
                   patient_ids=arrays.get("patient_ids", np.zeros(0, dtype=str)), source=str(p))


def _check_classes(root: Path, found: Sequence[str], classes: Sequence[str] | None) -> None:
    unknown = sorted(set(found) - set(classes)) if classes is not None else []
    if unknown:
        raise CellDataError(f"{root}: class(es) {unknown} are not among the pipeline's classes {list(classes or ())}; "
                            "rename or remove those folders, or add them to classes.names")


def _tree_cells(root: Path, channels: Sequence[str]) -> list[_Cell]:
    """Cells of ``root/<class>/<patient>/...`` and ``root/<class>/<image>`` (patient ``""``)."""
    cells: list[_Cell] = []
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        label = class_dir.name
        direct = _folder_cells(root, class_dir, channels, recursive=False)
        cells += [dataclasses.replace(c, label=label) for c in direct]
        for patient_dir in sorted(d for d in class_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            found = _folder_cells(root, patient_dir, channels, recursive=True)
            cells += [dataclasses.replace(c, label=label, patient=patient_dir.name) for c in found]
    return sorted(cells, key=lambda c: c.cell_id)


def _read_labelled_stack(path: Path, spec: CellInputSpec, classes: Sequence[str] | None) -> CellSet:
    cells = read_stack(path, channels=spec.channels)
    if not cells.labelled:
        raise CellDataError(f"{path}: a training stack needs a 'labels' array with a class name for every cell")
    _check_classes(path, [str(x) for x in np.unique(cells.labels)], classes)
    return cells


def read_tree(
    root: str | Path,
    *,
    spec: CellInputSpec,
    classes: Sequence[str] | None = None,
    on_progress: Progress | None = None,
) -> CellSet:
    """Read labelled training cells from ``root/<class>/<patient>/<images>``.

    Images may be multi-plane TIFFs, PNGs, JPGs or per-channel TIFF groups
    (``<cell>_<channel>.tif``, recognised per folder when every file is named so and
    some carry channels of ``spec.channels``; other channels are ignored). Patient folders are searched recursively. Images directly in a
    class folder (``root/<class>/<image>``) get patient id ``""``, with a warning that
    patient-level splits are then impossible. A labelled ``.npz`` stack (``images``,
    ``labels``, optional ``patient_ids``, ``cell_ids``, ``channels``) is accepted too.

    Parameters
    ----------
    root
        The training folder, or a labelled ``.npz``.
    spec
        Input settings; every image must have ``len(spec.channels)`` planes.
    classes
        Known class names (e.g. ``classes.names``); other class folders are an error.
        Classes without images are simply absent.
    on_progress
        Called as ``on_progress(i, n)`` after cell ``i`` (0-based) of ``n`` is read.

    Returns
    -------
    CellSet
        Sorted by cell id (the image's path relative to ``root`` without suffix, and for
        channel groups without the channel part); ``labels`` are the class folder names.

    Raises
    ------
    CellDataError
        Unknown class folders, images outside class folders, no images at all, a file with
        the wrong number of planes, a cell missing a channel TIFF, an unreadable file, or
        duplicate cell ids.
    """
    p = Path(root)
    if p.is_file() and p.suffix.lower() == ".npz":
        return _read_labelled_stack(p, spec, classes)
    if not p.is_dir():
        raise CellDataError(f"{p}: not a training folder (root/<class>/<patient>/<images>) or a labelled .npz")
    loose = _image_files(p, recursive=False)
    if loose:
        raise CellDataError(f"{p}: {len(loose)} image file(s) lie directly in the training folder (e.g. "
                            f"{loose[0].name}) with no class folder; move them to root/<class>/<patient>/")
    class_names = [d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")]
    _check_classes(p, class_names, classes)
    cells = _tree_cells(p, spec.channels)
    if not cells:
        raise CellDataError(f"{p}: no cell images found in root/<class>/<patient>/ folders "
                            f"({', '.join(IMAGE_SUFFIXES)})")
    flat = sum(1 for c in cells if not c.patient)
    if flat:
        warnings.warn(f"{p}: {flat} cell image(s) lie directly in a class folder (no patient folder); their "
                      "patient_ids are '' and patient-level train/validation splits are impossible for them; "
                      "arrange them as root/<class>/<patient>/<image>", UserWarning, stacklevel=2)
    return _cell_set(cells, _read_cells(cells, len(spec.channels), on_progress), spec.channels, p)


def read_sample(path: str | Path, *, spec: CellInputSpec) -> CellSet:
    """Read one sample to score: a folder of cell images, a folder of channel TIFFs, or a stack.

    The layout is ``spec.layout``, or :func:`detect_layout` when it is ``"auto"``. A
    ``"tree"`` sample holds image files directly or in subfolders (cell ids are relative
    paths without suffix); labels are empty.

    Raises
    ------
    CellDataError
        No cells, a layout that does not fit the path, images whose planes differ from
        ``len(spec.channels)``, unreadable files or duplicate cell ids.
    """
    p = Path(path)
    layout = detect_layout(p) if spec.layout == "auto" else spec.layout
    if layout == "numpy":
        cells = read_stack(p, channels=spec.channels)
    elif not p.is_dir():
        raise CellDataError(f"{p}: input.layout is {layout!r}, which needs a folder of cell images")
    elif layout == "channel-tiffs":
        cells = read_channel_tiffs(p, channels=spec.channels, recursive=True)
    else:
        found = sorted(_folder_cells(p, p, spec.channels, recursive=True), key=lambda c: c.cell_id)
        cells = _cell_set(found, _read_cells(found, len(spec.channels), None), spec.channels, p)
    if len(cells) == 0:
        raise CellDataError(f"{p}: the sample holds no cells")
    return cells


def select_channels(cells: CellSet, wanted: Sequence[str]) -> CellSet:
    """The same cells with only the planes named in ``wanted``, in that order.

    Raises
    ------
    CellDataError
        ``wanted`` is empty or names a channel the cells do not have.
    """
    unknown = [w for w in wanted if w not in cells.channels]
    if unknown or not wanted:
        raise CellDataError(f"{cells.source or 'cell set'}: cannot select channels {list(wanted)}; "
                            f"the images have {list(cells.channels)}")
    if tuple(wanted) == cells.channels:
        return cells
    idx = [cells.channels.index(w) for w in wanted]
    images = cells.images[:, idx] if isinstance(cells.images, np.ndarray) else [im[idx] for im in cells.images]
    return dataclasses.replace(cells, images=images, channels=tuple(wanted))
