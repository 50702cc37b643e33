"""Reference UMAPs: building, the on-disk record, importers."""

from .build import build_reference, extent_of, fit_umap, from_umap_learn, import_umap_pickle, pool_events
from .store import Reference, array_sha256

__all__ = ["Reference", "array_sha256", "build_reference", "extent_of", "fit_umap", "from_umap_learn",
           "import_umap_pickle", "pool_events"]
