"""WiSE-FT: the head warm-up's checkpoint, weight interpolation, batch-norm re-estimation,
the ``wise_alpha`` option of ``finetune`` and the ``leukoshift wise`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leukoshift.config import ConfigError
from leukoshift.errors import UserError
from leukoshift.eval.adapt import batchnorm_layers
from leukoshift.eval.evaluate import load_classifier
from leukoshift.finetune.train import run_finetune
from leukoshift.finetune.wise import interpolate_states, wise_from_run
from tests.finetune.test_finetune import _cfg
from tests.test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def wise_run(synth_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three epochs (one head warm-up), WiSE at alpha 0.5, lab_b scored as an external lab."""
    lab_b = synth_manifest.parent / "lab_b" / "manifest.csv"
    out = tmp_path_factory.mktemp("wise") / "run"
    cfg = _cfg(
        synth_manifest,
        out,
        "trainer.max_epochs=3",
        "head_warmup_epochs=1",
        "wise_alpha=0.5",
        "data.exclude_sources=[lab_b]",
        f"data.external=[{lab_b}]",
    )
    return run_finetune(cfg, progress=False)


def test_interpolation_is_linear_in_floats_and_keeps_counters() -> None:
    start = {"w": torch.zeros(3), "n": torch.tensor(5)}
    end = {"w": torch.tensor([2.0, 4.0, -2.0]), "n": torch.tensor(9)}
    assert torch.equal(interpolate_states(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate_states(start, end, 1.0)["w"], end["w"])
    mid = interpolate_states(start, end, 0.25)
    assert torch.allclose(mid["w"], torch.tensor([0.5, 1.0, -0.5])) and int(mid["n"]) == 9


@pytest.mark.parametrize(
    ("start", "end", "alpha", "message"),
    [
        ({"w": torch.zeros(2)}, {"w": torch.zeros(2)}, 1.5, r"alpha: 1.5 must lie in \[0, 1\]"),
        ({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, 0.5, "different parameters"),
        ({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5, r"w: shape \(2,\) against \(3,\)"),
    ],
)
def test_interpolation_refuses_mismatches(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        interpolate_states(start, end, alpha)


def test_finetune_writes_scores_and_interpolates_wise(wise_run: Path) -> None:
    metrics = json.loads((wise_run / "metrics.json").read_text())
    wise = metrics["wise"]
    assert wise["alpha"] == 0.5 and Path(wise["checkpoint"]) == wise_run / "wise.ckpt"
    assert wise["test"]["n"] == metrics["test"]["n"] and set(wise["external"]) == set(metrics["external"])
    assert 0.0 <= wise["test"]["macro_f1"] <= 1.0

    probe, best, mixed = (load_classifier(wise_run / f) for f in ("warmup.ckpt", "best.ckpt", "wise.ckpt"))
    p, b, m = probe.state_dict(), best.state_dict(), mixed.state_dict()
    # The warm-up checkpoint is the end of the head-only epoch: the backbone has not
    # moved from its initial weights yet, the fine-tuned one has.
    conv = next(k for k in b if k.endswith("conv.weight"))
    assert not torch.equal(p[conv], b[conv])
    for key in (conv, "head.1.weight", "head.1.bias"):
        assert torch.allclose(m[key], 0.5 * (p[key] + b[key]), atol=1e-6), key
    # Batch-norm statistics are re-estimated on training images, not averaged.
    stats = next(k for k in b if k.endswith("running_var"))
    assert not torch.allclose(m[stats], 0.5 * (p[stats] + b[stats]), atol=1e-4)
    assert batchnorm_layers(mixed)
    assert "optimizer_states" not in torch.load(wise_run / "wise.ckpt", weights_only=False)


def test_wise_command_writes_the_asked_mix(
    wise_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "w.ckpt"
    code, stdout, err = run(["wise", str(wise_run), "--alpha", "0.25", "-o", str(out)], capsys, monkeypatch)
    assert code == 0 and f"wrote {out}" in stdout, err
    p, b, m = (load_classifier(f).state_dict() for f in (wise_run / "warmup.ckpt", wise_run / "best.ckpt", out))
    assert torch.allclose(m["head.1.weight"], 0.75 * p["head.1.weight"] + 0.25 * b["head.1.weight"], atol=1e-6)
    assert torch.load(out, weights_only=False)["wise"]["alpha"] == 0.25
    # the default name carries the alpha
    assert wise_from_run(wise_run, 1.0).name == "wise1.ckpt"


def test_wise_errors_are_one_line(
    wise_run: Path,
    tmp_path: Path,
    synth_manifest: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = run(["wise", str(wise_run), "--alpha", "2"], capsys, monkeypatch)
    assert_one_line_error(code, err, "alpha: 2.0 must lie in [0, 1]")
    (tmp_path / "best.ckpt").write_bytes((wise_run / "best.ckpt").read_bytes())
    code, _, err = run(["wise", str(tmp_path)], capsys, monkeypatch)
    assert_one_line_error(code, err, f"{tmp_path}: no warmup.ckpt", "head_warmup_epochs")
    code, _, err = run(["wise", str(tmp_path / "nowhere")], capsys, monkeypatch)
    assert_one_line_error(code, err, "no best.ckpt")
    with pytest.raises(ConfigError, match="wise_alpha: interpolates with the end of the head warm-up"):
        _cfg(synth_manifest, tmp_path, "wise_alpha=0.5")
