"""Near-duplicate images within a lab: the same cell saved again rotated, flipped or shifted.

The importers catch byte-identical files (``<manifest>.duplicates.csv``). Some published
sets also hold re-saved copies of one field, turned by 90 degrees, mirrored or moved: on
``../shared/data``, 102 of Bio-net's 361 images are such copies of another (its 52
lymphocytes are 26 cells; ``LYMPHOCYTE/05.jpg`` to ``11.jpg`` are one field), and one PBC
image is filed both as an eosinophil and as a band neutrophil. Copies shrink the real
sample behind a per-type recall; in a training lab a copy on each side of the train/test
split inflates the test score; neither shows in a file hash.

Each image becomes its centred cell (the cache's ``image.preprocess``) in grey, reduced
to 32 px so that re-encoding noise averages out, then centred and scaled to unit length:
the inner product of two images is their Pearson correlation. Every image's eight
rotations and mirrors are searched against the lab's originals with faiss, so a turned or
mirrored copy correlates like an untouched one. Pairs at or above ``threshold`` are joined
into groups.

The threshold is a measured trade-off, not a law. Distinct PBC cells on PBC's even
background correlate at 0.895 with their nearest neighbour (median; 99th percentile
0.973): at 0.98, 70 of 17,092 PBC images fall in 35 groups, among them at least one pair
of different cells (an erythroblast and a lymphocyte at 0.984). A shift is not undone: one pixel at
64 px costs a smooth image about 0.02, and Bio-net's ``LYMPHOCYTE/09.jpg`` and ``10.jpg``,
cropped a little differently from the rest of their field, meet it at 0.97 and form a
group of their own. Lower the threshold to join such copies, at the price of lookalikes.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DEFAULT_THRESHOLD = 0.98
_SIDE = 32  # px compared: coarse enough that re-encoding noise averages out (shifts are not undone)
_GREY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601 luminance
_NEIGHBOURS = 5  # per view: enough to reach every member of a small group of copies
_CHUNK = 2048  # images decoded from the cache at a time: memory holds vectors, not pixels


def dihedral_vectors(images: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) uint8 -> (N, 8, 32*32) float32: each image's 8 rotations and mirrors in
    grey at 32 px, each centred and of unit length (constant images stay zero)."""
    grey = (torch.from_numpy(images).float() * _GREY).sum(1, keepdim=True)
    grey = F.interpolate(grey, size=_SIDE, mode="area")[:, 0]
    views = []
    for turns in range(4):
        turned = torch.rot90(grey, turns, dims=(1, 2))
        views += [turned, turned.flip(2)]
    vectors = torch.stack(views, 1).reshape(len(images), 8, -1)
    vectors = vectors - vectors.mean(-1, keepdim=True)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return vectors.numpy()


def _groups(n: int, pairs: list[tuple[int, int]]) -> np.ndarray:
    """(N,) group id per image (connected components of the pairs, numbered by their first
    image), -1 for images in no pair."""
    ids = np.full(n, -1)
    if not pairs:
        return ids
    i, j = np.array(pairs).T
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    in_pair = np.zeros(n, dtype=bool)
    in_pair[i] = in_pair[j] = True
    # Components are labelled in order of their lowest image; renumber the paired ones 0, 1, ...
    _, ids[in_pair] = np.unique(component[in_pair], return_inverse=True)
    return ids


def near_duplicates(images: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Groups of near-identical images among ``images`` (one lab): a row per image in a
    group, with ``index`` (its position), ``group``, ``match`` (position of its best match)
    and ``r`` (their correlation, under the best rotation or mirror)."""
    return _search(dihedral_vectors(images), threshold)


def _search(vectors: np.ndarray, threshold: float) -> pd.DataFrame:
    """:func:`near_duplicates` on :func:`dihedral_vectors`' output."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    n = len(vectors)
    if n < 2:
        return pd.DataFrame(columns=["index", "group", "match", "r"])
    index = faiss.IndexFlatIP(vectors.shape[-1])
    index.add(np.ascontiguousarray(vectors[:, 0]))
    best = np.full(n, -np.inf)
    match = np.full(n, -1)
    pairs: set[tuple[int, int]] = set()
    k = min(_NEIGHBOURS + 1, n)
    for view in range(8):
        sims, found = index.search(np.ascontiguousarray(vectors[:, view]), k)
        for col in range(k):
            other = found[:, col]
            valid = (other >= 0) & (other != np.arange(n))
            better = valid & (sims[:, col] > best)
            best[better], match[better] = sims[better, col], other[better]
            for i in np.flatnonzero(valid & (sims[:, col] >= threshold)):
                pairs.add((min(i, int(other[i])), max(i, int(other[i]))))
    group = _groups(n, sorted(pairs))
    members = np.flatnonzero(group >= 0)
    return pd.DataFrame(
        {"index": members, "group": group[members], "match": match[members], "r": best[members].round(4)}
    )


def near_duplicate_report(
    images: np.ndarray | Callable[[np.ndarray], np.ndarray], frame: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD
) -> pd.DataFrame:
    """:func:`near_duplicates` per source of ``frame``: the manifest's source, path, label
    and split of every image in a group, its group (numbered across sources), its best
    match's path and r, and whether its group mixes labels (``conflict``) or splits
    (``spans_splits``). ``images`` holds the rows' pixels, or gives them for positions
    (``ImageTable.images``), read a chunk at a time so that a large lab never sits in
    memory as pixels."""
    fetch = images.__getitem__ if isinstance(images, np.ndarray) else images
    parts = []
    offset = 0
    for source in sorted(frame["source"].unique()):
        positions = np.flatnonzero((frame["source"] == source).to_numpy())
        chunks = [positions[i : i + _CHUNK] for i in range(0, len(positions), _CHUNK)]
        found = _search(np.concatenate([dihedral_vectors(fetch(chunk)) for chunk in chunks]), threshold)
        if found.empty:
            continue
        rows = frame.iloc[positions[found["index"].to_numpy()]].reset_index(drop=True)
        part = pd.DataFrame(
            {
                "group": found["group"].to_numpy() + offset,
                "source": source,
                "path": rows["path"],
                "label": rows["label"],
                "split": rows["split"],
                "match": frame["path"].to_numpy()[positions[found["match"].to_numpy()]],
                "r": found["r"].to_numpy(),
            }
        )
        offset += int(found["group"].max()) + 1
        parts.append(part)
    columns = ["group", "source", "path", "label", "split", "match", "r", "conflict", "spans_splits"]
    if not parts:
        return pd.DataFrame(columns=columns)
    report = pd.concat(parts, ignore_index=True)
    by_group = report.groupby("group")
    report["conflict"] = by_group["label"].transform(lambda s: s.fillna("").nunique() > 1)
    report["spans_splits"] = by_group["split"].transform(lambda s: s.nunique() > 1)
    return report[columns]


def later_copies(report: pd.DataFrame) -> list[str]:
    """Paths of every group's members but its first (in the manifests' order): what a
    manifest of distinct cells leaves out."""
    return [path for _, part in report.groupby("group", sort=False) for path in part["path"].iloc[1:]]


def summarise(report: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Per source: images, images in a group, groups, extra copies (in a group but not its
    first), groups mixing labels, groups across splits."""
    rows = []
    for source in sorted(frame["source"].unique()):
        part = report[report["source"] == source]
        groups = part.groupby("group")
        rows.append(
            {
                "source": source,
                "images": int((frame["source"] == source).sum()),
                "in_groups": len(part),
                "groups": groups.ngroups,
                "copies": len(part) - groups.ngroups,
                "mixed_labels": int(groups["conflict"].first().sum()) if len(part) else 0,
                "across_splits": int(groups["spans_splits"].first().sum()) if len(part) else 0,
            }
        )
    return pd.DataFrame(rows)
