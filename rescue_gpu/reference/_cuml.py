"""cuML UMAP fitting: an optional accelerator behind the `rapids` extra.

NOT VERIFIED on our machines: cuML cannot be installed there (see README). Written
against cuML's documented ``cuml.manifold.UMAP`` API; it produces the same reference
format as umap-learn (the embedding plus the parameters our transform needs).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..projection.transform import UmapParams

__all__ = ["cuml_available", "fit_cuml"]


@functools.cache
def cuml_available() -> bool:
    """Whether ``cuml`` imports in this process."""
    try:
        import cuml  # noqa: F401
    except Exception:
        return False
    return True


def fit_cuml(events: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, UmapParams]:
    """Fit ``cuml.manifold.UMAP`` and return the embedding and transform parameters.

    cuML derives ``a`` and ``b`` from ``min_dist`` and ``spread`` as umap-learn does, so
    they are recomputed with umap-learn's ``find_ab_params``; the other parameters are
    umap-learn's defaults, which cuML shares.
    """
    from cuml.manifold import UMAP
    from umap.umap_ import find_ab_params

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = UMAP(n_components=2, **kwargs)
    emb = model.fit_transform(events)
    emb = np.asarray(emb.get() if hasattr(emb, "get") else emb, dtype=np.float32)
    a, b = find_ab_params(kwargs.get("spread", 1.0), kwargs.get("min_dist", 0.1))
    params = UmapParams(n_neighbors=int(kwargs.get("n_neighbors", 15)), a=float(a), b=float(b),
                        min_dist=float(kwargs.get("min_dist", 0.1)), spread=float(kwargs.get("spread", 1.0)),
                        n_epochs=kwargs.get("n_epochs"), random_state=kwargs.get("random_state"))
    return emb, params
