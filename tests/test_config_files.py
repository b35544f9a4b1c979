"""Every shipped config validates against its schema (a broken example is a defect)."""

from __future__ import annotations

from pathlib import Path

import pytest

from leukoshift.config import FinetuneConfig, PretrainConfig, load_config
from leukoshift.eval.loso import LosoConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _schema(name: str) -> type:
    if name.startswith("loso"):
        return LosoConfig
    if name.startswith(("dino", "simclr")):
        return PretrainConfig
    return FinetuneConfig


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path: Path) -> None:
    cfg = load_config(_schema(path.name), path)
    assert cfg is not None


def test_there_are_configs_for_every_kind() -> None:
    names = {p.name for p in CONFIGS}
    assert {
        "loso_demo.yaml",
        "loso_shared_cpu.yaml",
        "loso_paper.yaml",
        "dino_vit_small.yaml",
        "dino_vit_base.yaml",
        "simclr_vgg16.yaml",
        "simclr_resnet50.yaml",
        "dino_shared_cpu.yaml",
        "simclr_shared_cpu.yaml",
    } <= names
