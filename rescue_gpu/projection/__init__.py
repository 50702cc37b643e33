"""UMAP transform: project new events into a fixed reference embedding.

:func:`transform` reproduces umap-learn's ``UMAP.transform`` (exact neighbours, fuzzy
weights, weighted-average start, SGD against the fixed reference) on the CPU (numba)
or the GPU (cupy GEMMs + numba.cuda kernels), with a counter-based RNG so that results
do not depend on chunking, thread count or launch shape. The per-event math has one
source (:mod:`._kernels`), compiled by ``numba.njit`` for the CPU and by
``numba.cuda.jit(device=True)`` for the GPU; CI runs the GPU kernels in numba's CUDA
simulator (tests/test_gpusim.py).
"""

from .transform import ReferenceLike, UmapParams, UmapReference, transform, transform_epochs

__all__ = ["ReferenceLike", "UmapParams", "UmapReference", "transform", "transform_epochs"]
