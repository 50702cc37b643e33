"""Cohorts: manifests (and, later, the run store and the Dask runner)."""

from .manifest import ManifestRow, read_manifest

__all__ = ["ManifestRow", "read_manifest"]
