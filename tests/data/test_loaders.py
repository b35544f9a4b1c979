"""Loaders: uint8 batches gathered from the cache, sharded across ranks, worker-safe."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from leukoshift.config import ImageConfig
from leukoshift.data.importers import import_dataset
from leukoshift.data.loaders import (
    BatchedImages,
    ImageTable,
    ShardedBatchSampler,
    load_table,
    make_loader,
    source_balance_weights,
    source_shares,
)
from leukoshift.data.manifest import ManifestError, read_manifest
from leukoshift.taxonomy import LABEL_CODES
from leukoshift.training import TableDataModule
from tests.conftest import make_pbc_tree, write_image

CFG = ImageConfig(size=16)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A labelled lab (20 images, 4 classes) and an unlabeled pool (6 images)."""
    root = tmp_path_factory.mktemp("loaders")
    make_pbc_tree(root / "pbc", {"BA": 5, "EO": 5, "SNE": 5, "PLATELET": 5})
    for k in range(6):
        write_image(root / "pool" / f"p{k}.png", seed=500 + k)
    a = import_dataset("pbc", root / "pbc", "pbc", root / "pbc.csv", progress=False, workers=1)
    b = import_dataset("unlabeled", root / "pool", "pool", root / "pool.csv", progress=False, workers=1)
    return a.manifest_path, b.manifest_path


def test_table_rows_labels_and_sources(manifests: tuple[Path, Path]) -> None:
    table = load_table(list(manifests), CFG, progress=False)
    assert len(table) == 26 and table.source_names == ["pbc", "pool"]
    labelled = load_table(list(manifests), CFG, labelled=True, progress=False)
    assert len(labelled) == 20 and set(labelled.frame["source"]) == {"pbc"}
    train = load_table(list(manifests), CFG, split="train", progress=False)
    assert set(train.frame["split"]) == {"train"} and 0 < len(train) < 26
    pool_only = load_table(list(manifests), CFG, sources=["pool"], source_names=["pbc", "pool"], progress=False)
    assert pool_only.sources.tolist() == [1] * 6 and (pool_only.labels == -1).all()
    with pytest.raises(ManifestError, match="source"):
        load_table(list(manifests), CFG, source_names=["pbc"], progress=False)


def test_batches_have_the_right_types_and_contents(manifests: tuple[Path, Path]) -> None:
    table = load_table(list(manifests), CFG, progress=False)
    arrays = [np.load(p) for p in table.arrays]
    seen: list[int] = []
    for batch in make_loader(table, batch_size=8, shuffle=True, seed=1):
        image, label, source, index = (
            batch["image"],
            batch["label"],
            batch["source"],
            batch["index"],
        )
        assert image.dtype == torch.uint8 and image.shape[1:] == (3, 16, 16)
        assert label.dtype == torch.int64 and source.dtype == torch.int64
        assert len(image) == len(label) == len(source) == len(index) <= 8
        for row, img, lab, src in zip(index.tolist(), image, label.tolist(), source.tolist(), strict=True):
            code = table.frame.at[row, "label"]
            assert lab == (LABEL_CODES.index(code) if code else -1)
            assert table.source_names[src] == table.frame.at[row, "source"]
            expected = arrays[table.part[row]][table.local[row]]
            np.testing.assert_array_equal(img.numpy(), expected)
        seen += index.tolist()
    assert sorted(seen) == list(range(26))


def test_each_batch_is_one_array_read_per_manifest(
    manifests: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    table = load_table(list(manifests), CFG, progress=False)
    reads: list[int] = []

    class CountingArray:
        def __init__(self, arr: np.ndarray) -> None:
            self.arr = arr

        def __getitem__(self, key: object) -> np.ndarray:
            reads.append(len(np.atleast_1d(key)))  # type: ignore[arg-type]
            return self.arr[key]

    real = ImageTable._array
    monkeypatch.setattr(ImageTable, "_array", lambda self, part: CountingArray(real(self, part)))
    n_batches, parts_per_batch = 0, 0
    for batch in make_loader(table, batch_size=10, shuffle=True):
        n_batches += 1
        parts_per_batch += len(np.unique(table.part[batch["index"].numpy()]))
    assert len(reads) == parts_per_batch  # one fancy-indexed read per manifest and batch
    assert sum(reads) == len(table) and n_batches == 3


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def test_sampler_shards_disjointly_with_equal_batch_counts() -> None:
    n, bs, world = 30, 4, 3
    shards = [list(ShardedBatchSampler(n, bs, seed=5, rank=r, world_size=world)) for r in range(world)]
    assert {len(s) for s in shards} == {len(ShardedBatchSampler(n, bs, world_size=world))} == {3}
    assert sorted(flat([flat(s) for s in shards])) == list(range(n))  # disjoint and complete
    # Uneven: every rank still gets the same number of batches; only the padding repeats.
    uneven = [flat(list(ShardedBatchSampler(31, bs, rank=r, world_size=4))) for r in range(4)]
    assert {len(u) for u in uneven} == {8}
    assert set(flat(uneven)) == set(range(31)) and len(flat(uneven)) == 32
    # Fewer rows than ranks still gives every rank a batch.
    tiny = [list(ShardedBatchSampler(1, bs, rank=r, world_size=4)) for r in range(4)]
    assert all(len(t) == 1 and len(t[0]) == 1 for t in tiny)


def test_sampler_reshuffles_per_epoch_and_is_reproducible() -> None:
    sampler = ShardedBatchSampler(50, 8, shuffle=True, seed=0)
    epoch0 = list(sampler)
    assert epoch0 == list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    assert sorted(flat(epoch1)) == sorted(flat(epoch0)) == list(range(50))
    assert flat(list(ShardedBatchSampler(50, 8, shuffle=False))) == list(range(50))
    dropped = list(ShardedBatchSampler(50, 8, drop_last=True))
    assert len(dropped) == 6 and all(len(b) == 8 for b in dropped)


def test_source_balance_weights_set_each_sources_share() -> None:
    sources = np.array([0] * 900 + [1] * 100)
    assert source_balance_weights(sources, 0.0) is None  # plain shuffling
    for power, share_of_small in ((1.0, 0.5), (0.5, 10 / (30 + 10))):  # n ** (1 - power)
        w = source_balance_weights(sources, power)
        assert w is not None and w.sum() == pytest.approx(1.0)
        assert w[sources == 1].sum() == pytest.approx(share_of_small)
        assert len(set(w[sources == 0])) == 1  # rows of one source are equally likely


def test_weighted_sampler_draws_the_shares_reproducibly_and_shards() -> None:
    sources = np.array([0] * 900 + [1] * 100)
    w = source_balance_weights(sources, 1.0)
    sampler = ShardedBatchSampler(1000, 50, seed=3, weights=w)
    epoch0 = flat(list(sampler))
    assert len(epoch0) == 1000 and epoch0 == flat(list(sampler))  # same length, reproducible
    assert 0.45 < np.mean(sources[epoch0] == 1) < 0.55  # balanced, not 10 %
    assert len(set(epoch0)) < 1000  # drawn with replacement: the small source repeats
    sampler.set_epoch(1)
    assert flat(list(sampler)) != epoch0
    ranks = [flat(list(ShardedBatchSampler(1000, 50, seed=3, rank=r, world_size=2, weights=w))) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(epoch0)  # the ranks split one shared draw
    with pytest.raises(ValueError, match="one weight per row"):
        ShardedBatchSampler(999, 50, weights=w)
    with pytest.raises(ValueError, match="shuffle"):
        ShardedBatchSampler(1000, 50, shuffle=False, weights=w)


def test_datamodule_draws_by_source_balance(manifests: tuple[Path, Path]) -> None:
    table = load_table(list(manifests), CFG, progress=False)  # 20 pbc rows, 6 pool rows
    assert source_shares(table, 0.0) == pytest.approx({"pbc": 20 / 26, "pool": 6 / 26})
    plain = TableDataModule(table, None, 8, 0, seed=0)
    assert plain.describe_draws() is None
    balanced = TableDataModule(table, None, 8, 0, seed=0, source_balance=1.0)
    assert balanced.describe_draws() == "draws per epoch by source: pbc 50%, pool 50%"
    index = torch.cat([b["index"] for b in balanced.train_dataloader()])
    assert len(index) == 26 and len(set(index.tolist())) < 26


def test_memmaps_are_reopened_not_pickled(manifests: tuple[Path, Path]) -> None:
    table = load_table(list(manifests), CFG, progress=False)
    table.images([0, 25])  # opens both memory maps
    assert len(table._open) == 2
    blob = pickle.dumps(table)
    restored = pickle.loads(blob)
    assert restored._open == {}
    array_bytes = sum(np.load(p, mmap_mode="r").nbytes for p in table.arrays)
    assert len(blob) < array_bytes  # the pixels did not travel
    np.testing.assert_array_equal(restored.images([3, 25]), table.images([3, 25]))


def test_loader_with_a_worker_process(manifests: tuple[Path, Path]) -> None:
    table = load_table(list(manifests), CFG, progress=False)
    table.images([0])  # an open map in the parent must not break the worker
    loader = make_loader(table, batch_size=7, shuffle=False, num_workers=1)
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [7, 7, 7, 5]
    index = torch.cat([b["index"] for b in batches])
    assert index.tolist() == list(range(26))
    images = torch.cat([b["image"] for b in batches]).numpy()
    np.testing.assert_array_equal(images, table.images(np.arange(26)))


def test_failed_rows_are_left_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for k in range(4):
        write_image(tmp_path / "Lymphocyte" / f"{k}.jpg", seed=k)
    out = tmp_path / "m.csv"
    import_dataset("folder", tmp_path, "x", out, progress=False, workers=1)
    broken = read_manifest(out).abs_paths[2]
    broken.write_bytes(b"garbage")
    table = load_table([out], CFG, progress=False)
    assert len(table) == 3 and broken.name not in {Path(p).name for p in table.frame["path"]}
    assert "1 row(s) could not be decoded" in capsys.readouterr().out
    dataset = BatchedImages(table)
    assert dataset[[0, 2]]["image"].shape == (2, 3, 16, 16)


def test_a_manifest_whose_images_all_fail_names_itself(tmp_path: Path) -> None:
    for k in range(3):
        write_image(tmp_path / "lab" / "Lymphocyte" / f"{k}.jpg", seed=k)
    out = tmp_path / "lab" / "m.csv"
    import_dataset("folder", tmp_path / "lab", "x", out, progress=False, workers=1)
    moved = tmp_path / "elsewhere" / "m.csv"  # relative paths no longer lead to the images
    moved.parent.mkdir()
    moved.write_text(out.read_text())
    with pytest.raises(ManifestError, match=r"m\.csv: none of its 3 images could be read \(first: .*0\.jpg\)"):
        load_table([moved], CFG, progress=False)
