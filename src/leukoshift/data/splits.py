"""Seeded stratified splits and leave-one-source-out folds.

Identical files (same sha1) are one unit: they always land in the same split, and a
held-out source's images never reach training through a byte-identical copy elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def _stratum_seed(seed: int, *keys: str) -> int:
    digest = hashlib.sha1("\0".join((str(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def assign_splits(
    frame: pd.DataFrame,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
) -> pd.Series:
    """train / val / test per row, stratified by (source, label), duplicates kept together.

    Each stratum is shuffled with a seed derived from (seed, source, label), so adding a
    source or a class never reshuffles the others.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    # A duplicate group takes the stratum of its first row (a cross-label group is rare
    # and flagged at import; keeping it whole matters more than its stratum).
    first = frame.groupby("sha1", sort=False).head(1)
    splits = pd.Series("train", index=frame.index, dtype=object)
    group_split: dict[str, str] = {}
    for (source, label), rows in first.groupby(["source", "label"], sort=True):
        shas = rows["sha1"].to_numpy()
        rng = np.random.default_rng(_stratum_seed(seed, str(source), str(label)))
        order = rng.permutation(len(shas))
        n = len(shas)
        n_test = int(round(n * ratios[2]))
        n_val = int(round(n * ratios[1]))
        if n_test + n_val > n:
            n_val = n - n_test
        for rank, i in enumerate(order):
            group_split[shas[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    splits[:] = [group_split[s] for s in frame["sha1"]]
    return splits


@dataclass(frozen=True)
class SourceFold:
    """One leave-one-source-out fold as row positions of a merged frame."""

    held_out: str
    train: np.ndarray  # rows of the other sources usable for training and selection
    held_out_rows: np.ndarray
    leaked: int  # rows removed from training because a byte-identical copy is held out


def leave_one_source_out(
    frame: pd.DataFrame, held_out: Sequence[str] | None = None
) -> list[SourceFold]:
    """Folds from the ``source`` column; training rows never share a sha1 with the held-out lab."""
    sources = sorted(frame["source"].unique()) if held_out is None else list(held_out)
    folds = []
    for src in sources:
        is_out = (frame["source"] == src).to_numpy()
        if not is_out.any():
            raise ValueError(f"held-out source {src!r} has no rows; sources: {sorted(frame['source'].unique())}")
        out_shas = set(frame.loc[is_out, "sha1"])
        shares = frame["sha1"].isin(out_shas).to_numpy() & ~is_out
        folds.append(
            SourceFold(
                held_out=src,
                train=np.flatnonzero(~is_out & ~shares),
                held_out_rows=np.flatnonzero(is_out),
                leaked=int(shares.sum()),
            )
        )
    return folds
