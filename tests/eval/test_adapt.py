"""AdaBN: batch-norm statistics re-estimated on a lab's images, per lab, weights untouched."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from leukoshift.data.loaders import ImageTable, load_table
from leukoshift.errors import UserError
from leukoshift.eval.adapt import adapt_batchnorm, batchnorm_layers, predict_adapted
from leukoshift.eval.evaluate import image_config_of, load_classifier, predict_table, run_evaluate
from tests.pretrain.test_throughput_paths import load_benchmark


@pytest.fixture(scope="module")
def model_and_table(tiny_run: Path, synth_manifest: Path) -> tuple[nn.Module, ImageTable]:
    model = load_classifier(tiny_run / "best.ckpt")
    return model, load_table([synth_manifest], image_config_of(model), split="all", labelled=True)


def _first_bn_input(model: nn.Module, table: ImageTable) -> torch.Tensor:
    """Activations entering the first batch-norm layer, (N, C, H, W), from the unadapted model."""
    first = batchnorm_layers(model)[0]
    seen: list[torch.Tensor] = []
    handle = first.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().clone()))
    try:
        predict_table(model, table, batch_size=len(table), device="cpu", progress=False)
    finally:
        handle.remove()
    return torch.cat(seen)


def test_statistics_are_those_of_the_lab_and_the_model_is_left_alone(
    model_and_table: tuple[nn.Module, ImageTable],
) -> None:
    model, table = model_and_table
    lab_b = table.where(table.frame["source"] == "lab_b")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # One batch holding every image: the estimate is then exactly the lab's statistics.
    adapted = adapt_batchnorm(model, lab_b, batch_size=len(lab_b))
    acts = _first_bn_input(model, lab_b)  # the layers before the first BN are not adapted
    bn = batchnorm_layers(adapted)[0]
    assert torch.allclose(bn.running_mean, acts.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, acts.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-5)
    assert not adapted.training and all(not m.training for m in adapted.modules())
    # weights identical, statistics moved, and the original model untouched
    for key, value in adapted.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        assert torch.equal(value, before[key]), key
    assert not torch.allclose(bn.running_mean, batchnorm_layers(model)[0].running_mean)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_each_source_is_predicted_by_its_own_adapted_copy(model_and_table: tuple[nn.Module, ImageTable]) -> None:
    model, table = model_and_table
    both = predict_adapted(model, table, batch_size=64)
    assert both.shape == (len(table), 11) and np.allclose(both.sum(axis=1), 1.0, atol=1e-5)
    for source in ("lab_a", "lab_b"):
        mask = (table.frame["source"] == source).to_numpy()
        alone = predict_adapted(model, table.where(mask), batch_size=64)
        assert np.allclose(both[mask], alone, atol=1e-5), source
    plain = predict_table(model, table, progress=False)
    assert not np.allclose(both, plain, atol=1e-3)  # adaptation changed the predictions


def test_models_without_batch_norm_are_refused(model_and_table: tuple[nn.Module, ImageTable]) -> None:
    _, table = model_and_table
    with pytest.raises(UserError, match="no batch-norm layers"):
        adapt_batchnorm(nn.Sequential(nn.Flatten(), nn.LazyLinear(11)), table)


def test_evaluate_adapt_bn_records_it(tiny_run: Path, synth_manifest: Path, tmp_path: Path) -> None:
    metrics = run_evaluate(tiny_run / "best.ckpt", [synth_manifest], tmp_path, split="test", adapt_bn=True)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["adapt_bn"] is True and saved["n"] == metrics["n"] > 0


def test_rescore_script_agrees_with_the_library(tiny_run: Path, synth_manifest: Path) -> None:
    """``benchmarks/rescore.py``: the four variants issue 4 reports, each as evaluate computes it."""
    from leukoshift.eval.metrics import resampled_macro_f1, score
    from leukoshift.taxonomy import WBC5, group_of

    rescore = load_benchmark("rescore")
    out = rescore.rescore(tiny_run / "best.ckpt", [synth_manifest])
    assert set(out) == {"plain", "within", "adabn", "adabn+within"}
    model = load_classifier(tiny_run / "best.ckpt")
    table = load_table([synth_manifest], image_config_of(model), split="all", labelled=True)
    truth = list(table.frame["label"])
    adapted = predict_adapted(model, table)
    expected = {
        "plain": score(predict_table(model, table, progress=False), truth, level="group"),
        "within": score(predict_table(model, table, progress=False), truth, level="group", classes=WBC5),
        "adabn": score(adapted, truth, level="group"),
        "adabn+within": score(adapted, truth, level="group", classes=WBC5),
    }
    for variant, s in expected.items():
        got = out[variant][synth_manifest.stem]
        assert got["macro_f1"] == pytest.approx(s.macro_f1) and got["accuracy"] == pytest.approx(s.accuracy), variant
        recall = {str(code): float(row["recall"]) for code, row in s.per_class.iterrows()}
        assert got["recall"] == pytest.approx(recall), variant
        # each image's codes, in manifest order: what seed_table.py --bootstrap resamples
        assert len(got["true"]) == len(got["pred"]) == len(truth), variant
        assert [t == group_of(c) for t, c in zip(got["true"], truth, strict=True)] == [True] * len(truth)
        whole = resampled_macro_f1(got["true"], got["pred"], np.arange(len(truth))[None])
        assert whole[0] == pytest.approx(s.macro_f1), variant
    # recall is per type of the lab's truth: the synthetic lab carries every type
    assert set(WBC5) <= set(out["within"][synth_manifest.stem]["recall"])
    assert out["within"][synth_manifest.stem] != out["plain"][synth_manifest.stem]
    own = {}
    for split in ("val", "test"):
        part = load_table([synth_manifest], image_config_of(model), split=split, labelled=True)
        expected_own = score(predict_table(model, part, progress=False), list(part.frame["label"]), level="auto")
        own[split] = rescore.score_split(tiny_run / "best.ckpt", synth_manifest, split)
        assert own[split] == pytest.approx({"macro_f1": expected_own.macro_f1, "accuracy": expected_own.accuracy})
    assert own["val"] != own["test"]  # the split is honoured, not always "test"


def test_rescore_reuse_scores_only_what_changed(
    tiny_run: Path, synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rescore.py --reuse``: a checkpoint scored the same way and not rewritten since keeps
    its entry; a rewritten checkpoint, other views or another lab are scored again."""
    rescore = load_benchmark("rescore")
    out = tmp_path / "rescore.json"
    # A copy: the test moves the checkpoint's mtime, and tiny_run is shared by the session.
    name = "run"
    ckpt = tmp_path / name / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy2(tiny_run / "best.ckpt", ckpt)

    def call(*extra: str, split: str = "--test") -> dict[str, Any]:
        argv = ["rescore.py", str(ckpt), "--external", str(synth_manifest), split, str(synth_manifest)]
        monkeypatch.setattr(sys, "argv", [*argv, "--json-out", str(out), *extra])
        rescore.main()
        return json.loads(out.read_text())

    first = call()
    assert first[name]["tta"] is False and "test" in first[name]
    # A sentinel no scoring produces shows whether the entry was kept or recomputed.
    first[name]["plain"][synth_manifest.stem]["macro_f1"] = -1.0
    out.write_text(json.dumps(first))
    assert call("--reuse")[name]["plain"][synth_manifest.stem]["macro_f1"] == -1.0
    assert call("--reuse", "--tta")[name]["tta"] is True  # other views: scored again
    assert call("--reuse")[name]["tta"] is False  # and back
    fresh = call("--reuse")[name]["plain"][synth_manifest.stem]["macro_f1"]
    assert fresh >= 0.0
    # Without --reuse, or once the checkpoint is newer than the file, nothing is kept.
    first[name]["plain"][synth_manifest.stem]["macro_f1"] = -1.0
    out.write_text(json.dumps(first))
    assert call()[name]["plain"][synth_manifest.stem]["macro_f1"] == pytest.approx(fresh)
    out.write_text(json.dumps(first))
    later = out.stat().st_mtime + 10
    os.utime(ckpt, (later, later))
    assert call("--reuse")[name]["plain"][synth_manifest.stem]["macro_f1"] == pytest.approx(fresh)
    # An entry without the split asked for is incomplete: scored again.
    out.write_text(json.dumps(first))
    again = call("--reuse", split="--val")[name]
    assert "val" in again and again["plain"][synth_manifest.stem]["macro_f1"] >= 0.0
