"""Fine-tuning and multi-crop augmentation on tiny batches."""

from __future__ import annotations

import pytest
import torch

from leukoshift.config import (
    AugmentConfig,
    ColourAugConfig,
    ConfigError,
    GeometryAugConfig,
    MultiCropConfig,
    StainAugConfig,
    load_config,
)
from leukoshift.domain.augment import (
    MultiCropAugment,
    build_finetune_augment,
    build_multicrop,
    two_view_augment,
)

OFF_GEOMETRY = GeometryAugConfig(
    flips=False, rot90=False, rotation=0.0, shear=0.0, crop_scale=(1.0, 1.0), zoom=(1.0, 1.0)
)
ALL_ON = AugmentConfig(
    geometry=GeometryAugConfig(zoom=(0.7, 1.3)),
    colour=ColourAugConfig(p=0.8, grayscale_p=0.2, blur_p=0.5, solarize_p=0.2),
    stain=StainAugConfig(p=0.5, sigma=0.1, bias=0.02),
)


def batch(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def square(size: int = 32, side: int = 12) -> torch.Tensor:
    """A white square centred on black: (1, 3, size, size) float."""
    x = torch.zeros(1, 3, size, size)
    lo = (size - side) // 2
    x[..., lo : lo + side, lo : lo + side] = 1.0
    return x


# ----------------------------------------------------------------------------- fine-tuning


def test_finetune_augment_is_identity_when_everything_is_off() -> None:
    x = batch()
    aug = build_finetune_augment(AugmentConfig(geometry=OFF_GEOMETRY), size=32)
    assert torch.equal(aug(x), x.float() / 255)


def test_finetune_augment_only_resizes_when_off_and_sizes_differ() -> None:
    x = batch(size=32)
    out = build_finetune_augment(AugmentConfig(geometry=OFF_GEOMETRY), size=16)(x)
    assert out.shape == (4, 3, 16, 16)
    # antialiased resize of a constant image stays constant
    flat = torch.full((1, 3, 32, 32), 0.25)
    small = build_finetune_augment(AugmentConfig(geometry=OFF_GEOMETRY), 16)(flat)
    assert torch.allclose(small, flat[..., :16, :16])


@pytest.mark.parametrize("size", [24, 32, 40])
def test_finetune_augment_shapes_range_and_determinism(size: int) -> None:
    aug = build_finetune_augment(ALL_ON, size=size)
    x = batch()
    torch.manual_seed(7)
    a = aug(x)
    torch.manual_seed(7)
    b = aug(x)
    assert a.shape == (4, 3, size, size) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    torch.manual_seed(8)
    assert not torch.equal(aug(x), a)


def test_each_switch_changes_the_output() -> None:
    x = batch(n=8).float() / 255
    base = AugmentConfig(geometry=OFF_GEOMETRY)
    switches = {
        "flips": {"geometry": OFF_GEOMETRY.model_copy(update={"flips": True})},
        "rot90": {"geometry": OFF_GEOMETRY.model_copy(update={"rot90": True})},
        "rotation": {"geometry": OFF_GEOMETRY.model_copy(update={"rotation": 30.0})},
        "shear": {"geometry": OFF_GEOMETRY.model_copy(update={"shear": 20.0})},
        "crop": {"geometry": OFF_GEOMETRY.model_copy(update={"crop_scale": (0.3, 0.5)})},
        "zoom": {"geometry": OFF_GEOMETRY.model_copy(update={"zoom": (0.5, 0.6)})},
        "colour": {"colour": ColourAugConfig(p=1.0)},
        "grayscale": {"colour": ColourAugConfig(grayscale_p=1.0)},
        "blur": {"colour": ColourAugConfig(blur_p=1.0, blur_sigma=(20.0, 30.0))},
        "solarize": {"colour": ColourAugConfig(solarize_p=1.0)},
        "stain": {"stain": StainAugConfig(p=1.0, sigma=0.2)},
    }
    for name, update in switches.items():
        torch.manual_seed(0)
        out = build_finetune_augment(base.model_copy(update=update), size=32)(x)
        assert (out - x).abs().mean() > 1e-3, name


def test_zoom_out_shrinks_the_cell_and_zoom_in_grows_it() -> None:
    x = square().expand(8, 3, 32, 32)
    area = x[:, 0].mean()

    def zoomed(zoom: tuple[float, float]) -> torch.Tensor:
        geometry = OFF_GEOMETRY.model_copy(update={"zoom": zoom})
        torch.manual_seed(0)
        out = build_finetune_augment(AugmentConfig(geometry=geometry), size=32)(x)
        # the square's area at the centre: reflection may echo it at the border
        return out[:, 0, 8:24, 8:24].mean(dim=(1, 2)) * (16 * 16) / (32 * 32)

    assert (zoomed((0.6, 0.6)) < 0.6 * area).all()  # area scales with zoom ** 2 = 0.36
    assert (zoomed((1.3, 1.3)) > 1.4 * area).all()  # 1.69 in theory


def test_zoom_out_fills_the_border_by_reflection() -> None:
    x = torch.linspace(0, 1, 32).expand(1, 3, 32, 32).contiguous()  # a horizontal ramp
    geometry = OFF_GEOMETRY.model_copy(update={"zoom": (0.5, 0.5)})
    out = build_finetune_augment(AugmentConfig(geometry=geometry), size=32)(x)
    # the image now spans columns 8..23; columns 0..7 mirror columns 8..15 (not zeros)
    row = out[0, 0, 16]
    assert torch.allclose(row[:8], row[8:16].flip(0), atol=1e-4)
    assert row[:8].min() > 0.0


# ----------------------------------------------------------------------------- multi-crop


def test_multicrop_views_sizes_order_and_range() -> None:
    cfg = MultiCropConfig(n_global=2, n_local=3, global_size=32, local_size=16)
    views = build_multicrop(cfg, AugmentConfig(stain=StainAugConfig(p=0.5)))(batch())
    assert [tuple(v.shape) for v in views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
    for v in views:
        assert v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1


def test_multicrop_is_deterministic_under_seed_and_views_differ() -> None:
    aug = MultiCropAugment(n_global=2, n_local=2, global_size=24, local_size=12)
    x = batch()
    torch.manual_seed(1)
    a = aug(x)
    torch.manual_seed(1)
    b = aug(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[2], a[3])


def test_compiled_multicrop_stages_make_the_same_views() -> None:
    """``--compile`` compiles the augmentation's stages, each as one graph (fullgraph here:
    a graph break fails), with every random draw left outside: the same seed gives the
    same views. aot_eager traces exactly as inductor does without its C++ build; inductor
    itself runs in tests/pretrain/test_throughput_paths.py's loss-curve test."""
    aug = MultiCropAugment(
        n_global=2,
        n_local=2,
        global_size=24,
        local_size=12,
        stain=StainAugConfig(p=0.8, sigma=0.2, bias=0.05),
        geometry=GeometryAugConfig(shear=10.0, rotation=30.0),
        global_solarize_p=(0.5, 0.5),
    )
    x = batch()
    torch.manual_seed(3)
    eager = [aug(x) for _ in range(3)]  # three batches: three jitter orders
    torch._dynamo.reset()  # other tests' graphs count against the recompile limit
    aug.compile_stages(backend="aot_eager", fullgraph=True)
    torch.manual_seed(3)
    compiled = [aug(x) for _ in range(3)]
    for group in aug.groups:
        assert set(group._compiled) == {"_grid", "_hed", "_brightness", "_contrast", "_saturation", "_hue", "_finish"}
    for a, b in zip(eager, compiled, strict=True):
        for u, v in zip(a, b, strict=True):
            assert torch.allclose(u, v, atol=1e-5)


def test_multicrop_identity_at_zero_strength() -> None:
    off = AugmentConfig(geometry=OFF_GEOMETRY)
    aug = MultiCropAugment(
        n_global=3,
        n_local=0,
        global_size=32,
        global_scale=(1.0, 1.0),
        zoom=(1.0, 1.0),
        colour=off.colour,
        stain=off.stain,
        geometry=off.geometry,
        colour_p=0.0,
        grayscale_p=0.0,
        global_blur_p=(0.0, 0.0),
        global_solarize_p=(0.0, 0.0),
    )
    x = batch()
    views = aug(x)
    assert len(views) == 3
    for view in views:
        assert torch.equal(view, x.float() / 255)


def test_dino_global_views_follow_their_blur_and_solarize_settings() -> None:
    """View 1 always blurred, never solarised; view 2 solarised in about 20 % of images."""
    noise = torch.rand(200, 3, 16, 16)
    aug = MultiCropAugment(
        n_global=2,
        n_local=0,
        global_size=16,
        global_scale=(1.0, 1.0),
        zoom=(1.0, 1.0),
        geometry=OFF_GEOMETRY,
        colour_p=0.0,
        grayscale_p=0.0,
        colour=ColourAugConfig(blur_sigma=(40.0, 40.0)),
    )
    torch.manual_seed(0)
    first, second = aug(noise)
    detail = lambda v: (v[..., 1:, :] - v[..., :-1, :]).abs().mean(dim=(1, 2, 3))  # noqa: E731
    raw = detail(noise)
    assert (detail(first) < 0.5 * raw).all()  # blur p = 1.0
    blurred_second = detail(second) < 0.5 * raw
    assert 5 <= int(blurred_second.sum()) <= 40  # blur p = 0.1
    # solarisation inverts pixels above 0.5: it turns bright means into dark ones
    solarized = (second.mean(dim=(1, 2, 3)) < 0.3) & (noise.mean(dim=(1, 2, 3)) > 0.45)
    assert 20 <= int(solarized.sum()) <= 65  # solarize p = 0.2 of 200


def test_multicrop_zoom_out_shows_more_context() -> None:
    x = square(side=12).expand(16, 3, 32, 32)
    common = dict(
        n_global=1,
        n_local=0,
        global_size=32,
        global_scale=(1.0, 1.0),
        colour_p=0.0,
        grayscale_p=0.0,
        global_blur_p=(0.0, 0.0),
        geometry=OFF_GEOMETRY,
    )
    torch.manual_seed(0)
    plain = MultiCropAugment(zoom=(1.0, 1.0), **common)(x)[0]  # type: ignore[arg-type]
    torch.manual_seed(0)
    out = MultiCropAugment(zoom=(0.5, 0.5), **common)(x)[0]  # type: ignore[arg-type]
    centre = lambda v: v[:, 0, 8:24, 8:24].mean()  # noqa: E731
    assert centre(out) < 0.5 * centre(plain)


def test_two_view_augment_is_simclr_shaped() -> None:
    aug = two_view_augment(AugmentConfig(stain=StainAugConfig(p=0.5)), size=24)
    views = aug(batch())
    assert len(views) == 2 and all(v.shape == (4, 3, 24, 24) for v in views)
    assert aug.n_local == 0


def test_multicrop_config_validates() -> None:
    with pytest.raises(ConfigError, match="zoom"):
        load_config(MultiCropConfig, overrides=["zoom=[1.2, 0.8]"])
    with pytest.raises(ConfigError, match="global_blur_p"):
        load_config(MultiCropConfig, overrides=["global_blur_p=[1.5, 0.1]"])
    cfg = load_config(MultiCropConfig, overrides=["n_local=0", "local_size=48"])
    assert cfg.n_local == 0 and cfg.local_size == 48
