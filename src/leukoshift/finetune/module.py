"""The supervised classifier: a registry backbone, a linear head over the 11 fine classes,
and the published training recipe, as one LightningModule.

Batches arrive as uint8 from the cache; conversion and augmentation (rotation, flips,
shear, resized crop, zoom, optional stain/colour jitter) run on the device in
``on_after_batch_transfer``, so the loader never does per-image work.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from leukoshift.config import FinetuneConfig
from leukoshift.domain.augment import build_finetune_augment, to_float
from leukoshift.domain.stain import stain_normalizer
from leukoshift.finetune.loss import GroupCrossEntropy
from leukoshift.models.backbones import Encoder, backbone_blocks, create_backbone, family
from leukoshift.taxonomy import FINE_CLASSES, LABEL_CODES


def set_trainable(backbone: nn.Module, name: str, mode: str, unfreeze_blocks: int) -> list[nn.Module]:
    """Freeze per ``mode``; return the frozen blocks (kept in eval mode during training)."""
    if mode == "full":
        for p in backbone.parameters():
            p.requires_grad_(True)
        return []
    for p in backbone.parameters():
        p.requires_grad_(False)
    blocks = backbone_blocks(name, backbone)
    if mode == "partial":
        for block in blocks[-unfreeze_blocks:]:
            for p in block.parameters():
                p.requires_grad_(True)
        return blocks[:-unfreeze_blocks]
    return [backbone]


class ClassifierModule(pl.LightningModule):
    """Backbone + head trained with group-aware, weighted, label-smoothed cross-entropy."""

    def __init__(
        self,
        config: dict[str, Any],
        class_weights: list[float] | None = None,
        source_names: list[str] | None = None,
        train_summary: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Plain JSON-like hyper-parameters: the checkpoint alone rebuilds the model.
        self.save_hyperparameters()
        self.cfg = FinetuneConfig.model_validate(config)
        model_cfg = self.cfg.model
        self.backbone_name = model_cfg.backbone
        size = self.cfg.data.image.size
        backbone = create_backbone(
            model_cfg.backbone, img_size=size, pretrained=model_cfg.pretrained, **model_cfg.kwargs
        )
        # An unfitted normaliser: `training.fit_stain_sample` fits it before training, and a
        # checkpoint's state dict restores the fitted one.
        self.encoder = Encoder(backbone, stain=stain_normalizer(self.cfg.augment.normalize))
        self.head = nn.Sequential(
            nn.Dropout(model_cfg.drop_rate), nn.Linear(self.encoder.feature_dim, len(FINE_CLASSES))
        )
        self.augment = build_finetune_augment(self.cfg.augment, size)
        weights = np.asarray(class_weights) if class_weights is not None and self.cfg.loss.class_weights else None
        self.criterion = GroupCrossEntropy(weights, self.cfg.loss.label_smoothing)
        self._frozen: list[nn.Module] = []
        self._val_outputs: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------ model

    def apply_mode(self) -> None:
        """Freeze what the fine-tuning mode says (after any initial weights are loaded)."""
        self._frozen = set_trainable(self.encoder.backbone, self.backbone_name, self.cfg.mode, self.cfg.unfreeze_blocks)

    def head_only(self) -> bool:
        """True in the head warm-up epochs of a fit (``head_warmup_epochs``, LP-FT): the
        backbone is then a fixed feature extractor, run without gradients."""
        return self._trainer is not None and self.current_epoch < self.cfg.head_warmup_epochs

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        # Frozen parts keep their batch-norm statistics: the point of freezing them.
        for block in [self.encoder] if mode and self.head_only() else self._frozen:
            block.eval()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning restores train mode after each validation, before the epoch counter
        # moves on: the epoch that ends the head warm-up must unfreeze the backbone here.
        self.train()
        if self.cfg.head_warmup_epochs and self.current_epoch == self.cfg.head_warmup_epochs:
            rank_zero_info(f"epoch {self.current_epoch}: head warm-up done, fine-tuning the backbone too")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> penultimate features."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> logits over the 11 fine classes."""
        if self.training and self.head_only():
            # No backward through the backbone: its parameters get no gradient (the
            # optimiser skips them) and a warm-up epoch costs about a forward pass.
            with torch.no_grad():
                features = self.encoder(x)
            return self.head(features)
        return self.head(self.encoder(x))

    # ------------------------------------------------------------------ steps

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        x = to_float(batch["image"])
        if self.trainer is not None and self.trainer.training:
            x = self.augment(x)
        if self.device.type == "cuda" and family(self.backbone_name) == "cnn":
            x = x.contiguous(memory_format=torch.channels_last)
        return {**batch, "image": x}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=len(logits), sync_dist=True)
        self._val_outputs.append({"probs": logits.float().softmax(1), "label": batch["label"], "index": batch["index"]})

    def on_validation_epoch_end(self) -> None:
        from leukoshift.eval.metrics import score

        if not self._val_outputs:
            return
        probs = torch.cat([o["probs"] for o in self._val_outputs])
        labels = torch.cat([o["label"] for o in self._val_outputs])
        index = torch.cat([o["index"] for o in self._val_outputs])
        self._val_outputs.clear()
        if self.trainer.world_size > 1:
            # Each rank saw a shard (padded to equal length): gather, then drop repeats.
            probs, labels, index = (self.all_gather(t).flatten(0, 1) for t in (probs, labels, index))
            _, first = np.unique(index.cpu().numpy(), return_index=True)
            probs, labels = probs[first], labels[first]
        keep = labels >= 0
        truth = [LABEL_CODES[i] for i in labels[keep].cpu().tolist()]
        s = score(probs[keep].cpu().numpy(), truth)
        self.log("val/macro_f1", float(s.macro_f1), prog_bar=True)
        self.log("val/accuracy", float(s.accuracy))
        self.log("val/balanced_accuracy", float(s.balanced_accuracy))

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["image"]).float().softmax(1)

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = self.cfg.optim
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        # Two groups; the plateau schedule scales both, so their ratio holds throughout.
        params = [
            {"params": backbone, "lr": opt_cfg.lr * opt_cfg.backbone_lr_scale},
            {"params": head, "lr": opt_cfg.lr},
        ]
        params = [g for g in params if g["params"]]
        fused = {"fused": True} if torch.cuda.is_available() else {}
        if opt_cfg.name == "radam":
            optimizer: torch.optim.Optimizer = torch.optim.RAdam(
                params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay
            )
        elif opt_cfg.name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay, **fused)
        else:
            optimizer = torch.optim.SGD(
                params, lr=opt_cfg.lr, momentum=0.9, weight_decay=opt_cfg.weight_decay, nesterov=True
            )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=opt_cfg.plateau_factor,
            patience=opt_cfg.plateau_patience,
            min_lr=opt_cfg.min_lr,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/macro_f1", "interval": "epoch"},
        }
