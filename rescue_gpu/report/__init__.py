"""Reports: a self-contained HTML report of a scoring run."""

from .html import write_report

__all__ = ["write_report"]
