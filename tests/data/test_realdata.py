"""The importers on the real published folders in ../shared/data (skipped when absent).

Expected numbers come from the data's own README (``../shared/data/README.md``) where it
states them, so a test and its data cannot drift apart silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukoshift.config import ImageConfig
from leukoshift.data.importers import ImportResult, duplicate_pairs, import_dataset, sidecar
from leukoshift.data.loaders import load_table, make_loader
from leukoshift.data.manifest import read_manifest
from leukoshift.taxonomy import WBC5

pytestmark = pytest.mark.realdata


def readme_counts(shared: Path, heading: str) -> dict[str, int]:
    """``NAME 1,234`` pairs from one section (a table row or a paragraph) of the README."""
    text = (shared / "README.md").read_text()
    return {
        name: int(n.replace(",", ""))
        for name, n in re.findall(r"\b([A-Za-z]+) (\d[\d,]*)\b", heading_text(text, heading))
    }


def heading_text(text: str, heading: str) -> str:
    """A table row (to the end of its line) or a section (to the next heading)."""
    start = text.index(heading)
    stop = "\n" if heading.startswith("|") else "\n## "
    end = text.find(stop, start + len(heading))
    return text[start : end if end > 0 else None]


@pytest.fixture(scope="session")
def pbc(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ImportResult:
    """PBC imported once per session (about 11 s on 2 cores)."""
    out = tmp_path_factory.mktemp("realdata") / "pbc.csv"
    return import_dataset("pbc", shared_data / "pbc", "pbc", out, progress=False, workers=4)


def test_pbc_counts_match_the_readme(pbc: ImportResult, shared_data: Path) -> None:
    assert pbc.n_rows == 17_092
    frame = read_manifest(pbc.manifest_path).frame
    expected = readme_counts(shared_data, "## PBC file-name prefixes")
    expected = {k: v for k, v in expected.items() if k.isupper()}  # drop "the 11" etc.
    assert sum(expected.values()) == 17_092 and len(expected) == 13
    assert frame["original_label"].value_counts().to_dict() == expected
    codes = frame.groupby("original_label")["label"].first().to_dict()
    assert codes["NEUTROPHIL"] == "NE" and codes["PLATELET"] == "PLT" and codes["IG"] == "IG"
    assert codes["SNE"] == "SNE" and codes["ERB"] == "ERB"


def test_pbc_defects(pbc: ImportResult) -> None:
    assert [(r.path.name, r.reason) for r in pbc.rejected] == [(".DS_169665.jpg", "not an image (unrecognised format)")]
    rejected = pd.read_csv(sidecar(pbc.manifest_path, "rejected"))
    assert len(rejected) == 1 and rejected["path"][0].endswith("neutrophil/.DS_169665.jpg")

    assert len(pbc.duplicate_groups) == 17 and duplicate_pairs(pbc.duplicate_groups) == 17
    assert len(pbc.conflicts) == 1
    names = sorted(Path(p).name for p in pbc.frame.loc[pbc.conflicts[0], "path"])
    assert names == ["BNE_191112.jpg", "EO_225902.jpg"]
    dups = pd.read_csv(sidecar(pbc.manifest_path, "duplicates"))
    assert len(dups) == 34 and dups["conflict"].sum() == 2

    frame = read_manifest(pbc.manifest_path).frame
    assert frame.groupby("sha1")["split"].nunique().max() == 1
    shares = frame.groupby("label")["split"].value_counts(normalize=True).unstack()
    assert shares["train"].between(0.78, 0.82).all() and shares["test"].between(0.08, 0.12).all()
    assert set(frame["width"].astype(int)) | set(frame["height"].astype(int)) >= {128}


def test_wbcseg_cellavision(shared_data: Path, tmp_path: Path) -> None:
    from_parent = import_dataset("wbcseg", shared_data / "cellavision", "cv", tmp_path / "a.csv", progress=False)
    from_folder = import_dataset(
        "wbcseg",
        shared_data / "cellavision" / "Dataset 2",
        "cv",
        tmp_path / "b.csv",
        progress=False,
    )
    for result in (from_parent, from_folder):
        m = read_manifest(result.manifest_path)
        assert len(m) == 100 and result.rejected == []
        assert set(m.frame["label"]) <= set(WBC5)
        masks = [m.root / p for p in m.frame["mask"]]
        assert all(p.suffix == ".png" and p.is_file() for p in masks)
        assert all(p.suffix == ".bmp" for p in m.abs_paths)
    assert from_parent.frame["sha1"].tolist() == from_folder.frame["sha1"].tolist()


@pytest.mark.parametrize(
    ("folder", "row", "total"),
    [
        ("bccd_crops", "| `bccd_crops/BCCD_cropped/`", 351),
        ("bionet", "| `bionet/WBC Classification Dataset/`", 361),
    ],
)
def test_folder_sources(shared_data: Path, tmp_path: Path, folder: str, row: str, total: int) -> None:
    result = import_dataset("folder", shared_data / folder, folder, tmp_path / "m.csv", progress=False)
    assert result.n_rows == total and result.rejected == []
    expected = {k: v for k, v in readme_counts(shared_data, row).items() if k.lower() in {
        "neutrophil", "eosinophil", "lymphocyte", "monocyte", "basophil"}}  # fmt: skip
    assert sum(expected.values()) == total
    assert result.frame["original_label"].value_counts().to_dict() == expected
    assert set(result.frame["label"]) <= set(WBC5)


@pytest.mark.parametrize(("folder", "total"), [("raabin_unlabeled", 500), ("bccd_smears/BCCD/JPEGImages", 364)])
def test_unlabeled_sources(shared_data: Path, tmp_path: Path, folder: str, total: int) -> None:
    result = import_dataset("unlabeled", shared_data / folder, "pool", tmp_path / "m.csv", progress=False)
    assert result.n_rows == total and result.rejected == []
    assert set(result.frame["label"]) == {""}


def test_real_images_cache_and_load(shared_data: Path, tmp_path: Path) -> None:
    """A folder with spaces in its name, through cache and loader at 32 px."""
    result = import_dataset("folder", shared_data / "bionet", "bionet", tmp_path / "bionet.csv", progress=False)
    table = load_table([result.manifest_path], ImageConfig(size=32), progress=False)
    assert len(table) == 361
    images = np.concatenate([b["image"].numpy() for b in make_loader(table, 64, shuffle=False)])
    assert images.shape == (361, 3, 32, 32)
    assert images.reshape(361, -1).std(axis=1).min() > 5  # every image decoded, none blank
