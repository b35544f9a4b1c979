"""Reading any image a lab may hand us as 8-bit RGB, and making it the model's square input.

Every entry point (cache building, ``predict``, the app) goes through :func:`load_rgb`
and :func:`prepare_image` (or :func:`frame_image`, its crop before resizing), so a cell is
framed the same way in training and in use.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leukoshift.config import ImageConfig
from leukoshift.domain.centre import Box, blank_background, centre_crop, locate_cell, reduce_od
from leukoshift.domain.ruler import image_scale
from leukoshift.errors import UserError

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


class ImageReadError(UserError):
    """An input that cannot be read as an image, phrased as one line naming it."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit / float pixels to 0-255 by their own range (microscopes write 12-16 bit)."""
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    if arr.dtype.kind in "ui" or hi > 1.0:
        top = 65535.0 if hi > 4095 else 4095.0 if hi > 255 else 255.0
        return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8; transparency composited on white."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(im))
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def _deep_colour_tiff(im: Image.Image) -> bool:
    """A colour TIFF with more than 8 bits per sample: Pillow opens it as 8-bit RGB by
    keeping the high byte (12-bit data turns nearly black) and garbles planar ones."""
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA", "RGBX"):
        return False
    bits = getattr(im, "tag_v2", {}).get(258, (8,))
    return max(bits if isinstance(bits, tuple) else (bits,)) > 8


def load_rgb(source: Path | str | IO[bytes]) -> np.ndarray:
    """Decode a file (or file-like object) to (H, W, 3) uint8 RGB."""
    name = getattr(source, "name", source)
    deep_tiff = False
    try:
        with Image.open(source) as im:
            deep_tiff = _deep_colour_tiff(im)
            if not deep_tiff:
                im.load()
                return pil_to_rgb(im)
    except UnidentifiedImageError:
        pass
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{name}: corrupt image ({exc})") from None
    if hasattr(source, "seek"):
        source.seek(0)  # type: ignore[union-attr]
    # Multi-channel 16-bit TIFFs are beyond PIL; tifffile reads them.
    if deep_tiff or str(name).lower().endswith((".tif", ".tiff")):
        try:
            import tifffile

            arr = tifffile.imread(source)
        except Exception as exc:  # tifffile raises many types for bad files
            raise ImageReadError(f"{name}: unreadable TIFF ({exc})") from None
        arr = np.squeeze(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim != 3 or arr.shape[-1] < 3:
            raise ImageReadError(f"{name}: TIFF of shape {arr.shape} is not an RGB image")
        return _to_uint8(arr[..., :3])
    raise ImageReadError(f"{name}: not an image (unrecognised format)")


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Whole image to ``size`` x ``size`` (aspect not kept: the published resize)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))


def frame_image(rgb: np.ndarray, cfg: ImageConfig, source: str | None = None) -> tuple[np.ndarray, Box | None]:
    """Raw RGB -> the square crop ``cfg.preprocess`` frames (at image resolution, the whole
    image for ``resize``), and the located cell box (if any).

    ``source`` (the lab) matters to ``ruler`` framing only, whose crop side is
    ``cfg.ruler_field`` red-cell diameters: the image's own (``ruler_scale: image``, where
    measurable) or its lab's (``cfg.red_cell_px``).
    """
    if cfg.preprocess == "resize":
        return rgb, None
    reduced = reduce_od(rgb)  # locating the cell and measuring red cells share it
    side = None
    if cfg.preprocess == "ruler":
        px = cfg.ruler_px(source)
        side = round(cfg.ruler_field * (image_scale(reduced, px) if cfg.ruler_scale == "image" else px))
    box = locate_cell(reduced)
    if cfg.preprocess == "background":
        rgb = blank_background(rgb, box)
    crop = centre_crop(rgb, box, margin=cfg.centre_margin, min_fraction=cfg.centre_min_fraction, side=side)
    return crop, box


def prepare_image(rgb: np.ndarray, cfg: ImageConfig, source: str | None = None) -> tuple[np.ndarray, Box | None]:
    """Raw RGB -> the (size, size, 3) uint8 model input (:func:`frame_image` resized), and
    the located cell box (if any)."""
    crop, box = frame_image(rgb, cfg, source)
    return resize_square(crop, cfg.size), box
