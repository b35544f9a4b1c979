"""Leave-one-source-out: no leakage, resumable, readable results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukoshift.config import ConfigError, load_config
from leukoshift.eval.loso import Loso, LosoConfig, Task, run_loso, shared_level
from leukoshift.finetune.train import load_tables

FAST_FT = {
    "model": {"backbone": "regnetx_002"},
    "data": {"batch_size": 32, "num_workers": 0},
    "optim": {"name": "adamw", "lr": 0.003},
    "trainer": {"max_epochs": 1, "progress": False},
}


def _three_labs_with_a_leak(synth_manifest: Path, tmp_path: Path) -> Path:
    """lab_a, lab_b and a small lab_c; one lab_a row is a byte copy of a lab_c image."""
    frame = pd.read_csv(synth_manifest, dtype=str, keep_default_na=False)
    frame["path"] = [str(synth_manifest.parent / p) for p in frame["path"]]
    lab_c = frame[frame["source"] == "lab_b"].groupby("label").head(3).copy()
    lab_c["source"] = "lab_c"
    lab_c["sha1"] = [f"c{i:039d}" for i in range(len(lab_c))]  # distinct from lab_b's copies
    leak = frame.index[(frame["source"] == "lab_a") & (frame["split"] == "train")][0]
    frame.loc[leak, "sha1"] = lab_c["sha1"].iloc[0]
    out = tmp_path / "three.csv"
    pd.concat([frame, lab_c]).to_csv(out, index=False)
    return out


def _cfg(manifest: Path, out: Path, methods: dict, **extra: object) -> LosoConfig:
    data = {
        "labelled": [str(manifest)],
        "image": {"size": 32},
        "finetune": FAST_FT,
        "methods": methods,
        "out": str(out),
        "diagnose_points": 0,
        **extra,
    }
    return LosoConfig.model_validate(data)


def test_held_out_rows_and_their_copies_never_reach_training(synth_manifest: Path, tmp_path: Path) -> None:
    manifest = _three_labs_with_a_leak(synth_manifest, tmp_path)
    loso = Loso(_cfg(manifest, tmp_path / "loso", {"supervised": {"kind": "finetune"}, "dino+ft": {"kind": "ssl"}}))
    assert loso.held_out == ["lab_a", "lab_b", "lab_c"]
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for held in loso.held_out:
        task = Task(held, "supervised", 0)
        tables = load_tables(loso.finetune_config(task), progress=False)
        held_sha = set(frame.loc[frame["source"] == held, "sha1"])
        for split in (tables.train, tables.val):  # training and model selection
            assert held not in set(split.frame["source"])
            assert not held_sha & set(split.frame["sha1"]), held
        pre = loso.pretrain_config(Task(held, "dino+ft", 0))
        assert pre.data.exclude_sources == [held]


def test_transductive_pretraining_sees_the_held_out_images(synth_manifest: Path, tmp_path: Path) -> None:
    loso = Loso(_cfg(synth_manifest, tmp_path, {"dino+ft": {"kind": "ssl"}}, transductive=True))
    assert loso.pretrain_config(Task("lab_a", "dino+ft", 0)).data.exclude_sources == []


def test_methods_share_identical_pretraining(synth_manifest: Path, tmp_path: Path) -> None:
    methods = {
        "dino+ft": {"kind": "ssl"},
        "dino+linear": {"kind": "ssl", "finetune": {"mode": "linear"}},
        "simclr+ft": {"kind": "ssl", "pretrain": {"method": "simclr"}},
    }
    loso = Loso(_cfg(synth_manifest, tmp_path, methods))
    a, b, c = (loso.pretrain_dir(Task("lab_a", m, 0)) for m in methods)
    assert a == b != c


def test_bad_method_configs_fail_naming_the_field(synth_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"methods.broken.finetune: optim.lr"):
        Loso(_cfg(synth_manifest, tmp_path, {"broken": {"kind": "finetune", "finetune": {"optim": {"lr": -1}}}}))
    with pytest.raises(ConfigError, match="features_of"):
        load_config(
            LosoConfig, None, [f"labelled=[{synth_manifest}]", "methods={svm: {kind: svm, features_of: nothing}}"]
        )


def test_shared_level_rules() -> None:
    level, keep, excluded = shared_level(["SNE", "LY", "MO"], {"SNE", "BNE", "LY", "MO", "EO"})
    assert level == "fine" and keep.all() and excluded == {}
    level, keep, excluded = shared_level(["NE", "LY", "ERB"], {"SNE", "LY"})
    assert level == "group" and keep.tolist() == [True, True, False] and excluded == {"ERB": 1}
    level, _, _ = shared_level(["SNE", "MY"], {"NE", "IG", "LY"})  # training only knows groups
    assert level == "group"


def test_tiny_benchmark_runs_resumes_and_reports(
    synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    methods = {
        "supervised": {"kind": "finetune"},
        "logreg": {"kind": "logreg", "pixel_side": 8},
        "features+svm": {"kind": "svm", "features_of": "supervised"},
    }
    cfg = _cfg(synth_manifest, tmp_path / "loso", methods, diagnose_points=120)
    out = run_loso(cfg, progress=False)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 * 3  # held-out labs x methods
    assert set(results["held_out"]) == {"lab_a", "lab_b"}
    assert results["macro_f1_mean"].between(0, 1).all() and (results["level"] == "fine").all()
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert all(r["scores"]["n"] == 11 * 24 for r in runs)  # every held-out image scored
    html = (out / "report.html").read_text()
    assert "Held-out macro-F1" in html and "lab_a" in html and "features+svm" in html
    assert "How the labs differ before any model" in html and "blur_sigma_224" in html
    assert "<img" in html
    assert not re.search(r"""(src|href)=["']https?://""", html)  # self-contained, no network
    assert (out / "report.md").is_file()

    # A second run resumes: every task is complete, nothing is trained again.
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished task was run again")

    monkeypatch.setattr(Loso, "_train", no_training)
    run_loso(cfg, progress=False)
    # ... but changing a method's config invalidates exactly its tasks.
    changed = cfg.model_copy(
        update={"methods": {**cfg.methods, "logreg": cfg.methods["logreg"].model_copy(update={"pixel_side": 12})}}
    )
    loso = Loso(changed)
    incomplete = [t for t in loso.tasks if not loso.is_complete(t)]
    assert {t.method for t in incomplete} == {"logreg"} and len(incomplete) == 2
    assert np.isfinite(results["gap_macro_f1"]).all()


def test_test_time_fixes_rescore_a_finished_benchmark(
    synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``test_time: [label_set, adabn]`` added to a finished benchmark: the networks' held-out
    predictions are scored again (no retraining) as methods of their own."""
    from leukoshift.data.loaders import load_table
    from leukoshift.eval.adapt import predict_adapted
    from leukoshift.eval.evaluate import load_classifier
    from leukoshift.eval.metrics import score

    # lab_b labels white cells only (6 of the 11 codes): its label set is a real restriction.
    frame = pd.read_csv(synth_manifest, dtype=str, keep_default_na=False)
    frame["path"] = [str(synth_manifest.parent / p) for p in frame["path"]]
    white = {"SNE", "BNE", "EO", "BA", "LY", "MO"}
    frame = frame[(frame["source"] == "lab_a") | frame["label"].isin(white)]
    manifest = tmp_path / "white_b.csv"
    frame.to_csv(manifest, index=False)
    methods = {"supervised": {"kind": "finetune"}, "logreg": {"kind": "logreg", "pixel_side": 8}}
    cfg = _cfg(manifest, tmp_path / "loso", methods, held_out=["lab_b"])
    out = run_loso(cfg, progress=False)
    assert set(pd.read_csv(out / "results.csv")["method"]) == {"supervised", "logreg"}

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("rescoring must not train")

    monkeypatch.setattr(Loso, "_train", no_training)
    fixed = cfg.model_copy(update={"test_time": ["label_set", "adabn"]})
    run_loso(fixed, progress=False)
    results = pd.read_csv(out / "results.csv").set_index("method")
    variants = ["supervised +label_set", "supervised +adabn", "supervised +adabn+label_set"]
    assert set(results.index) == {"supervised", "logreg", *variants}  # baselines have nothing to adapt
    # in-domain is the rescored model's own
    assert (
        results.loc[variants, "in_domain_macro_f1_mean"] == results.loc["supervised", "in_domain_macro_f1_mean"]
    ).all()

    run_dir = out / "runs" / "lab_b" / "supervised" / "seed0"
    saved = json.loads((run_dir / "result.json").read_text())["variants"]
    truth = list(pd.read_csv(run_dir / "held_out_rows.csv", dtype=str)["label"])
    assert saved["label_set"]["classes"] == sorted(white)
    expected = score(np.load(run_dir / "held_out_probs.npy"), truth, level="fine", classes=sorted(white))
    assert saved["label_set"]["macro_f1"] == pytest.approx(expected.macro_f1)
    assert set(saved["label_set"]["confusion"]["predicted"]) <= white
    model = load_classifier(run_dir / "best.ckpt")
    table = load_table([manifest], model.cfg.data.image, split="all", sources=["lab_b"], labelled=True)
    adapted = score(predict_adapted(model, table), list(table.frame["label"]), level="fine")
    assert saved["adabn"]["macro_f1"] == pytest.approx(adapted.macro_f1)
    assert saved["adabn"]["accuracy"] == pytest.approx(adapted.accuracy)
    assert "+adabn" in (out / "report.html").read_text()

    # Once rescored, a rerun does neither.
    monkeypatch.setattr(Loso, "_score_variants", no_training)
    run_loso(fixed, progress=False)


def test_ruler_framing_reaches_pretraining_and_a_missing_scale_stops_loso_first(
    synth_manifest: Path, tmp_path: Path
) -> None:
    scales = {"lab_a": 10.7, "lab_b": 7.7}
    ruler = {"size": 32, "preprocess": "ruler", "red_cell_px": scales, "ruler_field": 3.5, "ruler_scale": "image"}
    loso = Loso(_cfg(synth_manifest, tmp_path / "a", {"dino+ft": {"kind": "ssl"}}, image=ruler))
    pre = loso.pretrain_config(Task("lab_a", "dino+ft", 0)).data.image
    assert pre.preprocess == "ruler" and pre.red_cell_px == scales and pre.ruler_field == 3.5
    assert pre.ruler_scale == "image"
    assert loso.finetune_config(Task("lab_a", "dino+ft", 0)).data.image.red_cell_px == scales
    missing = {**ruler, "red_cell_px": {"lab_a": 10.7}}
    cfg = _cfg(synth_manifest, tmp_path / "b", {"supervised": {"kind": "finetune"}}, image=missing)
    with pytest.raises(ConfigError, match="no entry for source 'lab_b'"):
        run_loso(cfg, progress=False)
    assert not list((tmp_path / "b").rglob("*.ckpt"))  # nothing trained
