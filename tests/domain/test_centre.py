"""Cell locator and centre crop: synthetic smears drawn here, and the real labs when present."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoshift.domain.centre import (
    Box,
    blank_background,
    centre_crop,
    crop_window,
    locate_cell,
    nucleus_score,
)
from tests.conftest import SHARED, requires_shared

BACKGROUND = (236, 226, 214)  # cream plasma
RED_CELL = (205, 150, 160)  # pink, pale
CYTOPLASM = (200, 175, 215)  # lilac
NUCLEUS = (95, 45, 145)  # violet


def disc(img: np.ndarray, cx: float, cy: float, r: float, colour: tuple[int, int, int]) -> None:
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2] = colour


def smear(
    h: int = 240,
    w: int = 320,
    wbc: tuple[float, float] | None = (230, 70),
    nucleus_r: float = 14,
    red_cells: int = 40,
    seed: int = 0,
) -> np.ndarray:
    """A field of pale red cells with one white cell (lilac cytoplasm, violet nucleus)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for _ in range(red_cells):
        disc(img, rng.uniform(0, w), rng.uniform(0, h), 11, RED_CELL)
    if wbc is not None:
        disc(img, *wbc, nucleus_r * 1.6, CYTOPLASM)
        disc(img, *wbc, nucleus_r, NUCLEUS)
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- locator


def test_finds_the_off_centre_nucleus_among_red_cells() -> None:
    for seed in range(3):
        box = locate_cell(smear(seed=seed))
        assert box.found
        cx, cy = box.centre
        assert abs(cx - 230) <= 3 and abs(cy - 70) <= 3
        assert 26 <= box.side <= 34  # nucleus diameter 28 (+ reduction rounding)
        assert box.cell is not None
        x0, y0, x1, y1 = box.cell
        assert 38 <= x1 - x0 <= 52 and 38 <= y1 - y0 <= 52  # cytoplasm diameter 45


def test_prefers_the_central_cell_over_a_neighbour_cut_by_the_frame() -> None:
    img = smear(h=128, w=128, wbc=(64, 64), nucleus_r=14, red_cells=8)
    disc(img, 128, 20, 22, CYTOPLASM)
    disc(img, 128, 20, 18, NUCLEUS)  # a bigger neighbour, half outside the frame
    box = locate_cell(img)
    assert abs(box.centre[0] - 64) <= 3 and abs(box.centre[1] - 64) <= 3


def test_lobes_of_a_segmented_nucleus_are_one_box() -> None:
    img = smear(h=128, w=128, wbc=None, red_cells=6)
    disc(img, 64, 64, 26, CYTOPLASM)
    for cx, cy in [(50, 56), (66, 74), (78, 54)]:
        disc(img, cx, cy, 8, NUCLEUS)
    box = locate_cell(img)
    assert box.x0 <= 43 and box.x1 >= 85 and box.y0 <= 49 and box.y1 >= 81


def test_small_platelet_is_found_and_keeps_context() -> None:
    img = smear(h=128, w=128, wbc=None, red_cells=10)
    disc(img, 66, 62, 4, NUCLEUS)
    box = locate_cell(img)
    assert box.found and abs(box.centre[0] - 66) <= 2 and abs(box.centre[1] - 62) <= 2
    crop = centre_crop(img, box, margin=1.8, min_fraction=0.25)
    assert crop.shape == (32, 32, 3)  # a quarter of the short side, not 1.8 x 8 px


def test_uniform_image_is_not_found_and_crops_to_the_central_square() -> None:
    img = np.full((60, 80, 3), 200, dtype=np.uint8)
    box = locate_cell(img)
    assert not box.found and (box.x0, box.y0, box.x1, box.y1) == (0, 0, 80, 60)
    crop = centre_crop(img, box)
    assert crop.shape == (60, 60, 3)


def test_greyscale_image_falls_back_to_darkness() -> None:
    img = np.full((100, 100, 3), 220, dtype=np.uint8)
    disc(img, 30, 70, 10, (60, 60, 60))
    box = locate_cell(img)
    assert box.found and abs(box.centre[0] - 30) <= 2 and abs(box.centre[1] - 70) <= 2


def test_nucleus_score_ranks_nucleus_over_red_cell_and_background() -> None:
    pixels = np.array([[NUCLEUS, RED_CELL, BACKGROUND, CYTOPLASM]], dtype=np.uint8)
    nucleus, red, background, _ = nucleus_score(pixels)[0]
    assert nucleus > red + 0.3 and nucleus > background + 0.3


def test_locator_is_fast_on_a_full_field() -> None:
    img = smear(h=480, w=640, wbc=(500, 120), nucleus_r=28, red_cells=150)
    locate_cell(img)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        locate_cell(img)
        times.append(time.perf_counter() - start)
    # ~8 ms on one idle core; the bound only catches work at full resolution (~20x).
    assert np.median(times) < 0.1


# ----------------------------------------------------------------------------- crop


def ramp(h: int = 100, w: int = 120) -> np.ndarray:
    """Every pixel distinct, so crops can be traced back to their source pixels."""
    v = np.arange(h * w, dtype=np.int64).reshape(h, w)
    return np.stack([v % 256, (v // 256) % 256, v // 65536], axis=-1).astype(np.uint8)


def test_crop_is_square_with_the_requested_margin_and_centred() -> None:
    img = ramp()
    box = Box(50, 40, 70, 56)  # side 20, centre (60, 48)
    for margin in (1.5, 2.0, 3.0):
        x0, y0, side = crop_window(box, img.shape, margin, min_fraction=0.0)
        assert side == round(20 * margin)
        assert abs(x0 + side / 2 - 60) <= 0.5 and abs(y0 + side / 2 - 48) <= 0.5
        crop = centre_crop(img, box, margin=margin, min_fraction=0.0)
        assert crop.shape == (side, side, 3)
        np.testing.assert_array_equal(crop, img[y0 : y0 + side, x0 : x0 + side])


def test_min_fraction_sets_the_smallest_crop() -> None:
    img = ramp()
    box = Box(58, 48, 62, 52)  # a 4 px platelet
    assert centre_crop(img, box, margin=1.8, min_fraction=0.5).shape == (50, 50, 3)
    assert centre_crop(img, box, margin=1.8, min_fraction=0.1).shape == (10, 10, 3)


def test_crop_slides_inwards_a_little_instead_of_mirroring() -> None:
    img = ramp()
    box = Box(2, 40, 42, 80)  # crop 60 px would start at x=-8; 10 % of 60 = 6 px slack
    x0, _, side = crop_window(box, img.shape, margin=1.5, min_fraction=0.0)
    assert (x0, side) == (-2, 60)
    box = Box(5, 40, 45, 80)  # would start at x=-5: fits after sliding 5 px
    x0, y0, side = crop_window(box, img.shape, margin=1.5, min_fraction=0.0)
    assert x0 == 0
    np.testing.assert_array_equal(centre_crop(img, box, margin=1.5, min_fraction=0.0), img[y0 : y0 + side, :side])


def test_crop_mirrors_where_it_leaves_the_image() -> None:
    img = ramp()
    box = Box(0, 40, 20, 60)  # at the left edge: crop 60 px from x=-20, slid to x=-14
    crop = centre_crop(img, box, margin=3.0, min_fraction=0.0, max_shift=0.1)
    x0, y0, side = crop_window(box, img.shape, 3.0, 0.0, max_shift=0.1)
    assert (x0, side) == (-14, 60)
    inside = crop[:, 14:]
    np.testing.assert_array_equal(inside, img[y0 : y0 + side, : side - 14])
    # columns -1, -2, ... repeat columns 0, 1, ... (symmetric reflection)
    np.testing.assert_array_equal(crop[:, :14], inside[:, :14][:, ::-1])


def test_cell_filling_the_frame_is_centred_and_mirrored_on_both_sides() -> None:
    img = ramp(80, 80)
    box = Box(10, 10, 70, 70)  # BCCD-like: the nucleus is most of the image
    crop = centre_crop(img, box, margin=1.8, min_fraction=0.25)
    assert crop.shape == (108, 108, 3)
    np.testing.assert_array_equal(crop[14:94, 14:94], img)
    np.testing.assert_array_equal(crop[14:94, :14], img[:, :14][:, ::-1])
    np.testing.assert_array_equal(crop[14:94, 94:], img[:, -14:][:, ::-1])


def test_blank_background_keeps_the_cell_and_whitens_the_rest() -> None:
    img = smear()
    box = locate_cell(img)
    out = blank_background(img, box)
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[70, 230], img[70, 230])  # nucleus centre kept
    assert (out[:20, :20] == 255).all() and (out[-20:, :100] == 255).all()
    assert blank_background(img, Box(0, 0, 320, 240, found=False)) is img


# ----------------------------------------------------------------------------- real data


def _sample(files: list[Path], n: int) -> list[Path]:
    step = max(1, len(files) // n)
    return files[::step][:n]


@requires_shared
@pytest.mark.realdata
def test_bionet_cells_are_found_off_centre_and_cropped_to_their_nucleus() -> None:
    files = _sample(sorted((SHARED / "bionet" / "WBC Classification Dataset").rglob("*.jp*g")), 20)
    assert len(files) == 20
    off_centre = centred_nucleus = 0
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        h, w = rgb.shape[:2]
        box = locate_cell(rgb)
        assert box.found, f
        cx, cy = box.centre
        off_centre += abs(cx - w / 2) > 0.1 * w or abs(cy - h / 2) > 0.1 * h
        crop = centre_crop(rgb, box)
        score = nucleus_score(np.asarray(Image.fromarray(crop).resize((60, 60))))
        # a nucleus in the middle third: its stain there is well above the crop's average
        # (about 1x when the crop is centred on red cells, 2.5-4x on a nucleus)
        centred_nucleus += score[20:40, 20:40].mean() > 1.8 * score.mean()
    assert off_centre >= 14
    assert centred_nucleus >= 19


@requires_shared
@pytest.mark.realdata
def test_cellavision_box_lies_on_the_expert_nucleus() -> None:
    folder = SHARED / "cellavision" / "Dataset 2"
    hits = 0
    files = sorted(folder.glob("*.bmp"))
    for f in files:
        mask = np.asarray(Image.open(f.with_suffix(".png")).convert("L")) > 200  # white nucleus
        cx, cy = locate_cell(np.asarray(Image.open(f).convert("RGB"))).centre
        ys, xs = np.nonzero(mask)
        hits += xs.min() <= cx <= xs.max() and ys.min() <= cy <= ys.max()
    assert len(files) == 100 and hits >= 98


@requires_shared
@pytest.mark.realdata
def test_bccd_smear_box_lies_in_an_annotated_white_cell() -> None:
    root = SHARED / "bccd_smears" / "BCCD"
    hits = n = 0
    for ann in _sample(sorted((root / "Annotations").glob("*.xml")), 30):
        boxes = [
            [float(o.findtext(f"bndbox/{k}", "0")) for k in ("xmin", "ymin", "xmax", "ymax")]
            for o in ET.parse(ann).getroot().iter("object")
            if o.findtext("name") == "WBC"
        ]
        img = root / "JPEGImages" / f"{ann.stem}.jpg"
        if not boxes or not img.exists():
            continue
        cx, cy = locate_cell(np.asarray(Image.open(img).convert("RGB"))).centre
        n += 1
        hits += any(x0 <= cx <= x1 and y0 <= cy <= y1 for x0, y0, x1, y1 in boxes)
    assert n >= 25 and hits >= n - 1
