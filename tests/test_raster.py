"""Rasterisation against independent peers (numpy.histogram2d, scipy.ndimage, binned_statistic_2d)."""

import numpy as np
import pytest
from scipy import ndimage, stats

from rescue_gpu.errors import RasterError
from rescue_gpu.raster import count_outside, render, save_png
from tests.conftest import xp_params

EXTENT = (-3.0, 3.0, -2.0, 4.0)


def _coords(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(loc=(0, 1), scale=1.2, size=(n, 2))


def _hist(c, h, w):
    """Counts with row 0 = top (largest y), from numpy.histogram2d as the peer."""
    counts, _, _ = np.histogram2d(c[:, 1], c[:, 0], bins=(h, w), range=((EXTENT[2], EXTENT[3]), (EXTENT[0], EXTENT[1])))
    return counts[::-1]


def test_density_matches_histogram2d():
    c = _coords()
    img = render(c, extent=EXTENT, size=(40, 32))
    ref = np.log1p(_hist(c, 40, 32))
    assert img.shape == (1, 40, 32) and img.dtype == np.float32
    np.testing.assert_allclose(img[0], ref / ref.max(), atol=1e-6)


def test_outside_counted():
    c = _coords()
    inside = (c[:, 0] >= -3) & (c[:, 0] < 3) & (c[:, 1] >= -2) & (c[:, 1] < 4)
    assert count_outside(c, extent=EXTENT) == int((~inside).sum()) > 0
    c2 = c.copy()
    c2[0] = np.nan
    assert count_outside(c2, extent=EXTENT) == int((~inside).sum()) + int(inside[0])


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_scatter_matches_binary_dilation(radius):
    c = _coords(300)
    img = render(c, extent=EXTENT, size=48, channels=("scatter",), point_radius=radius)
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = (yy ** 2 + xx ** 2) <= radius ** 2
    ref = ndimage.binary_dilation(_hist(c, 48, 48) > 0, structure=disk)
    np.testing.assert_array_equal(img[0], ref.astype(np.float32))


def test_marker_means_match_binned_statistic():
    c = _coords(4000)
    vals = np.random.default_rng(1).normal(size=(4000, 2))
    img = render(c, extent=EXTENT, size=24, channels=("density", "markers"), values=vals)
    assert img.shape == (3, 24, 24)
    for j in range(2):
        ref = stats.binned_statistic_2d(c[:, 1], c[:, 0], vals[:, j], "mean", bins=24,
                                        range=((EXTENT[2], EXTENT[3]), (EXTENT[0], EXTENT[1]))).statistic[::-1]
        np.testing.assert_allclose(img[1 + j], np.nan_to_num(ref), atol=1e-5)


def test_bad_inputs():
    c = _coords(10)
    with pytest.raises(RasterError, match="unknown raster channel"):
        render(c, extent=EXTENT, channels=("heat",))
    with pytest.raises(RasterError, match="needs values"):
        render(c, extent=EXTENT, channels=("markers",))
    with pytest.raises(RasterError, match="x_max > x_min"):
        render(c, extent=(1, 0, 0, 1))
    with pytest.raises(RasterError, match=r"shape \(n, 2\)"):
        render(np.zeros((5, 3)), extent=EXTENT)
    with pytest.raises(RasterError, match="size must be positive"):
        render(c, extent=EXTENT, size=0)


def test_empty_sample_is_blank():
    img = render(np.zeros((0, 2)), extent=EXTENT, size=8)
    assert img.shape == (1, 8, 8) and not img.any()


def test_png_roundtrip(tmp_path):
    from PIL import Image

    img = render(_coords(), extent=EXTENT, size=32, channels=("density", "scatter", "density"))
    p = save_png(img, tmp_path / "a.png")
    arr = np.asarray(Image.open(p))
    assert arr.shape == (32, 32) and arr.max() == 255
    np.testing.assert_array_equal(arr, np.round(img[0] / img[0].max() * 255).astype(np.uint8))
    assert np.asarray(Image.open(save_png(img, tmp_path / "b.png", channels=(0, 1, 2)))).shape == (32, 32, 3)


@pytest.mark.parametrize("xp", xp_params())
def test_backend_parity(xp):
    c = _coords(20000)
    vals = np.random.default_rng(2).normal(size=(20000, 3)).astype(np.float32)
    ref = render(c, extent=EXTENT, size=64, channels=("density", "scatter", "markers"), values=vals)
    out = render(xp.asarray(c), extent=EXTENT, size=64, channels=("density", "scatter", "markers"), values=xp.asarray(vals))
    from rescue_gpu.device import to_numpy

    np.testing.assert_allclose(to_numpy(out), ref, atol=1e-6)


def test_array_api_strict_gives_the_numpy_image():
    """The whole render path under array_api_strict (refuses numpy-only idioms), bit-identical to numpy.

    cupy runs this same code; only ``bincount`` is outside the standard (rescue_gpu.xp lists it).
    """
    xps = pytest.importorskip("array_api_strict")
    c = _coords(3000)
    c[:7] = np.nan  # non-finite events are outside
    vals = np.random.default_rng(3).normal(size=(3000, 2)).astype(np.float32)
    kinds = ("density", "scatter", "markers")
    ref = render(c, extent=EXTENT, size=(24, 32), channels=kinds, values=vals, point_radius=2)
    out = render(xps.asarray(c), extent=EXTENT, size=(24, 32), channels=kinds, values=xps.asarray(vals), point_radius=2)
    assert type(out).__module__.startswith("array_api_strict") and out.dtype == xps.float32
    np.testing.assert_array_equal(np.from_dlpack(out), ref)
    assert count_outside(xps.asarray(c), extent=EXTENT) == count_outside(c, extent=EXTENT) >= 7
    blank = render(xps.asarray(np.empty((0, 2))), extent=EXTENT, size=8)
    assert float(xps.max(blank)) == 0.0
