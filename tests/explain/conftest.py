"""Tiny fine-tuning checkpoints for explanation and app tests.

A checkpoint is made the way ``leukoshift finetune`` saves one (a Lightning checkpoint
whose hyper-parameters carry the resolved config), without training: the explanations
under test are functions of whatever weights the model has. Seeds fix the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def make_checkpoint(path: Path, backbone: str, size: int, seed: int = 0, **image: Any) -> Path:
    """Save an untrained :class:`ClassifierModule` to ``path``; ``image`` sets ``data.image.*``."""
    import pytorch_lightning as pl
    import torch

    from leukoshift.config import FinetuneConfig, config_to_dict
    from leukoshift.finetune.module import ClassifierModule

    kwargs = {"depth": 2, "patch_size": 8} if backbone.startswith("vit") else {}
    cfg = FinetuneConfig.model_validate(
        {
            "data": {"image": {"size": size, **image}},
            "model": {"backbone": backbone, "kwargs": kwargs},
        }
    )
    torch.manual_seed(seed)
    module = ClassifierModule(config_to_dict(cfg), class_weights=None)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """regnetx_002 at 64 px: its last stage is a 2x2 map, enough for Grad-CAM to vary."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn.ckpt", "regnetx_002", 64)


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-block ViT-Tiny with 8 px patches at 32 px (16 patch tokens plus CLS), framing
    images around the located cell (``centre``), unlike the CNN's plain resize."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "vit.ckpt", "vit_tiny", 32, preprocess="centre")
