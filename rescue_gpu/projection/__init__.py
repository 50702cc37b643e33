"""UMAP transform: project new events into a fixed reference embedding.

:func:`transform` reproduces umap-learn's ``UMAP.transform`` (exact neighbours, fuzzy
weights, weighted-average start, SGD against the fixed reference) on the CPU (numba)
or the GPU (cupy raw kernels), with a counter-based RNG so that results do not depend
on chunking or thread count.
"""

from .transform import ReferenceLike, UmapParams, UmapReference, transform, transform_epochs

__all__ = ["ReferenceLike", "UmapParams", "UmapReference", "transform", "transform_epochs"]
