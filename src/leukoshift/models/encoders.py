"""Any trained artefact of this project -> a feature encoder and the image framing it expects.

Diagnostics, kNN evaluation and the app accept three kinds of file: a fine-tuning
checkpoint (``best.ckpt``), an SSL checkpoint (``last.ckpt`` of ``ssl pretrain``) and an
exported backbone (``backbone.safetensors`` with its JSON card).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leukoshift.config import ImageConfig
from leukoshift.domain.stain import normalizer_from_card
from leukoshift.errors import UserError
from leukoshift.models.backbones import Encoder, create_backbone
from leukoshift.models.checkpoints import card_path, load_backbone_weights, read_card, read_checkpoint


@dataclass
class LoadedEncoder:
    encoder: Encoder
    image: ImageConfig
    kind: str  # "finetune" | "ssl" | "backbone"
    card: dict[str, Any]


def load_encoder(path: Path | str) -> LoadedEncoder:
    path = Path(path)
    if path.suffix == ".safetensors":
        card = read_card(path)
        if card is None or "backbone" not in card:
            raise UserError(
                f"{path}: exported weights need their card {path.with_suffix('.json').name} (backbone name, image size)"
            )
        image = ImageConfig.model_validate(card.get("image") or {})
        size = int(card.get("input_size") or image.size)
        backbone = create_backbone(card["backbone"], img_size=size, **(card.get("timm_kwargs") or {}))
        load_backbone_weights(backbone, path, verbose=False)
        norm = card.get("normalization") or {}
        stain = card.get("stain_normalization")
        encoder = Encoder(
            backbone,
            tuple(norm.get("mean", (0.485, 0.456, 0.406))),
            tuple(norm.get("std", (0.229, 0.224, 0.225))),
            stain=normalizer_from_card(stain, str(card_path(path))) if stain else None,
        )
        return LoadedEncoder(encoder.eval(), image, "backbone", card)
    raw = read_checkpoint(path)
    config = (raw.get("hyper_parameters") or {}).get("config")
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a leukoshift checkpoint (no config in its hyper-parameters)")
    if "method" in config:
        from leukoshift.config import PretrainConfig
        from leukoshift.pretrain.train import METHODS

        cfg = PretrainConfig.model_validate(config)
        module = METHODS[cfg.method].load_from_checkpoint(path, map_location="cpu", weights_only=False)
        encoder = Encoder(module.eval_backbone(), stain=module.stain)
        image = cfg.data.image.model_copy(update={"size": cfg.multicrop.global_size})
        return LoadedEncoder(encoder.eval(), image, "ssl", {"backbone": cfg.model.backbone, "method": cfg.method})
    from leukoshift.finetune.module import ClassifierModule

    model = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    return LoadedEncoder(model.encoder.eval(), model.cfg.data.image, "finetune", {"backbone": model.cfg.model.backbone})
