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

from leukoshift.errors import UserError

DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def _rank(seed: int, unit: str) -> int:
    """A seeded pseudo-random rank of one image, independent of row order."""
    digest = hashlib.sha1(f"{seed}\0{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _text(column: pd.Series) -> list[str]:
    """Cells as text, missing ones as "" (pandas 3 gives NaN for empty string cells)."""
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in column]


def check_ratios(ratios: Sequence[float]) -> None:
    """Fail before any work on fractions that are not three non-negative numbers summing to 1."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise UserError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")


def assign_splits(
    frame: pd.DataFrame,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
) -> pd.Series:
    """train / val / test per row, stratified by (source, label), duplicates kept together.

    Within a stratum the images are ordered by a hash of (seed, sha1) and the first
    ``round(n * test)`` go to test, the next ``round(n * val)`` to val. The order depends on
    nothing but the seed and the image itself, so shuffling rows, adding a source or adding
    a class never moves the other rows, and adding one image moves at most a boundary one.
    """
    check_ratios(ratios)
    n_rows = len(frame)
    sources, labels = _text(frame["source"]), _text(frame["label"])
    # A row without a hash cannot be matched with copies; it is its own unit.
    units = [sha or f"row\0{i}" for i, sha in enumerate(_text(frame["sha1"]))]
    # A duplicate group takes the stratum of its first row (a cross-label group is rare
    # and flagged at import; keeping it whole matters more than its stratum).
    strata: dict[tuple[str, str], list[str]] = {}
    seen: set[str] = set()
    for i in range(n_rows):
        if units[i] not in seen:
            seen.add(units[i])
            strata.setdefault((sources[i], labels[i]), []).append(units[i])
    unit_split: dict[str, str] = {}
    for members in strata.values():
        n = len(members)
        n_test = min(n, int(np.floor(n * ratios[2] + 0.5)))
        n_val = min(n - n_test, int(np.floor(n * ratios[1] + 0.5)))
        for rank, unit in enumerate(sorted(members, key=lambda u: (_rank(seed, u), u))):
            unit_split[unit] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return pd.Series([unit_split[u] for u in units], index=frame.index, dtype=object)


@dataclass(frozen=True)
class SourceFold:
    """One leave-one-source-out fold as row positions of a merged frame."""

    held_out: str
    train: np.ndarray  # rows of the other sources usable for training and selection
    held_out_rows: np.ndarray
    leaked: int  # rows removed from training because a byte-identical copy is held out


def leave_one_source_out(frame: pd.DataFrame, held_out: Sequence[str] | None = None) -> list[SourceFold]:
    """Folds from the ``source`` column; training rows never share a sha1 with the held-out lab."""
    sources = sorted(frame["source"].unique()) if held_out is None else list(held_out)
    folds = []
    for src in sources:
        is_out = (frame["source"] == src).to_numpy()
        if not is_out.any():
            raise UserError(f"held-out source {src!r} has no rows; sources: {sorted(frame['source'].unique())}")
        out_shas = set(frame.loc[is_out, "sha1"]) - {""}  # an empty hash matches nothing
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
