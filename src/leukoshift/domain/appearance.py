"""How labs differ before a model sees them: sharpness, stain and brightness per source.

Stain is the difference everyone checks. Optics is the one that gets missed. A low-resolution
camera, a different objective or strong JPEG compression blurs a lab's cells, and a
classifier trained on sharp PBC images learns textures another lab never shows. Measured
on ``../shared/data`` with 64 px centred crops, BCCD crops and Bio-net are as sharp as PBC
blurred with a Gaussian of about 0.5-0.7 px (``benchmarks/RESULTS.md``). Blur augmentation
with the default range (``augment.colour.blur_sigma`` 0.1-2 px at 224 px, 0.03-0.6 px at
64 px) barely reaches that.

:func:`lab_appearance` gives, per source, the median sharpness and the blur that makes
the reference lab (the largest, usually the training lab) as soft as that source. It is
given in pixels at the cached size and in ``blur_sigma`` units (px at 224), so the
augmentation range can be set from a measurement instead of a guess.

Sharpness is the standard deviation of the Laplacian of the grey image divided by the grey
image's standard deviation. The ratio ignores contrast and brightness (a pale stain is not
a soft one) and falls steadily as a Gaussian blur grows.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from leukoshift.domain.stain import rgb_to_hed

if TYPE_CHECKING:  # domain/ stays free of data/ at run time
    from leukoshift.data.loaders import ImageTable

#: Blur sigmas (px at the images' size) searched for the match; 3 px at 64 px is a mush.
SIGMAS = np.round(np.arange(0.0, 3.01, 0.05), 2)
_REFERENCE_SIZE = 224  # augment.colour.blur_sigma is given at this size


def _grey(images: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) uint8 -> (N, S, S) float32 luminance (ITU-R 601 weights)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(1, 3, 1, 1)
    return (images.astype(np.float32) * weights).sum(axis=1)


def _sharpness_of_grey(grey: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    if sigma > 0:
        # Rounded as a camera stores it: at strong blur the 8-bit steps are much of the
        # Laplacian left, in the measured lab's images and so in the matched reference.
        grey = np.round(ndimage.gaussian_filter(grey, (0, sigma, sigma), mode="reflect"))
    lap = np.stack([ndimage.laplace(g, mode="reflect") for g in grey])
    return lap.std(axis=(1, 2)) / np.maximum(grey.std(axis=(1, 2)), 1e-6)


def sharpness(images: np.ndarray) -> np.ndarray:
    """Per-image sharpness of (N, 3, S, S) uint8 images: std(Laplacian) / std(grey)."""
    return _sharpness_of_grey(_grey(images))


def blur_to_match(reference: np.ndarray, target: float) -> float:
    """Gaussian sigma (px) that brings the reference images' median sharpness down to ``target``.

    0 when the target is at least as sharp as the reference; the largest searched sigma
    (:data:`SIGMAS`) when even that leaves the reference sharper. Between grid points the
    sigma is interpolated linearly.
    """
    grey = _grey(reference)
    curve = np.array([np.median(_sharpness_of_grey(grey, float(s))) for s in SIGMAS])
    if target >= curve[0]:
        return 0.0
    below = np.flatnonzero(curve <= target)
    if len(below) == 0:
        return float(SIGMAS[-1])
    i = int(below[0])  # curve[i - 1] > target >= curve[i]; i >= 1 since curve[0] > target
    t = (curve[i - 1] - target) / (curve[i - 1] - curve[i])
    return float(SIGMAS[i - 1] + t * (SIGMAS[i] - SIGMAS[i - 1]))


def stain_means(images: np.ndarray) -> np.ndarray:
    """Per-image mean haematoxylin and eosin concentration (skimage ``rgb2hed`` units), (N, 2)."""
    hed = rgb_to_hed(torch.from_numpy(images))
    return hed[:, :2].mean(dim=(2, 3)).numpy()


def lab_appearance(
    table: ImageTable, reference: str | None = None, max_per_source: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """One row per source: images, sharpness, the blur matching it, stain and brightness.

    Columns: ``images`` (rows of the source), ``sharpness`` (median), ``blur_px`` (the
    Gaussian sigma, px at the table's size, that makes the reference as soft as the source),
    ``blur_sigma_224`` (the same in ``augment.colour.blur_sigma`` units), ``haematoxylin``
    and ``eosin`` (median of per-image mean concentrations), ``brightness`` (0-1).
    ``reference`` is the lab the blur is measured from (default: the source with most
    rows); it and the image size are in ``frame.attrs``. At most ``max_per_source``
    images per source are read (a seeded sample).
    """
    names = table.source_names
    counts = np.bincount(table.sources, minlength=len(names))
    ref = reference if reference is not None else names[int(np.argmax(counts))]
    if ref not in names:
        raise ValueError(f"reference source {ref!r} is not among the sources {names}")
    samples: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        rows = np.flatnonzero(table.sources == i)
        if len(rows) > max_per_source:
            # Seeded by the lab's name: adding another manifest leaves this lab's sample alone.
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            rows = np.sort(rng.choice(rows, max_per_source, replace=False))
        samples[name] = table.images(rows)
    scale = _REFERENCE_SIZE / table.size
    out = []
    for i, name in enumerate(names):
        images = samples[name]
        sharp = float(np.median(sharpness(images)))
        sigma = 0.0 if name == ref else blur_to_match(samples[ref], sharp)
        stains = stain_means(images)
        out.append(
            {
                "source": name,
                "images": int(counts[i]),
                "sharpness": sharp,
                "blur_px": sigma,
                "blur_sigma_224": sigma * scale,
                "haematoxylin": float(np.median(stains[:, 0])),
                "eosin": float(np.median(stains[:, 1])),
                "brightness": float(np.median(images.mean(axis=(1, 2, 3)))) / 255.0,
            }
        )
    frame = pd.DataFrame(out)
    frame.attrs.update(reference=ref, size=table.size)
    return frame
