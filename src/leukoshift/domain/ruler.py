"""Red cells as a ruler: every lab's cells framed at the same physical scale.

:func:`~leukoshift.domain.centre.centre_crop` sizes the crop by the located nucleus, so a
small lymphocyte and a large promyelocyte fill the crop alike and the one cue that tells
them apart at a glance, size, is gone; the model must read chromatin instead, and other
labs' lymphocytes end up called promyelocytes (``benchmarks/RESULTS.md``, issue 4). A
fixed crop in pixels does not help either: labs image at different magnifications.

Red cells do. A normal red cell is about 7.5 um across in every smear, and most fields
show some, so the median red-cell diameter in a lab's images is that lab's scale. The
``ruler`` preprocessing crops ``ruler_field`` red-cell diameters around the located
nucleus, so a cell's size in the crop is its size on the slide in every lab; with
``ruler_scale: image`` an image that shows its own red cells is framed by them
(:func:`image_scale`), for labs that imaged some classes closer than others.

Measuring, on a copy reduced as the locator reduces it: pixels that absorb light
(background-relative optical density above half its Otsu level) but are not white-cell
material (:func:`~leukoshift.domain.centre._cell_mask`: red cells absorb blue about as
much as red), opened and hole-filled (the pale centre of a red cell). Components that
touch the frame are cut cells; components much larger than their inscribed disc are
touching cells; both are dropped. Each lone disc gives an area-equivalent diameter.
Pooled over a lab, discs under half the 90th percentile (fragments, platelets) are
dropped and the median is the lab's red-cell diameter.

Some labs' images cannot be measured: tight crops (BCCD crops) show only cut red cells.
:func:`estimate_ruler` says so instead of returning the size of the fragments, by two
checks: enough discs, and a median nucleus a plausible size against them (a white-cell
nucleus is 0.6-3 red cells across). Measured on ``../shared/data`` (RESULTS.md): against
the Pascal VOC red-cell boxes of the BCCD smears the estimate is about 0.9 of the box side,
and the median lymphocyte nucleus is 1.45-1.65 red cells across in PBC, CellaVision and
Bio-net alike, though the three image them at 23, 70 and 56 px per red cell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from leukoshift.domain.centre import (
    _SQUARE,
    Reduced,
    _cell_mask,
    _fill_holes,
    _histogram,
    _otsu,
    locate_cell,
    reduce_od,
)
from leukoshift.errors import UserError

_MIN_RADIUS = 3  # px on the reduced copy: smaller discs are specks, not red cells
_DISC = (0.7, 1.5)  # area / inscribed-disc area of a lone red cell (touching pairs: ~2+)
_FRAGMENT = 0.5  # pooled discs under this x the 90th percentile are fragments
MIN_CELLS = 30  # fewer lone red cells than this in a lab: not measurable
NUCLEUS_RATIO = (0.6, 3.0)  # plausible median nucleus side / red-cell diameter
MIN_IMAGE_CELLS = 2  # an image measures its own scale from at least this many red cells
IMAGE_RANGE = (0.6, 1.7)  # ... when their median lies within this x the lab's scale


def red_cell_diameters(rgb: np.ndarray | Reduced) -> np.ndarray:
    """Area-equivalent diameters (px of the full image) of the whole, lone red cells in an
    image, given as RGB or as its :func:`~leukoshift.domain.centre.reduce_od`."""
    reduced = reduce_od(rgb)
    factor = reduced.factor
    od = reduced.od - np.percentile(reduced.od.reshape(-1, 3), 3, axis=0)  # relative to the clear plasma
    total = od.sum(axis=-1)
    if np.ptp(total) < 1e-3:
        return np.zeros(0)
    stained = total > 0.5 * _otsu(_histogram(total))
    red = _fill_holes(ndimage.binary_opening(stained & ~_cell_mask(od), structure=_SQUARE))
    labels, n = ndimage.label(red)
    if n == 0:
        return np.zeros(0)
    index = np.arange(1, n + 1)
    radius = np.asarray(ndimage.maximum(ndimage.distance_transform_edt(red), labels, index))
    area = np.asarray(ndimage.sum(red, labels, index))
    border = np.zeros(n + 1, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        border[edge] = True
    disc = area / (np.pi * np.maximum(radius, 1e-6) ** 2)
    keep = (radius >= _MIN_RADIUS) & ~border[1:] & (disc > _DISC[0]) & (disc < _DISC[1])
    return 2.0 * np.sqrt(area[keep] / np.pi) * factor


def image_scale(rgb: np.ndarray | Reduced, lab_px: float) -> float:
    """The red-cell diameter (px) to frame this image by: the median of its own whole red
    cells when it shows at least ``MIN_IMAGE_CELLS`` of them at a plausible size against
    the lab's ``lab_px``, else ``lab_px``.

    A lab is not always one magnification: Bio-net's eosinophils were imaged with red
    cells 77 px across (median over images that show them), its lymphocytes with 54 px,
    so one scale per lab frames its eosinophils 1.4x too large.
    """
    d = red_cell_diameters(rgb)
    d = d[d >= _FRAGMENT * lab_px]
    if len(d) < MIN_IMAGE_CELLS:
        return lab_px
    own = float(np.median(d))
    return own if IMAGE_RANGE[0] * lab_px <= own <= IMAGE_RANGE[1] * lab_px else lab_px


@dataclass(frozen=True)
class RulerEstimate:
    """One lab's red-cell diameter in pixels, or ``None`` with the reason in ``note``."""

    images: int
    cells: int
    red_cell_px: float | None
    nucleus_ratio: float | None
    note: str


def estimate_ruler(images: Iterable[np.ndarray]) -> RulerEstimate:
    """Median red-cell diameter over a lab's images (module docstring), checked."""
    diameters: list[np.ndarray] = []
    nuclei: list[int] = []
    for rgb in images:
        reduced = reduce_od(rgb)
        diameters.append(red_cell_diameters(reduced))
        box = locate_cell(reduced)
        if box.found:
            nuclei.append(box.side)
    pooled = np.concatenate(diameters) if diameters else np.zeros(0)
    if len(pooled):
        pooled = pooled[pooled >= _FRAGMENT * np.percentile(pooled, 90)]
    n_images, n_cells = len(diameters), len(pooled)
    if n_cells < MIN_CELLS:
        return RulerEstimate(
            n_images, n_cells, None, None, f"not measurable: {n_cells} whole red cells (< {MIN_CELLS})"
        )
    px = float(np.median(pooled))
    ratio = float(np.median(nuclei)) / px if nuclei else None
    if ratio is None or not NUCLEUS_RATIO[0] <= ratio <= NUCLEUS_RATIO[1]:
        shown = "no nucleus found" if ratio is None else f"nucleus / red cell {ratio:.2f}"
        return RulerEstimate(
            n_images,
            n_cells,
            None,
            ratio,
            f"not measurable: {shown}, outside {NUCLEUS_RATIO[0]}-{NUCLEUS_RATIO[1]}: "
            "the discs found are not whole red cells (a tight crop?); set it by hand",
        )
    return RulerEstimate(n_images, n_cells, round(px, 1), ratio, "ok")


def lab_rulers(
    frame: pd.DataFrame,
    read: Callable[[str], np.ndarray],
    per_source: int = 200,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[str]]:
    """:func:`estimate_ruler` per source of a manifest frame (``path``, ``source``), on up
    to ``per_source`` rows drawn with ``seed``; also the unreadable files, as
    "path: reason" lines (skipped, never fatal). ``read`` decodes a path to RGB (the
    data layer's ``load_rgb``: domain/ does not import data/)."""
    skipped: list[str] = []

    def images(paths: Iterable[str]) -> Iterator[np.ndarray]:
        for path in paths:
            try:
                yield read(path)
            except UserError as exc:
                skipped.append(str(exc))

    rows = []
    for source, part in frame.groupby("source", sort=True):
        drawn = part.sample(min(per_source, len(part)), random_state=seed)
        rows.append({"source": source, **asdict(estimate_ruler(images(drawn["path"])))})
    return pd.DataFrame(rows), skipped
