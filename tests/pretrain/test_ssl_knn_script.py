"""``benchmarks/ssl_knn.py``: the kNN numbers issue 4 reports, on a tiny run's backbone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

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
