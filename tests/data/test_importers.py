"""Importers on tiny trees in each publisher's layout, and the manifest they write."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from leukoshift.data.importers import (
    IMPORTERS,
    DataImportError,
    duplicate_pairs,
    import_dataset,
    load_label_map,
    sidecar,
)
from leukoshift.data.manifest import (
    COLUMNS,
    Manifest,
    ManifestError,
    class_table,
    read_manifest,
    read_manifests,
    write_manifest,
)
from tests.conftest import make_pbc_tree, write_image


def run_import(fmt: str, root: Path, out: Path, source: str = "lab", **kw):
    return import_dataset(fmt, root, source, out, progress=False, workers=2, **kw)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_registry_holds_every_published_format() -> None:
    assert set(IMPORTERS) == {"pbc", "munich", "raabin", "wbcseg", "folder", "unlabeled"}


# ----------------------------------------------------------------------------- PBC


@pytest.fixture
def pbc_defects(tmp_path: Path) -> Path:
    """PBC tree with the real data's defects: a .DS_Store named .jpg, a truncated JPEG,
    a duplicate inside a class and one across classes (EO = BNE)."""
    base = make_pbc_tree(tmp_path / "pbc", {"BA": 6, "EO": 6, "SNE": 5, "BNE": 5, "PLATELET": 4, "IG": 2})
    (base / "neutrophil" / ".DS_169665.jpg").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 200)
    good = (base / "basophil").iterdir().__next__().read_bytes()
    (base / "basophil" / "BA_999999.jpg").write_bytes(good[: len(good) // 2])  # truncated
    eo = sorted((base / "eosinophil").iterdir())[0]
    shutil.copy(eo, base / "neutrophil" / "BNE_191112.jpg")  # cross-class copy: conflict
    ba = sorted((base / "basophil").glob("BA_1*.jpg"))[1]
    shutil.copy(ba, base / "basophil" / "BA_809918.jpg")  # same-class copy: no conflict
    (base / "Thumbs.db").write_bytes(b"junk")
    return tmp_path / "pbc"


def test_pbc_labels_from_prefix_and_defects_reported(pbc_defects: Path) -> None:
    out = pbc_defects / "manifest.csv"
    result = run_import("pbc", pbc_defects, out, source="pbc")
    base = pbc_defects / "PBC_dataset_normal_DIB"

    m = read_manifest(out)
    frame = m.frame
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == result.n_rows == 6 + 6 + 5 + 5 + 4 + 2 + 2  # + the two copies
    counts = frame["original_label"].value_counts().to_dict()
    assert counts == {"BA": 7, "EO": 6, "SNE": 5, "BNE": 6, "PLATELET": 4, "IG": 2}
    # Labels are DESIGN.md codes: PLATELET -> PLT, IG stays the coarse IG.
    pairs = set(zip(frame["original_label"], frame["label"], strict=True))
    assert pairs == {
        ("BA", "BA"),
        ("EO", "EO"),
        ("SNE", "SNE"),
        ("BNE", "BNE"),
        ("PLATELET", "PLT"),
        ("IG", "IG"),
    }
    assert set(frame["source"]) == {"pbc"}
    assert set(frame["split"]) <= {"train", "val", "test"}
    assert set(frame["width"]) == {"24"} and set(frame["height"]) == {"24"}
    # Paths are relative to the manifest (it sits above the images) and resolve to files.
    assert all(not Path(p).is_absolute() for p in frame["path"])
    assert all(p.is_file() for p in m.abs_paths)
    for p, h in zip(m.abs_paths, frame["sha1"], strict=True):
        assert sha1(p) == h

    rejected = pd.read_csv(sidecar(out, "rejected"), dtype=str, keep_default_na=False)
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    assert set(reasons) == {
        "PBC_dataset_normal_DIB/neutrophil/.DS_169665.jpg",
        "PBC_dataset_normal_DIB/basophil/BA_999999.jpg",
        "PBC_dataset_normal_DIB/Thumbs.db",
    }
    assert "not an image" in reasons["PBC_dataset_normal_DIB/neutrophil/.DS_169665.jpg"]
    assert "corrupt" in reasons["PBC_dataset_normal_DIB/basophil/BA_999999.jpg"]
    assert "not an image file name" in reasons["PBC_dataset_normal_DIB/Thumbs.db"]
    assert len(result.rejected) == 3

    assert len(result.duplicate_groups) == 2 and duplicate_pairs(result.duplicate_groups) == 2
    assert len(result.conflicts) == 1
    conflict = result.frame.loc[result.conflicts[0]]
    assert sorted(conflict["label"]) == ["BNE", "EO"]
    dups = pd.read_csv(sidecar(out, "duplicates"), dtype=str, keep_default_na=False)
    assert list(dups.columns) == ["group", "sha1", "path", "label", "conflict"]
    assert len(dups) == 4 and dups["group"].nunique() == 2
    flagged = dups[dups["conflict"] == "True"]
    first_eo = sorted(p.name for p in (base / "eosinophil").iterdir())[0]
    assert sorted(Path(p).name for p in flagged["path"]) == ["BNE_191112.jpg", first_eo]
    # Byte-identical copies never straddle splits.
    assert frame.groupby("sha1")["split"].nunique().max() == 1


def test_manifest_outside_the_data_keeps_absolute_paths(pbc_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere" / "deeper" / "pbc.csv"
    run_import("pbc", pbc_tree, out)
    m = read_manifest(out)
    assert all(Path(p).is_absolute() for p in m.frame["path"])
    assert all(p.is_file() for p in m.abs_paths)


def test_relative_path_argument_is_resolved_against_the_working_folder(
    pbc_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(pbc_tree.parent)
    out = tmp_path / "out" / "m.csv"
    run_import("pbc", Path(pbc_tree.name), out)
    monkeypatch.chdir(tmp_path / "out")
    assert all(p.is_file() for p in read_manifest(out).abs_paths)


# ----------------------------------------------------------------------------- Munich


def test_munich_tiffs_16bit_and_classes_outside_the_taxonomy(tmp_path: Path) -> None:
    root = tmp_path / "AML-Cytomorphology_LMU"
    for k in range(3):
        write_image(root / "NGS" / f"NGS_{k:04d}.tiff", seed=k)
        write_image(root / "EOS" / f"EOS_{k:04d}.tiff", seed=10 + k)
    write_image(root / "KSC" / "KSC_0001.tiff", seed=20)
    # 16-bit greyscale (PIL I;16) and 16-bit RGB (tifffile): microscopes write both.
    (root / "MON").mkdir()
    grey16 = np.linspace(0, 60000, 24 * 24).reshape(24, 24).astype(np.uint16)
    Image.fromarray(grey16).save(root / "MON" / "MON_0001.tiff")
    (root / "MYB").mkdir()
    rgb16 = np.random.default_rng(3).integers(0, 65535, size=(24, 24, 3), dtype=np.uint16)
    tifffile.imwrite(root / "MYB" / "MYB_0001.tiff", rgb16)

    out = tmp_path / "munich.csv"
    result = run_import("munich", tmp_path, out, source="munich")
    frame = read_manifest(out).frame
    labels = dict(zip(frame["path"].map(lambda p: Path(p).name), frame["label"], strict=True))
    assert labels["NGS_0000.tiff"] == "SNE" and labels["EOS_0001.tiff"] == "EO"
    assert labels["MON_0001.tiff"] == "MO" and labels["MYB_0001.tiff"] == "MY"
    assert labels["KSC_0001.tiff"] == ""  # recorded, outside the 11 classes
    assert frame.loc[frame["original_label"] == "KSC", "label"].tolist() == [""]
    assert result.outside_taxonomy == {"KSC": 1}
    assert result.rejected == []
    assert len(frame) == 9


def test_munich_unknown_folder_names_the_valid_codes(tmp_path: Path) -> None:
    write_image(tmp_path / "AML" / "XYZ" / "XYZ_0001.tiff")
    with pytest.raises(DataImportError, match=r"'XYZ' matches no known cell type.*NGS"):
        run_import("munich", tmp_path / "AML", tmp_path / "m.csv")


# ----------------------------------------------------------------------------- Raabin


def test_raabin_split_folders_above_the_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "Raabin-WBC"
    seed = 0
    for split in ("Train", "TestA"):
        for cls, n in (("Neutrophil", 3), ("Lymphocyte", 2), ("Basophil", 1)):
            for _ in range(n):
                seed += 1
                write_image(root / split / cls / f"{seed:05d}.jpg", seed)
    out = tmp_path / "raabin.csv"
    run_import("raabin", root, out, source="raabin")
    frame = read_manifest(out).frame
    assert len(frame) == 12
    assert frame.groupby("original_label")["label"].first().to_dict() == {
        "Basophil": "BA",
        "Lymphocyte": "LY",
        "Neutrophil": "NE",
    }
    assert frame["original_label"].value_counts().to_dict() == {
        "Neutrophil": 6,
        "Lymphocyte": 4,
        "Basophil": 2,
    }


# ----------------------------------------------------------------------------- WBC segmentation


def make_wbcseg(root: Path, number: int, labels: dict[int, int], extra_bmp: int | None = None) -> Path:
    folder = root / f"Dataset {number}"
    for image_id in labels:
        write_image(folder / f"{image_id:03d}.bmp", seed=100 * number + image_id, size=30)
        mask = np.zeros((30, 30), dtype=np.uint8)
        mask[10:20, 10:20] = 255
        Image.fromarray(mask).save(folder / f"{image_id:03d}.png")
    if extra_bmp is not None:
        write_image(folder / f"{extra_bmp:03d}.bmp", seed=999, size=30)
    rows = "".join(f"{k},{v}\n" for k, v in labels.items())
    (root / f"Class Labels of Dataset {number}.csv").write_text("image ID,class\n" + rows)
    return folder


def test_wbcseg_labels_masks_and_unlisted_files(tmp_path: Path) -> None:
    root = tmp_path / "cellavision"
    make_wbcseg(root, 2, {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 2}, extra_bmp=7)
    out = root / "cv.csv"
    result = run_import("wbcseg", root, out, source="cellavision")
    m = read_manifest(out)
    frame = m.frame
    assert frame["label"].tolist() == ["NE", "LY", "MO", "EO", "BA", "LY"]
    assert frame["original_label"].tolist() == ["1", "2", "3", "4", "5", "2"]
    # Masks are recorded, not imported as images; paths with spaces survive the CSV.
    assert frame["mask"].tolist() == [f"Dataset 2/{k:03d}.png" for k in range(1, 7)]
    assert all(Path(p).suffix == ".bmp" for p in frame["path"])
    assert all((m.root / p).is_file() for p in frame["mask"])
    assert [(r.path.name, r.reason) for r in result.rejected] == [
        ("007.bmp", "not listed in Class Labels of Dataset 2.csv")
    ]


def test_wbcseg_accepts_the_image_folder_itself_and_picks_its_own_csv(tmp_path: Path) -> None:
    root = tmp_path / "wbcseg"
    make_wbcseg(root, 1, {1: 1, 2: 1, 3: 4})
    make_wbcseg(root, 2, {1: 2, 2: 3})
    both = run_import("wbcseg", root, tmp_path / "both.csv")
    assert both.n_rows == 5
    only2 = run_import("wbcseg", root / "Dataset 2", tmp_path / "d2.csv")
    assert only2.frame["label"].tolist() == ["LY", "MO"]
    assert all("Dataset 2" in p for p in only2.frame["path"])


def test_wbcseg_csv_errors_name_the_line(tmp_path: Path) -> None:
    root = tmp_path / "cv"
    make_wbcseg(root, 2, {1: 1, 2: 2})
    (root / "Class Labels of Dataset 2.csv").write_text("image ID,class\n1,1\n2,7\n")
    with pytest.raises(DataImportError, match=r"Dataset 2\.csv: line 3: label '7' is not one of 1-5"):
        run_import("wbcseg", root, tmp_path / "m.csv")
    write_image(tmp_path / "nocsv" / "Dataset 3" / "001.bmp")
    with pytest.raises(DataImportError, match=r"nocsv: no 'Class Labels of Dataset N\.csv'"):
        run_import("wbcseg", tmp_path / "nocsv", tmp_path / "m.csv")


def test_wbcseg_listed_but_missing_image_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "cv"
    make_wbcseg(root, 2, {1: 1, 2: 2})
    (root / "Class Labels of Dataset 2.csv").write_text("1,1\n2,2\n3,5\n")  # no header
    result = run_import("wbcseg", root, tmp_path / "m.csv")
    assert result.n_rows == 2  # the first line is data when it is numeric
    assert [(r.path.name, r.reason) for r in result.rejected] == [("003.bmp", "listed in the CSV but missing")]


# ----------------------------------------------------------------------------- folder


def test_folder_aliases_case_and_label_map(tmp_path: Path) -> None:
    root = tmp_path / "WBC Classification Dataset"
    write_image(root / "NEUTROPHIL" / "a.jpg", 1)
    write_image(root / "Neutrophil" / "b.jpg", 2)  # another spelling of the same class
    write_image(root / "EOSINOPHIL" / "c.png", 3)
    write_image(root / "Weird Cells" / "d.jpg", 4)
    write_image(root / "junk" / "e.jpg", 5)
    label_map = tmp_path / "map.yaml"
    label_map.write_text("Weird Cells: MO\njunk: null\n")

    out = tmp_path / "folder.csv"
    result = run_import("folder", root, out, label_map=load_label_map(label_map))
    frame = read_manifest(out).frame
    got = dict(zip(frame["path"].map(lambda p: Path(p).name), frame["label"], strict=True))
    assert got == {"a.jpg": "NE", "b.jpg": "NE", "c.png": "EO", "d.jpg": "MO", "e.jpg": ""}
    assert result.outside_taxonomy == {"junk": 1}


def test_folder_unknown_name_suggests_label_map(tmp_path: Path) -> None:
    write_image(tmp_path / "data" / "Neutrophil" / "a.jpg", 1)
    write_image(tmp_path / "data" / "Mystery" / "b.jpg", 2)
    with pytest.raises(DataImportError, match=r"'Mystery' matches no known cell type; pass --label-map"):
        run_import("folder", tmp_path / "data", tmp_path / "m.csv")


def test_label_map_errors(tmp_path: Path, pbc_tree: Path) -> None:
    bad_code = tmp_path / "bad.yaml"
    bad_code.write_text("Weird: NEU\n")
    with pytest.raises(DataImportError, match=r"bad\.yaml: 'Weird' maps to 'NEU'"):
        load_label_map(bad_code)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: MO\nb: [LY\n")
    with pytest.raises(DataImportError, match=r"broken\.yaml: line \d+: not valid YAML"):
        load_label_map(broken)
    with pytest.raises(DataImportError, match="not found"):
        load_label_map(tmp_path / "missing.yaml")
    with pytest.raises(DataImportError, match="folder format only"):
        run_import("pbc", pbc_tree, tmp_path / "m.csv", label_map={"x": "MO"})


def test_single_class_folder_as_root(tmp_path: Path) -> None:
    write_image(tmp_path / "Eosinophil" / "a.jpg", 1)
    result = run_import("folder", tmp_path / "Eosinophil", tmp_path / "m.csv")
    assert result.frame["label"].tolist() == ["EO"]


# ----------------------------------------------------------------------------- unlabeled


def test_unlabeled_tree_keeps_every_image_and_rejects_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    write_image(root / "a" / "x.jpg", 1)
    write_image(root / "a" / "b" / "y.png", 2)
    write_image(root / "z.bmp", 3)
    (root / "a" / "notes.txt").write_text("hello")
    (root / "fake.png").write_bytes(b"not a png at all")
    (root / "empty.jpg").write_bytes(b"")
    out = tmp_path / "pool.csv"
    result = run_import("unlabeled", root, out, source="pool")
    frame = read_manifest(out).frame
    assert len(frame) == 3 and set(frame["label"]) == {""} and set(frame["original_label"]) == {""}
    reasons = {r.path.name: r.reason for r in result.rejected}
    assert reasons == {
        "notes.txt": "not an image file name (.txt)",
        "fake.png": "not an image (unrecognised format)",
        "empty.jpg": "empty file",
    }
    rejected = pd.read_csv(sidecar(out, "rejected"), dtype=str)
    assert sorted(rejected["path"]) == ["pool/a/notes.txt", "pool/empty.jpg", "pool/fake.png"]


# ----------------------------------------------------------------------------- errors


def test_empty_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    empty = tmp_path / "nothing here"
    empty.mkdir()
    for fmt in ("pbc", "folder", "unlabeled", "raabin", "munich"):
        with pytest.raises(DataImportError, match=rf"{empty}: no image files found"):
            run_import(fmt, empty, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_folder_of_only_unusable_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(DataImportError, match=r"no usable images .* 1 file\(s\) rejected, e\.g\. a\.jpg"):
        run_import("unlabeled", tmp_path / "bad", tmp_path / "m.csv")


def test_bad_arguments(tmp_path: Path, pbc_tree: Path) -> None:
    with pytest.raises(DataImportError, match="unknown format 'pbcc'; valid: pbc, munich"):
        run_import("pbcc", pbc_tree, tmp_path / "m.csv")
    with pytest.raises(DataImportError, match="folder not found"):
        run_import("pbc", tmp_path / "missing", tmp_path / "m.csv")
    with pytest.raises(DataImportError, match="--source"):
        run_import("pbc", pbc_tree, tmp_path / "m.csv", source="a,b")
    with pytest.raises(DataImportError, match="is a folder"):
        run_import("pbc", pbc_tree, tmp_path)


# ----------------------------------------------------------------------------- manifests


def test_merging_manifests_from_different_folders(tmp_path: Path, pbc_tree: Path) -> None:
    write_image(tmp_path / "other" / "Lymphocyte" / "l.jpg", 77)
    a = run_import("pbc", pbc_tree, pbc_tree / "a.csv", source="pbc").manifest_path
    b = run_import("folder", tmp_path / "other", tmp_path / "other" / "b.csv", source="x").manifest_path
    merged = read_manifests([a, b])
    assert len(merged) == 41 and merged.sources == ["pbc", "x"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in merged.frame["path"])
    # Written elsewhere, the merged rows keep pointing at the same files.
    out = write_manifest(merged, tmp_path / "merged" / "all.csv")
    again = read_manifest(out)
    assert [str(p) for p in again.abs_paths] == list(merged.frame["path"])


def test_read_manifest_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.jpg,LY\n")
    with pytest.raises(ManifestError, match=r"bad\.csv: missing column\(s\) source, split, sha1"):
        read_manifest(bad)
    bad.write_text("path,label,source,split,sha1\nx.jpg,LYMPH,a,train,00\n")
    with pytest.raises(ManifestError, match=r"bad\.csv: column label: unknown label code\(s\) LYMPH"):
        read_manifest(bad)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")


def test_write_manifest_fills_missing_cells_and_is_atomic(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "path": ["a.jpg", "b.jpg"],
            "label": ["LY", None],
            "source": ["s", "s"],
            "split": ["train", "test"],
            "sha1": ["1", "2"],
            "mask": [None, "m.png"],
        }
    )
    out = write_manifest(frame, tmp_path / "m.csv")
    back = read_manifest(out).frame
    assert back["label"].tolist() == ["LY", ""] and back["mask"].tolist() == ["", "m.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]  # no temp file left behind


def test_class_table_and_masks_count_missing_labels_as_unlabeled() -> None:
    frame = pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "label": ["LY", None, "", "NE"],
            "source": ["s", "s", "t", "t"],
            "split": ["train", "test", "train", "val"],
            "sha1": ["1", "2", "3", "4"],
        }
    )
    m = Manifest(frame, Path("/"))
    table = class_table(m)
    assert table.to_dict() == {
        "s": {"NE": 0, "LY": 1, "(unlabeled)": 1},
        "t": {"NE": 1, "LY": 0, "(unlabeled)": 1},
    }
    assert list(table.index) == ["LY", "NE", "(unlabeled)"]  # taxonomy order
    assert m.mask(labelled=True).tolist() == [True, False, False, True]
    assert m.mask(split=["train", "val"], sources=["t"]).tolist() == [False, False, True, True]
