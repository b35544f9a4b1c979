"""``evaluate`` and ``predict`` on a checkpoint: files written, numbers consistent, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from leukoshift.data.loaders import load_table
from leukoshift.errors import UserError
from leukoshift.eval.evaluate import (
    class_probabilities,
    image_config_of,
    load_classifier,
    predict_table,
    run_evaluate,
    run_predict,
)
from leukoshift.eval.metrics import score


def test_evaluate_writes_metrics_confusion_and_predictions(
    tiny_run: Path, synth_manifest: Path, tmp_path: Path
) -> None:
    metrics = run_evaluate(tiny_run / "best.ckpt", [synth_manifest], tmp_path, split="test")
    for name in ("metrics.json", "confusion.png", "confusion.csv", "predictions.csv", "per_class.csv"):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["n"] == metrics["n"] > 0 and saved["level"] == "fine"
    assert len(saved["checkpoint_sha1"]) == 40 and str(synth_manifest) in saved["manifests"]
    preds = pd.read_csv(tmp_path / "predictions.csv")
    # the reported accuracy is the share of correct rows in the predictions file
    assert np.isclose(preds["correct"].mean(), saved["accuracy"])
    conf = pd.read_csv(tmp_path / "confusion.csv", index_col=0)
    assert conf.to_numpy().sum() == saved["n"]


def test_evaluate_restricted_to_a_label_set(tiny_run: Path, synth_manifest: Path, tmp_path: Path) -> None:
    plain = run_evaluate(tiny_run / "best.ckpt", [synth_manifest], tmp_path / "plain", split="test", level="group")
    within = run_evaluate(
        tiny_run / "best.ckpt", [synth_manifest], tmp_path / "within", split="test", level="group", classes=["NE", "LY"]
    )
    assert within["classes"] == ["NE", "LY"] and plain["classes"] is None
    assert within["n"] == plain["n"] and within["labels"] == plain["labels"]
    preds = pd.read_csv(tmp_path / "within" / "predictions.csv")
    assert set(preds["pred"]) <= {"NE", "LY"} and set(preds["group"]) <= {"NE", "LY"}
    assert set(preds["pred_1"]) <= {"SNE", "BNE", "LY"}
    # the synthetic lab has all 11 classes: only NE and LY rows can still be right
    assert within["accuracy"] <= preds["truth"].isin(["SNE", "BNE", "LY"]).mean() + 1e-9
    # predictions.csv is scored at the level asked for, so its rows add up to the metrics
    for run, metrics in (("plain", plain), ("within", within)):
        frame = pd.read_csv(tmp_path / run / "predictions.csv")
        assert set(frame["level"]) == {"group"} and np.isclose(frame["correct"].mean(), metrics["accuracy"])


def test_predict_skips_unreadable_files_and_flags_low_confidence(
    tiny_run: Path, synth_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = synth_manifest.parent / "lab_a" / "PBC_dataset_normal_DIB" / "basophil"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    frame = run_predict(
        tiny_run / "best.ckpt", [folder, bad, tmp_path / "nope.png"], tmp_path / "p.csv", threshold=0.99
    )
    out = capsys.readouterr().out
    assert "skipped" in out and "broken.jpg" in out and "nope.png" in out
    assert len(frame) == len(list(folder.glob("*.jpg")))
    assert {"pred_1", "prob_1", "pred_3", "prob_3", "group", "low_confidence"} <= set(frame.columns)
    assert frame["low_confidence"].all()  # one epoch of training is never 99 % sure
    assert (frame["prob_1"] >= frame["prob_2"]).all()


def test_predict_with_nothing_readable_is_an_error(tiny_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_text("text")
    with pytest.raises(UserError, match="no readable image"):
        run_predict(tiny_run / "best.ckpt", [bad], tmp_path / "p.csv")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    for args in (
        ["evaluate", "--checkpoint", str(tmp_path / "junk.ckpt"), "--manifest", "m.csv", "--out", str(tmp_path)],
        ["predict", "--checkpoint", str(tmp_path / "missing.ckpt"), str(tmp_path)],
        ["finetune", "--set", "optim.lr=-1"],
        ["finetune", "--set", "data.external_classes=[NE,XX]"],
        ["evaluate", "--checkpoint", "c.ckpt", "--manifest", "m.csv", "--out", str(tmp_path), "--classes", "NE,XX"],
    ):
        proc = subprocess.run([sys.executable, "-m", "leukoshift", *args], capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert "Traceback" not in proc.stderr


def test_ruler_framed_run_trains_and_predicts_with_each_labs_scale(synth_manifest: Path, tmp_path: Path) -> None:
    from leukoshift.config import ConfigError, FinetuneConfig, load_config
    from leukoshift.finetune.train import check_config, run_finetune

    # The synthetic labs at 40 px: red cells 7.5 um, 40 px = 28 um / magnification.
    scales = "{lab_a: 10.7, lab_b: 7.7}"
    overrides = [
        f"data.manifests=[{synth_manifest}]",
        f"out={tmp_path / 'run'}",
        "model.backbone=regnetx_002",
        "data.image.size=32",
        "data.image.preprocess=ruler",
        f"data.image.red_cell_px={scales}",
        "data.batch_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "trainer.progress=false",
    ]
    missing = load_config(FinetuneConfig, None, [*overrides, "data.image.red_cell_px={lab_a: 10.7}"])
    with pytest.raises(ConfigError, match="no entry for source 'lab_b'"):
        check_config(missing)  # before any image is read or model built
    run = run_finetune(load_config(FinetuneConfig, None, overrides), progress=False)
    folder = synth_manifest.parent / "lab_b" / "PBC_dataset_normal_DIB" / "basophil"
    with pytest.raises(ConfigError, match=r"source '\(unknown\)'.*set '\*'"):
        run_predict(run / "best.ckpt", [folder], tmp_path / "p.csv")
    by_source = run_predict(run / "best.ckpt", [folder], tmp_path / "p.csv", source="lab_b")
    by_px = run_predict(run / "best.ckpt", [folder], tmp_path / "q.csv", red_cell_px=7.7)
    assert len(by_source) == len(list(folder.glob("*.jpg"))) > 0
    # The lab's scale from training and the same scale given by hand frame alike.
    assert np.allclose(by_source["prob_1"], by_px["prob_1"], atol=1e-5)
    other = run_predict(run / "best.ckpt", [folder], tmp_path / "r.csv", red_cell_px=20.0)
    assert not np.allclose(other["prob_1"], by_px["prob_1"], atol=1e-3)  # the scale is used
    # Scoring a lab the model has no scale for: refused, or framed at the scale given.
    lab_c = tmp_path / "lab_c.csv"
    frame = pd.read_csv(synth_manifest, dtype=str, keep_default_na=False)
    frame = frame[frame["source"] == "lab_b"].assign(source="lab_c")
    frame["path"] = [str(synth_manifest.parent / p) for p in frame["path"]]
    frame.to_csv(lab_c, index=False)
    with pytest.raises(ConfigError, match="lab_c.csv: image.red_cell_px has no entry for source 'lab_c'"):
        run_evaluate(run / "best.ckpt", [lab_c], tmp_path / "e0", split="all")
    as_b = run_evaluate(run / "best.ckpt", [synth_manifest], tmp_path / "e1", split="all")
    as_c = run_evaluate(run / "best.ckpt", [lab_c], tmp_path / "e2", split="all", red_cell_px=7.7)
    b_rows = pd.read_csv(tmp_path / "e1" / "predictions.csv").iloc[-len(frame) :]
    assert as_c["n"] == len(frame) < as_b["n"]
    assert list(pd.read_csv(tmp_path / "e2" / "predictions.csv")["pred"]) == list(b_rows["pred"])
    # Explanations frame the same way, and refuse to guess a scale.
    from leukoshift.eval.explain import run_explain

    with pytest.raises(ConfigError, match="no entry for source"):
        run_explain(run / "best.ckpt", [folder], tmp_path / "none")
    assert not (tmp_path / "none").exists()  # refused before any image was read
    explained = run_explain(run / "best.ckpt", [folder], tmp_path / "ex", source="lab_b")
    table = pd.read_csv(tmp_path / "ex" / "explanations.csv")
    assert len(table) == len(explained.table) == len(by_source)
    assert sorted(table["predicted"]) == sorted(by_source["pred_1"])


def test_tta_averages_the_eight_dihedral_views_and_is_invariant_to_them() -> None:
    torch.manual_seed(0)
    # A model with no symmetry of its own: a convolution and a linear layer over positions.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 11))
    x = torch.rand(5, 3, 8, 8)
    plain, tta = class_probabilities(model), class_probabilities(model, tta=True)
    views = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    views += [v.flip(-1) for v in views]
    expected = torch.stack([model(v).softmax(1) for v in views]).mean(0)
    torch.testing.assert_close(tta(x), expected)
    torch.testing.assert_close(tta(x).sum(1), torch.ones(5))
    for turned in (torch.rot90(x, 1, dims=(-2, -1)), x.flip(-2), x.transpose(-2, -1)):
        torch.testing.assert_close(tta(turned), tta(x))
        assert (plain(turned) - plain(x)).abs().max() > 1e-3  # the model alone is not invariant


def test_evaluate_and_predict_with_tta(
    tiny_run: Path, synth_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = load_classifier(tiny_run / "best.ckpt")
    table = load_table([synth_manifest], image_config_of(model), split="test", labelled=True)
    averaged = predict_table(model, table, progress=False, tta=True)
    metrics = run_evaluate(tiny_run / "best.ckpt", [synth_manifest], tmp_path / "tta", split="test", tta=True)
    assert metrics["tta"] is True
    assert metrics["macro_f1"] == pytest.approx(score(averaged, list(table.frame["label"])).macro_f1)
    assert run_evaluate(tiny_run / "best.ckpt", [synth_manifest], tmp_path / "plain", split="test")["tta"] is False
    assert not np.allclose(averaged, predict_table(model, table, progress=False))
    # predict --tta: an image and its copy turned by 90 degrees get (nearly) the same probabilities
    source = next((synth_manifest.parent / "lab_a" / "PBC_dataset_normal_DIB" / "basophil").glob("*.jpg"))
    rgb = np.asarray(Image.open(source).convert("RGB"))
    Image.fromarray(rgb).save(tmp_path / "cell.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(tmp_path / "cell_turned.png")
    frames = {}
    for flag in ([], ["--tta"]):
        out = tmp_path / f"p{len(flag)}.csv"
        result = subprocess.run(
            [sys.executable, "-m", "leukoshift", "predict", "--checkpoint", str(tiny_run / "best.ckpt"),
             str(tmp_path / "cell.png"), str(tmp_path / "cell_turned.png"), "--out", str(out), *flag],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        frames[bool(flag)] = pd.read_csv(out).set_index("path")
    turned, upright = str(tmp_path / "cell_turned.png"), str(tmp_path / "cell.png")
    gap = {tta: abs(frame.loc[turned, "prob_1"] - frame.loc[upright, "prob_1"]) for tta, frame in frames.items()}
    # the framing's crop is placed to the pixel, so a turned image is not framed exactly alike:
    # TTA leaves a small remainder (1e-4 here), a tenth or less of the plain model's
    assert gap[True] < 1e-3 and gap[False] > 10 * gap[True]
