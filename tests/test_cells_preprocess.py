"""Per-crop preprocessing: resize, centre crop / pad, contrast stretch, the whole pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from rescue_gpu.cells.preprocess import (
    background_stats, contrast_stretch, crop_or_pad, prepare_cells, resize_longer_side,
)
from rescue_gpu.cells.spec import CellPreprocessSpec
from rescue_gpu.cells.types import CellSet
from rescue_gpu.errors import CellDataError

from .conftest import xp_params


def _reference_stretch(images: np.ndarray, low: float, high: float) -> np.ndarray:
    """Plain per-image, per-plane loop with numpy.percentile."""
    out = np.zeros(images.shape, dtype=np.float64)
    for i in range(images.shape[0]):
        for c in range(images.shape[1]):
            x = images[i, c].astype(np.float64)
            lo, hi = np.percentile(x, [low, high])
            out[i, c] = np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else 0.0
    return out


# --------------------------------------------------------------------------- crop_or_pad geometry


@pytest.mark.parametrize(("h", "w"), [(40, 70), (70, 40), (48, 48), (31, 33), (49, 50), (64, 64), (47, 20)])
@pytest.mark.parametrize("pad", ["noise", "edge", "constant"])
def test_crop_or_pad_centre_marker(h: int, w: int, pad: str) -> None:
    img = np.zeros((2, h, w), dtype=np.uint16)
    img[:, h // 2, w // 2] = 1000
    out = crop_or_pad(img, size=48, pad=pad, rng=np.random.default_rng(0))
    assert out.shape == (2, 48, 48) and out.dtype == np.float32
    for c in range(2):
        assert np.unravel_index(np.argmax(out[c]), (48, 48)) == (24, 24)
        assert out[c, 24, 24] == 1000


def test_crop_or_pad_crop_is_exact_centre_window() -> None:
    img = np.arange(70 * 90, dtype=np.float32).reshape(1, 70, 90)
    out = crop_or_pad(img, size=48)
    np.testing.assert_array_equal(out[0], img[0, 35 - 24:35 + 24, 45 - 24:45 + 24])


def test_crop_or_pad_independent_axes_constant_and_edge() -> None:
    img = np.arange(40 * 70, dtype=np.float32).reshape(1, 40, 70) + 1
    const = crop_or_pad(img, size=48, pad="constant")[0]
    # rows padded (4 above, 4 below), columns cropped (start 11)
    np.testing.assert_array_equal(const[4:44], img[0, :, 11:59])
    assert np.all(const[:4] == 0) and np.all(const[44:] == 0)
    edge = crop_or_pad(img, size=48, pad="edge")[0]
    np.testing.assert_array_equal(edge, np.pad(img[0, :, 11:59], ((4, 4), (0, 0)), mode="edge"))
    small = np.arange(20 * 30, dtype=np.float32).reshape(1, 20, 30)
    np.testing.assert_array_equal(crop_or_pad(small, size=48, pad="edge")[0],
                                  np.pad(small[0], ((14, 14), (9, 9)), mode="edge"))


def test_noise_padding_matches_background() -> None:
    rng = np.random.default_rng(1)
    img = rng.normal(300.0, 25.0, size=(2, 20, 20)).astype(np.float32)
    img[1] = rng.normal(50.0, 5.0, size=(20, 20))
    img[:, 6:14, 6:14] = 4000.0  # the "cell", away from the border
    mean, std = background_stats(img)
    out = crop_or_pad(img, size=64, pad="noise", rng=np.random.default_rng(2))
    mask = np.ones((64, 64), bool)
    mask[22:42, 22:42] = False  # where the crop sits
    for c in range(2):
        pad = out[c][mask]
        assert abs(pad.mean() - mean[c]) < 0.05 * std[c] + 1e-3
        assert abs(pad.std() - std[c]) < 0.05 * std[c]
    np.testing.assert_array_equal(out[:, 22:42, 22:42], img)


def test_background_stats_border_only() -> None:
    img = np.full((1, 10, 12), 7.0)
    img[0, 2:8, 2:10] = 1000.0  # interior, outside the 2-px frame
    mean, std = background_stats(img, border=2)
    assert mean[0] == pytest.approx(7.0) and std[0] == pytest.approx(0.0)
    mean1, _ = background_stats(img, border=1)
    assert mean1[0] == pytest.approx(7.0)
    tiny = np.arange(9.0).reshape(1, 3, 3)
    assert background_stats(tiny, border=2)[0][0] == pytest.approx(4.0)  # too small: all pixels


def test_crop_or_pad_unknown_mode() -> None:
    with pytest.raises(CellDataError, match="pad mode"):
        crop_or_pad(np.zeros((1, 48, 48)), size=48, pad="mirror")


def test_crop_or_pad_default_rng_deterministic() -> None:
    img = np.random.default_rng(0).normal(size=(1, 20, 30)).astype(np.float32)
    np.testing.assert_array_equal(crop_or_pad(img, size=48), crop_or_pad(img, size=48))


# --------------------------------------------------------------------------- stretch


@pytest.mark.parametrize("xp", xp_params())
def test_contrast_stretch_matches_reference(xp) -> None:
    from rescue_gpu.device import to_numpy

    rng = np.random.default_rng(3)
    imgs = rng.gamma(2.0, 100.0, size=(6, 3, 17, 23)).astype(np.float32)
    for low, high in [(0.5, 99.5), (0.0, 100.0), (2.0, 98.0), (10.0, 60.0)]:
        got = to_numpy(contrast_stretch(xp.asarray(imgs), low=low, high=high))
        assert got.dtype == np.float32 and got.shape == imgs.shape
        np.testing.assert_allclose(got, _reference_stretch(imgs, low, high), atol=2e-6)
    single = contrast_stretch(imgs[0])
    np.testing.assert_allclose(to_numpy(single), _reference_stretch(imgs[:1], 0.5, 99.5)[0], atol=2e-6)


def test_contrast_stretch_integers_and_flat_planes() -> None:
    imgs = np.random.default_rng(4).integers(0, 4096, size=(3, 2, 9, 9)).astype(np.uint16)
    imgs[1, 0] = 17
    imgs[2, 1] = 0
    got = contrast_stretch(imgs)
    assert np.all(np.isfinite(got))
    assert np.all(got[1, 0] == 0) and np.all(got[2, 1] == 0)
    np.testing.assert_allclose(got, _reference_stretch(imgs, 0.5, 99.5), atol=2e-6)
    assert imgs[1, 0, 0, 0] == 17  # input untouched


def test_contrast_stretch_shape_error() -> None:
    with pytest.raises(CellDataError, match="contrast_stretch"):
        contrast_stretch(np.zeros((4, 4)))


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize(("h", "w", "expect"), [(400, 300, (224, 168)), (100, 250, (90, 224)), (224, 50, (224, 50))])
def test_resize_longer_side_keeps_aspect(h: int, w: int, expect: tuple[int, int]) -> None:
    img = np.random.default_rng(5).integers(0, 255, size=(3, h, w), dtype=np.uint8)
    out = resize_longer_side(img, size=224)
    assert out.shape == (3,) + expect and out.dtype == np.float32


def test_resize_bilinear_values() -> None:
    const = np.full((2, 40, 60), 9.0, dtype=np.float32)
    np.testing.assert_allclose(resize_longer_side(const, size=30), 9.0, rtol=1e-6)
    ramp = np.tile(np.arange(64, dtype=np.float32), (1, 32, 1))  # x ramp
    out = resize_longer_side(ramp, size=32)
    assert out.shape == (1, 16, 32)
    # pixel-area aligned: output column j covers input columns 2j..2j+1, centre 2j + 0.5
    np.testing.assert_allclose(out[0, 8, 1:-1], 2 * np.arange(1, 31) + 0.5, atol=1e-4)


# --------------------------------------------------------------------------- prepare_cells


def _crops(n: int, seed: int = 0, dtype: type = np.uint16) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, size=(2, int(rng.integers(30, 70)), int(rng.integers(30, 70)))).astype(dtype)
            for _ in range(n)]


def test_prepare_cells_shape_dtype_and_determinism() -> None:
    crops = _crops(60)
    spec = CellPreprocessSpec(size=48)
    a = prepare_cells(crops, spec=spec, seed=3)
    b = prepare_cells(crops, spec=spec, seed=3)
    c = prepare_cells(crops, spec=spec, seed=4)
    assert a.shape == (60, 2, 48, 48) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)  # padding noise follows the seed
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_prepare_cells_equals_composed_kernels_without_noise() -> None:
    crops = _crops(25, seed=1)
    spec = CellPreprocessSpec(size=48, pad="edge", low_percentile=1.0, high_percentile=99.0)
    got = prepare_cells(crops, spec=spec, channel_index=[1, 0])
    expect = np.stack([crop_or_pad(c[[1, 0]], size=48, pad="edge") for c in crops])
    np.testing.assert_allclose(got, _reference_stretch(expect, 1.0, 99.0), atol=2e-6)


def test_prepare_cells_no_stretch_scales_integers() -> None:
    spec = CellPreprocessSpec(size=16, pad="constant", stretch="none")
    u8 = np.full((1, 16, 16), 255, np.uint8)
    u16 = np.full((1, 16, 16), 65535, np.uint16)
    f = np.full((1, 16, 16), 3.5, np.float32)
    out = prepare_cells([u8, u16, f], spec=spec)
    np.testing.assert_allclose(out[:, 0, 0, 0], [1.0, 1.0, 3.5])


def test_prepare_cells_cellset_stack_resize_and_empty() -> None:
    stack = np.random.default_rng(2).integers(0, 255, size=(5, 3, 100, 80)).astype(np.uint8)
    cs = CellSet(stack, ("R", "G", "B"), np.arange(5).astype(str))
    spec = CellPreprocessSpec(size=32, resize=40, pad="constant")
    out = prepare_cells(cs, spec=spec, channel_index=[0])
    assert out.shape == (5, 1, 32, 32)
    one = contrast_stretch(crop_or_pad(resize_longer_side(stack[2, :1], size=40), size=32, pad="constant"))
    np.testing.assert_allclose(out[2], one, atol=2e-6)
    empty = CellSet([], ("R", "G", "B"), np.zeros(0, dtype=str))
    assert prepare_cells(empty, spec=spec).shape == (0, 3, 32, 32)
    assert prepare_cells(empty, spec=spec, channel_index=[1]).shape == (0, 1, 32, 32)


def test_prepare_cells_stacked_equals_list() -> None:
    stack = np.random.default_rng(6).integers(0, 999, size=(7, 1, 40, 52)).astype(np.uint16)
    spec = CellPreprocessSpec(size=48)
    np.testing.assert_array_equal(prepare_cells(stack, spec=spec, seed=1),
                                  prepare_cells(list(stack), spec=spec, seed=1))


def test_prepare_cells_rejects_mixed_planes() -> None:
    with pytest.raises(CellDataError, match="plane counts"):
        prepare_cells([np.zeros((1, 20, 20)), np.zeros((2, 20, 20))], spec=CellPreprocessSpec(size=16))
