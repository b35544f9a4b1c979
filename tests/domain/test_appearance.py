"""Lab appearance: the sharpness measure, the blur that matches it, the per-lab table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from leukoshift.config import ImageConfig
from leukoshift.data.loaders import load_table
from leukoshift.domain.appearance import blur_to_match, lab_appearance, sharpness, stain_means


def textured(n: int = 12, size: int = 48, seed: int = 0) -> np.ndarray:
    """(n, 3, size, size) uint8: smoothed noise with structure at several scales."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 1.2, 1.2))
    base += 0.5 * ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 4, 4))
    base = (base - base.min()) / np.ptp(base)
    tints = np.array([1.0, 0.8, 0.9]).reshape(1, 3, 1, 1)
    return np.clip(40 + 200 * base[:, None] * tints, 0, 255).astype(np.uint8)


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    out = ndimage.gaussian_filter(images.astype(np.float32), (0, 0, sigma, sigma), mode="reflect")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_sharpness_ignores_contrast_and_brightness_and_falls_with_blur() -> None:
    images = textured()
    s = sharpness(images)
    assert s.shape == (len(images),)
    paler = (images.astype(np.float32) * 0.5 + 100).round().astype(np.uint8)
    np.testing.assert_allclose(sharpness(paler), s, rtol=0.03)
    soft = [np.median(sharpness(blurred(images, sigma))) for sigma in (0.4, 0.8, 1.6)]
    assert np.median(s) > soft[0] > soft[1] > soft[2]


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.8])
def test_blur_to_match_recovers_the_blur_applied(sigma: float) -> None:
    reference = textured(seed=1)
    # Another sample of the same texture, blurred: the lab's optics, not its cells.
    target = float(np.median(sharpness(blurred(textured(seed=2), sigma))))
    assert blur_to_match(reference, target) == pytest.approx(sigma, abs=0.12)


def test_blur_to_match_ends_of_the_range() -> None:
    reference = textured()
    assert blur_to_match(reference, float(np.median(sharpness(reference))) + 0.1) == 0.0
    assert blur_to_match(reference, 0.0) == 3.0


def test_stain_means_separate_violet_from_pink() -> None:
    violet = np.zeros((1, 3, 8, 8), np.uint8) + np.array([110, 60, 160], np.uint8).reshape(1, 3, 1, 1)
    pink = np.zeros((1, 3, 8, 8), np.uint8) + np.array([230, 150, 190], np.uint8).reshape(1, 3, 1, 1)
    h, e = stain_means(np.concatenate([violet, pink])).T
    assert h[0] > h[1]  # the nucleus colour carries more haematoxylin
    assert e[1] / max(h[1], 1e-6) > e[0] / max(h[0], 1e-6)  # pink is relatively more eosin


def test_lab_appearance_finds_the_blurrier_lab(synth_manifest: Path) -> None:
    # Synthetic lab B is rendered with 0.7 px focus blur against lab A's 0.25 (data/synth.py).
    table = load_table([synth_manifest], ImageConfig(size=40), split="all", progress=False)
    frame = lab_appearance(table, reference="lab_a", max_per_source=60).set_index("source")
    assert list(frame.index) == table.source_names
    assert frame["images"].sum() == len(table)
    assert frame.attrs == {"reference": "lab_a", "size": 40}
    blur = frame["blur_px"]
    assert blur["lab_a"] == 0.0
    assert blur["lab_b"] > 0.2
    assert frame.loc["lab_b", "sharpness"] < frame.loc["lab_a", "sharpness"]
    np.testing.assert_allclose(frame["blur_sigma_224"], blur * 224 / 40)
    assert frame["brightness"].between(0, 1).all()
    with pytest.raises(ValueError, match="lab_z"):
        lab_appearance(table, reference="lab_z")
