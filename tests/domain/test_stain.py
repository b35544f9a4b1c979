"""Colour deconvolution, HED jitter and the stain normalisers on tiny tensors."""

from __future__ import annotations

import kornia.augmentation as K
import numpy as np
import pytest
import torch
from skimage.color import rgb2hed

from leukoshift.domain.stain import (
    RGB_FROM_HED,
    HEDJitter,
    MacenkoNormalizer,
    ReinhardNormalizer,
    StainError,
    build_stain_normalizer,
    hed_to_rgb,
    rgb_to_hed,
    to_float,
)
from leukoshift.errors import UserError


def smear(seed: int = 0, n: int = 2, size: int = 32, tint: tuple[float, ...] = (0, 0, 0)) -> torch.Tensor:
    """Tiny blood-film-like images: pale background, pink discs, one violet nucleus each.

    Pixels are mixed in OD space from the H and E vectors, so the stain model holds.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(n):
        h = torch.zeros(size, size)
        e = torch.zeros(size, size)
        for _ in range(4):  # red cells: eosin only
            cy, cx = torch.randint(0, size, (2,), generator=g).tolist()
            e += 0.06 * (((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 7) ** 2)
        cy, cx = (size // 2 + int(torch.randint(-3, 4, (1,), generator=g)),) * 2
        h += 0.12 * (((yy - cy) ** 2 + (xx - cx) ** 2) < (size / 6) ** 2)
        noise = 0.004 * torch.rand(3, size, size, generator=g)
        stains = torch.stack([h, e, torch.zeros_like(h)]) + noise
        rgb = hed_to_rgb(stains) * (1 - torch.tensor(tint)[:, None, None])
        out.append(rgb)
    return torch.stack(out)


# ----------------------------------------------------------------------------- deconvolution


def test_to_float_scales_uint8_and_passes_float() -> None:
    x = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 3)
    assert torch.allclose(to_float(x)[0, 0, 0], torch.tensor([0.0, 128 / 255, 1.0]))
    y = torch.rand(1, 3, 2, 2)
    assert to_float(y) is y
    with pytest.raises(TypeError):
        to_float(torch.zeros(1, 3, 2, 2, dtype=torch.int32))


def test_hed_round_trip_is_exact() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16).clamp_min(1e-3)
    assert torch.allclose(hed_to_rgb(rgb_to_hed(x)), x, atol=1e-5)
    # also unbatched, and on uint8 input
    assert torch.allclose(hed_to_rgb(rgb_to_hed(x[0])), x[0], atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(hed_to_rgb(rgb_to_hed(u8)), to_float(u8), atol=1e-5)


def test_rgb_to_hed_matches_skimage() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((20, 24, 3))
    ours = rgb_to_hed(torch.from_numpy(img).permute(2, 0, 1).float()).permute(1, 2, 0)
    # skimage clamps negative concentrations to zero; ours keeps them to stay invertible.
    np.testing.assert_allclose(ours.clamp_min(0).numpy(), rgb2hed(img), atol=1e-5)


def test_pure_stain_lands_in_its_channel() -> None:
    od = RGB_FROM_HED[0] * 0.8  # pure hematoxylin, OD 0.8 along its vector
    pixel = torch.exp(-od).view(1, 3, 1, 1)
    hed = rgb_to_hed(pixel).flatten()
    assert hed[0] > 0.05 and hed[1:].abs().max() < 1e-5


# ----------------------------------------------------------------------------- HED jitter


def test_hed_jitter_identity_at_zero_strength_and_zero_p() -> None:
    x = smear()
    torch.manual_seed(0)
    assert torch.allclose(HEDJitter(sigma=0.0, bias=0.0, p=1.0)(x), x, atol=1e-5)
    assert torch.equal(HEDJitter(sigma=0.5, bias=0.5, p=0.0)(x), x)


def test_hed_jitter_changes_colours_in_range_and_repeats_under_seed() -> None:
    x = smear(n=4)
    jitter = HEDJitter(sigma=0.2, bias=0.02, p=1.0)
    torch.manual_seed(3)
    a = jitter(x)
    torch.manual_seed(3)
    b = jitter(x)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    # every image changed, and each by a different amount (per-image parameters)
    change = (a - x).abs().mean(dim=(1, 2, 3))
    assert (change > 1e-3).all()
    assert change.unique().numel() == 4


def test_hed_jitter_scales_stain_channels_as_drawn() -> None:
    x = smear(n=3)
    jitter = HEDJitter(sigma=0.3, bias=0.0, p=1.0)
    torch.manual_seed(5)
    out = jitter(x)
    alpha = jitter._params["alpha"]
    s_in, s_out = rgb_to_hed(x), rgb_to_hed(out)
    nucleus = s_in[:, 0] > 0.08  # clamping cannot bite there: OD is far from 0 and inf
    for i in range(3):
        ratio = (s_out[i, 0][nucleus[i]] / s_in[i, 0][nucleus[i]]).median()
        assert ratio == pytest.approx(float(alpha[i, 0]), rel=1e-3)
    assert ((alpha >= 0.7) & (alpha <= 1.3)).all()


def test_hed_jitter_probability_gates_images() -> None:
    x = smear(n=64, size=8)
    torch.manual_seed(0)
    out = HEDJitter(sigma=0.3, bias=0.05, p=0.5)(x)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-4
    assert 16 < int(changed.sum()) < 48


def test_hed_jitter_composes_with_kornia_sequential() -> None:
    x = smear(n=2)
    seq = K.AugmentationSequential(K.RandomHorizontalFlip(p=1.0), HEDJitter(0.0, 0.0, p=1.0))
    assert torch.allclose(seq(x), x.flip(-1), atol=1e-5)


# ----------------------------------------------------------------------------- normalisers


def test_reinhard_moves_lab_statistics_to_the_target() -> None:
    import kornia.color

    target = smear(seed=1, n=1)
    source = smear(seed=2, n=3, tint=(0.3, 0.05, 0.0))  # cyan-tinted lab
    norm = build_stain_normalizer("reinhard", target)
    out = norm(source)
    lab_t = kornia.color.rgb_to_lab(target)
    lab_o = kornia.color.rgb_to_lab(out)
    before = (kornia.color.rgb_to_lab(source).mean((2, 3)) - lab_t.mean((2, 3))).abs().max()
    after = (lab_o.mean((2, 3)) - lab_t.mean((2, 3))).abs().max()
    assert after < 0.1 * before
    assert out.min() >= 0 and out.max() <= 1
    # normalising the target to itself changes nothing
    assert torch.allclose(norm(target), target, atol=2e-3)


def test_macenko_recovers_stain_vectors_and_normalises() -> None:
    target = smear(seed=1, n=2)
    norm = MacenkoNormalizer().fit(target)
    ref = norm.stain_ref.T  # (2, 3): H then E
    for found, true in zip(ref, RGB_FROM_HED[:2], strict=True):
        cosine = torch.dot(found, true / true.norm())
        assert cosine > 0.98
    # a stain-shifted copy comes back close to the target's colours
    shifted = hed_to_rgb(rgb_to_hed(target) * torch.tensor([1.4, 0.7, 1.0])[:, None, None])
    out = norm(shifted)
    assert (out - target).abs().mean() < 0.5 * (shifted - target).abs().mean()
    assert out.shape == target.shape and out.min() >= 0 and out.max() <= 1


def test_macenko_leaves_unstained_images_alone() -> None:
    norm = MacenkoNormalizer().fit(smear(seed=1, n=1))
    blank = torch.full((1, 3, 16, 16), 0.9)
    assert torch.equal(norm(blank), blank)


def test_normaliser_factory_and_errors() -> None:
    assert isinstance(build_stain_normalizer("none"), torch.nn.Identity)
    with pytest.raises(UserError, match="valid: none, macenko, reinhard"):
        build_stain_normalizer("vahadane", smear())
    with pytest.raises(StainError, match="needs target"):
        build_stain_normalizer("macenko")
    with pytest.raises(StainError, match="before fit"):
        ReinhardNormalizer()(smear())
    with pytest.raises(StainError, match="too few stained"):
        MacenkoNormalizer().fit(torch.ones(1, 3, 8, 8))
    with pytest.raises(StainError, match=r"\(3, H, W\)"):
        ReinhardNormalizer().fit(torch.rand(2, 4, 8, 8))
