"""Every registry entry builds headless, runs at small sizes and reports its true width."""

from __future__ import annotations

import pytest
import torch

from leukoshift.errors import UserError
from leukoshift.models.backbones import (
    BACKBONES,
    Encoder,
    backbone_blocks,
    cam_target_layer,
    create_backbone,
    resolve_name,
)

# Tiny variants keep the suite fast; the architecture family is what is exercised.
SMALL = {"vit_tiny": {"depth": 2}, "vit_small": {"depth": 2}, "vit_base": {"depth": 2}}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_runs(name: str) -> None:
    size = 32 if name.startswith("vgg") or name.startswith("vit") else 64
    model = create_backbone(name, img_size=size, **SMALL.get(name, {})).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, model.feature_dim)
    assert torch.isfinite(out).all()
    blocks = backbone_blocks(name, model)
    assert len(blocks) >= 3
    # Blocks cover parameters of the model (partial fine-tuning relies on it).
    block_params = {id(p) for b in blocks for p in b.parameters()}
    assert block_params <= {id(p) for p in model.parameters()}
    assert any(True for _ in cam_target_layer(name, model).parameters()) or name.startswith("vit")


def test_vgg_feature_width_is_the_pre_logits_width() -> None:
    model = create_backbone("vgg16", img_size=32)
    assert model.feature_dim == 4096  # timm's num_features says 512


def test_vit_accepts_other_input_sizes() -> None:
    model = create_backbone("vit_tiny", img_size=64, depth=1).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 192)
        assert model(torch.rand(1, 3, 96, 96)).shape == (1, 192)


def test_alias_and_unknown_name() -> None:
    assert resolve_name("vit") == "vit_small"
    with pytest.raises(UserError, match="unknown backbone 'resnet9'.*valid: .*vit_tiny"):
        resolve_name("resnet9")


def test_bad_timm_kwargs_are_a_user_error() -> None:
    with pytest.raises(UserError, match="model.kwargs"):
        create_backbone("resnet18", img_size=32, not_an_argument=3)


def test_encoder_normalises_inputs() -> None:
    model = create_backbone("resnet18", img_size=32)
    enc = Encoder(model).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        manual = model((x - enc.normalize.mean) / enc.normalize.std)
        assert torch.allclose(enc(x), manual)
