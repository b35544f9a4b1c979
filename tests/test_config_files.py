"""Every shipped config validates against its schema (a broken example is a defect)."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

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


def _recipe_overrides(*arrays: str) -> list[str]:
    """The ``--set`` values of bash arrays defined by benchmarks/issue4_recipe.sh."""
    root = Path(__file__).resolve().parents[1]
    words = " ".join(f'"${{{name}[@]}}"' for name in arrays)
    script = f"source benchmarks/issue4_recipe.sh >/dev/null && printf '%s\\n' {words}"
    out = subprocess.run(["bash", "-c", script], cwd=root, capture_output=True, text=True, check=True).stdout
    args = out.splitlines()
    return [value for flag, value in itertools.pairwise(args) if flag == "--set"]


def _scripted_and_shipped(
    schema: type, base: str, overrides: list[str], shipped: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """configs/BASE with a script's overrides beside configs/SHIPPED, both dumped without
    trainer.progress: the scripts only silence the progress bar for their logs."""
    root = Path(__file__).resolve().parents[1]
    exclude = {"trainer": {"progress"}}
    scripted = load_config(schema, root / "configs" / base, overrides).model_dump(exclude=exclude)
    return scripted, load_config(schema, root / "configs" / shipped).model_dump(exclude=exclude)


def test_resnet18_recipe_config_is_what_the_issue4_scripts_run() -> None:
    """configs/finetune_r18_ruler_cpu.yaml is the fine-tune the issue-4 ResNet-18 tables
    compare, which the scripts spell as overrides of finetune_pbc_cpu.yaml: the two must
    not drift apart, or the config would no longer be the measured recipe."""
    overrides = _recipe_overrides("FT", "BLUR", "R18_RULER")
    assert "model.backbone=resnet18" in overrides and "augment.normalize=reinhard" in overrides
    scripted, shipped = _scripted_and_shipped(
        FinetuneConfig, "finetune_pbc_cpu.yaml", overrides, "finetune_r18_ruler_cpu.yaml"
    )
    assert scripted == shipped


def test_resnet18_simclr_config_is_what_the_issue4_script_pretrains() -> None:
    """configs/simclr_r18_ruler_cpu.yaml is the pretraining of
    benchmarks/issue4_resnet18_rulerssl_cpu.sh, spelled there as overrides of
    simclr_shared_cpu.yaml; as for the fine-tune, the two must not drift apart."""
    overrides = [*_recipe_overrides("SIMCLR_R18", "RULER"), "augment.normalize=reinhard"]
    scripted, shipped = _scripted_and_shipped(
        PretrainConfig, "simclr_shared_cpu.yaml", overrides, "simclr_r18_ruler_cpu.yaml"
    )
    assert shipped["model"]["backbone"] == "resnet18" and shipped["data"]["image"]["preprocess"] == "ruler"
    assert scripted == shipped
