"""faiss kNN, lab mixing, source probe and silhouettes against brute-force numpy."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from leukoshift.errors import UserError
from leukoshift.eval.knn import (
    build_index,
    knn_accuracy,
    knn_classify,
    knn_graph,
    knn_search,
    lab_mixing,
    silhouettes,
    source_probe,
)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_neighbours(bank: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool):
    sims = unit(queries.astype(np.float64)) @ unit(bank.astype(np.float64)).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1)[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.fixture
def points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 3, size=50)
    sources = np.repeat([0, 1, 2], [25, 15, 10])
    return feats, labels, sources


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_classify_matches_brute_force(points, exclude_self: bool) -> None:
    feats, labels, _ = points
    k, t = 7, 0.07
    queries = feats if exclude_self else feats[::2] + 0.1
    pred, scores = knn_classify(feats, labels, queries, k=k, temperature=t, n_classes=3, exclude_self=exclude_self)
    sims, idx = brute_neighbours(feats, queries, k, exclude_self)
    expected = np.zeros((len(queries), 3))
    for i in range(len(queries)):
        for s, j in zip(sims[i], idx[i], strict=True):
            expected[i, labels[j]] += np.exp(s / t)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(pred, expected.argmax(axis=1))


def test_knn_accuracy_counts_correct_votes(points) -> None:
    feats, labels, _ = points
    queries = feats[:20] + 0.01  # each query next to its own bank point
    pred, _ = knn_classify(feats, labels, queries, k=5)
    acc = knn_accuracy(feats, labels, queries, labels[:20], k=5)
    assert acc == pytest.approx(float((pred == labels[:20]).mean()))
    # at T -> 0 the nearest neighbour (the point itself) decides
    assert knn_accuracy(feats, labels, queries, labels[:20], k=5, temperature=1e-4) == 1.0
    # leave-one-out on the bank itself: the point's own label no longer votes
    loo, _ = knn_classify(feats, labels, feats, k=5, exclude_self=True)
    assert knn_accuracy(feats, labels, feats, labels, k=5, exclude_self=True) == pytest.approx(
        float((loo == labels).mean())
    )
    assert float((loo == labels).mean()) < 1.0


def test_lab_mixing_matches_brute_force(points) -> None:
    feats, _, sources = points
    k = 6
    result = lab_mixing(feats, sources, k=k, names=["a", "b", "c"])
    _, idx = brute_neighbours(feats, feats, k, exclude_self=True)
    own = (sources[idx] == sources[:, None]).mean(axis=1)
    np.testing.assert_allclose(result.own, own)
    n = len(feats)
    for row in result.per_source.itertuples():
        s = ["a", "b", "c"].index(row.source)
        n_s = int((sources == s).sum())
        assert row.n == n_s
        assert row.own == pytest.approx(own[sources == s].mean())
        assert row.chance == pytest.approx((n_s - 1) / (n - 1))
        assert row.ratio == pytest.approx(row.own / row.chance)
        assert row.isolation == pytest.approx((row.own - row.chance) / (1 - row.chance))
    assert result.overall_own == pytest.approx(own.mean())
    chance = sum((sources == s).sum() * ((sources == s).sum() - 1) / (n - 1) for s in range(3)) / n
    assert result.overall_chance == pytest.approx(chance)
    assert result.to_dict()["per_source"][0]["source"] == "a"
    assert result.mean_isolation == pytest.approx(result.per_source["isolation"].mean())


def test_lab_mixing_separated_versus_mixed_sources() -> None:
    rng = np.random.default_rng(0)
    sources = np.repeat([0, 1], 100)
    mixed = rng.normal(size=(200, 8))
    islands = mixed + np.where(sources[:, None] == 0, 6.0, -6.0) * np.eye(8)[0]
    apart = lab_mixing(islands, sources, k=10)
    together = lab_mixing(mixed, sources, k=10)
    assert apart.overall_own == 1.0
    assert apart.overall_ratio == pytest.approx(1.0 / (99 / 199))
    assert together.overall_ratio == pytest.approx(1.0, abs=0.2)
    assert apart.mean_isolation == pytest.approx(1.0)
    assert abs(together.mean_isolation) < 0.2


def test_isolation_sees_a_small_lab_island_that_the_overall_ratio_hides() -> None:
    rng = np.random.default_rng(3)
    sources = np.repeat([0, 1], [950, 50])
    feats = rng.normal(size=(1000, 8))
    feats[sources == 1, 0] += 8.0  # the small lab is an island
    result = lab_mixing(feats, sources, k=10)
    assert result.overall_ratio < 1.15  # near 1: dominated by the big lab, whose chance is already 0.95
    assert result.mean_isolation > 0.45


def test_source_probe_detects_lab_identity() -> None:
    rng = np.random.default_rng(1)
    sources = np.repeat([0, 1, 2], [60, 30, 30])
    feats = rng.normal(size=(120, 6))
    acc, chance = source_probe(feats, sources, folds=3)
    assert chance == pytest.approx(0.5)
    assert acc < chance + 0.15
    shifted = feats + np.eye(6)[sources] * 4
    assert source_probe(shifted, sources, folds=3).accuracy > 0.95


def test_knn_search_excludes_self_but_keeps_duplicates() -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(30, 5)).astype(np.float32)
    feats[1] = feats[0]
    sims, idx = knn_search(feats, feats, 3, exclude_self=True)
    assert not (idx == np.arange(30)[:, None]).any()
    assert idx[0, 0] == 1 and idx[1, 0] == 0
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(UserError, match="k=30"):
        knn_search(feats, feats, 30, exclude_self=True)


def test_ivf_index_agrees_with_exact() -> None:
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(40, 16)) * 3
    feats = (centres[rng.integers(0, 40, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    ivf = build_index(feats, ivf_threshold=1000)
    assert isinstance(ivf, faiss.IndexIVFFlat) and ivf.nlist == 63 and ivf.nprobe == 8
    queries = feats[:300]
    _, exact = knn_search(build_index(feats), queries, 10)
    _, approx = knn_search(ivf, queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9


def test_knn_graph_is_umap_format(points) -> None:
    feats, _, _ = points
    idx, dists = knn_graph(feats, 5)
    assert idx.shape == dists.shape == (50, 5) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx[:, 0], np.arange(50))
    assert (dists[:, 0] == 0).all() and (np.diff(dists, axis=1) >= -1e-6).all()
    sims, brute = brute_neighbours(feats, feats, 4, exclude_self=True)
    np.testing.assert_array_equal(idx[:, 1:], brute)
    np.testing.assert_allclose(dists[:, 1:], np.sqrt(2 - 2 * sims), atol=1e-4)


def test_silhouettes_by_class_and_source() -> None:
    rng = np.random.default_rng(5)
    classes = np.repeat([0, 1, -1], [40, 40, 10])
    sources = rng.integers(0, 2, size=90)
    feats = rng.normal(size=(90, 4)) + np.where(classes[:, None] == 0, 5.0, -5.0) * np.eye(4)[1]
    sil = silhouettes(feats, classes, sources)
    labelled = classes >= 0
    assert sil["class"] == pytest.approx(
        silhouette_score(feats[labelled], classes[labelled], metric="cosine"), rel=1e-5
    )
    assert sil["class"] > 0.5 and abs(sil["source"]) < 0.1
    sub = silhouettes(feats, classes, sources, max_samples=60)
    assert sub["class"] == pytest.approx(sil["class"], abs=0.1)
    assert silhouettes(feats, np.zeros(90, int), sources)["class"] is None


def test_bad_labels_are_user_errors(points) -> None:
    feats, labels, _ = points
    bad = labels.copy()
    bad[0] = -1
    with pytest.raises(UserError, match="unlabeled"):
        knn_classify(feats, bad, feats)
    with pytest.raises(UserError, match="NaN"):
        build_index(np.full((3, 2), np.nan))
    with pytest.raises(UserError, match="two sources"):
        source_probe(feats, np.zeros(50, int))
