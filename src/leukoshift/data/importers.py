"""Importers: published folder layouts -> manifest rows.

An importer only walks a layout and names each file's label (:class:`Candidate`);
:func:`import_dataset` then decodes every file once, hashes it, lists what cannot be
read, groups byte-identical files, assigns splits and writes the manifest. Adding a
format is one function and one :data:`IMPORTERS` entry.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from leukoshift.data.images import ImageReadError, load_rgb
from leukoshift.data.manifest import COLUMNS, Manifest, relative_to, write_manifest
from leukoshift.data.splits import DEFAULT_RATIOS, assign_splits, check_ratios
from leukoshift.errors import UserError
from leukoshift.progress import progress_iter
from leukoshift.taxonomy import (
    LABEL_CODES,
    LABEL_INDEX,
    MUNICH_CODES,
    PBC_PREFIXES,
    RAABIN_NAMES,
    WBCSEG_CODES,
    LabelError,
    folder_label,
)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
# Unbounded decoding would let one corrupt header allocate gigabytes.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


class DataImportError(UserError):
    """An import that cannot proceed (empty folder, unknown layout), one line."""


@dataclass
class Candidate:
    path: Path
    original_label: str
    label: str  # a code, or "" (unlabeled or outside the 11 classes)
    mask: Path | None = None


@dataclass
class Rejected:
    path: Path
    reason: str


@dataclass
class Walk:
    """What an importer found: files to decode, and files it already knows are unusable."""

    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


Importer = Callable[[Path, dict[str, str | None] | None], Walk]


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _find_dir(root: Path, name: str) -> Path:
    """``root`` itself or the one folder called ``name`` below it."""
    if root.name == name:
        return root
    hits = [p for p in root.rglob(name) if p.is_dir()]
    return hits[0] if len(hits) == 1 else root


def import_pbc(root: Path, label_map: dict[str, str | None] | None = None) -> Walk:
    """PBC_dataset_normal_DIB/<class folder>/<PREFIX>_<id>.jpg; the prefix is the fine label."""
    walk = Walk()
    for path in _files(_find_dir(root, "PBC_dataset_normal_DIB")):
        if not _is_image_name(path):
            walk.rejected.append(Rejected(path, f"not an image file name ({path.suffix or 'no extension'})"))
            continue
        prefix = path.stem.split("_")[0].upper()
        code = PBC_PREFIXES.get(prefix)
        if code is None:
            # A stray non-image (macOS writes .DS_Store files) should be called what it is.
            decoded = decode_check(path)
            reason = decoded if isinstance(decoded, str) else f"unknown PBC prefix {prefix!r}"
            walk.rejected.append(Rejected(path, reason))
            continue
        walk.candidates.append(Candidate(path, prefix, code))
    return walk


def _class_folder_walk(
    root: Path,
    name_to_code: Callable[[str], str | None],
    is_class: Callable[[str], bool],
    hint: str,
) -> Walk:
    """Images under folders whose name ``is_class``; the nearest such folder labels a file.

    ``root`` itself counts as the outermost folder, so a single class folder imports too.
    """
    walk = Walk()
    for path in _files(root):
        folders = (root.name, *path.relative_to(root).parts[:-1])
        # Nearest class-named folder wins, so Train/Neutrophil/x.jpg and Neutrophil/x.jpg agree.
        owner = next((part for part in reversed(folders) if is_class(part)), None)
        if not _is_image_name(path):
            walk.rejected.append(Rejected(path, f"not an image file name ({path.suffix or 'no extension'})"))
            continue
        if owner is None:
            raise DataImportError(f"{path.parent}: folder {path.parent.name!r} matches no known cell type; {hint}")
        code = name_to_code(owner)
        walk.candidates.append(Candidate(path, owner, code or ""))
    return walk


def import_munich(root: Path, label_map: dict[str, str | None] | None = None) -> Walk:
    """AML-Cytomorphology_LMU/<CODE>/<CODE>_0001.tiff (Matek et al. 2019).

    KSC, LYA, MOB, MYO and PMB lie outside the 11 classes: their rows are kept with an
    empty label (usable for self-supervised pretraining) and counted at import.
    """
    codes = {k.upper(): v for k, v in MUNICH_CODES.items()}
    hint = f"Munich class folders are {', '.join(MUNICH_CODES)} (or use the folder format)"
    return _class_folder_walk(root, lambda n: codes[n.upper()], lambda n: n.upper() in codes, hint)


def import_raabin(root: Path, label_map: dict[str, str | None] | None = None) -> Walk:
    """Raabin-WBC: <any split folders, e.g. Train, TestA>/<Basophil|Eosinophil|...>/<image>."""
    names = {k.lower(): v for k, v in RAABIN_NAMES.items()}
    hint = f"Raabin class folders are {', '.join(RAABIN_NAMES)} (or use the folder format)"
    return _class_folder_walk(root, lambda n: names[n.lower()], lambda n: n.lower() in names, hint)


def import_folder(root: Path, label_map: dict[str, str | None] | None = None) -> Walk:
    """Generic class folders, named as in the alias tables or a user's label map."""

    def is_class(name: str) -> bool:
        try:
            folder_label(name, label_map)
        except LabelError:
            return False
        return True

    hint = "pass --label-map FILE.yaml mapping folder names to codes"
    return _class_folder_walk(root, lambda n: folder_label(n, label_map), is_class, hint)


def import_unlabeled(root: Path, label_map: dict[str, str | None] | None = None) -> Walk:
    """Any tree of images; labels left empty (a self-supervised pool)."""
    walk = Walk()
    for path in _files(root):
        if _is_image_name(path):
            walk.candidates.append(Candidate(path, "", ""))
        else:
            walk.rejected.append(Rejected(path, f"not an image file name ({path.suffix or 'no extension'})"))
    return walk


_WBCSEG_CSV = re.compile(r"Class Labels of Dataset (\w+)\.csv$", re.IGNORECASE)


def _wbcseg_tables(root: Path) -> list[tuple[Path, str, Path]]:
    """(label CSV, data set number, image folder) for ``root`` = a ``Dataset N`` folder,
    its parent, or any folder above them."""
    found = {p for d in (root, root.parent) for p in d.glob("*.csv")} | set(root.rglob("*.csv"))
    only = root.name.split()[-1] if re.fullmatch(r"dataset \w+", root.name, re.IGNORECASE) else None
    tables = []
    for table in sorted(found):
        match = _WBCSEG_CSV.search(table.name)
        if match is None or (only is not None and match.group(1) != only):
            continue
        number = match.group(1)
        name = f"Dataset {number}"
        # The CSV normally sits beside the image folder; accept it inside the folder too.
        folder = table.parent if table.parent.name.lower() == name.lower() else table.parent / name
        if not folder.is_dir():
            raise DataImportError(f"{table}: image folder {name!r} not found beside it")
        tables.append((table, number, folder))
    return tables


def import_wbcseg(root: Path, label_map: dict[str, str | None] | None = None) -> Walk:
    """WBC segmentation sets (Zheng et al. 2018): ``Dataset N/NNN.bmp`` + ``NNN.png`` masks,
    labels 1-5 in ``Class Labels of Dataset N.csv`` beside the image folder."""
    walk = Walk()
    tables = _wbcseg_tables(root)
    if not tables:
        raise DataImportError(f"{root}: no 'Class Labels of Dataset N.csv' found here or beside it")
    for table, _number, folder in tables:
        images = {int(p.stem): p for p in folder.iterdir() if p.suffix.lower() == ".bmp" and p.stem.isdigit()}
        masks = {int(p.stem): p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.stem.isdigit()}
        listed: set[int] = set()
        with table.open(newline="", encoding="utf-8-sig") as fh:
            for lineno, row in enumerate(csv.reader(fh), start=1):
                if not row or not row[0].strip():
                    continue
                if lineno == 1 and not row[0].strip().isdigit():
                    continue  # header ("image ID,class")
                try:
                    image_id = int(row[0])
                    raw = row[1].strip()
                except (ValueError, IndexError):
                    raise DataImportError(f"{table}: line {lineno}: expected 'image id,label 1-5'") from None
                if raw not in WBCSEG_CODES:
                    raise DataImportError(f"{table}: line {lineno}: label {raw!r} is not one of 1-5")
                listed.add(image_id)
                if image_id not in images:
                    walk.rejected.append(Rejected(folder / f"{image_id:03d}.bmp", "listed in the CSV but missing"))
                    continue
                walk.candidates.append(Candidate(images[image_id], raw, WBCSEG_CODES[raw], masks.get(image_id)))
        for image_id, path in sorted(images.items()):
            if image_id not in listed:
                walk.rejected.append(Rejected(path, f"not listed in {table.name}"))
    return walk


IMPORTERS: dict[str, Importer] = {
    "pbc": import_pbc,
    "munich": import_munich,
    "raabin": import_raabin,
    "wbcseg": import_wbcseg,
    "folder": import_folder,
    "unlabeled": import_unlabeled,
}


# ----------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    sha1: str
    width: int
    height: int


def decode_check(path: Path) -> Decoded | str:
    """Hash the bytes and decode the image fully once; a string is the reason it failed.

    Decoding goes through :func:`load_rgb`, the reader the cache uses, so whatever imports
    also caches (16-bit and multi-channel TIFFs included), and the file is read only once.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not data:
        return "empty file"
    buffer = io.BytesIO(data)
    buffer.name = str(path)  # load_rgb picks its TIFF fallback and names errors by it
    try:
        rgb = load_rgb(buffer)
    except ImageReadError as exc:
        return str(exc).removeprefix(f"{path}: ")
    return Decoded(hashlib.sha1(data).hexdigest(), int(rgb.shape[1]), int(rgb.shape[0]))


@dataclass
class ImportResult:
    manifest_path: Path
    n_rows: int
    rejected: list[Rejected]
    duplicate_groups: list[list[int]]  # row positions of each byte-identical group
    conflicts: list[list[int]]  # duplicate groups whose labels disagree
    outside_taxonomy: Counter[str]
    frame: pd.DataFrame


def load_label_map(path: Path | None) -> dict[str, str | None] | None:
    """``folder name: CODE`` from YAML; ``null`` keeps a folder's rows outside the 11 classes."""
    if path is None:
        return None
    if not path.is_file():
        raise DataImportError(f"{path}: label map not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        raise DataImportError(f"{path}:{where} not valid YAML") from None
    if not isinstance(data, dict):
        raise DataImportError(f"{path}: label map must be a mapping 'folder name: CODE'")
    mapping = {str(k): (None if v in (None, "") else str(v)) for k, v in data.items()}
    check_label_map(mapping, str(path))
    return mapping


def check_label_map(mapping: dict[str, str | None], origin: str = "label map") -> None:
    bad = {k: v for k, v in mapping.items() if v is not None and v not in LABEL_INDEX}
    if bad:
        k, v = next(iter(bad.items()))
        raise DataImportError(
            f"{origin}: {k!r} maps to {v!r}, which is not one of {', '.join(LABEL_CODES)} "
            "(or null for outside the 11 classes)"
        )


def import_dataset(
    fmt: str,
    root: Path,
    source: str,
    out: Path,
    label_map: dict[str, str | None] | None = None,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    seed: int = 0,
    workers: int = 4,
    progress: bool = True,
) -> ImportResult:
    """Walk ``root`` with importer ``fmt``, decode everything once, write the manifest."""
    if fmt not in IMPORTERS:
        raise DataImportError(f"unknown format {fmt!r}; valid: {', '.join(IMPORTERS)}")
    if not root.is_dir():
        raise DataImportError(f"{root}: folder not found")
    if not source or "," in source:
        raise DataImportError(f"--source {source!r}: give a short lab name without commas")
    if out.is_dir():
        raise DataImportError(f"--out {out}: is a folder; give the manifest's CSV file name")
    check_ratios(ratios)
    if label_map is not None:
        if fmt != "folder":
            raise DataImportError(f"--label-map applies to the folder format only, not {fmt!r}")
        check_label_map(label_map)
    # Absolute from here on: the manifest is written elsewhere than the working folder.
    root = Path(os.path.abspath(root))
    walk = IMPORTERS[fmt](root, label_map)
    if not walk.candidates:
        _nothing_usable(root, fmt, walk.rejected)
    rejected = list(walk.rejected)
    rows = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(decode_check, (c.path for c in walk.candidates))
        for cand, res in zip(
            walk.candidates,
            progress_iter(results, total=len(walk.candidates), label=f"import {source}", enabled=progress),
            strict=True,
        ):
            if isinstance(res, str):
                rejected.append(Rejected(cand.path, res))
                continue
            rows.append(
                {
                    "path": str(cand.path),
                    "label": cand.label,
                    "original_label": cand.original_label,
                    "source": source,
                    "split": "",
                    "sha1": res.sha1,
                    "width": str(res.width),
                    "height": str(res.height),
                    "mask": str(cand.mask) if cand.mask else "",
                }
            )
    if not rows:
        _nothing_usable(root, fmt, rejected)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["split"] = assign_splits(frame, ratios, seed)

    groups = [list(ix) for ix in frame.groupby("sha1", sort=False).indices.values() if len(ix) > 1]
    conflicts = [g for g in groups if frame.loc[g, "label"].nunique() > 1]
    outside = Counter(frame.loc[(frame["label"] == "") & (frame["original_label"] != ""), "original_label"])
    write_manifest(Manifest(frame, Path("/")), out)
    _write_side_tables(out, frame, rejected, groups, conflicts)
    return ImportResult(out, len(frame), rejected, groups, conflicts, outside, frame)


def _nothing_usable(root: Path, fmt: str, rejected: list[Rejected]) -> NoReturn:
    if not rejected:
        raise DataImportError(f"{root}: no image files found for format {fmt!r}")
    first = rejected[0]
    raise DataImportError(
        f"{root}: no usable images for format {fmt!r}; {len(rejected)} file(s) rejected, "
        f"e.g. {first.path.name}: {first.reason}"
    )


def sidecar(manifest: Path, kind: str) -> Path:
    """``x.csv`` -> ``x.<kind>.csv`` beside it (rejected, duplicates)."""
    return manifest.with_name(f"{manifest.stem}.{kind}.csv")


def _write_side_tables(
    out: Path,
    frame: pd.DataFrame,
    rejected: list[Rejected],
    groups: list[list[int]],
    conflicts: list[list[int]],
) -> None:
    pd.DataFrame(
        {
            "path": [relative_to(r.path, out.parent) for r in rejected],
            "reason": [r.reason for r in rejected],
        }
    ).to_csv(sidecar(out, "rejected"), index=False)
    conflicted = {i for g in conflicts for i in g}
    dup_rows = [
        {
            "group": n,
            "sha1": frame.at[i, "sha1"],
            "path": relative_to(Path(frame.at[i, "path"]), out.parent),
            "label": frame.at[i, "label"],
            "conflict": i in conflicted,
        }
        for n, g in enumerate(groups)
        for i in g
    ]
    pd.DataFrame(dup_rows, columns=["group", "sha1", "path", "label", "conflict"]).to_csv(
        sidecar(out, "duplicates"), index=False
    )


def per_label_counts(frame: pd.DataFrame, column: str = "original_label") -> dict[str, int]:
    counts = frame[column].value_counts()
    return {str(k): int(v) for k, v in counts.sort_index().items()}


def duplicate_pairs(groups: list[list[int]]) -> int:
    """Number of identical pairs implied by groups (a group of n holds n-1 extra copies)."""
    return int(np.sum([len(g) - 1 for g in groups])) if groups else 0
