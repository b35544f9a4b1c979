"""Augmentation pipelines that run batched on the device: fine-tuning and multi-crop SSL views.

Images arrive as uint8 cache batches; every module here accepts uint8 or float in [0, 1]
of shape (B, 3, H, W) and returns float in [0, 1]. ImageNet normalisation belongs to the
model wrapper, not here. Fine-tuning chains Kornia augmentations (geometry, colour, blur,
solarisation) and the stain jitter of :mod:`leukoshift.domain.stain`, itself a Kornia
augmentation. Multi-crop, which makes 8-10 views per image per step, draws from the same
distributions but fuses each view size into one pass (see the multi-crop section). Random
numbers come from torch's global generators, so ``torch.manual_seed`` repeats a run.

Geometry for blood cells: flips, 90-degree and free rotations (a cell has no up), and a
random zoom applied before cropping. Labs differ in magnification as much as in stain, so
views are zoomed out as well as in: a scale below 1 shrinks the field and fills the
border by reflection, which continues the smear's texture instead of drawing a frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leukoshift.config import (
    AugmentConfig,
    ColourAugConfig,
    GeometryAugConfig,
    MultiCropConfig,
    StainAugConfig,
)
from leukoshift.domain.stain import _EPS, _LOG_ADJUST, RGB_FROM_HED, HEDJitter, to_float

__all__ = [
    "Augment",
    "MultiCropAugment",
    "build_finetune_augment",
    "build_multicrop",
    "to_float",
    "two_view_augment",
]

_REFERENCE_SIZE = 224  # blur sigmas in configs are in pixels at this size (DINO, SimCLR)


class Augment(nn.Module):
    """Kornia augmentations applied in order, then a resize to ``size`` if still needed.

    With no augmentations and an input already ``size`` px it is the identity (apart from
    the uint8 -> float conversion).
    """

    def __init__(self, ops: list[nn.Module], size: int | None = None) -> None:
        super().__init__()
        # AugmentationSequential refuses an empty list; an empty pipeline is the identity.
        self.ops = K.AugmentationSequential(*ops) if ops else nn.Identity()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        x = self.ops(to_float(x))
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x.clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- building blocks


def gaussian_blur(size: int, sigma: tuple[float, float], p: float) -> K.RandomGaussianBlur:
    """Gaussian blur whose sigma range (given at 224 px) is scaled to ``size``."""
    scale = size / _REFERENCE_SIZE
    lo, hi = sigma[0] * scale, sigma[1] * scale
    kernel = max(3, 2 * math.ceil(3 * hi) + 1)  # +-3 sigma of the widest draw
    return K.RandomGaussianBlur((kernel, kernel), sigma=(lo, hi), p=p)


def _affine(rotation: float, shear: float, zoom: tuple[float, float]) -> list[nn.Module]:
    """Rotation, shear and zoom fused into one warp, border filled by reflection."""
    if rotation <= 0 and shear <= 0 and zoom == (1.0, 1.0):
        return []
    return [
        K.RandomAffine(
            degrees=rotation,
            shear=(-shear, shear, -shear, shear) if shear > 0 else None,
            scale=zoom if zoom != (1.0, 1.0) else None,
            padding_mode="reflection",
            p=1.0,
        )
    ]


def _resized_crop(size: int, scale: tuple[float, float]) -> K.RandomResizedCrop:
    # "resample" crops and resizes the whole batch in one warp; "slice" loops over images.
    return K.RandomResizedCrop((size, size), scale=scale, p=1.0, cropping_mode="resample")


def _orientation(flips: bool, rot90: bool, rotation: float) -> list[nn.Module]:
    ops: list[nn.Module] = []
    if flips:
        ops += [K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5)]
    # A uniform rotation over the full circle already covers quarter turns: skip the warp.
    if rot90 and rotation < 180:
        ops.append(K.RandomRotation90(times=(0, 3), p=1.0))
    return ops


def _colour(colour: ColourAugConfig, stain: StainAugConfig, colour_p: float, grayscale_p: float) -> list[nn.Module]:
    """Stain jitter first (its OD model holds for the image as stained), then colour jitter."""
    ops: list[nn.Module] = []
    if stain.p > 0:
        ops.append(HEDJitter(stain.sigma, stain.bias, p=stain.p))
    if colour_p > 0:
        ops.append(
            K.ColorJitter(
                brightness=colour.brightness,
                contrast=colour.contrast,
                saturation=colour.saturation,
                hue=colour.hue,
                p=colour_p,
            )
        )
    if grayscale_p > 0:
        ops.append(K.RandomGrayscale(p=grayscale_p))
    return ops


def _blur_solarize(size: int, sigma: tuple[float, float], blur_p: float, solarize_p: float) -> list[nn.Module]:
    ops: list[nn.Module] = []
    if blur_p > 0:
        ops.append(gaussian_blur(size, sigma, blur_p))
    if solarize_p > 0:
        # thresholds=0, additions=0: invert above exactly 0.5, as PIL's solarize(128) in DINO.
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    return ops


# ----------------------------------------------------------------------------- fine-tuning


def build_finetune_augment(cfg: AugmentConfig, size: int) -> Augment:
    """The supervised training augmentation, returning ``size`` x ``size`` float images.

    Order: rotation + shear + zoom (one reflective warp at input resolution), random
    resized crop to ``size`` (area ``geometry.crop_scale``, aspect 3/4-4/3), flips and
    90-degree rotations, then stain jitter, colour jitter, grayscale, blur, solarisation
    at output resolution. Every step whose strength or probability is zero is left out,
    so a config with everything off is the identity.
    """
    g = cfg.geometry
    ops = _affine(g.rotation, g.shear, g.zoom)
    if g.crop_scale != (1.0, 1.0):
        ops.append(_resized_crop(size, g.crop_scale))
    ops += _orientation(g.flips, g.rot90, g.rotation)
    c = cfg.colour
    ops += _colour(c, cfg.stain, c.p, c.grayscale_p)
    ops += _blur_solarize(size, c.blur_sigma, c.blur_p, c.solarize_p)
    if g.crop_scale == (1.0, 1.0) and ops:
        # No crop resized the batch: resize first so colour ops run at output resolution.
        return Augment([K.Resize((size, size), antialias=True), *ops], size)
    return Augment(ops, size)


# ----------------------------------------------------------------------------- multi-crop
#
# Multi-crop makes 8-10 views per image per step, so it is written for throughput: each
# view size is ONE fused pass (one warp, one colour chain, one blur), every random number
# is drawn on the images' device with no host round trip (no ``.item()``, no
# ``.any()``, no boolean indexing), and a transform that an image did not draw leaves it
# bit-for-bit untouched (``torch.where``), as Kornia's per-sample gating does. The
# parameter distributions are those of the Kornia pipeline used for fine-tuning
# (RandomAffine, RandomResizedCrop, flips, rotations, ColorJitter, RandomGrayscale,
# RandomGaussianBlur, RandomSolarize, HEDJitter); tests/pretrain/test_throughput_paths.py
# compares the two. One difference is deliberate: the zoom/rotation/shear and the crop are
# one resampling here, where chaining Kornia's warps interpolates twice and softens every
# view a little (about 5 % less detail per pixel at 32 px).

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as kornia.color.rgb_to_grayscale
_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop aspect-ratio range (torchvision, Kornia)
_CROP_TRIES = 10  # RandomResizedCrop attempts before falling back to the whole image
_JITTER_OPS = ("_brightness", "_contrast", "_saturation", "_hue")  # ColorJitter's order of parameters


def _uniform(u: Tensor, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * u


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def _shift_hue(x: Tensor, turns: Tensor) -> Tensor:
    """torchvision / Kornia ``adjust_hue``: rotate the HSV hue by ``turns`` (N,) of a circle.

    Value and chroma are unchanged by a hue rotation, so the rotated colour is rebuilt
    from them directly (f(n) = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + H) mod 6)
    instead of a full RGB -> HSV -> RGB round trip.
    """
    r, g, b = x.unbind(-3)
    value = x.amax(-3)
    chroma = value - x.amin(-3)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = hue + 6.0 * turns.view(-1, 1, 1)
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(hue + n, 6.0)
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(channels, dim=-3)


def _matrix(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """(N, 2, 2) matrices [[a, b], [c, d]] from (N,) entries."""
    return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)


def _rotation(cos: Tensor, sin: Tensor) -> Tensor:
    return _matrix(cos, -sin, sin, cos)


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """Batched 2x2 (or 2x2 by 2x1) products, elementwise: ``bmm`` of tiny matrices is slower."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def _inverse2x2(m: Tensor) -> Tensor:
    # Closed form: torch.linalg.inv checks for singular input, which waits for the GPU.
    a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    return _matrix(d, -b, -c, a) / (a * d - b * c).view(-1, 1, 1)


def _masked(apply: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(apply.view(-1, 1, 1, 1), new, old)


class _ViewGroup(nn.Module):
    """``n`` views of one size for a batch: one warp, one colour chain, one blur.

    Geometry: zoom (``zoom`` < 1 zooms out), free rotation and shear about the centre,
    then a random resized crop (area ``scale``, aspect 3/4-4/3), flips and quarter turns,
    composed into one affine map per view and sampled once at the output size with a
    mirrored border (reflection, as the Kornia pipeline's warp). Colour: HED stain
    jitter, colour jitter in a random order, grayscale, Gaussian blur, solarisation, each
    drawn per image; blur and solarisation probabilities are per view.
    """

    def __init__(
        self,
        n: int,
        size: int,
        scale: tuple[float, float],
        zoom: tuple[float, float],
        geometry: GeometryAugConfig,
        colour: ColourAugConfig,
        stain: StainAugConfig,
        colour_p: float,
        grayscale_p: float,
        blur_p: list[float],
        solarize_p: list[float],
    ) -> None:
        super().__init__()
        self.n, self.size, self.scale, self.zoom = n, size, scale, zoom
        self.rotation, self.shear = geometry.rotation, geometry.shear
        self.flips = geometry.flips
        # A uniform rotation over the full circle already covers quarter turns.
        self.rot90 = geometry.rot90 and geometry.rotation < 180
        self.crop = scale != (1.0, 1.0)
        self.affine = self.rotation > 0 or self.shear > 0 or zoom != (1.0, 1.0)
        self.warps = self.crop or self.affine or self.flips or self.rot90
        self.stain, self.colour = stain, colour
        self.colour_p, self.grayscale_p = colour_p, grayscale_p
        jitter = (colour.brightness, colour.contrast, colour.saturation, colour.hue)
        self.jitters = colour_p > 0 and any(v > 0 for v in jitter)
        self.blur_sigma = (
            colour.blur_sigma[0] * size / _REFERENCE_SIZE,
            colour.blur_sigma[1] * size / _REFERENCE_SIZE,
        )
        self.kernel = max(3, 2 * math.ceil(3 * self.blur_sigma[1]) + 1)  # +-3 sigma
        self.blurs, self.solarizes = any(p > 0 for p in blur_p), any(p > 0 for p in solarize_p)
        self.register_buffer("blur_p", torch.tensor(blur_p), persistent=False)
        self.register_buffer("solarize_p", torch.tensor(solarize_p), persistent=False)
        stain_from_rgb = torch.linalg.inv(RGB_FROM_HED)
        self.register_buffer("rgb_from_stain", RGB_FROM_HED.clone(), persistent=False)
        self.register_buffer("stain_from_rgb", stain_from_rgb, persistent=False)
        self._compiled: dict[str, Callable[..., Tensor]] = {}

    @staticmethod
    def _on(buffer: Tensor, x: Tensor) -> Tensor:
        """A buffer on ``x``'s device (a no-op once the module has been moved there)."""
        return buffer.to(x.device, non_blocking=True)

    # ------------------------------------------------------------------ geometry

    def _crop_box(self, u: Tensor, height: int, width: int) -> Tensor:
        """(n, 2) crop width and height in px from ``u`` (n, 2, tries) uniforms: Kornia's /
        torchvision's RandomResizedCrop draw."""
        area = _uniform(u[:, 0], *self.scale) * (height * width)
        ratio = torch.exp(_uniform(u[:, 1], math.log(_RATIO[0]), math.log(_RATIO[1])))
        w, h = torch.sqrt(area * ratio), torch.sqrt(area / ratio)
        fits = (w <= width) & (h <= height)
        first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # first try that fits
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        # No try fitted: the whole image, or its largest centred box of an allowed aspect.
        in_ratio = width / height
        fw = float(width) if in_ratio <= _RATIO[1] else height * _RATIO[1]
        fh = float(height) if in_ratio >= _RATIO[0] else width / _RATIO[0]
        any_fit = fits.any(dim=1)
        w = torch.where(any_fit, w, torch.full_like(w, fw))
        return torch.stack([w, torch.where(any_fit, h, torch.full_like(h, fh))], dim=1)

    def _geometry_draws(self, n: int, device: torch.device) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The uniforms ``_theta`` turns into n maps: (n, 8), crop tries, shears."""
        if not self.warps:
            return None, None, None
        u = torch.rand(n, 8, device=device)
        crop = torch.rand(n, 2, _CROP_TRIES, device=device) if self.crop else None
        shear = torch.rand(n, 2, device=device) if self.affine and self.shear > 0 else None
        return u, crop, shear

    def _theta(self, u: Tensor, u_crop: Tensor | None, u_shear: Tensor | None, height: int, width: int) -> Tensor:
        """(n, 2, 3) maps from output to input coordinates (``affine_grid`` convention).

        Built from tensors drawn on the device and Python numbers only: no tensor is made
        from host data, since each such copy would wait for the device.
        """
        n, device = u.shape[0], u.device
        # Output side: flips and quarter turns of the crop.
        out = torch.eye(2, device=device).expand(n, 2, 2)
        if self.flips:
            out = torch.diag_embed(torch.where(u[:, :2] < 0.5, -1.0, 1.0))
        if self.rot90:
            quarter = torch.floor(u[:, 2] * 4).clamp_(max=3) * (math.pi / 2)
            out = _mm(_rotation(torch.cos(quarter).round(), torch.sin(quarter).round()), out)
        # Crop box in px, placed uniformly inside the warped image (centred coordinates).
        if u_crop is not None:
            box = self._crop_box(u_crop, height, width)
        else:
            whole = torch.full_like(u[:, 0], width), torch.full_like(u[:, 0], height)
            box = torch.stack(whole, dim=1)
        room = torch.stack([width - box[:, 0], height - box[:, 1]], dim=1)
        shift = (u[:, 3:5] - 0.5) * room
        linear = out * (box / 2).unsqueeze(-1)
        # Input side: inverse of zoom * rotation * shear about the image centre
        # (kornia.geometry.get_affine_matrix2d with a scale, an angle and two shears).
        if self.affine:
            angle = _uniform(u[:, 5], -self.rotation, self.rotation) * (math.pi / 180)
            zoom = _uniform(u[:, 6], *self.zoom).view(-1, 1, 1)
            forward = _rotation(torch.cos(angle), torch.sin(angle)) * zoom
            if u_shear is not None:
                tilt = _uniform(u_shear, -self.shear, self.shear)
                sx, sy = torch.tan(tilt * (math.pi / 180)).unbind(1)
                forward = _mm(forward, _matrix(torch.ones_like(sx), -sx, -sy, 1 + sx * sy))
            inverse = _inverse2x2(forward)
            linear = _mm(inverse, linear)
            shift = _mm(inverse, shift.unsqueeze(-1)).squeeze(-1)
        theta = torch.cat([linear, shift.unsqueeze(-1)], dim=2)
        theta[:, 0] *= 2.0 / width  # px -> [-1, 1]
        theta[:, 1] *= 2.0 / height
        return theta

    def _grid(
        self, u: Tensor, u_crop: Tensor | None, u_shear: Tensor | None, b: int, height: int, width: int
    ) -> Tensor:
        """(B, n * S, S, 2) sampling grid: view i of image j samples rows i*S..(i+1)*S of
        output j. ``F.affine_grid`` by broadcasting (cheaper than its batched matmul)."""
        s = self.size
        theta = self._theta(u, u_crop, u_shear, height, width).view(self.n, b, 1, 1, 2, 3)
        ramp = (torch.arange(s, device=u.device, dtype=u.dtype) * 2 + 1) / s - 1  # pixel centres
        cols, rows = ramp.view(1, 1, 1, s), ramp.view(1, 1, s, 1)
        grid = torch.stack(
            [theta[..., k, 0] * cols + theta[..., k, 1] * rows + theta[..., k, 2] for k in (0, 1)],
            dim=-1,
        )  # (n, B, S, S, 2)
        return grid.transpose(0, 1).reshape(b, self.n * s, s, 2)

    def _warp(self, x: Tensor, u: Tensor | None, u_crop: Tensor | None, u_shear: Tensor | None) -> Tensor:
        """(B, 3, H, W) -> (n * B, 3, S, S) view-major: one ``grid_sample`` for all n views.

        The n views' sampling grids are stacked along the output height, so the input
        batch is read once and never repeated n times in memory. ``grid_sample`` itself
        is never compiled: inductor's decomposition of it ran 3-5x slower than ATen's
        kernel on the CPU (benchmarks/RESULTS.md).
        """
        b, c, height, width = x.shape
        s = self.size
        if u is None:  # nothing to warp (no crop, zoom, rotation or flip)
            out = x
            if (height, width) != (s, s):
                out = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
            return out.repeat(self.n, 1, 1, 1)
        grid = self._stage("_grid")(u, u_crop, u_shear, b, height, width)
        out = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )  # (B, C, n * S, S)
        return out.view(b, c, self.n, s, s).permute(2, 0, 1, 3, 4).reshape(self.n * b, c, s, s)

    # ------------------------------------------------------------------ colour

    def _hed(self, x: Tensor, u: Tensor) -> Tensor:
        """Tellez et al. HED jitter in one batched 3x3 map in optical density."""
        sigma, bias = self.stain.sigma, self.stain.bias
        alpha = 1.0 + sigma * (2.0 * u[:, 0:3] - 1.0)
        beta = bias * (2.0 * u[:, 3:6] - 1.0)
        # stains = od @ inv(M) / L; stains' = alpha * stains + beta; od' = L * stains' @ M
        to_stain, to_rgb = self._on(self.stain_from_rgb, x), self._on(self.rgb_from_stain, x)
        mix = to_stain @ (alpha.unsqueeze(-1) * to_rgb)  # (N, 3, 3)
        offset = _LOG_ADJUST * beta @ to_rgb  # (N, 3)
        n = x.shape[0]
        od = x.clamp_min(_EPS).log_().neg_().view(n, 3, -1)
        out = torch.baddbmm(offset.unsqueeze(-1), mix.transpose(1, 2), od).view_as(x)
        return _masked(u[:, 6] < self.stain.p, out.neg_().exp_().clamp_(0.0, 1.0), x)

    def _jitter(self, x: Tensor, u: Tensor, order: list[int]) -> Tensor:
        """Kornia ColorJitter: brightness, contrast, saturation, hue in ``order`` (a
        permutation of 0-3, drawn per batch), on every image; ``_finish`` then keeps the
        unjittered view of each image that did not draw the jitter."""
        c = self.colour
        active = (c.brightness > 0, c.contrast > 0, c.saturation > 0, c.hue > 0)
        for step in order:
            if active[step]:
                x = self._stage(_JITTER_OPS[step])(x, u)
        return x

    def _brightness(self, y: Tensor, u: Tensor) -> Tensor:
        b = self.colour.brightness
        return (y * _uniform(u[:, 0], max(0.0, 1 - b), 1 + b).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)

    def _contrast(self, y: Tensor, u: Tensor) -> Tensor:
        c = self.colour.contrast
        mean = _gray(y).mean(dim=(-2, -1), keepdim=True)
        return torch.lerp(mean, y, _uniform(u[:, 1], max(0.0, 1 - c), 1 + c).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)

    def _saturation(self, y: Tensor, u: Tensor) -> Tensor:
        s = self.colour.saturation
        return torch.lerp(_gray(y), y, _uniform(u[:, 2], max(0.0, 1 - s), 1 + s).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)

    def _hue(self, y: Tensor, u: Tensor) -> Tensor:
        return _shift_hue(y, _uniform(u[:, 3], -self.colour.hue, self.colour.hue))

    def _blur(self, x: Tensor, u: Tensor, apply: Tensor) -> Tensor:
        """Separable Gaussian blur, sigma drawn per image; images not drawn get a unit kernel."""
        n, c, h, w = x.shape
        k = self.kernel
        sigma = _uniform(u, *self.blur_sigma).view(-1, 1)
        taps = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum(dim=1, keepdim=True)
        unit = (taps == 0).to(x.dtype).expand_as(kernel)
        kernel = torch.where(apply.view(-1, 1), kernel, unit).repeat_interleave(c, dim=0)
        pad = k // 2
        flat = x.reshape(1, n * c, h, w)
        rows, cols = kernel.view(n * c, 1, 1, k), kernel.view(n * c, 1, k, 1)
        flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), rows, groups=n * c)
        flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), cols, groups=n * c)
        return flat.view(n, c, h, w)

    def _finish(self, plain: Tensor, jittered: Tensor, u: Tensor) -> Tensor:
        """Colour-jitter gate, grayscale, blur, solarisation; ``plain``: the views before
        colour jitter (the same tensor when there is none)."""
        b = plain.shape[0] // self.n
        out = _masked(u[:, 11] < self.colour_p, jittered, plain) if self.jitters else plain
        if self.grayscale_p > 0:
            out = _masked(u[:, 12] < self.grayscale_p, _gray(out).expand_as(out), out)
        if self.blurs:
            blur_p = self._on(self.blur_p, out).repeat_interleave(b)
            out = self._blur(out, u[:, 13], u[:, 14] < blur_p)
        if self.solarizes:
            # thresholds=0, additions=0: invert above exactly 0.5, as PIL's solarize(128) in DINO.
            solarize_p = self._on(self.solarize_p, out).repeat_interleave(b)
            flip = (u[:, 15] < solarize_p).view(-1, 1, 1, 1) & (out >= 0.5)
            out = torch.where(flip, 1.0 - out, out)
        return out.clamp_(0.0, 1.0)

    def _stage(self, name: str) -> Callable[..., Tensor]:
        """The stage method ``name`` as ``compile_stages`` compiled it, else as written."""
        return self._compiled.get(name) or getattr(self, name)

    def compile_stages(self, **options: Any) -> None:
        """``torch.compile`` each fused stage: the warp's sampling grid, the stain jitter, each
        colour-jitter operation and the rest, so each runs as a few fused kernels instead of
        dozens.

        Stages rather than ``forward``: every random number is still drawn outside, so a
        compiled group makes the views an eager one makes from the same seed (up to float
        rounding), and the jitter's per-batch random order picks among compiled operations
        instead of tracing one graph per order (24 orders, past torch.compile's recompile
        limit). Each stage is one graph (tests compile them with ``fullgraph=True``); a
        process that meets more than 8 view sizes or settings falls back to eager for the
        rest rather than failing, as torch.compile does by default.
        """
        options = {"dynamic": False, **options}
        for name in ("_grid", "_hed", *_JITTER_OPS, "_finish"):
            self._compiled[name] = torch.compile(getattr(self, name), **options)

    def forward(self, x: Tensor) -> Tensor:
        """float (B, 3, H, W) in [0, 1] -> (n * B, 3, S, S), view i in rows i*B..(i+1)*B."""
        count = self.n * x.shape[0]
        geometry = self._geometry_draws(count, x.device)
        u = torch.rand(count, 16, device=x.device)
        out = self._warp(x, *geometry)
        if self.stain.p > 0:
            out = self._stage("_hed")(out, u[:, 0:7])
        jittered = out
        if self.jitters:
            order = torch.randperm(4).tolist()  # host generator: no device round trip
            jittered = self._jitter(out, u[:, 7:11], order)
        return self._stage("_finish")(out, jittered, u)


class MultiCropAugment(nn.Module):
    """Global and local views per image for DINO (Caron et al. 2021) or SimCLR (n_local=0).

    Views of one size are made together in one fused pass over ``n * B`` images (one
    warp, one colour chain, one blur; see :class:`_ViewGroup`), with DINO's per-view
    settings: global view 1 is always blurred, view 2 blurred with p=0.1 and solarised
    with p=0.2, locals blurred with p=0.5. Global views beyond two repeat the first two's
    settings.

    Every view: random zoom (``zoom`` < 1 zooms out, mirrored border) with free rotation
    and shear, random resized crop (area ``*_scale``), flips and 90-degree rotations, HED
    stain jitter, colour jitter (``colour_p``) and grayscale (``grayscale_p``).
    Returns ``n_global + n_local`` tensors, globals first, each float in [0, 1].
    """

    def __init__(
        self,
        n_global: int = 2,
        n_local: int = 6,
        global_size: int = 224,
        local_size: int = 96,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        zoom: tuple[float, float] = (0.7, 1.0),
        colour: ColourAugConfig | None = None,
        stain: StainAugConfig | None = None,
        geometry: GeometryAugConfig | None = None,
        colour_p: float = 0.8,
        grayscale_p: float = 0.2,
        global_blur_p: tuple[float, float] = (1.0, 0.1),
        global_solarize_p: tuple[float, float] = (0.0, 0.2),
        local_blur_p: float = 0.5,
    ) -> None:
        super().__init__()
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        # DINO's colour strengths (torchvision ColorJitter 0.4, 0.4, 0.2, 0.1) by default.
        colour = colour or ColourAugConfig(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
        stain = stain or StainAugConfig()
        geometry = geometry or GeometryAugConfig()
        self.n_global, self.n_local = n_global, n_local
        common = dict(
            zoom=zoom,
            geometry=geometry,
            colour=colour,
            stain=stain,
            colour_p=colour_p,
            grayscale_p=grayscale_p,
        )
        groups = [
            _ViewGroup(
                n_global,
                global_size,
                global_scale,
                blur_p=[global_blur_p[i % 2] for i in range(n_global)],
                solarize_p=[global_solarize_p[i % 2] for i in range(n_global)],
                **common,  # type: ignore[arg-type]
            )
        ]
        if n_local:
            groups.append(
                _ViewGroup(
                    n_local,
                    local_size,
                    local_scale,
                    blur_p=[local_blur_p] * n_local,
                    solarize_p=[0.0] * n_local,
                    **common,  # type: ignore[arg-type]
                )
            )
        self.groups = nn.ModuleList(groups)

    def compile_stages(self, **options: Any) -> None:
        """``torch.compile`` every view size's fused stages (see ``_ViewGroup.compile_stages``)."""
        for group in self.groups:
            group.compile_stages(**options)  # type: ignore[operator]

    def forward_groups(self, x: Tensor) -> list[Tensor]:
        """One (n * B, 3, S, S) tensor per view size, views stacked view-major."""
        x = to_float(x)
        return [group(x) for group in self.groups]

    def forward(self, x: Tensor) -> list[Tensor]:
        views: list[Tensor] = []
        for group, stacked in zip(self.groups, self.forward_groups(x), strict=True):
            views.extend(stacked.chunk(group.n))
        return views


def build_multicrop(cfg: MultiCropConfig, aug: AugmentConfig) -> MultiCropAugment:
    """DINO multi-crop from the ``multicrop`` and ``augment`` config sections."""
    return MultiCropAugment(
        n_global=cfg.n_global,
        n_local=cfg.n_local,
        global_size=cfg.global_size,
        local_size=cfg.local_size,
        global_scale=cfg.global_scale,
        local_scale=cfg.local_scale,
        zoom=cfg.zoom,
        colour=aug.colour,
        stain=aug.stain,
        geometry=aug.geometry,
        colour_p=cfg.colour_p,
        grayscale_p=cfg.grayscale_p,
        global_blur_p=cfg.global_blur_p,
        global_solarize_p=cfg.global_solarize_p,
        local_blur_p=cfg.local_blur_p,
    )


def two_view_augment(
    aug: AugmentConfig,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    zoom: tuple[float, float] = (0.7, 1.0),
) -> MultiCropAugment:
    """SimCLR's two views (Chen et al. 2020): crop area 0.08-1, colour jitter p=0.8,
    grayscale p=0.2, blur p=0.5, no solarisation. SimCLR's colour strengths are
    brightness = contrast = saturation = 0.8, hue = 0.2; they come from ``aug.colour``."""
    return MultiCropAugment(
        n_global=2,
        n_local=0,
        global_size=size,
        global_scale=scale,
        zoom=zoom,
        colour=aug.colour,
        stain=aug.stain,
        geometry=aug.geometry,
        colour_p=0.8,
        grayscale_p=0.2,
        global_blur_p=(0.5, 0.5),
        global_solarize_p=(0.0, 0.0),
    )
