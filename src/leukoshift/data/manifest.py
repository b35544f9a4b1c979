"""The manifest: one CSV row per image, the single source of truth about a data set.

Columns (DESIGN.md): ``path`` (relative to the manifest's folder when possible),
``label`` (finest code known, empty if unlabeled), ``original_label`` (what the
publisher called it), ``source`` (the lab), ``split`` (train / val / test), ``sha1``
(of the file bytes, so identical images are recognised), ``width``, ``height`` and
``mask`` (a segmentation mask's path, where the source gives one).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leukoshift.errors import UserError
from leukoshift.taxonomy import LABEL_CODES, LabelError, label_indices, validate_codes

COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "original_label",
    "source",
    "split",
    "sha1",
    "width",
    "height",
    "mask",
)
REQUIRED: tuple[str, ...] = ("path", "label", "source", "split", "sha1")
SPLITS: tuple[str, ...] = ("train", "val", "test")


class ManifestError(UserError):
    """A manifest that cannot be used, phrased as one line naming the file."""


@dataclass(frozen=True)
class Manifest:
    """A manifest in memory: rows plus the folder its relative paths start from."""

    frame: pd.DataFrame
    root: Path
    file: Path | None = None

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def abs_paths(self) -> list[Path]:
        return [resolve(self.root, p) for p in self.frame["path"]]

    @property
    def labels(self) -> np.ndarray:
        """Label indices into :data:`LABEL_CODES` (-1 unlabeled)."""
        return label_indices(list(self.frame["label"]))

    @property
    def sources(self) -> list[str]:
        return sorted(self.frame["source"].unique())

    def digest(self) -> str:
        """Hash of what a cache depends on: the image bytes (sha1) in row order.

        Labels, splits and file locations do not change pixels, so relabelling, re-splitting
        or moving a data set keeps its cache; a row without a sha1 is keyed by its path.
        """
        h = hashlib.sha1()
        for path, sha1 in zip(self.abs_paths, self.frame["sha1"], strict=True):
            h.update(f"{sha1 or 'path:' + str(path)}\n".encode())
        return h.hexdigest()

    def select(self, mask: np.ndarray | pd.Series) -> Manifest:
        return Manifest(self.frame[np.asarray(mask)].reset_index(drop=True), self.root, self.file)

    def mask(
        self,
        split: str | Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] = (),
        labelled: bool = False,
    ) -> np.ndarray:
        """Boolean row mask: in a split (``all`` or None: any), from given sources."""
        keep = np.ones(len(self.frame), dtype=bool)
        if split is not None and split != "all":
            splits = [split] if isinstance(split, str) else list(split)
            keep &= self.frame["split"].isin(splits).to_numpy()
        if sources is not None:
            keep &= self.frame["source"].isin(list(sources)).to_numpy()
        if exclude_sources:
            keep &= ~self.frame["source"].isin(list(exclude_sources)).to_numpy()
        if labelled:
            keep &= (self.frame["label"].fillna("") != "").to_numpy()
        return keep

    def where(
        self,
        split: str | Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] = (),
        labelled: bool = False,
    ) -> Manifest:
        return self.select(self.mask(split, sources, exclude_sources, labelled))


def resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(os.path.normpath(root / p))


def relative_to(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside ``root``, else absolute.

    Images beside the manifest travel with it (a synthetic data set, a copied folder);
    anything else keeps its absolute path, so moving the manifest never breaks it.
    Symbolic links are kept as given (``abspath``, not ``resolve``).
    """
    target, base = os.path.abspath(path), os.path.abspath(root)
    try:
        inside = os.path.commonpath([target, base]) == base
    except ValueError:  # different drives
        inside = False
    return os.path.relpath(target, base) if inside else target


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})


def read_manifest(path: Path | str) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ManifestError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}")
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = ""
    frame = frame.astype({c: object for c in frame.columns})
    try:
        validate_codes(frame["label"])
    except LabelError as exc:
        raise ManifestError(f"{path}: column label: {exc}") from None
    # An absolute root makes image paths (and cache keys) independent of the working folder.
    return Manifest(frame.reset_index(drop=True), Path(os.path.abspath(path.parent)), path)


def write_manifest(manifest: Manifest | pd.DataFrame, path: Path | str, root: Path | None = None) -> Path:
    """Write rows with paths relative to the manifest's own folder (when inside it).

    The file is replaced atomically, so re-splitting a manifest in place never leaves a
    half-written one behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(manifest, Manifest):
        frame, root = manifest.frame.copy(), manifest.root
    else:
        frame = manifest.copy()
        root = root or path.parent
    # Frames built in code may carry NaN/None where a CSV read gives "".
    text_cols = [c for c in COLUMNS if c in frame.columns and c not in ("width", "height")]
    frame[text_cols] = frame[text_cols].astype(object).where(frame[text_cols].notna(), "")
    frame["path"] = [relative_to(resolve(root, p), path.parent) for p in frame["path"]]
    if "mask" in frame.columns:
        frame["mask"] = [relative_to(resolve(root, m), path.parent) if m else "" for m in frame["mask"]]
    ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        frame[ordered].to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifests(paths: Sequence[Path | str]) -> Manifest:
    """Several manifests as one, with absolute paths (their roots differ)."""
    if not paths:
        raise ManifestError("no manifest given")
    frames = []
    for p in paths:
        m = read_manifest(p)
        frame = m.frame.copy()
        frame["path"] = [str(x) for x in m.abs_paths]
        if "mask" in frame.columns:
            frame["mask"] = [str(resolve(m.root, x)) if x else "" for x in frame["mask"]]
        frames.append(frame)
    merged = pd.concat(frames, ignore_index=True).fillna("")
    return Manifest(merged, Path("/"), None)


def class_table(manifest: Manifest) -> pd.DataFrame:
    """Counts of each label code (rows) per source (columns), codes in taxonomy order."""
    # fillna: an empty cell of a frame built in code is NaN, and crosstab would drop it.
    labels = manifest.frame["label"].fillna("").replace("", "(unlabeled)")
    frame = manifest.frame.assign(label=labels)
    table = pd.crosstab(frame["label"], frame["source"])
    order = [c for c in (*LABEL_CODES, "(unlabeled)") if c in table.index]
    return table.loc[order]
