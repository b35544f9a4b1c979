"""Rows of one or more manifests, backed by their caches, served as uint8 batches.

A batch is a dict: ``image`` (B, 3, S, S) uint8, ``label`` (B,) index into
:data:`~leukoshift.taxonomy.LABEL_CODES` or -1, ``source`` (B,) index into the table's
source names, and ``index`` (B,) the row position. Batches are gathered from the
memory map in one fancy-indexing call per manifest, never image by image; augmentation
happens later, on the device (see ``leukoshift.domain``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from leukoshift.config import ImageConfig
from leukoshift.data.cache import build_cache
from leukoshift.data.manifest import ManifestError, read_manifest
from leukoshift.taxonomy import label_indices


@dataclass
class ImageTable:
    """Selected manifest rows and where their cached pixels live."""

    frame: pd.DataFrame  # absolute paths; one row per image
    arrays: list[Path]  # one cache file per manifest
    part: np.ndarray  # which array each row lives in
    local: np.ndarray  # row position inside that array
    source_names: list[str]
    size: int
    _open: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.frame)

    def __getstate__(self) -> dict:
        # Memory maps are reopened in each loader worker rather than pickled whole.
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    @property
    def labels(self) -> np.ndarray:
        return label_indices(list(self.frame["label"]))

    @property
    def sources(self) -> np.ndarray:
        lookup = {s: i for i, s in enumerate(self.source_names)}
        return np.array([lookup[s] for s in self.frame["source"]], dtype=np.int64)

    def subset(self, positions: np.ndarray | Sequence[int]) -> ImageTable:
        pos = np.asarray(positions, dtype=np.int64)
        return replace(
            self,
            frame=self.frame.iloc[pos].reset_index(drop=True),
            part=self.part[pos],
            local=self.local[pos],
            _open={},
        )

    def where(self, mask: np.ndarray | pd.Series) -> ImageTable:
        return self.subset(np.flatnonzero(np.asarray(mask)))

    def _array(self, part: int) -> np.ndarray:
        arr = self._open.get(part)
        if arr is None:
            arr = self._open[part] = np.load(self.arrays[part], mmap_mode="r")
        return arr

    def images(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """(B, 3, S, S) uint8 for the given row positions, in that order."""
        pos = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(pos), 3, self.size, self.size), dtype=np.uint8)
        parts = self.part[pos]
        for p in np.unique(parts):
            sel = np.flatnonzero(parts == p)
            local = self.local[pos[sel]]
            order = np.argsort(local, kind="stable")  # sorted reads are sequential on disk
            out[sel[order]] = self._array(int(p))[local[order]]
        return out


def load_table(
    manifests: Sequence[Path | str],
    image: ImageConfig,
    split: str | Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    exclude_sources: Sequence[str] = (),
    labelled: bool = False,
    source_names: Sequence[str] | None = None,
    progress: bool = True,
) -> ImageTable:
    """Read manifests, build (or reuse) their caches, keep the selected rows.

    Rows whose image failed to decode are dropped with a printed count, and so are rows
    byte-identical to an image of an excluded source; ``source_names`` fixes the source
    vocabulary (e.g. a checkpoint's) instead of the sources present.
    """
    if not manifests:
        raise ManifestError("no manifest given")
    read = [read_manifest(path) for path in manifests]
    # An excluded lab stays unseen: byte-identical copies of its images under another
    # source are excluded with it (a held-out test image must not leak into training).
    excluded_sha1 = {
        sha for m in read for sha in m.frame.loc[m.frame["source"].isin(list(exclude_sources)), "sha1"] if sha
    }
    frames, arrays, parts, locals_ = [], [], [], []
    size = image.size
    for part, (path, manifest) in enumerate(zip(manifests, read, strict=True)):
        cache = build_cache(manifest, image, progress=progress)
        mask = manifest.mask(split=split, sources=sources, exclude_sources=exclude_sources, labelled=labelled)
        if excluded_sha1:
            copies = mask & manifest.frame["sha1"].isin(excluded_sha1).to_numpy()
            if copies.any():
                print(f"{path}: {int(copies.sum())} row(s) left out: identical to images of excluded source(s)")
            mask &= ~copies
        if cache.failed and len(cache.failed) == len(manifest.frame):
            # Not a few bad files: the paths are wrong (a moved manifest with relative paths).
            first = manifest.abs_paths[0]
            raise ManifestError(
                f"{path}: none of its {len(manifest.frame)} images could be read (first: {first}); "
                "check the paths, which are relative to the manifest's folder"
            )
        mask[list(cache.failed)] = False
        if cache.failed:
            print(f"{path}: {len(cache.failed)} row(s) could not be decoded and are left out")
        frame = manifest.frame[mask].copy()
        frame["path"] = [str(p) for p, m in zip(manifest.abs_paths, mask, strict=True) if m]
        frame["manifest"] = str(path)
        if cache.boxes is not None:
            for j, col in enumerate(("box_x0", "box_y0", "box_x1", "box_y1", "box_found")):
                frame[col] = cache.boxes[mask, j]
        frames.append(frame)
        arrays.append(cache.path)
        parts.append(np.full(int(mask.sum()), part, dtype=np.int64))
        locals_.append(np.flatnonzero(mask).astype(np.int64))
    merged = pd.concat(frames, ignore_index=True)
    names = list(source_names) if source_names is not None else sorted(merged["source"].unique())
    unknown = sorted(set(merged["source"]) - set(names))
    if unknown:
        raise ManifestError(f"source(s) {', '.join(unknown)} not among {', '.join(names)}")
    return ImageTable(merged, arrays, np.concatenate(parts), np.concatenate(locals_), names, size)


class BatchedImages(Dataset):
    """Dataset whose items are whole batches: ``ds[[i, j, ...]]`` -> batch dict."""

    def __init__(self, table: ImageTable) -> None:
        self.table = table
        self.labels = torch.from_numpy(table.labels)
        self.sources = torch.from_numpy(table.sources)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        pos = np.asarray(positions, dtype=np.int64)
        idx = torch.from_numpy(pos)
        return {
            "image": torch.from_numpy(self.table.images(pos)),
            "label": self.labels[idx],
            "source": self.sources[idx],
            "index": idx,
        }


def source_balance_weights(sources: np.ndarray, power: float) -> np.ndarray | None:
    """Per-row sampling weights giving a source of ``n`` rows a share proportional to
    ``n ** (1 - power)``: 0 keeps the pool's proportions (``None``: plain shuffling), 1
    draws every source equally often, 0.5 by the square root of its size.

    A pooled SSL set is mostly its largest lab (PBC is 91 % of ``../shared/data``), so a
    plain epoch shows the other labs' appearance to the model rarely; full balance
    instead repeats a 100-image lab hundreds of times per epoch.
    """
    if power == 0 or len(sources) == 0:
        return None
    counts = np.bincount(sources)
    weights = counts[sources].astype(np.float64) ** -power
    return weights / weights.sum()


def source_shares(table: ImageTable, power: float) -> dict[str, float]:
    """Each source's expected fraction of an epoch's draws under ``source_balance=power``."""
    sources = table.sources
    weights = source_balance_weights(sources, power)
    w = np.full(len(sources), 1.0 / len(sources)) if weights is None else weights
    totals = np.bincount(sources, weights=w, minlength=len(table.source_names))
    return {name: float(totals[i]) for i, name in enumerate(table.source_names)}


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of positions; shuffled per epoch with a seed, sharded across DDP ranks.

    With ``weights`` (one per row) an epoch is ``n`` rows drawn with replacement in
    proportion to them (:func:`source_balance_weights`) instead of a permutation.

    Every rank gets the same number of batches (required by collectives), padding with
    wrapped-around samples when the data do not divide evenly, as DistributedSampler does.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: np.ndarray | None = None,
    ) -> None:
        if n <= 0:
            raise ValueError("no rows to sample from")
        if weights is not None and (len(weights) != n or not shuffle):
            raise ValueError(f"weights need shuffle=True and one weight per row ({n}), got {len(weights)}")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, "
                f"got batch_size={batch_size}, rank={rank}, world_size={world_size}"
            )
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.weights = None if weights is None else weights / weights.sum()
        per_rank = math.ceil(n / world_size)
        if drop_last and per_rank >= batch_size:
            self.num_batches = per_rank // batch_size
        else:
            self.num_batches = math.ceil(per_rank / batch_size)
        self.per_rank = per_rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = np.random.default_rng((self.seed, self.epoch))
            # Weighted epochs draw with replacement (a small source's rows repeat); every
            # rank draws the same order from the shared seed, then takes its own shard.
            order = g.permutation(self.n) if self.weights is None else g.choice(self.n, self.n, p=self.weights)
        else:
            order = np.arange(self.n)
        total = self.per_rank * self.world_size
        # Wrap around (repeatedly, when there are fewer rows than ranks) to even out ranks.
        order = np.resize(order, total)
        mine = order[self.rank : total : self.world_size]
        for b in range(self.num_batches):
            batch = mine[b * self.batch_size : (b + 1) * self.batch_size]
            if len(batch):
                yield batch.tolist()


def make_loader(
    table: ImageTable,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
    weights: np.ndarray | None = None,
) -> DataLoader:
    """DataLoader over whole batches (``batch_size=None``: the sampler already batches)."""
    sampler = ShardedBatchSampler(len(table), batch_size, shuffle, drop_last, seed, rank, world_size, weights)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return DataLoader(
        BatchedImages(table),
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
