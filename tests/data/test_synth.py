"""Synthetic labs: reproducible files in the PBC layout, measurable class cues, and a real
domain shift (a classifier learns the classes within a lab and fails in another)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from leukoshift.data.manifest import read_manifest
from leukoshift.data.synth import (
    LAB_STYLES,
    PBC_FOLDER,
    PBC_PREFIX,
    SynthError,
    render_cell,
    render_labs,
)
from leukoshift.taxonomy import FINE_CLASSES

LABS, PER_CLASS, SIZE = 3, 20, 40
LAB_NAMES = [s.name for s in LAB_STYLES[:LABS]]


@pytest.fixture(scope="module")
def labs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "labs"
    render_labs(out, labs=LABS, per_class=PER_CLASS, size=SIZE, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def loaded(labs: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images (float RGB 0-1), labels, sources and splits of the merged manifest."""
    manifest = read_manifest(labs / "manifest.csv")
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in manifest.abs_paths])
    f = manifest.frame
    return (
        images.astype(np.float32) / 255,
        f["label"].to_numpy(),
        f["source"].to_numpy(),
        f["split"].to_numpy(),
    )


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


# ------------------------------------------------------------------------ files


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        render_labs(tmp_path / name, labs=2, per_class=2, size=32, seed=seed, progress=False)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 2 * 11 * 2
    assert a == b
    assert (tmp_path / "a/manifest.csv").read_bytes() == (tmp_path / "b/manifest.csv").read_bytes()
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a) == len(a)


def test_layout_and_manifest_follow_pbc(labs: Path) -> None:
    manifest = read_manifest(labs / "manifest.csv")
    frame = manifest.frame
    assert len(frame) == LABS * len(FINE_CLASSES) * PER_CLASS
    assert sorted(frame["source"].unique()) == LAB_NAMES
    assert not any(os.path.isabs(p) for p in frame["path"])
    assert all(p.is_file() for p in manifest.abs_paths)
    counts = Counter(zip(frame["source"], frame["label"], strict=True))
    assert counts == {(lab, c): PER_CLASS for lab in LAB_NAMES for c in FINE_CLASSES}
    # Labels come from the PBC prefixes through the project's own importer.
    pairs = set(zip(frame["original_label"], frame["label"], strict=True))
    assert pairs == {(PBC_PREFIX[c], c) for c in FINE_CLASSES}
    assert ("PLATELET", "PLT") in pairs
    for path, label in zip(frame["path"], frame["label"], strict=True):
        _lab, root, folder, name = Path(path).parts
        assert (root, folder) == ("PBC_dataset_normal_DIB", PBC_FOLDER[label])
        assert name.startswith(PBC_PREFIX[label] + "_") and name.endswith(".jpg")
    assert set(frame["split"]) == {"train", "val", "test"}
    with Image.open(manifest.abs_paths[0]) as im:
        assert im.size == (SIZE, SIZE) and im.format == "JPEG"


def test_rerun_is_a_no_op_and_new_arguments_render_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "labs"

    def render(per_class: int) -> Path:
        return render_labs(out, labs=1, per_class=per_class, size=32, seed=0, progress=False)

    manifest = render(3)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert render(3) == manifest
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp

    render(2)
    assert len(read_manifest(manifest).frame) == 11 * 2
    assert len(list(out.rglob("*.jpg"))) == 11 * 2  # no stale third image left behind


def test_refuses_foreign_folders_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "lab_a").mkdir()
    (tmp_path / "lab_a" / "mine.txt").write_text("not synthetic")
    with pytest.raises(SynthError, match="lab_a"):
        render_labs(tmp_path, labs=1, per_class=1, size=32, progress=False)
    assert (tmp_path / "lab_a" / "mine.txt").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.csv").write_text("path,label\n")
    with pytest.raises(SynthError, match=r"manifest\.csv"):
        render_labs(tmp_path / "other", labs=1, per_class=1, size=32, progress=False)
    assert (tmp_path / "other" / "manifest.csv").read_text() == "path,label\n"
    with pytest.raises(SynthError, match="--labs"):
        render_labs(tmp_path / "x", labs=len(LAB_STYLES) + 1)
    with pytest.raises(SynthError, match="unknown class"):
        render_cell("NEUTROPHIL", LAB_STYLES[0], np.random.default_rng(0))


# ------------------------------------------------------------------------ cues


def _cells(cls: str, n: int = 12, size: int = 64) -> np.ndarray:
    """``n`` lab A fields of class ``cls`` as float RGB 0-255."""
    return np.stack([render_cell(cls, LAB_STYLES[0], np.random.default_rng([99, k]), size) for k in range(n)]).astype(
        np.float32
    )


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density summed over RGB, against lab A's empty field."""
    lamp = np.asarray(LAB_STYLES[0].lamp, np.float32)
    return np.clip(-np.log(np.maximum(rgb, 1) / lamp), 0, None).sum(-1)


def test_class_cues_are_measurable() -> None:
    fields = {c: _cells(c) for c in FINE_CLASSES}
    # Nuclear-dye area (OD well above any red cell): anucleate platelets have the least,
    # small dense nuclei (LY, ERB) less than the big nuclei of monocytes and promyelocytes.
    dark = {c: float((_od(f) > 1.6).mean()) for c, f in fields.items()}
    assert min(dark, key=dark.__getitem__) == "PLT"
    assert dark["PLT"] < 0.5 * min(v for c, v in dark.items() if c != "PLT")
    assert max(dark["LY"], dark["ERB"]) < min(dark["MO"], dark["PMY"])
    # Chromatin density: pyknotic erythroblast and lymphocyte nuclei are the darkest.
    darkest = {c: float(np.percentile(_od(f), 99.5)) for c, f in fields.items()}
    assert min(darkest["ERB"], darkest["LY"]) > max(darkest["MO"], darkest["PMY"], darkest["MY"])

    # Orange-red granules: green and blue both absorbed, red passed (unlike violet nuclei
    # and mauve red cells) -- eosinophils have several times more such pixels than anyone.
    def orange(f: np.ndarray) -> float:
        r, g, b = f[..., 0], f[..., 1], f[..., 2]
        return float(((g < 0.6 * r) & (b < 0.7 * r)).mean())

    red = {c: orange(f) for c, f in fields.items()}
    assert red["EO"] > 3 * max(v for c, v in red.items() if c != "EO")


# ------------------------------------------------------------------------ labs


def test_labs_differ_in_mean_colour(loaded: tuple[np.ndarray, ...]) -> None:
    images, _, source, _ = loaded
    means = np.stack([images[source == lab].mean(axis=(0, 1, 2)) for lab in LAB_NAMES]) * 255
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(LABS) for j in range(i + 1, LABS)]
    assert min(gaps) > 15, means


def _colour_features(images: np.ndarray) -> np.ndarray:
    """Colour histograms plus the mean colour in rings around the centre (rotation-free)."""
    _n, s = images.shape[:2]
    hist = np.concatenate(
        [np.stack([np.histogram(im[..., c], bins=16, range=(0, 1))[0] for im in images]) for c in range(3)],
        axis=1,
    ) / (s * s)
    return np.concatenate([hist, _rings(images)], axis=1)


def _rings(images: np.ndarray, count: int = 8) -> np.ndarray:
    s = images.shape[1]
    yy, xx = np.mgrid[:s, :s] + 0.5 - s / 2
    ring = np.minimum((np.hypot(xx, yy) / (s / 2) * count / np.sqrt(2)).astype(int), count - 1)
    per_ring = [images[:, ring == k].mean(axis=1) for k in range(count)]
    return np.stack(per_ring, axis=1).reshape(len(images), -1)


def _stain_free_features(images: np.ndarray) -> np.ndarray:
    """The same on optical density against each image's own background, scaled by its
    own darkest pixels: most of a lab's lamp and dye strength divide out."""
    n, s = images.shape[:2]
    background = np.median(images.reshape(n, -1, 3), axis=1)[:, None, None, :]
    od = np.clip(-np.log(np.clip(images, 1 / 255, 1) / background), 0, 4).sum(-1)
    od = od / (np.quantile(od.reshape(n, -1), 0.99, axis=1)[:, None, None] + 1e-3)
    hist = np.stack([np.histogram(x, bins=16, range=(0, 1))[0] for x in od]) / (s * s)
    return np.concatenate([hist, _rings(od[..., None])], axis=1)


def _fit_on_lab_a(
    features: np.ndarray, label: np.ndarray, source: np.ndarray, split: np.ndarray
) -> tuple[float, dict[str, float]]:
    train = (source == "lab_a") & (split == "train")
    held = (source == "lab_a") & (split != "train")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    clf.fit(features[train], label[train])
    cross = {lab: clf.score(features[source == lab], label[source == lab]) for lab in LAB_NAMES[1:]}
    return clf.score(features[held], label[held]), cross


def test_classifier_learns_classes_in_its_lab_but_not_in_another(
    loaded: tuple[np.ndarray, ...],
) -> None:
    images, label, source, split = loaded
    in_lab, cross = _fit_on_lab_a(_colour_features(images), label, source, split)
    print(f"colour features: lab_a held-out {in_lab:.3f}, other labs {cross}")
    assert in_lab >= 0.6  # chance is 1/11
    for lab, acc in cross.items():
        assert acc <= in_lab - 0.2, (lab, acc, in_lab)


def test_morphology_is_shared_so_stain_free_features_transfer(
    loaded: tuple[np.ndarray, ...],
) -> None:
    images, label, source, split = loaded
    _, colour_cross = _fit_on_lab_a(_colour_features(images), label, source, split)
    in_lab, cross = _fit_on_lab_a(_stain_free_features(images), label, source, split)
    print(f"stain-free features: lab_a held-out {in_lab:.3f}, other labs {cross}")
    assert np.mean(list(cross.values())) > 2 / len(FINE_CLASSES)
    assert np.mean(list(cross.values())) > np.mean(list(colour_cross.values())) + 0.1
