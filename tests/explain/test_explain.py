"""Explanations: map shapes and dependence on the target, attention captured without changing
the model, rollout arithmetic, framing as in training, and the ``explain`` command."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from leukoshift.cli import main
from leukoshift.data.images import load_rgb, prepare_image
from leukoshift.eval.evaluate import load_classifier
from leukoshift.eval.explain import (
    AttentionRecorder,
    Explainer,
    ExplainError,
    _token_map,
    attention_rollout,
    check_method,
    explain_tensor,
    gradient_rollout,
    parse_target,
)
from leukoshift.taxonomy import FINE_CLASSES, FINE_NAMES
from tests.conftest import tiny_rgb, write_image


@pytest.fixture(scope="module")
def cnn(cnn_checkpoint: Path) -> torch.nn.Module:
    return load_classifier(cnn_checkpoint)


@pytest.fixture(scope="module")
def vit(vit_checkpoint: Path) -> torch.nn.Module:
    return load_classifier(vit_checkpoint)


def _images(size: int, n: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.stack([tiny_rgb(seed, size).transpose(2, 0, 1) for seed in range(n)])).float() / 255


# ----------------------------------------------------------------------------- maps


@pytest.mark.parametrize(
    ("model_name", "method"),
    [("cnn", "gradcam"), ("cnn", "gradcam++"), ("vit", "gradcam"), ("vit", "grad-rollout")],
)
def test_class_specific_maps_have_input_size_and_follow_the_target(
    model_name: str, method: str, request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue(model_name)
    size = model.cfg.data.image.size
    x = _images(size)
    eo, ly = FINE_CLASSES.index("EO"), FINE_CLASSES.index("LY")
    maps_eo = explain_tensor(model, x, method, [eo] * len(x))
    maps_ly = explain_tensor(model, x, method, [ly] * len(x))
    for maps in (maps_eo, maps_ly):
        assert maps.shape == (len(x), size, size)
        assert np.isfinite(maps).all() and np.isfinite(maps.sum())
        assert maps.min() >= 0 and maps.max() <= 1
        assert (maps.max(axis=(1, 2)) == 1).all()  # scaled per image: something is highlighted
    assert np.abs(maps_eo - maps_ly).max() > 0.05
    # the same call twice gives the same map (no state left in the model between calls)
    np.testing.assert_array_equal(maps_eo, explain_tensor(model, x, method, [eo] * len(x)))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["rollout", "attention"])
def test_class_agnostic_vit_maps(vit: torch.nn.Module, method: str) -> None:
    x = _images(32)
    maps = explain_tensor(vit, x, method, [0, 0, 0])
    assert maps.shape == (3, 32, 32) and np.isfinite(maps).all()
    assert maps.max() == 1 and maps.std() > 0
    # rollout and CLS attention describe the forward pass only: the target cannot matter
    np.testing.assert_array_equal(maps, explain_tensor(vit, x, method, [5, 7, 9]))
    # different images, different maps
    assert np.abs(maps[0] - maps[1]).max() > 0.05


# ----------------------------------------------------------------------------- attention capture


def test_attention_hooks_leave_outputs_unchanged(vit: torch.nn.Module) -> None:
    x = _images(32)
    with torch.no_grad():
        plain = vit(x)
    with AttentionRecorder(vit.encoder.backbone, gradients=True) as rec:
        hooked = vit(x)
    assert torch.equal(plain, hooked)
    assert len(rec.attentions) == 2 and rec.attentions[0].shape == (3, 3, 17, 17)
    for attn in (m for m in vit.modules() if hasattr(m, "qkv")):
        assert attn.fused_attn  # timm's fused path stayed on
        assert not attn._forward_hooks and not attn.norm._forward_pre_hooks  # hooks removed


def test_recorded_attention_and_gradients_match_timm_unfused_attention(
    vit: torch.nn.Module,
) -> None:
    """The hook's recomputation equals the weights timm's unfused branch materialises, and
    dL/dA from dL/dO V^T equals autograd's gradient with respect to those weights."""
    x = _images(32)
    target = FINE_CLASSES.index("MO")
    with AttentionRecorder(vit.encoder.backbone, gradients=True) as rec:
        score = vit(x)[:, target].sum()
        grads = rec.attention_gradients(score)

    reference = copy.deepcopy(vit)
    weights: list[torch.Tensor] = []
    blocks = [m for m in reference.modules() if hasattr(m, "qkv")]
    for attn in blocks:
        attn.fused_attn = False
        # attn_drop (identity in eval) receives the softmax weights in the unfused branch
        attn.attn_drop.register_forward_hook(lambda mod, args, out: weights.append(out))
    for w in weights:
        w.retain_grad()
    ref_score = reference(x)[:, target].sum()
    for w in weights:
        w.retain_grad()
    ref_grads = torch.autograd.grad(ref_score, weights)
    assert len(weights) == len(rec.attentions) == 2
    for mine, ref in zip(rec.attentions, weights, strict=True):
        torch.testing.assert_close(mine, ref.detach(), atol=1e-6, rtol=1e-5)
    for mine, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-4)
    assert max(float(g.abs().max()) for g in grads) > 0


def test_rollout_arithmetic_by_hand() -> None:
    # two tokens, one head; every token attends to token 0
    a = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    # one block: 0.5 A + 0.5 I = [[1, 0], [0.5, 0.5]]; two blocks: its square
    torch.testing.assert_close(attention_rollout([a])[0], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    torch.testing.assert_close(attention_rollout([a, a])[0], torch.tensor([[1.0, 0.0], [0.75, 0.25]]))
    # heads are averaged before the residual is added
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    two_heads = torch.stack([torch.eye(2), swap])[None]
    torch.testing.assert_close(attention_rollout([two_heads])[0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    # Chefer et al.: R = I + A R per block with positive gradient-weighted attention
    ones = torch.ones_like(a)
    torch.testing.assert_close(gradient_rollout([a], [ones])[0], torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
    torch.testing.assert_close(gradient_rollout([a, a], [ones, ones])[0], torch.tensor([[4.0, 0.0], [3.0, 1.0]]))
    # negative evidence is clipped: the relevance stays the identity
    torch.testing.assert_close(gradient_rollout([a], [-ones])[0], torch.eye(2))


def test_token_relevance_lands_on_its_patch(vit: torch.nn.Module) -> None:
    # 32 px with 8 px patches: a 4 x 4 grid after the CLS token, in timm's row-major order
    relevance = torch.zeros(1, 17)
    relevance[0, 1 + 1 * 4 + 2] = 1.0  # patch in grid row 1, column 2
    heat = _token_map(relevance, vit.encoder.backbone, (32, 32))[0].numpy()
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert 8 <= y < 16 and 16 <= x < 24
    assert heat[:4].max() == 0 and heat[:, :8].max() == 0  # far patches get nothing


# ----------------------------------------------------------------------------- arguments


def test_methods_and_targets_are_checked() -> None:
    assert check_method(None, "regnetx_002") == "gradcam"
    assert check_method(None, "vit_tiny") == "rollout"
    with pytest.raises(ExplainError, match=r"needs a vision transformer.*valid: gradcam, gradcam\+\+"):
        check_method("rollout", "resnet18")
    with pytest.raises(ExplainError, match="valid: gradcam"):
        check_method("lime", "vit_tiny")
    assert parse_target("eo") == FINE_CLASSES.index("EO")
    assert parse_target(None) is None
    with pytest.raises(ExplainError, match="valid: " + ", ".join(FINE_CLASSES)):
        parse_target("NEUTROPHIL")


# ----------------------------------------------------------------------------- images and command


def test_explainer_frames_images_as_in_training(vit_checkpoint: Path, tmp_path: Path) -> None:
    explainer = Explainer.from_checkpoint(vit_checkpoint)
    assert explainer.image.preprocess == "centre"
    rgb = load_rgb(write_image(tmp_path / "cell.png", seed=3, size=80))
    (exp,) = explainer.explain([rgb], ["cell.png"], target="BA", method="grad-rollout")
    np.testing.assert_array_equal(exp.framed, prepare_image(rgb, explainer.image)[0])
    assert exp.heatmap.shape == (32, 32) and exp.display.shape == (256, 256, 3)
    # The display is the same framing at display size, not a blow-up of the model input.
    np.testing.assert_array_equal(exp.display, prepare_image(rgb, explainer.image.model_copy(update={"size": 256}))[0])
    assert exp.overlay().shape == (256, 256, 3)
    assert exp.target == "BA" and "basophil" in exp.explained()
    np.testing.assert_allclose(exp.probs, explainer.probabilities([exp.framed])[0], rtol=1e-6)
    assert exp.title().startswith(f"{FINE_NAMES[exp.predicted]} ({exp.predicted})")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["leukoshift", *argv])
    monkeypatch.setenv("COLUMNS", "200")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_command_writes_figures_sheet_and_skips_unreadable(
    cnn_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "cells"
    for i in range(3):
        write_image(folder / "sub" / f"c{i}.jpg", seed=i, size=48)
    (folder / "broken.png").write_bytes(b"not an image")
    loose = write_image(tmp_path / "c0.jpg", seed=9, size=48)  # same stem as a folder file
    out = tmp_path / "out"
    argv = [
        "explain",
        "--checkpoint",
        str(cnn_checkpoint),
        str(folder),
        str(loose),
        str(tmp_path / "missing.jpg"),
    ]
    code, stdout, _ = _run([*argv, "--out", str(out), "--target", "eo"], capsys, monkeypatch)
    assert code == 0, stdout
    assert f"skipped {folder / 'broken.png'}" in stdout and f"skipped {tmp_path / 'missing.jpg'}: not found" in stdout
    table = pd.read_csv(out / "explanations.csv")
    assert len(table) == 4 and set(table["target"]) == {"EO"} and set(table["method"]) == {"gradcam"}
    assert (out / "cells" / "sub" / "c0.png").is_file() and (out / "c0.png").is_file()
    for png in table["png"]:
        with Image.open(png) as im:
            assert im.width > 1.5 * im.height  # input and overlay side by side
    with Image.open(out / "contact_cells.png") as sheet:
        assert sheet.width > 300
    assert ((table["probability"] > 0) & (table["probability"] <= 1)).all()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--target", "XYZ"], "--target 'XYZ': not a class code; valid: SNE, BNE, MMY"),
        (["--method", "rollout"], "needs a vision transformer"),
    ],
)
def test_explain_command_errors_are_one_line(
    extra: list[str],
    needle: str,
    cnn_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    img = write_image(tmp_path / "a.png", seed=1, size=40)
    code, _, err = _run(
        [
            "explain",
            "--checkpoint",
            str(cnn_checkpoint),
            str(img),
            "--out",
            str(tmp_path / "o"),
            *extra,
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
