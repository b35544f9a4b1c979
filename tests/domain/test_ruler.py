"""Red cells as a ruler: measured on drawn discs, on the synthetic labs (known microns per
pixel), refused where no whole red cell shows, and used to frame cells at one physical
scale; the real labs when present."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukoshift.config import ImageConfig
from leukoshift.data.images import ImageReadError, frame_image, load_rgb, prepare_image, resize_square
from leukoshift.data.synth import FRAME_UM, LAB_STYLES, render_cell
from leukoshift.domain.centre import locate_cell, reduce_od
from leukoshift.domain.ruler import MIN_CELLS, estimate_ruler, image_scale, lab_rulers, red_cell_diameters
from tests.conftest import SHARED, requires_shared
from tests.domain.test_centre import BACKGROUND, CYTOPLASM, NUCLEUS, RED_CELL, disc


def field(scale: float = 1.0, nucleus_r: float = 14.0, seed: int = 0) -> np.ndarray:
    """160x160 px at ``scale``: lone red cells 24 px across (x scale), one touching pair,
    one cut by the frame, and a white cell at the centre."""
    rng = np.random.default_rng(seed)
    n = round(160 * scale)
    img = np.empty((n, n, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for cx, cy in [(25, 25), (135, 25), (25, 135), (135, 135), (80, 22), (22, 80)]:
        disc(img, cx * scale, cy * scale, 12 * scale, RED_CELL)
    disc(img, 125 * scale, 80 * scale, 12 * scale, RED_CELL)  # a touching pair
    disc(img, 147 * scale, 80 * scale, 12 * scale, RED_CELL)
    disc(img, 80 * scale, 158 * scale, 12 * scale, RED_CELL)  # cut by the frame
    disc(img, 80 * scale, 80 * scale, nucleus_r * 1.6 * scale, CYTOPLASM)
    disc(img, 80 * scale, 80 * scale, nucleus_r * scale, NUCLEUS)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_measures_lone_red_cells_and_drops_touching_and_cut_ones() -> None:
    for scale in (1.0, 2.0):  # 2.0: 320 px, measured on a reduced copy
        d = red_cell_diameters(field(scale))
        assert len(d) == 6, d  # the pair and the cut cell are not counted
        assert np.all(np.abs(d - 24 * scale) <= 2.5 * scale), d


def test_blank_image_has_no_red_cells() -> None:
    assert len(red_cell_diameters(np.full((64, 64, 3), 230, dtype=np.uint8))) == 0


def test_synthetic_labs_give_their_magnification() -> None:
    # Red cells are 7-8 um across in the generator (mean 7.5); px per um = size * mag / FRAME_UM.
    found = {}
    for style in LAB_STYLES[:2]:  # magnification 1.0 and 0.72
        rng = np.random.default_rng(0)
        images = [render_cell(c, style, rng, size=160) for c in ["LY", "SNE", "MO", "EO", "PMY"] * 24]
        est = estimate_ruler(images)
        assert est.red_cell_px is not None and est.cells >= MIN_CELLS, est
        expected = 7.5 * 160 * style.magnification / FRAME_UM
        assert abs(est.red_cell_px / expected - 1) < 0.12, (style.name, est, expected)
        found[style.magnification] = est.red_cell_px
    assert abs(found[1.0] / found[0.72] / (1.0 / 0.72) - 1) < 0.08, found


def test_refuses_labs_without_whole_red_cells() -> None:
    # A tight crop: the white cell fills the frame, red cells only at the cut edges.
    img = np.empty((100, 100, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for cx, cy in [(0, 0), (100, 0), (0, 100), (100, 100)]:
        disc(img, cx, cy, 20, RED_CELL)
    disc(img, 50, 50, 45, CYTOPLASM)
    disc(img, 50, 50, 30, NUCLEUS)
    est = estimate_ruler([img] * 40)
    assert est.red_cell_px is None and est.cells == 0 and est.note.startswith("not measurable: 0 whole red cells")


def test_refuses_discs_implausibly_small_against_the_nucleus() -> None:
    # Many small lone discs (specks, fragments) beside a huge nucleus: not red cells.
    img = np.empty((160, 160, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for cx in range(10, 160, 20):
        for cy in (7, 153):
            disc(img, cx, cy, 5, RED_CELL)
    disc(img, 80, 80, 62, CYTOPLASM)
    disc(img, 80, 80, 50, NUCLEUS)
    est = estimate_ruler([img] * 4)
    assert est.red_cell_px is None and est.nucleus_ratio is not None and est.nucleus_ratio > 3, est
    assert "nucleus / red cell" in est.note and "set it by hand" in est.note


def test_lab_rulers_per_source_with_unreadable_files_listed() -> None:
    images = {f"a{i}.png": field(1.0, seed=i) for i in range(6)} | {f"b{i}.png": field(2.0, seed=i) for i in range(6)}
    frame = pd.DataFrame(
        {"path": [*images, "bad.png"], "source": ["lab_a"] * 6 + ["lab_b"] * 6 + ["lab_a"]},
    )

    def read(path: str) -> np.ndarray:
        if path == "bad.png":
            raise ImageReadError("bad.png: corrupt image (truncated)")
        return images[path]

    table, skipped = lab_rulers(frame, read, per_source=50)
    assert skipped == ["bad.png: corrupt image (truncated)"]
    assert list(table["source"]) == ["lab_a", "lab_b"]
    assert list(table["images"]) == [6, 6] and list(table["cells"]) == [36, 36]
    px = dict(zip(table["source"], table["red_cell_px"], strict=True))
    assert abs(px["lab_a"] - 24) <= 2 and abs(px["lab_b"] - 48) <= 4, px
    few = lab_rulers(frame, read, per_source=3)[0]["images"].tolist()
    assert few[0] in (2, 3) and few[1] == 3  # lab_a's draw of 3 may hold the unreadable file


# ----------------------------------------------------------------------------- framing


def dark_fraction(img: np.ndarray) -> float:
    """Share of the crop that is nucleus (violet, dark)."""
    return float((img.astype(int).sum(axis=-1) < 330).mean())


def test_ruler_framing_keeps_cell_size_and_drops_magnification() -> None:
    cfg = ImageConfig(size=64, preprocess="ruler", red_cell_px={"x1": 24, "x2": 48}, ruler_field=4.0)
    small, _ = prepare_image(field(1.0, nucleus_r=10), cfg, "x1")
    large, _ = prepare_image(field(1.0, nucleus_r=20), cfg, "x1")
    # Nucleus areas 4x apart stay 4x apart (nucleus side / field: 20/96 and 40/96).
    assert 3.0 < dark_fraction(large) / dark_fraction(small) < 5.0
    assert abs(dark_fraction(small) - np.pi * (10 / 96) ** 2) < 0.01
    # The same slide imaged at twice the magnification, with its own scale: the same crop.
    zoomed, _ = prepare_image(field(2.0, nucleus_r=10), cfg, "x2")
    assert np.abs(zoomed.astype(int) - small.astype(int)).mean() < 8
    # Nucleus-sized framing makes small and large cells alike: the cue ruler keeps.
    centre = cfg.model_copy(update={"preprocess": "centre", "centre_min_fraction": 0.05})
    ratio = dark_fraction(prepare_image(field(1.0, nucleus_r=20), centre)[0]) / dark_fraction(
        prepare_image(field(1.0, nucleus_r=10), centre)[0]
    )
    assert 0.8 < ratio < 1.25


def test_an_image_with_its_own_red_cells_takes_its_own_scale_within_reason() -> None:
    zoomed = field(1.4)  # a lab that imaged this cell 1.4x closer than its usual 24 px
    assert abs(image_scale(zoomed, 24.0) - 24 * 1.4) < 2
    assert image_scale(zoomed, 12.0) == 12.0  # 2.8x the lab's: implausible, the lab's kept
    assert image_scale(np.full((64, 64, 3), 230, dtype=np.uint8), 24.0) == 24.0  # no red cell
    lab = ImageConfig(size=64, preprocess="ruler", red_cell_px={"x": 24}, ruler_scale="lab", ruler_field=4.0)
    own = lab.model_copy(update={"ruler_scale": "image"})
    reference, _ = prepare_image(field(1.0, nucleus_r=10), lab, "x")
    # Framed by its own red cells, the closer image shows the cell at the lab's usual size.
    assert (
        np.abs(prepare_image(zoomed_cell := field(1.4, nucleus_r=10), own, "x")[0].astype(int) - reference).mean() < 8
    )
    assert dark_fraction(prepare_image(zoomed_cell, lab, "x")[0]) > 1.6 * dark_fraction(reference)


def test_locating_and_measuring_share_one_reduction_with_unchanged_results() -> None:
    rgb = field(1.0, nucleus_r=12)
    reduced = reduce_od(rgb)
    assert reduce_od(reduced) is reduced
    assert locate_cell(reduced) == locate_cell(rgb)
    np.testing.assert_array_equal(red_cell_diameters(reduced), red_cell_diameters(rgb))
    assert image_scale(reduced, 24.0) == image_scale(rgb, 24.0)
    cfg = ImageConfig(size=64, preprocess="ruler", red_cell_px={"x": 24}, ruler_scale="image")
    crop, box = frame_image(rgb, cfg, "x")
    assert box == locate_cell(rgb) and crop.shape[0] == crop.shape[1] == round(3.0 * image_scale(rgb, 24.0))
    np.testing.assert_array_equal(prepare_image(rgb, cfg, "x")[0], resize_square(crop, 64))


def test_ruler_framing_falls_back_to_star_and_names_a_missing_source() -> None:
    img = field(1.0)
    cfg = ImageConfig(size=32, preprocess="ruler", red_cell_px={"x1": 24, "*": 24})
    assert np.array_equal(prepare_image(img, cfg, "x1")[0], prepare_image(img, cfg, "new_lab")[0])
    assert np.array_equal(prepare_image(img, cfg, "x1")[0], prepare_image(img, cfg)[0])
    with pytest.raises(Exception, match=r"red_cell_px has no entry for source 'new_lab' \(has: x1\)"):
        prepare_image(img, ImageConfig(size=32, preprocess="ruler", red_cell_px={"x1": 24}), "new_lab")


# ----------------------------------------------------------------------------- real data


@requires_shared
def test_real_labs_scales_and_bccd_crops_refused() -> None:
    ranges = {"pbc": (20, 27), "cellavision": (62, 78), "bionet": (50, 63), "bccd_smears": (82, 100)}
    roots = {
        "pbc": SHARED / "pbc" / "PBC_dataset_normal_DIB",
        "cellavision": SHARED / "cellavision" / "Dataset 2",
        "bionet": SHARED / "bionet" / "WBC Classification Dataset",
        "bccd_smears": SHARED / "bccd_smears" / "BCCD" / "JPEGImages",
        "bccd_crops": SHARED / "bccd_crops" / "BCCD_cropped",
    }
    rng = np.random.default_rng(0)
    for lab, root in roots.items():
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".bmp", ".png"})
        files = [p for p in files if not (lab == "cellavision" and p.suffix == ".png")]  # masks
        est = estimate_ruler(load_rgb(files[i]) for i in rng.choice(len(files), min(120, len(files)), replace=False))
        if lab == "bccd_crops":
            assert est.red_cell_px is None, est
            continue
        lo, hi = ranges[lab]
        assert est.red_cell_px is not None and lo <= est.red_cell_px <= hi, (lab, est)
        assert 1.3 <= (est.nucleus_ratio or 0) <= 2.2, (lab, est)


@requires_shared
def test_real_bccd_smears_match_their_annotated_red_cells() -> None:
    # Pascal VOC red-cell boxes (whole ones, away from the frame): the estimate is the
    # area-equivalent diameter, a little under the box side.
    root = SHARED / "bccd_smears" / "BCCD"
    est_px, box_px = [], []
    for xml in sorted((root / "Annotations").glob("*.xml"))[:80]:
        sides = []
        for obj in ET.parse(xml).findall("object"):
            b = obj.find("bndbox")
            if obj.findtext("name") != "RBC" or b is None:
                continue
            x0, y0, x1, y1 = (float(b.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
            if x0 > 1 and y0 > 1 and x1 < 639 and y1 < 479:
                sides.append(min(x1 - x0, y1 - y0))
        image = root / "JPEGImages" / f"{xml.stem}.jpg"
        if sides and image.is_file():
            d = red_cell_diameters(load_rgb(image))
            if len(d):
                est_px.append(float(np.median(d)))
                box_px.append(float(np.median(sides)))
    assert len(est_px) >= 15
    ratio = float(np.median(np.array(est_px) / np.array(box_px)))
    assert 0.8 <= ratio <= 1.0, ratio


def test_field_helper_draws_what_the_tests_assume(tmp_path: Path) -> None:
    # Guards the helper: the centre disc is the nucleus the locator finds.
    box = locate_cell(field(1.0, nucleus_r=10))
    assert box.found and abs(box.centre[0] - 80) <= 2 and 18 <= box.side <= 24
