"""``benchmarks/ssl_knn.py``: the kNN numbers issue 4 reports, on a tiny run's backbone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from leukoshift.models.backbones import Encoder
from tests.pretrain.test_throughput_paths import load_benchmark


def test_ssl_knn_scores_the_test_split_and_other_labs_at_the_group_level(
    tiny_run: Path, synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Another lab" made of the test split's rows: scored whole, at the group level, with
    # the same bank, it must agree with the fine-level test score (merging classes into
    # groups can only forgive mistakes between members of a group).
    rows = pd.read_csv(synth_manifest)
    other = tmp_path / "other_lab.csv"
    test = rows[rows["split"] == "test"]
    test.assign(split="train", path=[str(synth_manifest.parent / p) for p in test["path"]]).to_csv(other, index=False)
    out = tmp_path / "knn.json"
    argv = ["ssl_knn.py", "--backbone", str(tiny_run / "backbone.safetensors"), "--manifest", str(synth_manifest)]
    monkeypatch.setattr(sys, "argv", [*argv, "--external", str(other), "--k", "5", "--json-out", str(out)])
    load_benchmark("ssl_knn").main()
    result = json.loads(out.read_text())
    n_test = int((rows["split"] == "test").sum())
    assert result["n_query"] == result["n_external"]["other_lab"] == n_test  # every row, not its own "test" split
    assert result["n_bank"] == int((rows["split"] == "train").sum())
    for encoder in ("trained", "random_weights"):
        fine, group = result[encoder], result[encoder]["other_lab"]
        assert group["n"] == n_test
        assert 0 < fine["accuracy"] <= group["accuracy"] + 0.02 <= 1.02
        assert 0 < group["macro_f1"] <= 1
    # A trained network and random weights do not embed the cells alike.
    assert result["trained"]["accuracy"] != result["random_weights"]["accuracy"]


def test_ssl_knn_random_reference_takes_the_backbones_stain_normaliser(
    synth_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The random-weights row must differ from the trained one in the weights alone: a
    # backbone trained behind Reinhard normalisation gives its fitted normaliser to the
    # reference too, or the reference sees other labs' raw colours and the trained
    # features' lead is partly the normaliser's.
    from leukoshift.config import FinetuneConfig, load_config
    from leukoshift.finetune.train import run_finetune
    from leukoshift.models.encoders import load_encoder

    sets = [f"data.manifests=[{synth_manifest}]", f"out={tmp_path / 'run'}", "model.backbone=regnetx_002"]
    sets += ["data.image.size=32", "data.batch_size=32", "data.num_workers=0", "trainer.max_epochs=1"]
    sets += ["trainer.progress=false", "augment.normalize=reinhard"]
    run = run_finetune(load_config(FinetuneConfig, None, sets), progress=False)
    script = load_benchmark("ssl_knn")
    given: list[torch.nn.Module | None] = []

    def recording_encoder(backbone: torch.nn.Module, stain: torch.nn.Module | None = None) -> Encoder:
        given.append(stain)
        return Encoder(backbone, stain=stain)

    monkeypatch.setattr(script, "Encoder", recording_encoder)
    out = tmp_path / "knn.json"
    argv = ["ssl_knn.py", "--backbone", str(run / "backbone.safetensors"), "--manifest", str(synth_manifest)]
    monkeypatch.setattr(sys, "argv", [*argv, "--k", "5", "--json-out", str(out)])
    script.main()
    assert out.exists() and len(given) == 1 and given[0] is not None
    fitted = load_encoder(run / "backbone.safetensors").encoder.stain.state_dict()
    assert fitted and all(torch.equal(given[0].state_dict()[k], v) for k, v in fitted.items())
