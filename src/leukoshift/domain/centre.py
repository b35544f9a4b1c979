"""Cell centring: find the white cell and frame it the same way in every lab.

Labs frame cells differently (PBC: the cell is a quarter of a 360 px field; BCCD and
CellaVision crops: the cell fills the frame; Bio-net: one small off-centre cell in a
640x480 field). A classifier learns the framing as much as the cell, so every image is
re-framed around its located white cell before it reaches the model.

Locator: the hematoxylin channel of a colour deconvolution (Ruifrok & Johnston 2001)
marks nuclei in any Romanowsky-type stain; Otsu's threshold, a morphological clean-up
and connected components give candidate nuclei, and the large one nearest the image
centre is taken. The square crop is ``margin`` times the nucleus size (cytoplasm
included), never smaller than ``min_fraction`` of the short side so that platelets and
erythroblasts keep some context, and mirrored where it leaves the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

#: Bump when the locator changes: cache keys include it, so stale crops are rebuilt.
LOCATOR_VERSION = 1
_WORK_SIDE = 160  # locate on a small copy: speed, and noise below cell scale vanishes


@dataclass(frozen=True)
class Box:
    """Located nucleus box in pixel coordinates of the full image (x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int
    found: bool = True

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0

    @property
    def side(self) -> int:
        return max(self.x1 - self.x0, self.y1 - self.y0)


def nucleus_score(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density per pixel (high on nuclei and basophilic granules)."""
    return rgb2hed(rgb)[..., 0]


def locate_cell(rgb: np.ndarray) -> Box:
    """Box of the white-cell nucleus nearest the centre; the whole image if none is found."""
    h, w = rgb.shape[:2]
    scale = min(1.0, _WORK_SIDE / max(h, w))
    small = rgb
    if scale < 1.0:
        small = np.asarray(
            Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        )
    sh, sw = small.shape[:2]
    score = nucleus_score(small)
    if not np.isfinite(score).all() or score.max() - score.min() < 1e-6:
        return Box(0, 0, w, h, found=False)
    mask = score > threshold_otsu(score)
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_closing(mask, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n == 0:
        return Box(0, 0, w, h, found=False)
    idx = np.arange(1, n + 1)
    areas = ndimage.sum(mask, labels, idx)
    centres = np.array(ndimage.center_of_mass(mask, labels, idx))
    # Small specks (platelets, stain debris) lose to a real nucleus; among large ones the
    # nearest to the centre wins, because datasets put the labelled cell there.
    big = areas >= 0.25 * areas.max()
    dist = np.hypot(centres[:, 0] - sh / 2, centres[:, 1] - sw / 2) / max(sh, sw)
    cost = dist - 0.5 * np.sqrt(areas / areas.max())
    cost[~big] = np.inf
    best = int(np.argmin(cost)) + 1
    ys, xs = np.nonzero(labels == best)
    inv = 1.0 / scale
    return Box(
        int(np.floor(xs.min() * inv)),
        int(np.floor(ys.min() * inv)),
        int(np.ceil((xs.max() + 1) * inv)),
        int(np.ceil((ys.max() + 1) * inv)),
    )


def crop_window(box: Box, shape: tuple[int, ...], margin: float, min_fraction: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop around ``box`` (may extend past the image)."""
    h, w = shape[:2]
    side = max(box.side * margin, min_fraction * min(h, w)) if box.found else min(h, w)
    side = int(round(side))
    cx, cy = box.centre
    return int(round(cx - side / 2)), int(round(cy - side / 2)), max(side, 1)


def centre_crop(rgb: np.ndarray, box: Box, margin: float = 1.8, min_fraction: float = 0.25) -> np.ndarray:
    """Square crop centred on the cell; parts outside the image are mirrored in."""
    x0, y0, side = crop_window(box, rgb.shape, margin, min_fraction)
    h, w = rgb.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        # Reflect repeatedly if the crop is far larger than the image (tiny inputs).
        padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
        return padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
    return rgb[y0 : y0 + side, x0 : x0 + side]


def blank_background(rgb: np.ndarray, box: Box, fill: int = 255, grow: float = 1.4) -> np.ndarray:
    """Keep a disc around the located cell (nucleus plus cytoplasm), paint the rest ``fill``."""
    if not box.found:
        return rgb
    h, w = rgb.shape[:2]
    cx, cy = box.centre
    radius = box.side * grow / 2
    yy, xx = np.ogrid[:h, :w]
    keep = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
    out = np.full_like(rgb, fill)
    out[keep] = rgb[keep]
    return out
