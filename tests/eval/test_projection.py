"""UMAP on the faiss kNN graph.

The first UMAP call in a process spends ~20 s compiling umap-learn's numba kernels
(they are not cached on disk); the layout itself takes well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest

from leukoshift.errors import UserError
from leukoshift.eval.knn import knn_graph
from leukoshift.eval.projection import umap_embed


def two_clusters(n: int = 100, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], n)
    centre = np.zeros(dim)
    centre[0] = 4.0
    feats = rng.normal(size=(2 * n, dim)) + np.where(labels[:, None] == 0, centre, -centre)
    return feats.astype(np.float32), labels


def test_umap_on_faiss_graph_separates_clusters() -> None:
    feats, labels = two_clusters()
    graph = knn_graph(feats, 15)
    xy = umap_embed(feats, k=15, seed=0, graph=graph, n_epochs=100)
    assert xy.shape == (200, 2) and xy.dtype == np.float32 and np.isfinite(xy).all()
    # every point's nearest neighbour in the map belongs to its own cluster ...
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(axis=1)] == labels).mean() == 1.0
    # ... and the clusters lie further apart than either is wide
    a, b = xy[labels == 0], xy[labels == 1]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 2 * max(a.std(0).max(), b.std(0).max())
    # a fixed seed gives the same picture
    again = umap_embed(feats, k=15, seed=0, graph=graph, n_epochs=100)
    np.testing.assert_allclose(again, xy, atol=1e-4)


def test_umap_rejects_bad_input() -> None:
    feats, _ = two_clusters(10)
    with pytest.raises(UserError, match="at least 4"):
        umap_embed(feats[:3])
    idx, dists = knn_graph(feats, 5)
    with pytest.raises(UserError, match="columns"):
        umap_embed(feats, k=8, graph=(idx, dists))
