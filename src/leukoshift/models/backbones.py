"""Backbone registry over timm: names users type, mapped to ``timm.create_model`` calls.

Every backbone is created headless (``num_classes=0``) so it returns pooled features; the
feature width is read from the model (timm's VGG pre-logits are 4096 wide, not the 512
``num_features`` says). A registry entry also knows the model's blocks, for partial
fine-tuning, and the layer Grad-CAM should look at. Adding a backbone is one entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
import torch
from torch import nn

from leukoshift.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vit_blocks(m: nn.Module) -> list[nn.Module]:
    # Final norm travels with the last block: a partially tuned ViT must adapt it too.
    blocks: list[nn.Module] = list(m.blocks)  # type: ignore[arg-type]
    tail = nn.ModuleList([blocks[-1], m.norm, getattr(m, "fc_norm", nn.Identity())])  # type: ignore[list-item]
    return [nn.ModuleList([m.patch_embed, m.pos_drop]), *blocks[:-1], tail]  # type: ignore[list-item]


def _vgg_blocks(m: nn.Module) -> list[nn.Module]:
    """The five convolutional blocks (split at max-pooling); pre-logits join the last one,
    so ``partial`` with one block is the published recipe (last conv block + dense)."""
    blocks: list[list[nn.Module]] = [[]]
    for layer in m.features:  # type: ignore[attr-defined]
        blocks[-1].append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    if not blocks[-1]:
        blocks.pop()
    blocks[-1].append(m.pre_logits)  # type: ignore[arg-type]
    return [nn.ModuleList(b) for b in blocks]


def _resnet_blocks(m: nn.Module) -> list[nn.Module]:
    stem = nn.ModuleList([m.conv1, m.bn1])  # type: ignore[list-item]
    return [stem, m.layer1, m.layer2, m.layer3, m.layer4]  # type: ignore[list-item]


def _convnext_blocks(m: nn.Module) -> list[nn.Module]:
    return [m.stem, *m.stages, nn.ModuleList([m.head])]  # type: ignore[list-item]


def _regnet_blocks(m: nn.Module) -> list[nn.Module]:
    return [m.stem, m.s1, m.s2, m.s3, nn.ModuleList([m.s4, m.final_conv])]  # type: ignore[list-item]


def _last_conv(m: nn.Module) -> nn.Module:
    convs = [layer for layer in m.modules() if isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)]
    # VGG's pre-logits are convolutions too (fc6 as a 7x7 conv); Grad-CAM wants the last
    # spatial feature map, which is the last 3x3 conv of the feature extractor.
    features = getattr(m, "features", None)
    if features is not None:
        convs = [layer for layer in features.modules() if isinstance(layer, nn.Conv2d)]
    return convs[-1]


@dataclass(frozen=True)
class BackboneSpec:
    timm_name: str
    family: Literal["vit", "cnn"]
    blocks: Callable[[nn.Module], list[nn.Module]]
    cam_layer: Callable[[nn.Module], nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "vit_tiny": BackboneSpec("vit_tiny_patch16_224", "vit", _vit_blocks, lambda m: m.blocks[-1].norm1),
    "vit_small": BackboneSpec("vit_small_patch16_224", "vit", _vit_blocks, lambda m: m.blocks[-1].norm1),
    "vit_base": BackboneSpec("vit_base_patch16_224", "vit", _vit_blocks, lambda m: m.blocks[-1].norm1),
    "vgg16": BackboneSpec("vgg16", "cnn", _vgg_blocks, _last_conv),
    "vgg16_bn": BackboneSpec("vgg16_bn", "cnn", _vgg_blocks, _last_conv),
    "vgg19": BackboneSpec("vgg19", "cnn", _vgg_blocks, _last_conv),
    "vgg19_bn": BackboneSpec("vgg19_bn", "cnn", _vgg_blocks, _last_conv),
    "resnet18": BackboneSpec("resnet18", "cnn", _resnet_blocks, lambda m: m.layer4[-1]),
    "resnet50": BackboneSpec("resnet50", "cnn", _resnet_blocks, lambda m: m.layer4[-1]),
    "resnet50_gn": BackboneSpec(
        "resnet50_gn",
        "cnn",
        _resnet_blocks,
        lambda m: m.layer4[-1],
        note="group norm: no batch statistics to go stale in another lab",
    ),
    "convnext_tiny": BackboneSpec("convnext_tiny", "cnn", _convnext_blocks, lambda m: m.stages[-1]),
    "regnetx_002": BackboneSpec(
        "regnetx_002",
        "cnn",
        _regnet_blocks,
        lambda m: m.s4,
        note="2.7 M parameters, 0.2 GFLOPs at 224 px: the CPU-sized configs' backbone",
    ),
}
ALIASES: dict[str, str] = {"vit": "vit_small"}


def resolve_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in BACKBONES:
        valid = ", ".join([*BACKBONES, *ALIASES])
        raise UserError(f"unknown backbone {name!r}; valid: {valid}")
    return name


def create_backbone(
    name: str,
    img_size: int = 224,
    pretrained: bool | str = False,
    **kwargs: Any,
) -> nn.Module:
    """A headless timm model returning (B, D) features; ``model.feature_dim`` is D.

    ``pretrained``: False (random), True (timm's default tag) or a tag such as
    ``"augreg_in21k_ft_in1k"``; hub weights need network access. Local weights are
    loaded afterwards with :func:`leukoshift.models.checkpoints.load_backbone_weights`.
    """
    spec = BACKBONES[resolve_name(name)]
    args: dict[str, Any] = {"num_classes": 0, **spec.kwargs}
    if spec.family == "vit":
        # Any input size: positional embeddings are interpolated per call (multi-crop).
        args.update(img_size=img_size, dynamic_img_size=True)
    args.update(kwargs)
    timm_name = spec.timm_name
    if isinstance(pretrained, str):
        timm_name, pretrained = f"{timm_name}.{pretrained}", True
    try:
        model = timm.create_model(timm_name, pretrained=bool(pretrained), **args)
    except TypeError as exc:
        raise UserError(f"model.kwargs not accepted by timm {timm_name}: {exc}") from None
    except (RuntimeError, OSError) as exc:
        if pretrained:
            raise UserError(
                f"could not fetch pretrained weights for {timm_name} ({str(exc).splitlines()[0]}); "
                "without network access pass local weights with --init FILE"
            ) from None
        raise
    model.feature_dim = feature_dim(model, img_size)  # type: ignore[assignment]
    return model


def feature_dim(model: nn.Module, img_size: int) -> int:
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if width is None:
        with torch.no_grad():
            width = model(torch.zeros(1, 3, img_size, img_size)).shape[-1]
    return int(width)


def backbone_blocks(name: str, model: nn.Module) -> list[nn.Module]:
    """Ordered blocks (input side first) for partial fine-tuning."""
    return BACKBONES[resolve_name(name)].blocks(model)


def cam_target_layer(name: str, model: nn.Module) -> nn.Module:
    return BACKBONES[resolve_name(name)].cam_layer(model)


def family(name: str) -> Literal["vit", "cnn"]:
    return BACKBONES[resolve_name(name)].family


class Normalize(nn.Module):
    """[0, 1] RGB -> the backbone's input normalisation (ImageNet statistics by default)."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Encoder(nn.Module):
    """Backbone plus its input normalisation: [0, 1] images in, (B, D) features out.

    ``stain`` is an optional fitted stain normaliser (``leukoshift.domain.stain``) run
    before the mean/std normalisation. It lives here, with its fitted target as buffers in
    the state dict, so every path that feeds a model images (evaluation, prediction,
    explanations, kNN, the app) normalises them as training did.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        stain: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # Identity holds no state, so checkpoints without stain normalisation load as before.
        self.stain = stain if stain is not None else nn.Identity()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.feature_dim = int(backbone.feature_dim)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(self.stain(x)))
