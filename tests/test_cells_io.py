"""Readers of single-cell images: round trips through the writers, layouts, and error messages."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from rescue_gpu.cells.io import (
    detect_layout, read_channel_tiffs, read_image, read_sample, read_stack, read_tree, select_channels,
)
from rescue_gpu.cells.spec import CellInputSpec
from rescue_gpu.cells.types import CellSet
from rescue_gpu.simulate.cells.write import write_channel_tiffs, write_image, write_stack
from rescue_gpu.errors import CellDataError

RNG = np.random.default_rng(7)


def _img(c: int, h: int = 9, w: int = 11, dtype: type = np.uint8) -> np.ndarray:
    hi = np.iinfo(dtype).max if np.dtype(dtype).kind in "iu" else 1.0
    if np.dtype(dtype).kind == "f":
        return RNG.random((c, h, w)).astype(dtype)
    return RNG.integers(0, int(hi) + 1, size=(c, h, w), dtype=dtype)


# --------------------------------------------------------------------------- read_image


@pytest.mark.parametrize(("suffix", "c", "dtype"), [
    (".png", 1, np.uint8), (".png", 1, np.uint16), (".png", 3, np.uint8),
    (".tif", 1, np.uint16), (".tif", 2, np.float32), (".tif", 3, np.uint8), (".tiff", 5, np.uint16),
    (".tif", 4, np.int16),
])
def test_read_image_round_trip(tmp_path: Path, suffix: str, c: int, dtype: type) -> None:
    img = _img(c, dtype=dtype)
    path = write_image(tmp_path / f"cell{suffix}", img)
    got = read_image(path, n_channels=c)
    assert got.dtype == img.dtype and got.shape == img.shape
    np.testing.assert_array_equal(got, img)


@pytest.mark.parametrize("c", [1, 3])
def test_read_jpg_round_trip_with_tolerance(tmp_path: Path, c: int) -> None:
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([20 + yy * 3 + xx * 2 + 15 * k for k in range(c)]).astype(np.uint8)  # smooth: JPEG-friendly
    got = read_image(write_image(tmp_path / "cell.jpg", img))
    assert got.shape == img.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - img.astype(int)).mean() < 3


def test_read_rgb_tiff_samples_last(tmp_path: Path) -> None:
    rgb = _img(3, 12, 20).transpose(1, 2, 0)  # (h, w, 3)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    got = read_image(tmp_path / "rgb.tif")
    assert got.shape == (3, 12, 20)
    np.testing.assert_array_equal(got, rgb.transpose(2, 0, 1))


def test_read_tiff_axes_decide_not_sizes(tmp_path: Path) -> None:
    # 3 planes of 4 x 3 written planar: sizes alone would suggest (h, w, C) = (3, 4, 3)
    planar = _img(3, 4, 3)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), planar)
    tifffile.imwrite(tmp_path / "ome.ome.tif", planar, photometric="minisblack", metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "ome.ome.tif"), planar)


def test_read_2d_tiff_is_one_plane(tmp_path: Path) -> None:
    plane = _img(1, 7, 5, np.uint16)[0]
    tifffile.imwrite(tmp_path / "p.tif", plane)
    got = read_image(tmp_path / "p.tif", n_channels=1)
    np.testing.assert_array_equal(got[0], plane)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_png_alpha_dropped_and_palette_to_rgb(tmp_path: Path, mode: str) -> None:
    rgb = _img(3, 6, 8).transpose(1, 2, 0)
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if mode == "RGBA":
        im = im.convert("RGBA")
    elif mode == "LA":
        im = im.convert("LA")
    else:
        im = im.convert("P")
    im.save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.shape[0] == (1 if mode == "LA" else 3)
    if mode == "RGBA":
        np.testing.assert_array_equal(got, rgb.transpose(2, 0, 1))


def test_rgba_tiff_alpha_dropped(tmp_path: Path) -> None:
    rgba = _img(4, 5, 6).transpose(1, 2, 0)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    got = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(got, rgba[..., :3].transpose(2, 0, 1))


def test_wrong_plane_count_names_file_and_numbers(tmp_path: Path) -> None:
    path = write_image(tmp_path / "c.tif", _img(2))
    with pytest.raises(CellDataError, match=r"c\.tif.*2 plane\(s\).*3 channel"):
        read_image(path, n_channels=3)


@pytest.mark.parametrize("name", ["bad.png", "bad.tif", "bad.jpg"])
def test_corrupt_file_is_cell_data_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(CellDataError, match=name.replace(".", r"\.")):
        read_image(path)


def test_truncated_png_is_cell_data_error(tmp_path: Path) -> None:
    path = write_image(tmp_path / "t.png", _img(3, 64, 64))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CellDataError, match=r"t\.png.*corrupt"):
        read_image(path)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CellDataError, match="suffix"):
        read_image(tmp_path / "x.bmp")
    with pytest.raises(CellDataError, match="no such"):
        read_image(tmp_path / "x.png")


# --------------------------------------------------------------------------- channel TIFFs


def test_read_channel_tiffs_round_trip_and_reorder(tmp_path: Path) -> None:
    chans = ["Ch1", "Ch6", "Ch9"]
    cells = {f"cell_{i:04d}": _img(3, 10 + i, 12, np.uint16) for i in range(4)}
    for cid, img in cells.items():
        write_channel_tiffs(tmp_path, cid, img, chans)
    cs = read_channel_tiffs(tmp_path, channels=chans)
    assert list(cs.cell_ids) == sorted(cells) and cs.channels == tuple(chans)
    for cid, img in zip(cs.cell_ids, cs.images):
        np.testing.assert_array_equal(img, cells[cid])
    sub = read_channel_tiffs(tmp_path, channels=["Ch9", "Ch1"])
    np.testing.assert_array_equal(sub.images[0], cells["cell_0000"][[2, 0]])


def test_channel_tiffs_missing_channel(tmp_path: Path) -> None:
    write_channel_tiffs(tmp_path, "cell_1", _img(2), ["Ch1", "Ch6"])
    write_channel_tiffs(tmp_path, "cell_2", _img(1), ["Ch1"])
    with pytest.raises(CellDataError, match=r"cell_2.*'Ch6'.*found: \['Ch1'\]"):
        read_channel_tiffs(tmp_path, channels=["Ch1", "Ch6"])


def test_channel_tiffs_shape_mismatch_and_recursive(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "c1_Ch1.tif", _img(1, 8, 8))
    write_image(tmp_path / "a" / "c1_Ch2.tif", _img(1, 9, 8))
    with pytest.raises(CellDataError, match="differ in size"):
        read_channel_tiffs(tmp_path, channels=["Ch1", "Ch2"], recursive=True)
    with pytest.raises(CellDataError, match="no channel TIFFs"):
        read_channel_tiffs(tmp_path, channels=["Ch1", "Ch2"])  # not recursive: nothing at top level


def test_channel_tiffs_ome_and_tiff_suffixes(tmp_path: Path) -> None:
    img = _img(2, 6, 6, np.uint16)
    tifffile.imwrite(tmp_path / "x_Ch1.ome.tif", img[0])
    tifffile.imwrite(tmp_path / "x_Ch2.tiff", img[1])
    cs = read_channel_tiffs(tmp_path, channels=["Ch1", "Ch2"])
    assert list(cs.cell_ids) == ["x"]
    np.testing.assert_array_equal(cs.images[0], img)


def test_channel_tiffs_stray_files(tmp_path: Path) -> None:
    write_channel_tiffs(tmp_path, "c1", _img(1), ["Ch1"])
    write_image(tmp_path / "overview.png", _img(3))
    with pytest.raises(CellDataError, match=r"not single-channel TIFFs.*overview\.png"):
        read_channel_tiffs(tmp_path, channels=["Ch1"])


# --------------------------------------------------------------------------- stacks


def test_npy_round_trip_and_3d(tmp_path: Path) -> None:
    imgs = _img(2 * 5, 8, 8, np.uint16).reshape(5, 2, 8, 8)
    cs = read_stack(write_stack(tmp_path / "s.npy", imgs), channels=["a", "b"])
    np.testing.assert_array_equal(cs.images, imgs)
    assert list(cs.cell_ids) == ["0", "1", "2", "3", "4"] and not cs.labelled
    np.save(tmp_path / "flat.npy", imgs[:, 0])
    one = read_stack(tmp_path / "flat.npy", channels=["a"])
    assert one.images.shape == (5, 1, 8, 8)


def test_npz_round_trip_with_columns(tmp_path: Path) -> None:
    imgs = _img(3 * 4, 6, 7).reshape(4, 3, 6, 7)
    path = write_stack(tmp_path / "s.npz", imgs, cell_ids=["a", "b", "c", "d"], labels=["x", "y", "x", "y"],
                       patient_ids=["p1", "p1", "p2", "p2"], channels=["R", "G", "B"])
    cs = read_stack(path, channels=["R", "G", "B"])
    np.testing.assert_array_equal(cs.images, imgs)
    assert list(cs.cell_ids) == ["a", "b", "c", "d"] and list(cs.labels) == ["x", "y", "x", "y"]
    assert list(cs.patient_ids) == ["p1", "p1", "p2", "p2"] and cs.labelled
    with pytest.raises(CellDataError, match=r"channels \['R', 'G', 'B'\] differ"):
        read_stack(path, channels=["B", "G", "R"])


def test_stack_channels_last_not_guessed(tmp_path: Path) -> None:
    np.save(tmp_path / "hwc.npy", np.zeros((4, 10, 10, 3), np.uint8))
    with pytest.raises(CellDataError, match=r"\(N, h, w, C\).*np\.moveaxis"):
        read_stack(tmp_path / "hwc.npy", channels=["R", "G", "B"])


def test_stack_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "noimg.npz", crops=np.zeros((2, 1, 4, 4)))
    with pytest.raises(CellDataError, match="no 'images'"):
        read_stack(tmp_path / "noimg.npz", channels=["a"])
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CellDataError, match=r"obj\.npy.*cannot load"):
        read_stack(tmp_path / "obj.npy", channels=["a"])
    np.savez(tmp_path / "dup.npz", images=np.zeros((2, 1, 4, 4)), cell_ids=np.array(["x", "x"]))
    with pytest.raises(CellDataError, match=r"dup\.npz.*more than once.*'x'"):
        read_stack(tmp_path / "dup.npz", channels=["a"])
    np.savez(tmp_path / "len.npz", images=np.zeros((2, 1, 4, 4)), labels=np.array(["x"]))
    with pytest.raises(CellDataError, match="one entry per image"):
        read_stack(tmp_path / "len.npz", channels=["a"])
    (tmp_path / "garbage.npz").write_bytes(b"nope")
    with pytest.raises(CellDataError, match=r"garbage\.npz"):
        read_stack(tmp_path / "garbage.npz", channels=["a"])


# --------------------------------------------------------------------------- training tree


def _make_tree(root: Path, spec_channels: int = 3) -> dict[str, np.ndarray]:
    written = {}
    layout = {("blast", "P1"): 2, ("blast", "P2"): 1, ("lymph", "P1"): 2, ("lymph", "P3"): 1}
    for (cls, pat), n in layout.items():
        for i in range(n):
            img = _img(spec_channels, 8 + i, 9)
            suffix = ".png" if i % 2 == 0 else ".tif"
            write_image(root / cls / pat / f"cell{i}{suffix}", img)
            written[f"{cls}/{pat}/cell{i}"] = img
    return written


def test_read_tree_labels_patients_ids(tmp_path: Path) -> None:
    written = _make_tree(tmp_path)
    spec = CellInputSpec(layout="tree", channels=("R", "G", "B"))
    seen = []
    cs = read_tree(tmp_path, spec=spec, classes=["blast", "lymph", "mono"],
                   on_progress=lambda i, n: seen.append((i, n)))
    assert list(cs.cell_ids) == sorted(written)
    assert list(cs.labels) == [k.split("/")[0] for k in sorted(written)]
    assert list(cs.patient_ids) == [k.split("/")[1] for k in sorted(written)]
    for cid, img in zip(cs.cell_ids, cs.images):
        np.testing.assert_array_equal(img, written[cid])
    assert seen[-1] == (len(written) - 1, len(written)) and len(seen) == len(written)
    assert cs.labelled and cs.channels == ("R", "G", "B")


def test_read_tree_unknown_class(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    write_image(tmp_path / "eos" / "P1" / "c.png", _img(3))
    with pytest.raises(CellDataError, match=r"\['eos'\].*\['blast', 'lymph'\]"):
        read_tree(tmp_path, spec=CellInputSpec(), classes=["blast", "lymph"])


def test_read_tree_wrong_planes_names_file(tmp_path: Path) -> None:
    write_image(tmp_path / "blast" / "P1" / "c.tif", _img(2))
    with pytest.raises(CellDataError, match=r"c\.tif.*2 plane\(s\) but 3"):
        read_tree(tmp_path, spec=CellInputSpec(channels=("R", "G", "B")))


def test_read_tree_empty_and_patientless(tmp_path: Path) -> None:
    (tmp_path / "blast").mkdir()
    with pytest.raises(CellDataError, match="no cell images"):
        read_tree(tmp_path, spec=CellInputSpec())
    write_image(tmp_path / "blast" / "c1.png", _img(3))
    write_image(tmp_path / "normal" / "P1" / "c1.png", _img(3))
    with pytest.warns(UserWarning, match="patient-level"):
        cs = read_tree(tmp_path, spec=CellInputSpec())
    assert list(cs.cell_ids) == ["blast/c1", "normal/P1/c1"]
    assert list(cs.patient_ids) == ["", "P1"]


def test_read_tree_duplicate_ids(tmp_path: Path) -> None:
    write_image(tmp_path / "blast" / "P1" / "c1.png", _img(3))
    write_image(tmp_path / "blast" / "P1" / "c1.tif", _img(3))
    with pytest.raises(CellDataError, match=r"more than once.*blast/P1/c1"):
        read_tree(tmp_path, spec=CellInputSpec())


def test_read_tree_channel_tiff_groups(tmp_path: Path) -> None:
    chans = ("Ch1", "Ch9")
    a, b = _img(2, dtype=np.uint16), _img(2, dtype=np.uint16)
    write_channel_tiffs(tmp_path / "blast" / "P1", "cell_1", a, chans)
    write_channel_tiffs(tmp_path / "normal" / "P2", "cell_1", b, chans)
    cs = read_tree(tmp_path, spec=CellInputSpec(channels=chans))
    assert list(cs.cell_ids) == ["blast/P1/cell_1", "normal/P2/cell_1"]
    np.testing.assert_array_equal(cs.images[0], a)
    np.testing.assert_array_equal(cs.images[1], b)


def test_read_tree_channel_groups_with_extra_channels(tmp_path: Path) -> None:
    img = _img(4, dtype=np.uint16)
    write_channel_tiffs(tmp_path / "blast" / "P1", "c_7", img, ["Ch1", "Ch2", "Ch6", "Ch9"])
    cs = read_tree(tmp_path, spec=CellInputSpec(channels=("Ch9", "Ch1")))
    np.testing.assert_array_equal(cs.images[0], img[[3, 0]])
    with pytest.raises(CellDataError, match=r"c_7.*'Ch11'.*found: \['Ch1', 'Ch2', 'Ch6', 'Ch9'\]"):
        read_tree(tmp_path, spec=CellInputSpec(channels=("Ch1", "Ch11")))


def test_read_tree_loose_images_in_root(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    write_image(tmp_path / "stray.png", _img(3))
    with pytest.raises(CellDataError, match=r"stray\.png.*no class folder"):
        read_tree(tmp_path, spec=CellInputSpec())


def test_read_tree_labelled_npz(tmp_path: Path) -> None:
    imgs = _img(2 * 3, 5, 5).reshape(3, 2, 5, 5)
    path = write_stack(tmp_path / "t.npz", imgs, labels=["a", "b", "a"], patient_ids=["1", "1", "2"])
    cs = read_tree(path, spec=CellInputSpec(channels=("x", "y")), classes=["a", "b"])
    assert list(cs.labels) == ["a", "b", "a"]
    with pytest.raises(CellDataError, match=r"\['b'\]"):
        read_tree(path, spec=CellInputSpec(channels=("x", "y")), classes=["a"])
    unlabelled = write_stack(tmp_path / "u.npz", imgs)
    with pytest.raises(CellDataError, match="labels"):
        read_tree(unlabelled, spec=CellInputSpec(channels=("x", "y")))


# --------------------------------------------------------------------------- layouts and samples


def test_detect_layout(tmp_path: Path) -> None:
    write_stack(tmp_path / "s.npy", np.zeros((1, 1, 4, 4), np.uint8))
    assert detect_layout(tmp_path / "s.npy") == "numpy"
    write_channel_tiffs(tmp_path / "ifc" / "sub", "cell_1", _img(2), ["Ch1", "Ch6"])
    assert detect_layout(tmp_path / "ifc") == "channel-tiffs"
    write_image(tmp_path / "tree" / "a.png", _img(3))
    write_image(tmp_path / "tree" / "b_R.tif", _img(3))
    assert detect_layout(tmp_path / "tree") == "tree"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CellDataError, match="no cell images"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(CellDataError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_read_sample_layouts(tmp_path: Path) -> None:
    imgs = [_img(3, 7, 7) for _ in range(3)]
    for i, img in enumerate(imgs):
        write_image(tmp_path / "tree" / ("sub" if i else ".") / f"c{i}.png", img)
    cs = read_sample(tmp_path / "tree", spec=CellInputSpec())
    assert list(cs.cell_ids) == ["c0", "sub/c1", "sub/c2"] and not cs.labelled
    np.testing.assert_array_equal(cs.images[1], imgs[1])

    spec2 = CellInputSpec(channels=("Ch1", "Ch6"))
    write_channel_tiffs(tmp_path / "ifc", "cell_1", _img(2), ["Ch1", "Ch6"])
    assert len(read_sample(tmp_path / "ifc", spec=spec2)) == 1
    write_stack(tmp_path / "s.npz", np.zeros((2, 2, 4, 4), np.uint8))
    assert len(read_sample(tmp_path / "s.npz", spec=spec2)) == 2
    with pytest.raises(CellDataError, match="needs a folder"):
        read_sample(tmp_path / "s.npz", spec=CellInputSpec(layout="tree", channels=("Ch1", "Ch6")))


def test_read_sample_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellDataError, match="no cell images"):
        read_sample(tmp_path / "empty", spec=CellInputSpec())
    with pytest.raises(CellDataError, match="no cells"):
        read_sample(tmp_path / "empty", spec=CellInputSpec(layout="tree"))
    write_stack(tmp_path / "z.npy", np.zeros((0, 3, 4, 4), np.uint8))
    with pytest.raises(CellDataError, match="no cells"):
        read_sample(tmp_path / "z.npy", spec=CellInputSpec())


def test_read_sample_wrong_planes(tmp_path: Path) -> None:
    write_image(tmp_path / "s" / "c.png", _img(1))
    with pytest.raises(CellDataError, match=r"c\.png.*1 plane\(s\) but 3"):
        read_sample(tmp_path / "s", spec=CellInputSpec())


def test_select_channels(tmp_path: Path) -> None:
    imgs = [_img(3, 5, 5), _img(3, 6, 4)]
    cs = CellSet(imgs, ("R", "G", "B"), np.array(["a", "b"]))
    sub = select_channels(cs, ["B", "R"])
    assert sub.channels == ("B", "R")
    np.testing.assert_array_equal(sub.images[1], imgs[1][[2, 0]])
    stacked = CellSet(np.stack([imgs[0], imgs[0]]), ("R", "G", "B"), np.array(["a", "b"]))
    assert select_channels(stacked, ["G"]).images.shape == (2, 1, 5, 5)
    with pytest.raises(CellDataError, match=r"\['X'\].*\['R', 'G', 'B'\]"):
        select_channels(cs, ["X"])


def test_no_warning_for_patient_tree(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_tree(tmp_path, spec=CellInputSpec())
