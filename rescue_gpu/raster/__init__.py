"""Rasterising projected events into images (numpy or cupy, one code path)."""

from .render import CHANNEL_KINDS, Extent, count_outside, pixel_index, render, save_png

__all__ = ["CHANNEL_KINDS", "Extent", "count_outside", "pixel_index", "render", "save_png"]
