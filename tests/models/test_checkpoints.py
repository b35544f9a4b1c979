"""Weights load from every file kind a user may have, with honest reports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from leukoshift.errors import UserError
from leukoshift.models.backbones import create_backbone
from leukoshift.models.checkpoints import export_weights, load_backbone_weights, read_card


def _pair(name: str = "resnet18", **kw: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    src = create_backbone(name, img_size=32, **kw)
    torch.manual_seed(1)
    dst = create_backbone(name, img_size=32, **kw)
    return src, dst


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip_with_card(tmp_path: Path) -> None:
    src, dst = _pair()
    assert not _same(src, dst)
    path = export_weights(src, tmp_path / "bb.safetensors", {"kind": "backbone", "backbone": "resnet18"})
    report = load_backbone_weights(dst, path, verbose=False)
    assert _same(src, dst)
    assert report.missing == [] and report.unexpected == [] and report.prefix == ""
    assert read_card(path) == {"kind": "backbone", "backbone": "resnet18"}


@pytest.mark.parametrize("prefix", ["backbone.", "teacher_backbone.", "module."])
def test_pth_with_prefixes_and_containers(tmp_path: Path, prefix: str) -> None:
    src, dst = _pair()
    state = {prefix + k: v for k, v in src.state_dict().items()}
    state["head.weight"] = torch.zeros(3, 3)  # a head that is not part of the backbone
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")
    report = load_backbone_weights(dst, tmp_path / "w.pth", verbose=False)
    assert _same(src, dst)
    assert report.prefix == prefix


def test_partial_match_reports_missing_and_mismatched(tmp_path: Path) -> None:
    src, dst = _pair()
    state = src.state_dict()
    state.pop("layer4.1.bn2.bias")
    state["fc_extra.weight"] = torch.zeros(2)
    state["conv1.weight"] = torch.zeros(1, 1, 1, 1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    report = load_backbone_weights(dst, tmp_path / "w.safetensors", verbose=False)
    assert "layer4.1.bn2.bias" in report.missing and "conv1.weight" in report.missing
    assert report.unexpected == ["fc_extra.weight"]
    assert report.mismatched and report.mismatched[0].startswith("conv1.weight")
    assert "missing 2" in report.summary()


def test_vit_positional_embedding_is_resampled(tmp_path: Path) -> None:
    big = create_backbone("vit_tiny", img_size=64, depth=1)
    small = create_backbone("vit_tiny", img_size=32, depth=1)
    torch.save(big.state_dict(), tmp_path / "vit.pth")
    report = load_backbone_weights(small, tmp_path / "vit.pth", verbose=False)
    assert report.resized == ["pos_embed"] and not report.mismatched
    assert torch.equal(small.blocks[0].attn.qkv.weight, big.blocks[0].attn.qkv.weight)


def test_wrong_architecture_and_bad_files_fail_clearly(tmp_path: Path) -> None:
    vit = create_backbone("vit_tiny", img_size=32, depth=1)
    torch.save(create_backbone("resnet18", img_size=32).state_dict(), tmp_path / "r.pth")
    with pytest.raises(UserError, match="no tensor matches"):
        load_backbone_weights(vit, tmp_path / "r.pth")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.ckpt: not a readable PyTorch checkpoint"):
        load_backbone_weights(vit, tmp_path / "junk.ckpt")
    with pytest.raises(UserError, match="checkpoint not found"):
        load_backbone_weights(vit, tmp_path / "missing.pth")
