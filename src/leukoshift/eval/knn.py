"""Nearest neighbours in feature space with faiss: kNN accuracy, lab mixing, probes.

Everything here works in cosine geometry: features are L2-normalised and compared by
inner product, as in the kNN evaluation of self-supervised features (Wu et al. 2018,
"Unsupervised feature learning via non-parametric instance discrimination"; Caron et al.
2021, DINO). The same neighbours answer two questions:

* how good are the features for the cell classes (weighted kNN vote, :func:`knn_classify`);
* how much do they still encode the lab (:func:`lab_mixing`, :func:`source_probe`): an
  image whose neighbours all come from its own lab sits in a lab-specific region of the
  feature space, which is what fails when a new lab arrives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import faiss
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from leukoshift.errors import UserError

#: Above this many bank rows, :func:`build_index` switches from exact search to IVF.
IVF_THRESHOLD = 50_000


class FeatureError(UserError):
    """Features or labels that cannot be searched or scored."""


def _as_features(feats: np.ndarray, name: str = "features") -> np.ndarray:
    x = np.asarray(feats)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise FeatureError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise FeatureError(f"{name} contain NaN or infinite values")
    return x


def normalise(feats: np.ndarray) -> np.ndarray:
    """Row-wise L2-normalised float32 copy (zero rows stay zero)."""
    x = _as_features(feats).copy()
    faiss.normalize_L2(x)
    return x


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(
    feats: np.ndarray,
    metric: Literal["ip", "l2"] = "ip",
    ivf_threshold: int = IVF_THRESHOLD,
    nprobe: int | None = None,
    use_gpu: bool | None = None,
    seed: int = 0,
) -> faiss.Index:
    """A faiss index over L2-normalised ``feats``.

    ``metric="ip"`` scores by inner product (cosine similarity); ``"l2"`` by squared
    euclidean distance, which on unit vectors is ``2 - 2 cos`` and ranks the same. Up to
    ``ivf_threshold`` rows the search is exact (``IndexFlat*``); above it an
    ``IndexIVFFlat`` with ``nlist ~ sqrt(N)`` cells, trained on the features, searched in
    ``nprobe`` cells (default ``nlist // 8``, at least 8): exact search costs N x Q
    products, which stops being cheap around 10^5 rows. On a machine with faiss-gpu and a
    GPU (``use_gpu=None`` detects it) the index is moved to GPU 0.
    """
    if metric not in ("ip", "l2"):
        raise FeatureError(f"unknown metric {metric!r}; valid: ip, l2")
    x = normalise(feats)
    n, d = x.shape
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    if n <= ivf_threshold:
        index: faiss.Index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    else:
        nlist = max(1, min(round(math.sqrt(n)), n // 39))  # faiss wants >= 39 per cell
        quantizer = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
        # k-means on at most 256 points per cell, as faiss itself would subsample
        rng = np.random.default_rng(seed)
        train = x[rng.choice(n, size=min(n, 256 * nlist), replace=False)]
        index.cp.seed = seed
        index.train(train)
        index.nprobe = min(nlist, nprobe if nprobe is not None else max(8, nlist // 8))
    if use_gpu is None:
        use_gpu = _gpu_available()
    if use_gpu:
        if not _gpu_available():
            raise FeatureError("use_gpu=True but faiss has no GPU support or sees no GPU")
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
        # the GPU index must not outlive its resources (SWIG does not tie them together)
        gpu_index.referenced_objects = [resources]  # type: ignore[attr-defined]
        index = gpu_index
    index.add(x)
    return index


def knn_search(
    bank: faiss.Index | np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(sims, idx)``, both (Q, k), best first, for L2-normalised ``queries``.

    ``bank`` is an index from :func:`build_index` or raw features (indexed exactly).
    ``sims`` are inner products (squared distances for an ``l2`` index). With
    ``exclude_self`` the queries are the bank's own rows in order, and row ``i`` never
    lists ``i`` itself (duplicates of it remain neighbours). Missing neighbours (an IVF
    search that visits too few cells) are ``-1`` with similarity ``-inf``/``inf``.
    """
    index = bank if isinstance(bank, faiss.Index) else build_index(bank)
    q = normalise(queries)
    if q.shape[1] != index.d:
        raise FeatureError(f"queries have {q.shape[1]} dimensions, the bank {index.d}")
    available = index.ntotal - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise FeatureError(f"k={k} neighbours asked for, but the bank offers {available}")
    if not exclude_self:
        sims, idx = index.search(q, k)
        return sims, idx
    if q.shape[0] != index.ntotal:
        raise FeatureError("exclude_self needs the queries to be the bank's own rows")
    sims, idx = index.search(q, k + 1)
    # Move row i's own entry to the end (it is usually first, but ties with duplicates may
    # put it anywhere, or out of the list), then keep k.
    is_self = idx == np.arange(len(q))[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise FeatureError(f"{name} must be ({n},), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise FeatureError(f"{name} must be integer class indices, got {y.dtype}")
    if n and y.min() < 0:
        raise FeatureError(f"{name} contain negative (unlabeled) entries; select labelled rows")
    return y.astype(np.int64)


def vote(sims: np.ndarray, neighbour_labels: np.ndarray, n_classes: int, temperature: float = 0.07) -> np.ndarray:
    """Class scores (Q, C) of a weighted kNN vote, each row summing to 1.

    Neighbour ``j`` adds ``exp(sim_j / T)`` to its class (Wu et al. 2018, eq. 8; the DINO
    kNN evaluation with T = 0.07). Subtracting the row maximum first leaves the normalised
    scores unchanged and keeps ``exp`` finite at small T.
    """
    if temperature <= 0:
        raise FeatureError(f"temperature must be positive, got {temperature}")
    s = np.asarray(sims, dtype=np.float64)
    valid = neighbour_labels >= 0
    s = np.where(valid, s, -np.inf)
    weights = np.exp((s - s.max(axis=1, keepdims=True)) / temperature)
    scores = np.zeros((s.shape[0], n_classes), dtype=np.float64)
    rows = np.broadcast_to(np.arange(s.shape[0])[:, None], s.shape)
    np.add.at(scores, (rows[valid], neighbour_labels[valid]), weights[valid])
    total = scores.sum(axis=1, keepdims=True)
    # a query without any neighbour (IVF visiting empty cells) keeps all-zero scores
    return np.divide(scores, total, out=np.zeros_like(scores), where=total > 0)


def knn_classify(
    bank_feats: np.ndarray | faiss.Index,
    bank_labels: np.ndarray,
    query_feats: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    n_classes: int | None = None,
    exclude_self: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted kNN classification: ``(pred (Q,), scores (Q, C))``.

    ``bank_labels`` are class indices ``0..C-1`` (select labelled rows first);
    ``n_classes`` defaults to ``max(label) + 1``; ``k`` is clipped to the bank size.
    ``exclude_self`` is leave-one-out on the bank itself (queries = bank rows).
    """
    index = bank_feats if isinstance(bank_feats, faiss.Index) else build_index(bank_feats)
    y = _check_labels(bank_labels, index.ntotal, "bank labels")
    c = int(y.max()) + 1 if n_classes is None else n_classes
    if c <= int(y.max()):
        raise FeatureError(f"n_classes={c} but bank labels go up to {int(y.max())}")
    k = min(k, index.ntotal - (1 if exclude_self else 0))
    sims, idx = knn_search(index, query_feats, k, exclude_self=exclude_self)
    neighbour_labels = np.where(idx >= 0, y[np.maximum(idx, 0)], -1)
    scores = vote(sims, neighbour_labels, c, temperature)
    return scores.argmax(axis=1), scores


def knn_accuracy(
    bank_feats: np.ndarray | faiss.Index,
    bank_labels: np.ndarray,
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    exclude_self: bool = False,
) -> float:
    """Fraction of queries whose weighted kNN vote is their label (the online monitor).

    With ``exclude_self`` the queries are the bank itself, scored leave-one-out, so one
    labelled validation set serves as both memory bank and queries.
    """
    y = _check_labels(query_labels, len(query_feats), "query labels")
    n_classes = int(max(np.max(bank_labels), y.max())) + 1
    pred, _ = knn_classify(bank_feats, bank_labels, query_feats, k, temperature, n_classes, exclude_self)
    return float((pred == y).mean())


@dataclass
class MixingResult:
    """How often an image's nearest neighbours come from its own source.

    ``own`` is the per-image fraction of its k neighbours (itself excluded) sharing its
    source; ``per_source`` has, per source, ``n``, the mean ``own`` fraction, ``chance``
    = (n_s - 1) / (N - 1), the fraction a random neighbour would give, and
    ``ratio`` = own / chance, and ``isolation`` = (own - chance) / (1 - chance): 0 when
    neighbours come from the labs at random, 1 when every neighbour is from the own lab
    (below 0 when a lab's images sit among other labs' more than chance would have it).
    The overall own / chance numbers weight sources by size, so one large lab can hide
    the others' islands (PBC's 17,000 images beside 100 from CellaVision);
    ``mean_isolation`` averages the labs unweighted and cannot be hidden that way.
    A ratio of 1 means labs are perfectly mixed; N / n_s (its maximum) means each lab is an island.
    """

    k: int
    own: np.ndarray
    per_source: pd.DataFrame
    overall_own: float
    overall_chance: float
    overall_ratio: float
    mean_isolation: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "overall_own": self.overall_own,
            "overall_chance": self.overall_chance,
            "overall_ratio": self.overall_ratio,
            "mean_isolation": self.mean_isolation,
            "per_source": [
                {
                    "source": str(row.source),
                    "n": int(row.n),
                    "own": float(row.own),
                    "chance": float(row.chance),
                    "ratio": float(row.ratio),
                    "isolation": float(row.isolation),
                }
                for row in self.per_source.itertuples()
            ],
        }


def lab_mixing(
    feats: np.ndarray,
    sources: np.ndarray,
    k: int = 10,
    names: Sequence[str] | None = None,
) -> MixingResult:
    """Own-source fraction among each image's ``k`` nearest neighbours; lower = mixed better.

    ``sources`` are integer source indices (``ImageTable.sources``); ``names`` label them
    in the table (default: the indices). Sources with one image have chance 0 and their
    ratio is NaN; they still count in the overall own fraction.
    """
    x = normalise(feats)
    n = len(x)
    s = _check_labels(sources, n, "sources")
    if n < 2:
        raise FeatureError("lab mixing needs at least two images")
    k = min(k, n - 1)
    _, idx = knn_search(build_index(x), x, k, exclude_self=True)
    valid = idx >= 0
    same = valid & (s[np.maximum(idx, 0)] == s[:, None])
    own = same.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    present, counts = np.unique(s, return_counts=True)
    per_own = np.array([own[s == p].mean() for p in present])
    chance = (counts - 1) / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(chance > 0, per_own / np.where(chance > 0, chance, 1), np.nan)
        isolation = np.where(chance < 1, (per_own - chance) / np.where(chance < 1, 1 - chance, 1), np.nan)
    label = [str(names[p]) if names is not None else str(p) for p in present]
    per_source = pd.DataFrame(
        {"source": label, "n": counts, "own": per_own, "chance": chance, "ratio": ratio, "isolation": isolation}
    )
    overall_own = float(own.mean())
    overall_chance = float((counts * chance).sum() / n)
    return MixingResult(
        k=k,
        own=own,
        per_source=per_source,
        overall_own=overall_own,
        overall_chance=overall_chance,
        overall_ratio=overall_own / overall_chance if overall_chance > 0 else float("nan"),
        mean_isolation=float(np.nanmean(isolation)) if np.isfinite(isolation).any() else float("nan"),
    )


class ProbeResult(NamedTuple):
    """Cross-validated accuracy of predicting the source, and the majority-class rate."""

    accuracy: float
    chance: float


def source_probe(
    feats: np.ndarray,
    sources: np.ndarray,
    folds: int = 5,
    seed: int = 0,
    max_samples: int = 20_000,
) -> ProbeResult:
    """The "which lab is this?" probe: stratified k-fold logistic regression on normalised features.

    Near ``chance`` (the largest source's share) the features carry little lab identity;
    near 1 a classifier can tell every lab apart, and a new lab will be out of
    distribution. Above ``max_samples`` rows a stratified random subset is used.
    """
    x = normalise(feats)
    s = _check_labels(sources, len(x), "sources")
    present, counts = np.unique(s, return_counts=True)
    if len(present) < 2:
        raise FeatureError("the source probe needs at least two sources")
    rng = np.random.default_rng(seed)
    if len(x) > max_samples:
        keep = rng.choice(len(x), size=max_samples, replace=False)
        x, s = x[keep], s[keep]
        present, counts = np.unique(s, return_counts=True)
    n_folds = min(folds, int(counts.min()))
    if n_folds < 2:
        raise FeatureError(
            f"the source probe needs at least two images per source; source "
            f"{int(present[counts.argmin()])} has {int(counts.min())}"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    accuracy = cross_val_score(model, x, s, cv=cv, scoring="accuracy")
    return ProbeResult(float(accuracy.mean()), float(counts.max() / counts.sum()))


def knn_graph(feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(knn_indices (N, k) int64, knn_dists (N, k) float32)`` for umap-learn.

    The format of ``umap.UMAP(precomputed_knn=...)``: each row starts with the point
    itself at distance 0, then its ``k - 1`` nearest neighbours. Distances are euclidean
    between L2-normalised features, ``sqrt(2 - 2 cos)``, so UMAP must be run with
    ``metric="euclidean"`` on the normalised features (:func:`normalise`).
    """
    x = normalise(feats)
    if not 2 <= k <= len(x):
        raise FeatureError(f"a kNN graph with k={k} needs 2 <= k <= N={len(x)}")
    sims, idx = knn_search(build_index(x), x, k - 1, exclude_self=True)
    dists = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, None)).astype(np.float32)
    dists[idx < 0] = np.inf
    self_idx = np.arange(len(x), dtype=np.int64)[:, None]
    knn_indices = np.concatenate([self_idx, idx.astype(np.int64)], axis=1)
    knn_dists = np.concatenate([np.zeros((len(x), 1), np.float32), dists], axis=1)
    return knn_indices, knn_dists


def silhouettes(
    feats: np.ndarray,
    classes: np.ndarray,
    sources: np.ndarray,
    max_samples: int = 4000,
    seed: int = 0,
) -> dict[str, float | None]:
    """Cosine silhouette of the features grouped by class and by source (Rousseeuw 1987).

    High by class and low by source is what lab-invariant features look like. Rows with
    class -1 (unlabeled) are left out of the class score; above ``max_samples`` rows a
    random subset is scored. A grouping with fewer than two groups gives ``None``.
    """
    x = _as_features(feats)
    c = np.asarray(classes)
    s = np.asarray(sources)
    if c.shape != (len(x),) or s.shape != (len(x),):
        raise FeatureError("classes and sources must have one entry per feature row")
    rng = np.random.default_rng(seed)

    def one(mask: np.ndarray, groups: np.ndarray) -> float | None:
        rows = np.flatnonzero(mask)
        if len(rows) > max_samples:
            rows = np.sort(rng.choice(rows, size=max_samples, replace=False))
        n_groups = len(np.unique(groups[rows]))
        if n_groups < 2 or n_groups >= len(rows):
            return None
        return float(silhouette_score(x[rows], groups[rows], metric="cosine"))

    return {"class": one(c >= 0, c), "source": one(np.ones(len(x), bool), s)}
