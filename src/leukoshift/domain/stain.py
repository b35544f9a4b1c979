"""Stain models on the device: colour deconvolution, HED stain jitter, stain normalisation.

Labs differ first in stain: the same May-Grünwald-Giemsa protocol gives violet nuclei in
one lab and blue ones in the next. In optical density (OD, ``-log I``) stains add
linearly, so a change of stain concentration is a scale and shift of one deconvolved
channel; that is what :class:`HEDJitter` simulates (Tellez et al. 2019) and what the two
normalisers undo (Macenko et al. 2009; Reinhard et al. 2001).

All functions take float images in [0, 1] with channels at dim -3 (``(B, 3, H, W)`` or
``(3, H, W)``), run batched on CPU or CUDA, and draw random numbers from torch's global
generator (through Kornia), so ``torch.manual_seed`` makes them repeatable.

Units: :func:`rgb_to_hed` returns stain concentrations in the units of
``skimage.color.rgb2hed`` (OD divided by ``-ln(1e-6)``), so jitter strengths from the
literature, which were applied to ``rgb2hed`` output, mean the same here. Unlike
``rgb2hed`` it keeps negative values, so :func:`hed_to_rgb` inverts it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import kornia.color
import torch
import torch.nn.functional as F
from kornia.augmentation import IntensityAugmentationBase2D
from torch import Tensor, nn

from leukoshift.errors import UserError


class StainError(UserError):
    """A stain-normalisation input that cannot be used, phrased as one line."""


#: Ruifrok & Johnston (2001) OD vectors of hematoxylin, eosin and DAB, one per row: the
#: matrix of ``skimage.color.rgb_from_hed``. In Romanowsky stains the first row is close to
#: azure / methylene blue (nuclei) and the second to eosin (red cells, granules).
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_EPS = 1e-6  # skimage's floor on intensities before the log
_LOG_ADJUST = -math.log(_EPS)  # skimage divides OD by this: concentrations in its units


def to_float(x: Tensor) -> Tensor:
    """uint8 images (cache batches) -> float32 in [0, 1]; float images pass through."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if x.is_floating_point():
        return x
    raise TypeError(f"expected uint8 or float images, got {x.dtype}")


def _channels_last(x: Tensor) -> Tensor:
    return x.movedim(-3, -1)


def _channels_first(x: Tensor) -> Tensor:
    return x.movedim(-1, -3)


def rgb_to_hed(x: Tensor, rgb_from_stain: Tensor | None = None) -> Tensor:
    """Colour deconvolution (Ruifrok & Johnston 2001): RGB in [0, 1] -> stain channels.

    ``OD = -log(max(I, 1e-6))`` per channel, then ``OD @ inv(rgb_from_stain)``, scaled to
    ``skimage.color.rgb2hed`` units. ``rgb_from_stain`` (3x3, one stain's OD vector per
    row) defaults to :data:`RGB_FROM_HED`.
    """
    x = to_float(x)
    matrix = RGB_FROM_HED if rgb_from_stain is None else rgb_from_stain
    stain_from_rgb = torch.linalg.inv(matrix.to(device=x.device, dtype=torch.float32))
    od = -torch.log(_channels_last(x).float().clamp_min(_EPS))
    return _channels_first(od @ stain_from_rgb / _LOG_ADJUST).to(x.dtype)


def hed_to_rgb(stains: Tensor, rgb_from_stain: Tensor | None = None) -> Tensor:
    """Inverse of :func:`rgb_to_hed`: stain channels -> RGB, clamped to [0, 1]."""
    matrix = RGB_FROM_HED if rgb_from_stain is None else rgb_from_stain
    matrix = matrix.to(device=stains.device, dtype=torch.float32)
    od = _channels_last(stains).float() * _LOG_ADJUST @ matrix
    return _channels_first(torch.exp(-od).clamp(0.0, 1.0)).to(stains.dtype)


class HEDJitter(IntensityAugmentationBase2D):
    """Random stain concentration change (Tellez et al. 2019, "HED" augmentation).

    Each selected image draws ``alpha_i ~ U(1 - sigma, 1 + sigma)`` and
    ``beta_i ~ U(-bias, bias)`` for each stain channel i; its deconvolved channels become
    ``alpha_i * s_i + beta_i`` and go back to RGB, clamped to [0, 1]. Tellez et al. use
    sigma = bias = 0.05 ("HED-light") and 0.2 ("HED-strong"), in ``rgb2hed`` units as here.

    A Kornia intensity augmentation: ``p`` gates images individually, parameters come from
    torch's global generator (repeatable under ``torch.manual_seed`` on a given device;
    like Kornia's own augmentations, CPU and CUDA runs draw different numbers), and it
    composes with ``kornia.augmentation.AugmentationSequential``.
    """

    def __init__(
        self,
        sigma: float = 0.05,
        bias: float = 0.05,
        p: float = 0.5,
        rgb_from_stain: Tensor | None = None,
        same_on_batch: bool = False,
        keepdim: bool = False,
    ) -> None:
        super().__init__(p=p, same_on_batch=same_on_batch, keepdim=keepdim)
        if sigma < 0 or bias < 0:
            raise ValueError(f"sigma and bias must be >= 0, got {sigma}, {bias}")
        self.sigma = float(sigma)
        self.bias = float(bias)
        matrix = RGB_FROM_HED if rgb_from_stain is None else rgb_from_stain.float()
        if matrix.shape != (3, 3):
            raise ValueError(f"rgb_from_stain must be 3x3, got {tuple(matrix.shape)}")
        self.register_buffer("rgb_from_stain", matrix.clone())

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, Tensor]:
        n = 1 if self.same_on_batch else batch_shape[0]
        alpha = 1.0 + self.sigma * (2.0 * torch.rand(n, 3) - 1.0)
        beta = self.bias * (2.0 * torch.rand(n, 3) - 1.0)
        return {
            "alpha": alpha.expand(batch_shape[0], 3),
            "beta": beta.expand(batch_shape[0], 3),
        }

    def apply_transform(
        self,
        input: Tensor,
        params: dict[str, Tensor],
        flags: dict[str, Any],
        transform: Tensor | None = None,
    ) -> Tensor:
        alpha = params["alpha"].to(input.device, torch.float32)[:, :, None, None]
        beta = params["beta"].to(input.device, torch.float32)[:, :, None, None]
        stains = rgb_to_hed(input, self.rgb_from_stain).float()
        return hed_to_rgb(stains * alpha + beta, self.rgb_from_stain).to(input.dtype)


# ----------------------------------------------------------------------------- normalisers


def _as_batch(x: Tensor) -> Tensor:
    x = to_float(x)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise StainError(f"stain target must be (3, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
    return x


def _pooled(x: Tensor, max_pixels: int = 1 << 20) -> Tensor:
    """All target pixels as one (1, 3, 1, P) image, strided down to at most ``max_pixels``."""
    pixels = x.permute(1, 0, 2, 3).reshape(3, -1)
    step = max(1, math.ceil(pixels.shape[1] / max_pixels))
    return pixels[:, ::step].reshape(1, 3, 1, -1)


class MacenkoNormalizer(nn.Module):
    """Stain normalisation of Macenko et al. (2009), batched.

    Per image: OD pixels whose OD vector is longer than ``beta`` (stained, not background;
    the reference code asks every channel to exceed ``beta``, which drops the red cells of
    a blood film, as they absorb almost no red light) span a
    plane (the two leading eigenvectors of their covariance); the stain vectors are the
    directions at the ``alpha`` and ``100 - alpha`` percentiles of the pixel angles in that
    plane; concentrations are the least-squares solution, scaled so that their 99th
    percentile matches the target's, and recombined with the target's stain vectors.
    Images with too few stained pixels are returned unchanged.

    The original fixes the incident light at ``io = 240`` (of 255). Blood films are often
    shot on a tinted background (Bio-net: cyan or yellow-green), which a fixed ``io``
    turns into "stain" everywhere; by default (``io=None``) the light is estimated per
    image and channel as the 99th intensity percentile, so OD is background-relative, and
    the output is lit like the target.
    """

    io_ref: Tensor
    stain_ref: Tensor
    max_conc_ref: Tensor
    is_fitted: Tensor

    def __init__(self, io: float | None = None, alpha: float = 1.0, beta: float = 0.15) -> None:
        super().__init__()
        self.io = None if io is None else float(io)
        self.alpha, self.beta = float(alpha), float(beta)
        self.register_buffer("io_ref", torch.full((3,), 240.0 / 255.0 if io is None else io))
        self.register_buffer("stain_ref", torch.zeros(3, 2))
        self.register_buffer("max_conc_ref", torch.zeros(2))
        self.register_buffer("is_fitted", torch.tensor(False))

    def _light(self, x: Tensor) -> Tensor:
        """Incident light per image and channel, (B, 1, 3)."""
        if self.io is not None:
            return torch.full((x.shape[0], 1, 3), self.io, device=x.device, dtype=x.dtype)
        return torch.quantile(x.flatten(2), 0.99, dim=2).clamp_min(0.1).unsqueeze(1)

    def _od(self, x: Tensor, light: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, N, 3) OD, with the 8-bit +1 of the original code."""
        return -torch.log((x.flatten(2).transpose(1, 2) + 1.0 / 255.0) / (light + 1.0 / 255.0))

    def _stains(self, od: Tensor) -> tuple[Tensor, Tensor]:
        """Stain matrices (B, 3, 2), first column the more red-absorbing (hematoxylin-like),
        and a (B,) flag for images with enough stained pixels to estimate them."""
        mask = od.norm(dim=-1) >= self.beta  # (B, N)
        count = mask.sum(dim=1)
        weights = mask.to(od.dtype).unsqueeze(-1)
        mean = (od * weights).sum(1, keepdim=True) / count.clamp_min(1)[:, None, None]
        centred = (od - mean) * weights
        cov = centred.transpose(1, 2) @ centred / (count - 1).clamp_min(1)[:, None, None]
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        plane = vecs[:, :, 1:3]  # (B, 3, 2): second and leading eigenvectors
        # Eigenvectors have no sign; an OD vector must point into the positive octant.
        sign = torch.where(plane[:, :, 1:2].sum(1, keepdim=True) < 0, -1.0, 1.0)
        plane = plane * sign
        proj = od @ plane  # (B, N, 2)
        phi = torch.atan2(proj[..., 1], proj[..., 0]).masked_fill(~mask, float("nan"))
        q = torch.tensor([self.alpha / 100.0, 1.0 - self.alpha / 100.0], device=od.device)
        lo, hi = torch.nanquantile(phi, q, dim=1)  # (B,) each
        v_lo = (plane @ torch.stack([lo.cos(), lo.sin()], -1).unsqueeze(-1)).squeeze(-1)
        v_hi = (plane @ torch.stack([hi.cos(), hi.sin()], -1).unsqueeze(-1)).squeeze(-1)
        h_first = (v_lo[:, 0] > v_hi[:, 0]).unsqueeze(-1)
        h = torch.where(h_first, v_lo, v_hi)
        e = torch.where(h_first, v_hi, v_lo)
        ok = count >= 16
        # Keep unusable images finite (their output is discarded): H&E vectors stand in.
        default = F.normalize(RGB_FROM_HED[:2].to(od), dim=1).T
        stains = torch.where(ok[:, None, None], torch.stack([h, e], dim=-1).nan_to_num(), default)
        return stains, ok

    def _concentrations(self, od: Tensor, stains: Tensor) -> Tensor:
        return torch.linalg.pinv(stains) @ od.transpose(1, 2)  # (B, 2, N)

    @torch.no_grad()
    def fit(self, target: Tensor) -> MacenkoNormalizer:
        """Take stain vectors and concentration scale from one or several target images."""
        pooled = _pooled(_as_batch(target).to(self.stain_ref.device))
        light = self._light(pooled)
        od = self._od(pooled, light)
        stains, ok = self._stains(od)
        if not bool(ok.all()):
            raise StainError("Macenko target has too few stained pixels to estimate stains")
        conc = self._concentrations(od, stains)
        self.io_ref.copy_(light.reshape(3))
        self.stain_ref.copy_(stains[0])
        self.max_conc_ref.copy_(torch.quantile(conc[0], 0.99, dim=1))
        self.is_fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.is_fitted):
            raise StainError("Macenko normaliser used before fit(target)")
        x = to_float(x)
        b, _, h, w = x.shape
        od = self._od(x.float(), self._light(x.float()))
        stains, ok = self._stains(od)
        conc = self._concentrations(od, stains)
        max_conc = torch.quantile(conc, 0.99, dim=2).clamp_min(1e-6)  # (B, 2)
        conc = conc * (self.max_conc_ref / max_conc).unsqueeze(-1)
        out = (self.io_ref[:, None] * torch.exp(-self.stain_ref @ conc)).clamp(0.0, 1.0)
        out = out.reshape(b, 3, h, w).to(x.dtype)
        return torch.where(ok[:, None, None, None], out, x)


class ReinhardNormalizer(nn.Module):
    """Colour transfer of Reinhard et al. (2001) in CIE LAB (``kornia.color.rgb_to_lab``).

    Each image's per-channel LAB mean and standard deviation are moved to the target's.
    """

    mean_ref: Tensor
    std_ref: Tensor
    is_fitted: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean_ref", torch.zeros(3))
        self.register_buffer("std_ref", torch.ones(3))
        self.register_buffer("is_fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, target: Tensor) -> ReinhardNormalizer:
        lab = kornia.color.rgb_to_lab(_pooled(_as_batch(target).to(self.mean_ref.device)))
        self.mean_ref.copy_(lab.mean(dim=(0, 2, 3)))
        self.std_ref.copy_(lab.std(dim=(0, 2, 3)))
        self.is_fitted.fill_(True)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.is_fitted):
            raise StainError("Reinhard normaliser used before fit(target)")
        x = to_float(x)
        lab = kornia.color.rgb_to_lab(x.float())
        mean = lab.mean(dim=(2, 3), keepdim=True)
        std = lab.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        lab = (lab - mean) / std * self.std_ref[:, None, None] + self.mean_ref[:, None, None]
        return kornia.color.lab_to_rgb(lab, clip=True).to(x.dtype)


STAIN_NORMALIZERS: dict[str, Callable[[], nn.Module]] = {
    "macenko": MacenkoNormalizer,
    "reinhard": ReinhardNormalizer,
}


def stain_normalizer(name: str) -> nn.Module:
    """An unfitted normaliser (``"none"`` -> identity): a model holds it as its input layer,
    fitted before training or restored, fitted, from a checkpoint's state dict."""
    if name == "none":
        return nn.Identity()
    if name not in STAIN_NORMALIZERS:
        valid = ", ".join(["none", *STAIN_NORMALIZERS])
        raise StainError(f"unknown stain normaliser '{name}' (valid: {valid})")
    return STAIN_NORMALIZERS[name]()


def build_stain_normalizer(name: str, target: Tensor | None = None) -> nn.Module:
    """``"none"`` -> identity; ``"macenko"`` / ``"reinhard"`` fitted on ``target`` images."""
    module = stain_normalizer(name)
    if name == "none":
        return module
    if target is None:
        raise StainError(f"stain normaliser '{name}' needs target images to fit")
    # Fitted where the target lives, so a CUDA target gives a CUDA normaliser.
    return module.to(target.device).fit(target)  # type: ignore[operator]


def normalizer_name(module: nn.Module) -> str:
    """The registry name of a normaliser (``"none"`` for anything else, e.g. Identity)."""
    for name, cls in STAIN_NORMALIZERS.items():
        if type(module) is cls:
            return name
    return "none"


def normalizer_card(module: nn.Module) -> dict[str, Any] | None:
    """A fitted normaliser as JSON (its name and buffers), for a model card; None when
    ``module`` is no normaliser. :func:`normalizer_from_card` rebuilds it."""
    name = normalizer_name(module)
    if name == "none":
        return None
    buffers = {k: v.detach().cpu().tolist() for k, v in module.state_dict().items()}
    return {"method": name, "buffers": buffers}


def normalizer_from_card(card: dict[str, Any], origin: str) -> nn.Module:
    """The normaliser a model card describes (``origin`` names the card in errors)."""
    name = card.get("method")
    if name not in STAIN_NORMALIZERS:
        raise StainError(f"{origin}: stain_normalization.method {name!r} is not one of {', '.join(STAIN_NORMALIZERS)}")
    module = STAIN_NORMALIZERS[name]()
    state = module.state_dict()
    try:
        loaded = {k: torch.tensor(card["buffers"][k], dtype=v.dtype).reshape(v.shape) for k, v in state.items()}
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise StainError(f"{origin}: stain_normalization.buffers unreadable ({exc})") from None
    module.load_state_dict(loaded)
    return module
