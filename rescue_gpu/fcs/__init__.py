"""Reading and writing FCS files."""

from .types import FcsData, Spillover
from .writer import write_fcs

__all__ = ["FcsData", "Spillover", "write_fcs"]
