"""Reading and writing FCS files."""

from .inspect import describe, inspect_many
from .reader import parse_text, read_fcs
from .spillover import parse_spillover
from .types import FcsData, Spillover
from .writer import write_fcs

__all__ = [
    "FcsData", "Spillover", "write_fcs", "read_fcs", "parse_text", "parse_spillover",
    "describe", "inspect_many",
]
