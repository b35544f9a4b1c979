"""Two-dimensional maps of feature space with UMAP on the faiss kNN graph.

UMAP (McInnes, Healy & Melville 2018) builds a fuzzy graph from each point's k nearest
neighbours and lays it out in 2-D. The neighbours come from faiss
(:func:`~leukoshift.eval.knn.knn_graph`), the same search the kNN and lab-mixing numbers
use, handed to umap-learn through ``precomputed_knn``, so the picture and the numbers
describe one graph and pynndescent is never run.
"""

from __future__ import annotations

import warnings

import numpy as np

from leukoshift.eval.knn import FeatureError, knn_graph, normalise


def umap_embed(
    feats: np.ndarray,
    k: int = 15,
    seed: int = 0,
    min_dist: float = 0.1,
    graph: tuple[np.ndarray, np.ndarray] | None = None,
    n_epochs: int | None = None,
) -> np.ndarray:
    """(N, 2) float32 UMAP layout of ``feats`` (cosine geometry).

    ``k`` is UMAP's ``n_neighbors`` (the point itself included, as umap-learn counts it);
    it is capped at N - 1 for small sets. ``graph`` reuses a graph from
    :func:`~leukoshift.eval.knn.knn_graph` with at least ``k`` columns. Distances there are
    euclidean between L2-normalised features, so UMAP runs with that metric on the
    normalised features (its spectral initialisation and component layout read them). A
    fixed ``seed`` makes the layout reproducible (UMAP then runs single-threaded).
    """
    import umap  # numba compilation makes the import slow; only pay it when mapping

    x = normalise(feats)
    n = len(x)
    if n < 4:
        raise FeatureError(f"a UMAP layout needs at least 4 points, got {n}")
    k = min(k, n - 1)
    if k < 2:
        raise FeatureError(f"UMAP needs k >= 2 neighbours, got {k}")
    if graph is None:
        knn_indices, knn_dists = knn_graph(x, k)
    else:
        knn_indices, knn_dists = graph
        if knn_indices.shape != knn_dists.shape or knn_indices.shape[0] != n:
            raise FeatureError(f"the kNN graph is {knn_indices.shape} / {knn_dists.shape}, not ({n}, k)")
        if knn_indices.shape[1] < k:
            raise FeatureError(f"the kNN graph has {knn_indices.shape[1]} columns, k={k}")
    # exactly k columns: umap-learn only trims wider graphs above 4096 points, and it
    # writes into the arrays it is given, so it gets copies
    knn_indices = np.ascontiguousarray(knn_indices[:, :k], dtype=np.int64)
    knn_dists = np.ascontiguousarray(knn_dists[:, :k], dtype=np.float32)
    reducer = umap.UMAP(
        n_neighbors=k,
        min_dist=min_dist,
        metric="euclidean",
        random_state=seed,
        n_epochs=n_epochs,
        precomputed_knn=(knn_indices, knn_dists),
    )
    with warnings.catch_warnings():
        # expected with a precomputed graph and a seed: no search index to transform new
        # data with, and single-threaded layout
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        xy = reducer.fit_transform(x)
    return np.asarray(xy, dtype=np.float32)
