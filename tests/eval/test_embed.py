"""Embedding a cached image table, pixel features, and the embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from leukoshift.data.loaders import ImageTable
from leukoshift.errors import UserError
from leukoshift.eval.embed import (
    cached_embeddings,
    embed_table,
    embedding_key,
    file_digest,
    pixel_features,
    table_digest,
)


def make_table(tmp_path: Path, n: int = 10, size: int = 8) -> ImageTable:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)
    array = tmp_path / "cache.npy"
    np.save(array, images)
    frame = pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(n)],
            "label": ["SNE", "LY"] * (n // 2),
            "source": ["a"] * (n // 2) + ["b"] * (n - n // 2),
        }
    )
    return ImageTable(frame, [array], np.zeros(n, np.int64), np.arange(n), ["a", "b"], size)


def test_embed_table_feeds_float01_in_row_order(tmp_path: Path) -> None:
    table = make_table(tmp_path)
    seen: list[torch.Tensor] = []

    def encoder(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x.mean(dim=(2, 3))  # (B, 3) channel means

    feats = embed_table(encoder, table, batch_size=3, progress=False)
    images = table.images(np.arange(len(table))).astype(np.float32) / 255
    np.testing.assert_allclose(feats, images.mean(axis=(2, 3)), rtol=1e-5)
    assert feats.dtype == np.float32 and len(seen) == 4
    assert all(x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1 for x in seen)


def test_embed_table_restores_module_mode_and_checks_output(tmp_path: Path) -> None:
    table = make_table(tmp_path)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(192, 4))
    model.train()
    a = embed_table(model, table, batch_size=4, progress=False)
    b = embed_table(model, table, batch_size=4, progress=False)
    np.testing.assert_array_equal(a, b)  # eval mode: dropout off
    assert model.training and a.shape == (10, 4)
    with pytest.raises(UserError, match=r"\(batch, dim\)"):
        embed_table(lambda x: x, table, progress=False)


def test_pixel_features_are_standardised_block_means(tmp_path: Path) -> None:
    table = make_table(tmp_path)
    feats = pixel_features(table, side=4)
    assert feats.shape == (10, 48)
    np.testing.assert_allclose(feats.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(feats.std(axis=0), 1, atol=1e-4)
    images = table.images(np.arange(10)).astype(np.float64) / 255
    blocks = images.reshape(10, 3, 4, 2, 4, 2).mean(axis=(3, 5)).reshape(10, -1)
    expected = (blocks - blocks.mean(0)) / blocks.std(0)
    np.testing.assert_allclose(feats, expected, atol=1e-4)


def test_cached_embeddings_compute_once_per_key(tmp_path: Path) -> None:
    table = make_table(tmp_path)
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return np.full((10, 3), float(len(calls)), dtype=np.float32)

    key = embedding_key(table, side=4)
    first = cached_embeddings(key, compute, tmp_path / "emb")
    again = cached_embeddings(key, compute, tmp_path / "emb")
    np.testing.assert_array_equal(first, again)
    assert len(calls) == 1
    other = cached_embeddings(embedding_key(table.subset([0, 1]), side=4) | {"n": 10}, compute, tmp_path / "emb")
    assert len(calls) == 2 and other[0, 0] == 2.0
    assert table_digest(table) != table_digest(table.subset([1, 0]))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    assert embedding_key(table, ckpt)["checkpoint"] == file_digest(ckpt)
